import json
import re
from typing import Literal

import pytest
from pydantic import BaseModel, Field, conlist, create_model

from personavlog.engine.errors import ConfigError, UnusableOutputError
from personavlog.engine.mllm.schema import PRINTABLE_PATTERN, cap_schema, json_schema_for, validate


class Shot(BaseModel):
    caption: str = Field(description="what the camera sees")
    camera: str = Field(max_length=20)


class Storyboard(BaseModel):
    title: str
    shots: list[Shot] = Field(min_length=4, max_length=4)
    verdict: Literal["pass", "fail"]
    reasons: list[str] | None = None
    tempo: int = 3


def _walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_schema_is_self_contained_closed_and_strict():
    s = json_schema_for(Storyboard)
    text = json.dumps(s)
    assert "$ref" not in text and "$defs" not in text
    for node in _walk(s):
        assert "default" not in node
        if node.get("type") == "object":
            assert node["additionalProperties"] is False
            assert node["required"] == list(node["properties"])
    shot = s["properties"]["shots"]["items"]
    assert shot["properties"]["caption"]["description"] == "what the camera sees"
    assert s["properties"]["shots"]["minItems"] == 4 and s["properties"]["shots"]["maxItems"] == 4
    assert s["properties"]["verdict"]["enum"] == ["pass", "fail"]
    assert "pattern" not in s["properties"]["verdict"]
    assert s["properties"]["title"]["pattern"] == PRINTABLE_PATTERN
    # A declared max_length is folded into the pattern (xgrammar ignores maxLength next to a pattern).
    assert s["properties"]["shots"]["items"]["properties"]["camera"]["pattern"].endswith("{0,20}$")


def test_caps_take_the_minimum_and_are_idempotent():
    s = json_schema_for(Storyboard, max_string_chars=12, max_list_items=3)
    cam = s["properties"]["shots"]["items"]["properties"]["camera"]["pattern"]
    title = s["properties"]["title"]["pattern"]
    assert cam.endswith("{0,12}$") and title.endswith("{0,12}$")
    # An exact list length is never capped below its minimum.
    assert s["properties"]["shots"]["minItems"] == 4 and s["properties"]["shots"]["maxItems"] == 4
    assert s["properties"]["reasons"]["anyOf"][0]["maxItems"] == 3
    assert cap_schema(s, max_string_chars=12, max_list_items=3) == s
    tighter = cap_schema(s, max_string_chars=5)
    assert tighter["properties"]["title"]["pattern"].endswith("{0,5}$")
    assert re.fullmatch(r"\^\[\^\\u0000-\\u001f\\u007f\]\{0,5\}\$", tighter["properties"]["title"]["pattern"])


def test_dynamic_exact_length_lists_survive():
    k = 6
    board = create_model("Board", items=(conlist(Shot, min_length=k, max_length=k), ...))
    s = json_schema_for(board, max_list_items=3)
    assert s["properties"]["items"]["minItems"] == k and s["properties"]["items"]["maxItems"] == k


def test_field_named_like_a_keyword_is_kept():
    odd = create_model("Odd", type=(str, ...), default=(str, ...), properties=(int, ...))
    s = json_schema_for(odd)
    assert set(s["properties"]) == {"type", "default", "properties"}
    assert s["required"] == ["type", "default", "properties"]


def test_recursive_model_is_a_config_error():
    class Node(BaseModel):
        children: list["Node"] = []

    Node.model_rebuild()
    with pytest.raises(ConfigError, match="recursive"):
        json_schema_for(Node)


def test_validate_parses_and_reports_short_reasons():
    good = {"title": "t", "shots": [{"caption": "c", "camera": "x"}] * 4, "verdict": "pass", "reasons": None,
            "tempo": 2}
    assert validate(Storyboard, json.dumps(good)) == good
    with pytest.raises(UnusableOutputError, match="not JSON"):
        validate(Storyboard, '{"title": ')
    bad = dict(good, shots=good["shots"][:3])
    with pytest.raises(UnusableOutputError, match="shots"):
        validate(Storyboard, json.dumps(bad))
    with pytest.raises(UnusableOutputError, match="verdict"):
        validate(Storyboard, json.dumps(dict(good, verdict="maybe")))


def test_without_string_patterns_caps_go_to_max_length():
    s = json_schema_for(Storyboard, max_string_chars=12, string_patterns=False)
    assert "pattern" not in json.dumps(s)
    assert s["properties"]["title"]["maxLength"] == 12
    assert s["properties"]["shots"]["items"]["properties"]["camera"]["maxLength"] == 12
