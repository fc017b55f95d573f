"""The stage graph, declared once.

    stylize → plan (MACF) → keyframe[i] → clip[i] ─┐
                        ├→ music ──────────────────┼→ assemble
                        └→ speech[i] ──────────────┘

Per-shot stages expand into one *unit* per shot ("keyframe/3"), so the shots of one vlog are independent units that
drivers may run on several GPUs at once. A per-shot unit depends on the same shot of its per-shot dependencies; a
whole-job unit depends on every shot. Stages that config turns off are skipped, and whatever depended on them depends
on their dependencies instead, so FRM stages slot in without touching their neighbours.

Drivers (local thread pool, Ray Data, Ray Serve) only call `units_for`, `dependencies` and `run_unit`; stages never
see a driver.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from personavlog.engine.errors import InputError, TransientError
from personavlog.engine.spec import JobSpec
from personavlog.engine.store import JobStore, now


@dataclass
class StageOutput:
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> path relative to the job folder
    data: dict[str, Any] = field(default_factory=dict)  # small JSON facts (durations, notes, decisions)
    usage: dict[str, int] = field(default_factory=dict)  # MLLM token usage
    ran_on: list[dict[str, Any]] = field(default_factory=list)  # one entry per model call


@dataclass
class StageContext:
    """What a stage may use. Built by the driver; the same for every driver."""

    spec: JobSpec
    cfg: Any
    store: JobStore
    models: Mapping[str, Any]  # role -> ModelHandle: `handle(**kw) -> (result, RanOn)`
    mllm: Any = None  # MLLMClient
    shot: Optional[int] = None

    def call(self, role: str, out: StageOutput, **kwargs: Any) -> Any:
        """Call a model and note where it ran."""
        result, ran_on = self.models[role](**kwargs)
        out.ran_on.append({"role": role, **ran_on.as_dict()})
        return result

    def artifact(self, unit: str, name: str) -> str:
        rec = self.store.record(unit)
        if not rec or rec.get("status") != "done" or name not in rec.get("artifacts", {}):
            raise RuntimeError(f"{unit} has no artifact {name!r}: the graph ran a stage before its dependency")
        return rec["artifacts"][name]["path"]

    def plan(self) -> dict[str, Any]:
        return self.store.read_json(self.artifact("plan", "plan"))


StageFn = Callable[[StageContext], StageOutput]


@dataclass(frozen=True)
class StageDef:
    name: str
    run: StageFn
    after: tuple[str, ...] = ()
    per_shot: bool = False
    models: tuple[str, ...] = ()  # model roles it calls ("mllm" for the MLLM client)
    enabled: Callable[[Any], bool] = lambda cfg: True


def unit_id(stage: str, shot: Optional[int]) -> str:
    return stage if shot is None else f"{stage}/{shot}"


def parse_unit(unit: str) -> tuple[str, Optional[int]]:
    stage, _, shot = unit.partition("/")
    return stage, (int(shot) if shot else None)


class Graph:
    def __init__(self, stages: list[StageDef]):
        self.stages = {s.name: s for s in stages}
        self.order = [s.name for s in stages]
        for s in stages:
            for d in s.after:
                if d not in self.stages or self.order.index(d) >= self.order.index(s.name):
                    raise ValueError(f"stage {s.name} depends on {d}, which is not declared before it")

    def enabled_stages(self, cfg: Any) -> list[StageDef]:
        return [self.stages[n] for n in self.order if self.stages[n].enabled(cfg)]

    def _effective_after(self, name: str, cfg: Any) -> list[str]:
        out: list[str] = []
        for d in self.stages[name].after:
            if self.stages[d].enabled(cfg):
                out.append(d)
            else:
                out.extend(self._effective_after(d, cfg))
        return list(dict.fromkeys(out))

    def units_for(self, cfg: Any, shots: int) -> list[str]:
        """Every unit of one job, in an order where dependencies come first."""
        units = []
        for s in self.enabled_stages(cfg):
            units.extend([unit_id(s.name, i) for i in range(shots)] if s.per_shot else [s.name])
        return units

    def model_demand(self, cfg: Any, shots: int) -> dict[str, int]:
        """Units of one job that call each model role (a bound on how many replicas one job can keep busy)."""
        demand: dict[str, int] = {}
        for s in self.enabled_stages(cfg):
            for role in s.models:
                demand[role] = demand.get(role, 0) + (shots if s.per_shot else 1)
        return demand

    def dependencies(self, unit: str, cfg: Any, shots: int) -> list[str]:
        stage, shot = parse_unit(unit)
        deps = []
        for d in self._effective_after(stage, cfg):
            dd = self.stages[d]
            if dd.per_shot and shot is not None:
                deps.append(unit_id(d, shot))
            elif dd.per_shot:
                deps.extend(unit_id(d, i) for i in range(shots))
            else:
                deps.append(d)
        return deps

    def model_roles(self, cfg: Any) -> list[str]:
        roles: list[str] = []
        for s in self.enabled_stages(cfg):
            roles.extend(s.models)
        return list(dict.fromkeys(roles))


def run_unit(graph: Graph, unit: str, ctx: StageContext) -> dict[str, Any]:
    """Run one unit and persist its record (after its artifacts). Returns the record.

    Input errors and stage failures become a failed record; TransientError is re-raised after recording so the
    driver may retry; anything else is recorded as failed too (one job fails alone).
    """
    stage, shot = parse_unit(unit)
    ctx.shot = shot
    started = now()
    t0 = time.perf_counter()
    try:
        out = graph.stages[stage].run(ctx)
    except TransientError as exc:
        ctx.store.put_record(unit, _failed(started, exc, transient=True))
        raise
    except Exception as exc:  # noqa: BLE001 - one unit's failure is data; the driver decides what follows
        rec = _failed(started, exc, transient=False)
        ctx.store.put_record(unit, rec)
        return rec
    rec = {
        "status": "done",
        "started_at": started,
        "ended_at": now(),
        "seconds": round(time.perf_counter() - t0, 4),
        "ran_on": out.ran_on,
        "artifacts": {name: ctx.store.artifact_entry(rel) for name, rel in out.artifacts.items()},
        "data": out.data,
        "usage": out.usage,
        "error": None,
    }
    ctx.store.put_record(unit, rec)
    return rec


def _failed(started: float, exc: BaseException, *, transient: bool) -> dict[str, Any]:
    err: dict[str, Any] = {"class": type(exc).__name__, "message": str(exc)[:2000], "transient": transient}
    if isinstance(exc, InputError):
        err["field"] = exc.field
    else:
        err["traceback"] = "".join(traceback.format_exception(exc))[-4000:]
    return {"status": "failed", "started_at": started, "ended_at": now(), "artifacts": {}, "error": err}
