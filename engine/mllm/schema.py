"""JSON schemas for structured MLLM output, and validation of what comes back.

One schema serves every backend: OpenAI's strict mode, vLLM's structured outputs and xgrammar in the local engine.
That fixes its shape:

- self-contained (`$defs` inlined): not every backend resolves `$ref`, and caps must reach every string;
- every object closed (`additionalProperties: false`) with every property required, as OpenAI strict mode demands
  (an Optional field is still required, the model writes `null`);
- no `default` (strict mode rejects it);
- every free string carries a pattern that excludes control characters: a grammar-constrained model with random or
  weak weights otherwise emits raw control bytes inside JSON strings, which `json.loads` rejects;
- optional caps on string length and list length, so a toy model with random weights finishes in bounded time.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from personavlog.engine.errors import ConfigError, UnusableOutputError

# Printable text: anything but C0 controls and DEL. Written with \u escapes so it reads the same in ECMA-262
# (OpenAI), Python `re` and xgrammar's regex dialect. xgrammar ignores minLength/maxLength next to a pattern, so
# length bounds live inside the pattern as a quantifier (which every backend honours). Under xgrammar such a string
# also never holds a quote or a backslash: it keeps pattern strings escape-free, so the JSON always parses.
_PRINTABLE_CLASS = r"^[^\u0000-\u001f\u007f]"
PRINTABLE_PATTERN = _PRINTABLE_CLASS + "*$"
_BOUNDS = re.compile(r"\{(\d+),(\d*)\}\$$")


def printable_pattern(min_chars: int = 0, max_chars: int | None = None) -> str:
    """The printable-text pattern with a length bound."""
    if max_chars is None:
        return PRINTABLE_PATTERN if not min_chars else f"{_PRINTABLE_CLASS}{{{min_chars},}}$"
    return f"{_PRINTABLE_CLASS}{{{min_chars},{max(max_chars, min_chars)}}}$"


def _pattern_bounds(pattern: str) -> tuple[int, int | None]:
    m = _BOUNDS.search(pattern)
    if not m:
        return 0, None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) else None)


def _cap(declared: int | None, cap: int | None) -> int | None:
    if declared is None:
        return cap
    return declared if cap is None else min(declared, cap)


# Keywords that already pin a string's content; a printable pattern would add nothing (or clash).
_STRING_CONTENT_KEYS = ("enum", "const", "pattern", "format")


def json_schema_for(model: type[BaseModel], *, max_string_chars: int | None = None,
                    max_list_items: int | None = None, string_patterns: bool = True) -> dict[str, Any]:
    """The self-contained, closed JSON schema of `model`, ready for any structured-output backend.

    `string_patterns=False` leaves free strings without the printable pattern (length caps then go to maxLength),
    for endpoints whose schema subset has no `pattern`.
    """
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"schema: expected a pydantic model class, got {model!r}")
    raw = model.model_json_schema()
    defs = raw.pop("$defs", {})
    inlined = _inline(raw, defs, ())
    return cap_schema(inlined, max_string_chars=max_string_chars, max_list_items=max_list_items,
                      string_patterns=string_patterns)


def cap_schema(schema: dict[str, Any], *, max_string_chars: int | None = None,
               max_list_items: int | None = None, string_patterns: bool = True) -> dict[str, Any]:
    """A copy of a self-contained schema, closed and given printable patterns and the optional caps.

    Idempotent, so an engine may apply its own caps to a schema a client already prepared.
    """
    if max_string_chars is not None and max_string_chars < 1:
        raise ConfigError(f"mllm.params.max_string_chars: must be >= 1, got {max_string_chars}")
    if max_list_items is not None and max_list_items < 1:
        raise ConfigError(f"mllm.params.max_list_items: must be >= 1, got {max_list_items}")
    return _close(copy.deepcopy(schema), max_string_chars, max_list_items, string_patterns)


def _inline(node: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(v, defs, seen) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if not ref.startswith("#/$defs/") or name not in defs:
            raise ConfigError(f"schema: unresolvable $ref {ref!r}")
        if name in seen:
            raise ConfigError(f"schema: model {name!r} is recursive; structured output needs a finite schema")
        target = _inline(defs[name], defs, seen + (name,))
        # Siblings of $ref (pydantic puts a field's description there) override the referenced model's own.
        extra = {k: _inline(v, defs, seen) for k, v in node.items() if k != "$ref"}
        return {**target, **extra}
    return {k: _inline(v, defs, seen) for k, v in node.items()}


_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_ONE = ("items", "not", "additionalProperties", "contains")


def _close(node: dict[str, Any], max_chars: int | None, max_items: int | None, patterns: bool) -> dict[str, Any]:
    """Walk subschemas by position (never a `properties` map as if it were a schema: a field may be named "type")."""
    node.pop("default", None)
    for key in _SUBSCHEMA_LISTS:
        if isinstance(node.get(key), list):
            node[key] = [_close(v, max_chars, max_items, patterns) if isinstance(v, dict) else v for v in node[key]]
    for key in _SUBSCHEMA_ONE:
        if isinstance(node.get(key), dict):
            node[key] = _close(node[key], max_chars, max_items, patterns)
    types = node.get("type")
    type_set = set(types) if isinstance(types, list) else {types}
    if "object" in type_set or "properties" in node:
        props = {name: _close(sub, max_chars, max_items, patterns) for name, sub in node.get("properties", {}).items()}
        node["properties"] = props
        node["required"] = list(props)
        node["additionalProperties"] = False
    if "string" in type_set and patterns and not any(k in node for k in _STRING_CONTENT_KEYS):
        node["pattern"] = printable_pattern(node.pop("minLength", 0), _cap(node.pop("maxLength", None), max_chars))
    elif "string" in type_set and node.get("pattern", "").startswith(_PRINTABLE_CLASS):
        # Ours from an earlier pass: tighten the length bound inside it.
        lo, hi = _pattern_bounds(node["pattern"])
        node["pattern"] = printable_pattern(lo, _cap(hi, max_chars))
    elif "string" in type_set and max_chars is not None and "enum" not in node and "const" not in node:
        node["maxLength"] = max(_cap(node.get("maxLength"), max_chars) or 0, node.get("minLength", 0))
    if "array" in type_set and max_items is not None:
        declared = node.get("maxItems")
        cap = max_items if declared is None else min(declared, max_items)
        node["maxItems"] = max(cap, node.get("minItems", 0))
    return node


def validate(model: type[BaseModel], text: str) -> dict[str, Any]:
    """Parse `text` as JSON and validate it against `model`; the JSON-ready dict, or UnusableOutputError."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise UnusableOutputError(f"output is not JSON ({exc.msg if hasattr(exc, 'msg') else exc}); "
                                  f"starts with {text[:60]!r}") from None
    try:
        parsed = model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "<root>"
        raise UnusableOutputError(f"output does not fit {model.__name__}: {where}: {first.get('msg')} "
                                  f"({exc.error_count()} error(s))") from None
    return parsed.model_dump(mode="json")
