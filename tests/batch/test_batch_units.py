"""Pieces of the batch driver: reading and validating jobs files, per-job overrides, the results table, the job lock,
temp-file cleanup, and ModelPool routing/pickling."""

import multiprocessing
import os
import pickle
import threading
import time
from pathlib import Path

import pytest

from batch_support import EXAMPLE

from personavlog.engine.drivers import batch
from personavlog.engine.errors import InputError


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    batch._quiet_ray_data()
    yield
    ray.shutdown()


def _jobs(folder: Path, rows: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ref.png").write_bytes(EXAMPLE.read_bytes())
    return folder


def test_read_rows_jsonl_keeps_line_numbers_and_isolates_bad_lines(ray_local, tmp_path):
    f = tmp_path / "jobs.jsonl"
    f.write_text('{"theme": "a", "style": "s", "image": "ref.png"}\n\n{oops\n[1, 2]\n'
                 '{"theme": "b", "style": "s", "image": "ref.png", "shots": 4}\n')
    rows = batch.read_rows(f)
    assert [r["row"] for r in rows] == [1, 3, 4, 5]
    assert rows[0]["raw"]["theme"] == "a" and rows[3]["raw"]["shots"] == 4
    assert "line 3 is not JSON" in rows[1]["bad"] and "line 4 is not a JSON object" in rows[2]["bad"]


def test_read_rows_csv_and_parquet(ray_local, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    c = tmp_path / "jobs.csv"
    c.write_text("theme,style,image,shots,overrides\nA day,watercolor,ref.png,3,macf.max_rounds=1 frm.image.rounds=2\n"
                 "Night,ink,ref.png,5,\n")
    rows = batch.read_rows(c)
    assert [r["row"] for r in rows] == [1, 2] and rows[1]["raw"]["shots"] == 5
    assert batch.parse_job_overrides(rows[0]["raw"]["overrides"]) == ["macf.max_rounds=1", "frm.image.rounds=2"]
    p = tmp_path / "jobs.parquet"
    pq.write_table(pa.table({"theme": ["x", "y"], "style": ["s", "s"], "image": ["ref.png", "ref.png"],
                             "seed": [1, 2], "overrides": [["mllm.max_tokens=8"], []]}), p)
    rows = batch.read_rows(p)
    assert [r["raw"]["seed"] for r in rows] == [1, 2] and rows[0]["raw"]["overrides"] == ["mllm.max_tokens=8"]


def test_read_rows_rejects_unknown_and_missing_columns(ray_local, tmp_path):
    f = tmp_path / "jobs.jsonl"
    f.write_text('{"themes": "a", "style": "s", "image": "ref.png"}\n')
    with pytest.raises(InputError, match="unknown column 'themes'"):
        batch.read_rows(f)
    f.write_text('{"theme": "a", "style": "s"}\n')
    with pytest.raises(InputError, match="no 'image' column"):
        batch.read_rows(f)
    with pytest.raises(InputError, match="unknown format"):
        batch.jobs_format(tmp_path / "jobs.xlsx")


def test_job_overrides_are_limited_to_keys_that_keep_the_model_pools():
    assert batch.parse_job_overrides(None) == [] and batch.parse_job_overrides("") == []
    assert batch.parse_job_overrides(["mllm.max_tokens=8", "frm.image.enabled=true"]) == \
        ["mllm.max_tokens=8", "frm.image.enabled=true"]
    for bad in (["models.image_edit.params.steps=3"], ["mllm.backend=openai"], ["limits.shots_max=99"], ["x"], [3]):
        with pytest.raises(InputError) as e:
            batch.parse_job_overrides(bad)
        assert e.value.field == "overrides"


def test_validate_row_names_the_field_and_resolves_paths_relative_to_the_file(tmp_path):
    folder = _jobs(tmp_path / "in", [])
    (folder / "notes.png").write_text("not an image")
    configs = batch.ConfigCache([f"out={tmp_path / 'out'}"])
    good = batch.validate_row({"theme": "A day", "style": "ink", "image": "ref.png", "shots": 3}, base_dir=folder,
                              configs=configs)
    assert good["spec"]["image"] == str(folder / "ref.png") and len(good["job_id"]) == 20
    same = batch.validate_row({"theme": "A day", "style": "ink", "image": str(folder / "ref.png"), "shots": "3"},
                              base_dir=tmp_path, configs=configs)
    assert same["job_id"] == good["job_id"], "the same job written differently must get the same id"
    other = batch.validate_row({"theme": "A day", "style": "ink", "image": "ref.png", "shots": 3,
                                "overrides": ["macf.max_rounds=1"]}, base_dir=folder, configs=configs)
    assert other["job_id"] != good["job_id"], "per-job overrides that change outputs change the id"
    cases = [("theme", None, "theme"), ("theme", "", "theme"), ("image", "notes.png", "image"),
             ("image", "missing.png", "image"), ("shots", 40, "shots"), ("language", "!!", "language"),
             ("overrides", ["shots=3"], "overrides"), ("overrides", ["macf.max_rounds=many"], "overrides")]
    for key, value, field in cases:
        raw = {"theme": "A day", "style": "ink", "image": "ref.png", key: value}
        with pytest.raises(InputError) as e:
            batch.validate_row(raw, base_dir=folder, configs=configs)
        assert e.value.field == field, (key, value, str(e.value))


def test_results_table_round_trips_with_a_fixed_schema(tmp_path):
    import pyarrow.parquet as pq

    rows = [
        {"job_id": "a" * 20, "rows": [3, 7], "status": "succeeded", "artifacts": {"clip/0:clip": "/x/c.mp4"},
         "stages": [{"unit": "clip/0", "status": "done", "started_at": 1.0, "ended_at": 2.0, "seconds": 1.0,
                     "actors": ["image_to_video:sim@1"], "nodes": ["n1"], "gpus": ["0"]}],
         "prompt_tokens": 10, "overrides": ["macf.max_rounds=1"], "unknown_extra": "dropped"},
        batch._invalid_row(1, {"class": "InputError", "message": "theme: must not be empty", "field": "theme"},
                           {"name": "bad"}),
    ]
    path = tmp_path / "results.parquet"
    batch.write_results(path, rows)
    table = pq.read_table(path)
    assert table.schema.equals(batch.results_schema())
    got = table.to_pylist()
    assert [r["rows"] for r in got] == [[1], [3, 7]], "rows are ordered by their first line in FILE"
    assert got[0]["error_field"] == "theme" and got[0]["job_id"] is None and got[0]["name"] == "bad"
    assert dict(got[1]["artifacts"]) == {"clip/0:clip": "/x/c.mp4"} and got[1]["stages"][0]["gpus"] == ["0"]
    assert not list(tmp_path.glob(".*tmp*"))


def _hold_lock(out, job_id, started, release):
    with batch.JobLock(Path(out), job_id):
        started.set()
        release.wait(10)


def test_job_lock_is_exclusive_across_processes_and_dies_with_its_holder(tmp_path):
    ctx = multiprocessing.get_context("fork")
    started, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), "b" * 20, started, release))
    holder.start()
    assert started.wait(10)
    got = threading.Event()

    def take():
        with batch.JobLock(tmp_path, "b" * 20):
            got.set()

    t = threading.Thread(target=take, daemon=True)
    t.start()
    assert not got.wait(0.5), "a second runner must wait while the job is held"
    holder.kill()  # a killed holder: the OS drops its lock
    holder.join(5)
    assert got.wait(5)


