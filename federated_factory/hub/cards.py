"""Render model and dataset cards from the Jinja templates shipped in the package (`federated_factory/hub_cards/`).

The templates are package data: they are inside the wheel, so an installed (not editable) package renders cards
as well as a source checkout does. `jinja2.PackageLoader` finds them through the import system, never through
the source tree.
"""

from __future__ import annotations

import jinja2

CARDS_PACKAGE = ("federated_factory", "hub_cards")


def render_card(template: str, **context) -> str:
    """Render ``federated_factory/hub_cards/<template>`` with ``context`` (undefined variables are errors, not blanks)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(*CARDS_PACKAGE),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda value: f"{100 * float(value):.2f}%"
    env.filters["num"] = lambda value, digits=4: f"{float(value):.{digits}f}"
    return env.get_template(template).render(**context)
