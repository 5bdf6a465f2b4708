"""Model/dataset card metadata (the YAML front matter of README.md), read safely from untrusted repos.

The Hub finds the metadata block with a regular expression that backtracks super-linearly on long runs of newlines;
here it is found by a linear scan over a bounded prefix of the card. The YAML (at most :data:`MAX_CARD_YAML`
characters) is composed by libyaml's safe loader, and refused before construction if it holds an alias (a few
hundred bytes of anchors can otherwise expand to megabytes) or nests too deeply; the result is converted to
what JSON can carry: dates become ISO strings, ``.nan``/``.inf`` become ``null``, ``!!binary`` values are dropped,
``!!set`` becomes a sorted list, non-string keys become strings. Metadata whose JSON form is larger than
:data:`MAX_CARD_JSON` is not served.
"""

from __future__ import annotations

import datetime as _dt
import json
import math

import yaml

MAX_CARD_PREFIX = 256 * 1024  # characters of README.md searched for the metadata block
MAX_CARD_YAML = 64 * 1024  # characters of YAML parsed (real cards' metadata: a few KB)
MAX_CARD_JSON = 128 * 1024  # bytes of JSON card data put in a response
MAX_DEPTH = 64

KNOWN_LICENSES = frozenset(
    """apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
    afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
    cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
    cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
    cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0
    lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl
    openmdw-1.0 openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license
    fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other""".split()
)


class CardMetadataError(ValueError):
    """The card's metadata block is not acceptable (syntax, aliases, structure); the message says what is wrong."""


def find_front_matter(text: str, max_prefix: int = MAX_CARD_PREFIX) -> str | None:
    """The YAML between the opening and closing ``---`` lines of a card, or None if there is no such block.

    Same blocks as the Hub's ``^(\\s*---[\\r\\n]+)([\\S\\s]*?)([\\r\\n]+---(\\r\\n|\\n|$))``, found in time linear in
    ``max_prefix``: a block that does not close within the first ``max_prefix`` characters is not metadata.
    """
    text = text[:max_prefix]
    start = len(text) - len(text.lstrip())
    if not text.startswith("---", start):
        return None
    pos = start + 3
    body_start = pos
    while body_start < len(text) and text[body_start] in "\r\n":
        body_start += 1
    if body_start == pos:
        return None
    search = body_start - 1  # the closing '---' must follow a newline; the opening run's last one counts
    while True:
        found = text.find("---", search)
        if found < 0:
            return None
        after = text[found + 3 : found + 5]
        if found > 0 and text[found - 1] in "\r\n" and (after[:1] == "\n" or after == "\r\n" or after == ""):
            return text[body_start:found].rstrip("\r\n") if found > body_start else ""
        search = found + 1


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: several times faster


def _check_tree(root: yaml.Node) -> None:
    """Refuse aliases (a node reached twice: ``*anchor``) and nesting deeper than MAX_DEPTH, without recursion."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:
            raise CardMetadataError(
                f"YAML aliases are not allowed in card metadata (line {node.start_mark.line + 1})."
            )
        seen.add(id(node))
        if depth > MAX_DEPTH:
            raise CardMetadataError(f"card metadata is nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend(((key, depth + 1), (value, depth + 1)))


def _to_json(value: object, depth: int = 0) -> object:
    if depth > MAX_DEPTH:
        raise CardMetadataError(f"card metadata is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(v, bytes):
                continue
            out[k if isinstance(k, str) else str(_to_json(k, depth + 1))] = _to_json(v, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_to_json(v, depth + 1) for v in value if not isinstance(v, bytes)]
    if isinstance(value, (set, frozenset)):
        return sorted((_to_json(v, depth + 1) for v in value if not isinstance(v, bytes)), key=str)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    return str(value)


def parse_metadata(yaml_text: str) -> dict | None:
    """Parse a metadata block into JSON-safe data (None for an empty block); raise CardMetadataError when invalid."""
    if len(yaml_text) > MAX_CARD_YAML:
        raise CardMetadataError(f"the metadata block is longer than {MAX_CARD_YAML} characters")
    loader = _Loader(yaml_text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_tree(root)  # before construction: an alias bomb is refused before it expands
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise CardMetadataError(f"Invalid YAML: {exc}") from None
    except RecursionError:
        raise CardMetadataError("card metadata is nested too deeply") from None
    finally:
        loader.dispose()
    if data is None:
        return None
    if not isinstance(data, dict):
        raise CardMetadataError("the YAML metadata block must be a mapping")
    return _to_json(data)  # type: ignore[return-value]


def card_metadata(text: str) -> dict | None:
    """Metadata of a card for ``cardData``: None when absent, invalid, or larger than MAX_CARD_JSON as JSON."""
    block = find_front_matter(text)
    if block is None:
        return None
    try:
        data = parse_metadata(block)
    except CardMetadataError:
        return None
    if data is not None and len(json.dumps(data, separators=(",", ":"))) > MAX_CARD_JSON:
        return None
    return data


def check_metadata(data: dict, repo_type: str = "model") -> list[str]:
    """What the Hub's validate-yaml would reject beyond syntax: ``license`` values and the ``model-index`` shape."""
    errors: list[str] = []
    licenses = data.get("license")
    for value in licenses if isinstance(licenses, list) else ([licenses] if licenses is not None else []):
        if not isinstance(value, str) or value not in KNOWN_LICENSES:
            errors.append(f'"license" must be one of the Hub\'s license identifiers (or "other"), not {value!r}')
    if "model-index" in data:
        errors.extend(_check_model_index(data["model-index"]))
    return errors


def _check_model_index(index: object) -> list[str]:
    where = '"model-index"'
    if not isinstance(index, list) or not index:
        return [f"{where} must be a non-empty list of models"]
    errors = []
    for i, model in enumerate(index):
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append(f"{where}[{i}] must be a mapping with a string 'name'")
            continue
        results = model.get("results")
        if not isinstance(results, list):
            errors.append(f"{where}[{i}].results must be a list")
            continue
        for j, result in enumerate(results):
            at = f"{where}[{i}].results[{j}]"
            if not isinstance(result, dict):
                errors.append(f"{at} must be a mapping")
                continue
            task, dataset, metrics = result.get("task"), result.get("dataset"), result.get("metrics")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append(f"{at}.task must be a mapping with a string 'type'")
            if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), str) for k in ("type", "name")):
                errors.append(f"{at}.dataset must be a mapping with string 'type' and 'name'")
            if not isinstance(metrics, list) or not metrics:
                errors.append(f"{at}.metrics must be a non-empty list")
                continue
            for k, metric in enumerate(metrics):
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str) or "value" not in metric:
                    errors.append(f"{at}.metrics[{k}] must be a mapping with a string 'type' and a 'value'")
    return errors