def test_stale_temp_files_are_removed(tmp_path):
    job = tmp_path / "job"
    (job / "clips").mkdir(parents=True)
    (job / "clips" / ".shot_00.mp4.abc123.tmp.mp4").write_bytes(b"half")
    (job / ".manifest.json.x.tmp.json").write_text("{")
    (job / "clips" / "shot_00.mp4").write_bytes(b"whole")
    assert batch.remove_stale_temps(job) == 2
    assert [p.name for p in job.rglob("*") if p.is_file()] == ["shot_00.mp4"]


class _FakeRef:
    def __init__(self, value):
        self.value = value


def test_model_pool_pickles_without_its_lock_and_routes_to_free_replicas():
    from personavlog.engine.drivers.ray_models import ModelPool

    pool = ModelPool("image_to_video", ["a", "b"])
    clone = pickle.loads(pickle.dumps(pool))
    assert clone.actors == ["a", "b"] and clone.busy() == [0, 0]
    first, second = pool._acquire(), pool._acquire()
    assert {first, second} == {0, 1}, "two calls go to two replicas"
    order = []

    def third():
        idx = pool._acquire()
        order.append(idx)
        pool._release(idx, failed=False)

    t = threading.Thread(target=third)
    t.start()
    time.sleep(0.2)
    assert order == [], "a third call waits for a free replica instead of queueing behind a busy one"
    pool._release(second, failed=False)
    t.join(2)
    assert order == [second]
    pool._release(first, failed=True)
    assert pool._acquire() == second, "a replica that just failed is avoided while another is free"


def test_plan_extra_replicas_fills_free_gpus_in_proportion_to_max_replicas():
    from personavlog.engine.drivers.ray_models import plan_extra_replicas

    gpu = {"GPU": 1.0}
    pools = {"image_edit": (1, 4, gpu), "image_to_video": (1, 16, gpu), "music": (1, 1, gpu),
             "speech": (1, 1, {"GPU": 0.5})}
    # 8 free GPUs: Wan (allowed 16) gets four for each one Kontext (allowed 4) gets; music/speech are at their max.
    assert plan_extra_replicas(pools, {"GPU": 8.0}) == {"image_edit": 1, "image_to_video": 7, "music": 0,
                                                       "speech": 0}
    assert plan_extra_replicas(pools, {"GPU": 0.5}) == {r: 0 for r in pools}, "nothing fits: nothing asked for"
    # A replica that does not fit is skipped, a smaller one still placed.
    assert plan_extra_replicas({"big": (1, 3, {"GPU": 2.0}), "small": (1, 3, {"GPU": 0.5})},
                               {"GPU": 1.0}) == {"big": 0, "small": 2}
    # CPUs count too (the job runners' CPUs are reserved by the caller).
    assert plan_extra_replicas({"m": (1, 9, {"GPU": 1.0, "CPU": 2.0})}, {"GPU": 8.0, "CPU": 5.0}) == {"m": 2}
    # Autoscaling cluster: everything up to the ceiling, the pending replicas are the autoscaler's demand.
    assert plan_extra_replicas(pools, None) == {"image_edit": 3, "image_to_video": 15, "music": 0, "speech": 0}


