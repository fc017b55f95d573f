"""Run store: atomic writes, records after artifacts, corruption detection."""

import json
import os

import pytest

from personavlog.engine.store import JobStore, atomic_path

JOB = "0123456789abcdef0123"


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "a" / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert not final.exists()
    assert list((tmp_path / "a").iterdir()) == []


def test_atomic_replace_keeps_old_until_done(tmp_path):
    final = tmp_path / "x.json"
    final.write_text("old")
    with atomic_path(final) as tmp:
        tmp.write_text("new")
        assert final.read_text() == "old"
    assert final.read_text() == "new"


def test_done_requires_matching_artifacts(tmp_path):
    s = JobStore(tmp_path, JOB)
    s.write_bytes("keyframes/shot_00.png", b"png-bytes")
    s.put_record("keyframe/0", {"status": "done", "artifacts": {"keyframe": s.artifact_entry("keyframes/shot_00.png")}})
    assert s.is_done("keyframe/0")
    (s.dir / "keyframes/shot_00.png").write_bytes(b"corrupted")
    assert not s.is_done("keyframe/0")
    os.remove(s.dir / "keyframes/shot_00.png")
    assert not s.is_done("keyframe/0")
    s.put_record("clip/0", {"status": "failed", "artifacts": {}})
    assert not s.is_done("clip/0")
    (s.dir / "records" / "clip__0.json").write_text("{not json")
    assert s.record("clip/0") is None and not s.is_done("clip/0")


def test_manifest_lists_units_in_order(tmp_path):
    s = JobStore(tmp_path, JOB)
    s.put_record("stylize", {"status": "done", "artifacts": {}, "usage": {"prompt_tokens": 3}})
    m = s.write_manifest(spec={"theme": "t"}, fingerprint="fp", config={}, units=["stylize", "plan"],
                         status="running")
    on_disk = json.loads((s.dir / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    assert list(on_disk["stages"]) == ["stylize", "plan"]
    assert on_disk["stages"]["plan"]["status"] == "pending"
    assert on_disk["usage"] == {"prompt_tokens": 3}


def test_paths_cannot_escape(tmp_path):
    s = JobStore(tmp_path, JOB)
    with pytest.raises(ValueError):
        s.path("../other/x")
    with pytest.raises(Exception):
        JobStore(tmp_path, "../../etc")
