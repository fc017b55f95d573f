"""MACF decision logic with a scripted MLLM (real agents, real prompts, scripted answers)."""

from collections import defaultdict

from personavlog.engine.agents.macf import plan_vlog, run_agent
from personavlog.engine.agents.schemas import StoryDraft
from personavlog.engine.mllm.base import ChatResult, Usage


class ScriptedMLLM:
    """Answers by schema name; reviewers follow a per-agent script of verdicts."""

    model = "scripted"

    def __init__(self, k, verdicts=None):
        self.k = k
        self.verdicts = defaultdict(list, verdicts or {})
        self.calls = []

    def chat(self, messages, schema, *, seed=None, temperature=None, max_tokens=None):
        system = messages[0]["content"]
        self.calls.append((schema.__name__, system.split("\n")[-1][:40], seed))
        name = schema.__name__
        if name == "ReviewVerdict":
            agent = next(a for a in ("story", "seg", "video", "mono", "music") if f"the {a} agent" in system)
            script = self.verdicts[agent]
            v = script.pop(0) if script else "pass"
            data = {"verdict": v, "reasons": [] if v == "pass" else [f"{agent} needs work"]}
        elif name == "StoryDraft":
            data = {"character_description": "a kid in a red jacket", "story": f"story seed {seed}"}
        elif name.startswith("Storyboards"):
            data = {"storyboards": [{"scene": f"scene {i}", "behavior": f"does {i}"} for i in range(self.k)]}
        elif name.startswith("VideoDescriptions"):
            data = {"videos": [{"description": f"video {i}"} for i in range(self.k)]}
        elif name.startswith("Monologues"):
            data = {"monologues": [{"text": f"thought {i}"} for i in range(self.k)]}
        elif name == "MusicDescription":
            data = {"description": "calm piano", "mood": "calm", "instruments": ["piano"]}
        elif name.startswith("SinglePlan"):
            data = {"character_description": "c", "story": "s",
                    "shots": [{"scene": "x", "behavior": "y", "video_description": "v", "monologue": "m"}] * self.k,
                    "music": {"description": "d", "mood": "m", "instruments": ["i"]}}
        else:
            raise AssertionError(name)
        schema.model_validate(data)
        return ChatResult(data=data, text="", usage=Usage(10, 5, 1), model=self.model)


def _values():
    return {"theme": "beach day", "style": "Pixar", "k": 3, "language": "en"}


def test_pass_on_first_round_stops():
    m = ScriptedMLLM(3)
    run = run_agent("story", m, StoryDraft, _values(), max_rounds=3, seed=1)
    assert run.passed and len(run.rounds) == 1 and len(m.calls) == 2


def test_revise_then_pass_feeds_reasons_back():
    m = ScriptedMLLM(3, {"story": ["revise", "pass"]})
    run = run_agent("story", m, StoryDraft, _values(), max_rounds=3, seed=1)
    assert run.passed and [r["verdict"] for r in run.rounds] == ["revise", "pass"]
    assert run.rounds[0]["reasons"] == ["story needs work"]
    assert run.usage.calls == 4


def test_never_passing_reviewer_keeps_last_draft_after_max_rounds():
    m = ScriptedMLLM(3, {"story": ["revise"] * 10})
    run = run_agent("story", m, StoryDraft, _values(), max_rounds=2, seed=1)
    assert not run.passed and len(run.rounds) == 2
    assert run.output == run.rounds[-1]["draft"]


def test_reviewer_feedback_reaches_the_generator_prompt():
    seen = []

    class Spy(ScriptedMLLM):
        def chat(self, messages, schema, **kw):
            if schema.__name__ == "StoryDraft":
                seen.append(messages[1]["content"][0]["text"])
            return super().chat(messages, schema, **kw)

    run_agent("story", Spy(3, {"story": ["revise", "pass"]}), StoryDraft, _values(), max_rounds=2, seed=1)
    assert "story needs work" not in seen[0] and "story needs work" in seen[1]


def test_full_plan_has_k_of_everything_and_records_rounds():
    m = ScriptedMLLM(4, {"seg": ["revise", "pass"]})
    plan = plan_vlog(m, theme="beach", style="Pixar", stylized_image=None, k=4, language="en", seed=3,
                     max_rounds=2)
    assert len(plan["storyboards"]) == len(plan["video_descriptions"]) == len(plan["monologues"]) == 4
    assert set(plan["agents"]) == {"story", "seg", "video", "mono", "music"}
    assert len(plan["agents"]["seg"]["rounds"]) == 2
    assert plan["usage"]["calls"] == 12
    assert set(plan["prompts"]) == {f"{a}_{r}" for a in plan["agents"] for r in ("generator", "reviewer")}


def test_single_agent_ablation_is_one_call_without_reviewers():
    m = ScriptedMLLM(3)
    plan = plan_vlog(m, theme="beach", style="Pixar", stylized_image=None, k=3, language="en", seed=0,
                     max_rounds=2, multi_agent=False)
    assert len(m.calls) == 1 and not plan["multi_agent"]
    assert len(plan["monologues"]) == 3


def test_blank_agent_text_is_unusable_output_and_padding_is_stripped():
    # A blank monologue would reach the speech model as nothing to say; as unusable output it is asked for again.
    import pytest

    from personavlog.engine.agents.schemas import monologues_for
    from personavlog.engine.errors import UnusableOutputError
    from personavlog.engine.mllm.schema import validate

    with pytest.raises(UnusableOutputError, match="monologues.0.text"):
        validate(monologues_for(1), '{"monologues": [{"text": "   "}]}')
    padded = validate(monologues_for(1), '{"monologues": [{"text": "  calm sea "}]}')
    assert padded == {"monologues": [{"text": "calm sea"}]}
