"""A stand-in MLLM endpoint (`mllm=sim`): schema-valid JSON built from the JSON schema itself, after a calibrated delay.

Agents send the same messages and pydantic schemas they send a real endpoint; the engine walks the (capped, closed)
JSON schema and writes a value for every required property: list lengths within minItems/maxItems, an enum value,
numbers within their bounds, short strings of plain words within the pattern's length bounds. The choice is fixed by
the call's seed, so a job reproduces exactly. The delay is the profile's endpoint latency (conf/sim/*.yaml, `mllm`:
a fixed part plus decoding time per output token) times `sim.time_scale`, where output tokens are estimated as a
real model would spend them (tokens_per_string per free-text field), not from the short strings written here.

Output that cannot fit the token budget (max_tokens below the estimate) is unusable, exactly like a real model cut
off mid-JSON, so `mllm.max_tokens` exercises the unusable-output path. No torch here: it runs inside job runners.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from typing import Any, Optional


from personavlog.engine.errors import ConfigError, UnusableOutputError
from personavlog.engine.mllm.actor_client import RetryingMLLMClient
from personavlog.engine.mllm.base import Usage
from personavlog.engine.mllm.schema import _pattern_bounds, cap_schema

_WORDS = ("morning", "light", "street", "market", "river", "quiet", "walks", "smiles", "rain", "window", "coffee",
          "train", "garden", "laughs", "evening", "bridge", "lantern", "wind", "city", "looks", "friend", "soft",
          "golden", "path", "home", "music", "dance", "sky", "sea", "hill")
_MAX_DEPTH = 32


class _Estimate:
    def __init__(self) -> None:
        self.strings = 0
        self.scalars = 0


def _rng(seed: Optional[int], schema_key: str, messages_key: str) -> random.Random:
    material = f"{seed}|{schema_key}|{messages_key}" if seed is not None else f"noseed|{time.time_ns()}"
    return random.Random(int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big"))


def _string(node: dict[str, Any], rng: random.Random, max_chars: int) -> str:
    lo, hi = 0, None
    if isinstance(node.get("pattern"), str):
        lo, hi = _pattern_bounds(node["pattern"])
    lo = max(lo, int(node.get("minLength", 0)))
    hi_all = [h for h in (hi, node.get("maxLength"), max_chars) if h is not None]
    hi = max(lo, min(hi_all)) if hi_all else max(lo, 24)
    target = rng.randint(max(lo, min(hi, 8)), max(lo, min(hi, 24)))
    words: list[str] = []
    while len(" ".join(words)) < target:
        words.append(rng.choice(_WORDS))
    text = " ".join(words)[:hi].rstrip()
    while len(text) < lo:
        text += "a"
    if isinstance(node.get("pattern"), str) and not re.search(node["pattern"], text):
        raise ConfigError(f"schema: the sim MLLM cannot write a string for pattern {node['pattern']!r}")
    return text


def _number(node: dict[str, Any], rng: random.Random, integer: bool) -> Any:
    lo = node.get("minimum", node.get("exclusiveMinimum", 0))
    hi = node.get("maximum", node.get("exclusiveMaximum", lo + 10))
    if "exclusiveMinimum" in node and "minimum" not in node:
        lo = lo + (1 if integer else 1e-6)
    if "exclusiveMaximum" in node and "maximum" not in node:
        hi = hi - (1 if integer else 1e-6)
    if hi < lo:
        hi = lo
    return rng.randint(int(lo), int(hi)) if integer else round(rng.uniform(float(lo), float(hi)), 4)


def instance(node: dict[str, Any], rng: random.Random, est: _Estimate, *, max_chars: int, max_items: int,
             depth: int = 0) -> Any:
    """A value valid against `node` (a self-contained JSON schema of the shapes pydantic emits)."""
    if depth > _MAX_DEPTH:
        raise ConfigError("schema: nested deeper than the sim MLLM walks")
    if "const" in node:
        est.scalars += 1
        return node["const"]
    if "enum" in node:
        est.scalars += 1
        return rng.choice(list(node["enum"]))
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list) and node[key]:
            options = [o for o in node[key] if o.get("type") != "null"] or node[key]
            return instance(options[0], rng, est, max_chars=max_chars, max_items=max_items, depth=depth + 1)
    if isinstance(node.get("allOf"), list) and node["allOf"]:
        merged: dict[str, Any] = {}
        for part in node["allOf"]:
            merged.update(part)
        return instance(merged, rng, est, max_chars=max_chars, max_items=max_items, depth=depth + 1)
    types = node.get("type")
    kind = next((t for t in types if t != "null"), "null") if isinstance(types, list) else types
    if kind is None:
        kind = "object" if "properties" in node else "string"
    if kind == "object":
        props = node.get("properties", {})
        required = node.get("required", list(props))
        return {name: instance(props[name], rng, est, max_chars=max_chars, max_items=max_items, depth=depth + 1)
                for name in props if name in required}
    if kind == "array":
        lo = int(node.get("minItems", 0))
        hi = int(node.get("maxItems", max(lo, max_items)))
        n = rng.randint(max(lo, min(1, hi)), max(lo, min(hi, max(lo, 3))))
        items = node.get("items", {"type": "string"})
        return [instance(items, rng, est, max_chars=max_chars, max_items=max_items, depth=depth + 1)
                for _ in range(n)]
    if kind == "string":
        est.strings += 1
        return _string(node, rng, max_chars)
    est.scalars += 1
    if kind == "integer":
        return _number(node, rng, integer=True)
    if kind == "number":
        return _number(node, rng, integer=False)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    raise ConfigError(f"schema: type {kind!r} is not one the sim MLLM can write")


def _prompt_chars_and_images(messages: list[dict[str, Any]]) -> tuple[int, int]:
    chars = images = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
            continue
        for part in content or []:
            if part.get("type") == "text":
                chars += len(part.get("text", ""))
            elif part.get("type") in ("image", "image_url"):
                images += 1
    return chars, images


class SimMLLMEngine:
    """MLLMEngine protocol: `chat(messages, json_schema, ...) -> (text, usage)`, in any process (no model)."""

    def __init__(self, conf: Any):
        from personavlog.actors.sim import as_sim_conf

        self.conf = conf
        self.params = dict(conf.params or {})
        self.sim = as_sim_conf(self.params.get("sim"))
        self.timing = self.sim.mllm
        self.max_chars = int(self.params.get("max_string_chars") or 48)
        self.max_items = int(self.params.get("max_list_items") or 6)
        self.model = str(conf.model)

    def start(self) -> None:
        return None

    def check_health(self) -> bool:
        return True

    def shutdown(self) -> None:
        return None

    def latency(self, output_tokens: int) -> float:
        t = self.timing
        return (t.seconds_per_call + t.seconds_per_output_token * output_tokens) * self.sim.time_scale

    def chat(self, messages: list[dict[str, Any]], json_schema: dict[str, Any], *, seed: Optional[int],
             temperature: float, max_tokens: int) -> tuple[str, Usage]:
        if max_tokens < 1:
            raise ConfigError(f"mllm.max_tokens: must be >= 1, got {max_tokens}")
        schema = cap_schema(json_schema, max_string_chars=self.max_chars, max_list_items=self.max_items)
        key = json.dumps(schema, sort_keys=True)
        chars, images = _prompt_chars_and_images(messages)
        rng = _rng(seed, key, f"{chars}|{images}")
        est = _Estimate()
        data = instance(schema, rng, est, max_chars=self.max_chars, max_items=self.max_items)
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        tokens = est.strings * int(self.timing.tokens_per_string) + 3 * est.scalars + 2
        prompt_tokens = chars // 4 + images * int(self.timing.prompt_tokens_per_image)
        if tokens > max_tokens:
            # A real model is cut off mid-JSON here: it has spent the whole budget and the text does not parse.
            time.sleep(self.latency(max_tokens))
            raise UnusableOutputError(f"sim MLLM: no complete JSON within max_tokens={max_tokens} "
                                      f"(this answer needs ~{tokens} tokens)")
        time.sleep(self.latency(tokens))
        return text, Usage(prompt_tokens=prompt_tokens, completion_tokens=tokens, calls=1)


class SimMLLMClient(RetryingMLLMClient):
    """MLLMClient over SimMLLMEngine in the caller's process: validation and parse retries as every backend does."""

    def __init__(self, conf: Any, *, parse_retries: int = 2):
        if parse_retries < 0:
            raise ConfigError(f"macf.parse_retries: must be >= 0, got {parse_retries}")
        self.conf = conf
        self.engine = SimMLLMEngine(conf)
        self.model = self.engine.model
        self.parse_retries = parse_retries
        self.max_string_chars = self.engine.max_chars
        self.max_list_items = self.engine.max_items

    def _call(self, messages: list[dict[str, Any]], json_schema: dict[str, Any], seed: Optional[int],
              temperature: float, max_tokens: int) -> tuple[str, Usage]:
        return self.engine.chat(messages, json_schema, seed=seed, temperature=temperature, max_tokens=max_tokens)

    def _unusable_usage(self, max_tokens: int) -> Usage:
        # The stand-in cuts off an answer longer than max_tokens after "decoding" all of it: charge the whole budget.
        return Usage(completion_tokens=max_tokens, calls=1)
