"""The stage graph: unit expansion, per-shot dependencies, disabled stages bypassed."""

from personavlog.engine.config import load_config
from personavlog.engine.graph import Graph, StageDef
from personavlog.engine.pipeline import VLOG_GRAPH


def test_units_and_dependencies():
    cfg = load_config([])
    units = VLOG_GRAPH.units_for(cfg, 3)
    assert units[:2] == ["stylize", "plan"] and units[-1] == "assemble"
    assert {"keyframe/0", "keyframe/2", "clip/1", "speech/2", "music"} <= set(units)
    assert VLOG_GRAPH.dependencies("clip/1", cfg, 3) == ["keyframe/1"]
    assert VLOG_GRAPH.dependencies("keyframe/2", cfg, 3) == ["plan"]
    assert set(VLOG_GRAPH.dependencies("assemble", cfg, 3)) == {"clip/0", "clip/1", "clip/2", "music", "speech/0",
                                                                "speech/1", "speech/2"}
    for i, u in enumerate(units):  # dependencies always come first
        assert all(units.index(d) < i for d in VLOG_GRAPH.dependencies(u, cfg, 3))
    assert VLOG_GRAPH.model_roles(cfg) == ["image_edit", "mllm", "image_to_video", "music", "speech"]


def test_disabled_stage_is_bypassed():
    noop = lambda ctx: None  # noqa: E731
    g = Graph([
        StageDef("a", noop),
        StageDef("check", noop, after=("a",), per_shot=True, enabled=lambda cfg: cfg["on"]),
        StageDef("b", noop, after=("check",), per_shot=True),
    ])
    assert g.dependencies("b/1", {"on": True}, 2) == ["check/1"]
    assert g.dependencies("b/1", {"on": False}, 2) == ["a"]
    assert g.units_for({"on": False}, 2) == ["a", "b/0", "b/1"]
