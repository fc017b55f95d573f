"""The job manager behind the endpoint and the driver's cancel hook, on a small graph of plain stage functions
(no Ray, no models): queue bound, identical requests, cancel, event order, views after a restart."""

from __future__ import annotations

import threading
import time

import pytest

from personavlog.engine.drivers.local import run_job
from personavlog.engine.graph import Graph, StageDef, StageOutput
from personavlog.engine.spec import JobSpec
from personavlog.serve.jobs import JobManager, QueueFull

from _support import EXAMPLE_IMAGE

GATE = threading.Event()


def _stage(name: str, wait_gate: bool = False):
    def run(ctx):
        if wait_gate:
            assert GATE.wait(30), "test gate never opened"
        out = StageOutput()
        rel = f"{name}{'' if ctx.shot is None else f'_{ctx.shot}'}.txt"
        out.artifacts[name] = ctx.store.write_bytes(rel, name.encode())
        return out
    return run


GRAPH = Graph([
    StageDef("first", _stage("first", wait_gate=True)),
    StageDef("per", _stage("per"), after=("first",), per_shot=True),
    StageDef("last", _stage("last"), after=("per",)),
])


@pytest.fixture
def setup(tmp_path):
    from personavlog.engine.config import load_config

    cfg = load_config([f"out={tmp_path / 'out'}", "serve.queue_size=2", "serve.max_concurrent_jobs=1"])
    GATE.clear()

    def spec(seed: int) -> JobSpec:
        return JobSpec.create(theme="a walk", style="ink", image=EXAMPLE_IMAGE.read_bytes(), shots=3, seed=seed,
                              cfg=cfg)

    def manager() -> JobManager:
        m = JobManager(cfg, models={}, mllm=None)
        m.kinds["vlog"] = (GRAPH, tmp_path / "out", "vlogs")
        return m

    yield cfg, spec, manager
    GATE.set()


def _wait(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_should_stop_cancels_between_units_and_a_rerun_resumes(setup, tmp_path):
    cfg, spec, _ = setup
    GATE.set()
    started: list[str] = []

    def progress(unit, event, info):
        if event == "started":
            started.append(unit)

    res = run_job(spec(1), cfg, tmp_path / "runs", models={}, mllm=None, graph=GRAPH, progress=progress,
                  should_stop=lambda: "first" in started)
    assert res.status == "cancelled" and res.error is None
    assert started == ["first"] and res.ran == ["first"]
    again = run_job(spec(1), cfg, tmp_path / "runs", models={}, mllm=None, graph=GRAPH)
    assert again.status == "succeeded" and again.skipped == ["first"] and "last" in again.ran
    # without the hook, behaviour is unchanged
    assert run_job(spec(2), cfg, tmp_path / "runs", models={}, mllm=None, graph=GRAPH).status == "succeeded"


def test_queue_bound_identical_requests_cancel_and_event_order(setup):
    _, spec, manager = setup
    m = manager()
    a_id, a = m.submit("vlog", spec(10))
    b_id, b = m.submit("vlog", spec(11))
    _wait(lambda: a.status == "running")
    assert b.status == "queued"
    with pytest.raises(QueueFull) as full:
        m.submit("vlog", spec(12))
    assert full.value.retry_after >= 1
    assert m.submit("vlog", spec(11)) == (b_id, b)  # joins the queued one

    view = m.cancel("vlog", b_id)
    assert view["status"] == "cancelled" and [e["status"] for e in b.events] == ["queued", "cancelled"]
    GATE.set()
    _wait(lambda: a.terminal)
    assert a.status == "succeeded"
    seqs = [e["seq"] for e in a.events]
    assert seqs == list(range(1, len(seqs) + 1))
    kinds = [(e.get("unit"), e.get("event") or e.get("status")) for e in a.events]
    assert kinds[:4] == [(None, "queued"), (None, "running"), ("first", "started"), ("first", "done")]
    assert kinds[-3:] == [("last", "started"), ("last", "done"), (None, "succeeded")]
    done = [e for e in a.events if e.get("event") == "done" and e["unit"] == "per/2"][0]
    assert done["artifacts"] == {"per": f"/v1/vlogs/{a_id}/files/per_2.txt"}

    view = m.view("vlog", a_id)
    assert view["status"] == "succeeded" and view["progress"]["per"] == {"total": 3, "done": 3, "running": 0,
                                                                        "failed": 0}
    assert m.file_path("vlog", a_id, "per_2.txt").read_text() == "per"
    assert m.file_path("vlog", a_id, "../../etc/passwd") is None and m.file_path("vlog", a_id, "manifest.json") is None
    assert m.submit("vlog", spec(10)) == (a_id, None)  # finished: the stored result, no new job
    m.shutdown()

    fresh = manager()  # after a restart the store still answers
    assert fresh.job("vlog", a_id) is None
    assert fresh.view("vlog", a_id)["status"] == "succeeded"
    past = fresh.past_events("vlog", a_id)
    assert past[-1] == {"seq": len(past), "type": "job", "status": "succeeded", "video": f"/v1/vlogs/{a_id}/video"}
    assert {e["unit"] for e in past[:-1]} == {"first", "per/0", "per/1", "per/2", "last"}
    assert fresh.view("vlog", "0" * 20) is None


def test_cancel_of_a_running_job_stops_scheduling(setup):
    _, spec, manager = setup
    m = manager()
    job_id, job = m.submit("vlog", spec(20))
    _wait(lambda: job.unit_state.get("first") == "running")
    assert m.cancel("vlog", job_id)["status"] == "cancelling"
    GATE.set()
    _wait(lambda: job.terminal)
    assert job.status == "cancelled"
    assert job.unit_state["first"] == "done" and job.unit_state["last"] == "pending"
    assert m.view("vlog", job_id)["status"] == "cancelled"
    m.shutdown()
