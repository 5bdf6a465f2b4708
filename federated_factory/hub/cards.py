"""Render model and dataset cards from the Jinja templates in the repository's `hub_cards/` folder."""

from __future__ import annotations

from pathlib import Path

import jinja2

CARDS_DIR = Path(__file__).resolve().parents[2] / "hub_cards"


def render_card(template: str, **context) -> str:
    """Render ``hub_cards/<template>`` with ``context`` (undefined variables are errors, not blanks)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(CARDS_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda value: f"{100 * float(value):.2f}%"
    env.filters["num"] = lambda value, digits=4: f"{float(value):.{digits}f}"
    return env.get_template(template).render(**context)