def test_model_demand_counts_the_units_of_each_model():
    from personavlog.engine.config import load_config
    from personavlog.engine.pipeline import VLOG_GRAPH

    plain = VLOG_GRAPH.model_demand(load_config(), 3)
    assert plain["image_edit"] == 4 and plain["image_to_video"] == 3 and plain["music"] == 1
    assert plain["speech"] == 3 and "scorer" not in plain
    frm = VLOG_GRAPH.model_demand(load_config(["frm.image.enabled=true", "frm.video.enabled=true"]), 3)
    assert frm["image_edit"] == 7 and frm["scorer"] == 6


def test_replica_bounds_name_the_key():
    from personavlog.engine.config import load_config
    from personavlog.engine.drivers.ray_models import replica_bounds
    from personavlog.engine.errors import ConfigError

    assert replica_bounds(load_config(["models=paper"]), "image_to_video") == (1, 16)
    with pytest.raises(ConfigError, match=r"models.music.resources.max_replicas: must be >= min_replicas \(2\)"):
        replica_bounds(load_config(["models.music.resources.min_replicas=2"]), "music")
    with pytest.raises(ConfigError, match="scorers.resources.min_replicas: must be >= 1"):
        replica_bounds(load_config(["scorers.resources.min_replicas=0"]), "scorer")


def test_joining_replica_takes_calls_once_loaded_and_a_failed_one_never(ray_local):
    import ray

    from personavlog.actors.base import RanOn
    from personavlog.engine.drivers.ray_models import ModelPool

    @ray.remote(num_cpus=0)
    class Host:
        def __init__(self, name, load_s=0.0, broken=False):
            self.name, self.load_s, self.broken = name, load_s, broken

        def info(self):
            time.sleep(self.load_s)  # a replica still loading (or waiting for its node) does not answer yet
            if self.broken:
                raise RuntimeError("weights missing")
            return {"actor": self.name}

        def call(self, hold_s=0.0):
            time.sleep(hold_s)
            return self.name, RanOn(actor=self.name, node="n")

    ready = Host.remote("ready")
    ray.get(ready.info.remote())
    pool = ModelPool("image_to_video", [ready], ready=1)
    pool.add_joining([Host.remote("late", load_s=3.0), Host.remote("broken", broken=True)])
    clone = pickle.loads(pickle.dumps(pool))  # as a job runner receives it
    assert clone.usable() == [True, False, False]

    def two_at_once():
        got = []
        threads = [threading.Thread(target=lambda: got.append(clone(hold_s=0.5)[0])) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return sorted(got)

    assert two_at_once() == ["ready", "ready"], "a loading replica takes no calls"
    deadline = time.monotonic() + 30
    while not clone.usable()[1] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert clone.usable() == [True, True, False], "the late replica joins; the one that failed to load never does"
    assert two_at_once() == ["late", "ready"]
    assert "weights missing" in clone._join_failed[2]
    assert [ray.get(a.info.remote())["actor"] for a in pool.loaded_actors(timeout_s=5)] == ["ready", "late"]
    pool.shutdown()


def test_a_call_past_call_timeout_restarts_the_replica_and_is_transient(ray_local):
    import ray

    from personavlog.actors.base import RanOn
    from personavlog.engine.drivers.ray_models import ModelPool
    from personavlog.engine.errors import TransientError

    @ray.remote(num_cpus=0, max_restarts=1)
    class Host:
        def __init__(self):
            self.started = time.time()

        def info(self):
            return {"started": self.started}

        def call(self, hold_s=0.0):
            time.sleep(hold_s)  # a hung GPU call, as far as the caller can tell
            return self.started, RanOn(actor="h", node="n")

    actor = Host.remote()
    first_start = ray.get(actor.info.remote())["started"]
    pool = ModelPool("image_to_video", [actor], call_timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(TransientError, match=r"call_timeout_s=1 s; replica restarted"):
        pool(hold_s=60)
    assert time.monotonic() - t0 < 20
    deadline = time.monotonic() + 60
    while True:
        try:
            if ray.get(actor.info.remote(), timeout=10)["started"] > first_start:
                break  # the hung replica was replaced by a fresh process
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # still being killed or restarted
        assert time.monotonic() < deadline, "the replica never came back"
        time.sleep(0.5)
    started, _ = pool(hold_s=0)
    assert started > first_start, "calls go to the fresh replica"
    assert pool.busy() == [0]
    pool.shutdown()
