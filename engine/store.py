"""Run store: one folder per job, atomic writes, per-unit records, manifest.json, resume decisions.

Layout of OUT/<job_id>/:
    input/reference.<ext>, input/voice.<ext>   the job's inputs, as given
    stylized.png                               stylized reference (stage `stylize`)
    plan.json                                  MACF outputs and every review round (stage `plan`)
    keyframes/shot_XX.png, clips/shot_XX.mp4   per shot
    audio/music.wav, audio/speech_XX.wav
    subtitles.srt, vlog.mp4                    (stage `assemble`)
    records/<unit>.json                        one record per finished (or failed) unit: the source of truth
    manifest.json                              spec, config fingerprint and every record, rebuilt after each unit

Every file is written to a temp name in the same folder and moved into place with os.replace, so a crash leaves
either the old file or the new one, never half of one. A unit's record is written only after its artifacts, so a
record that says "done" always points at complete files; its sha256s let a rerun detect a missing or corrupted
artifact and run that unit again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from personavlog.engine.spec import validate_job_id

MANIFEST_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp path beside `final`; on success fsync it and os.replace it onto `final`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + final.suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(final: Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(final: Path, obj: Any) -> None:
    atomic_write_bytes(final, (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode())


def now() -> float:
    return round(time.time(), 6)


class JobStore:
    """The folder of one job. Thread-safe for the units of one job running in one driver process."""

    def __init__(self, root: Path, job_id: str):
        self.job_id = validate_job_id(job_id)
        self.root = Path(root)
        self.dir = (self.root / job_id).resolve()
        self._lock = threading.Lock()

    # -- paths -------------------------------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        p = (self.dir / rel).resolve()
        if self.dir not in p.parents:
            raise ValueError(f"artifact path escapes the job folder: {rel!r}")
        return p

    def exists(self, rel: str) -> bool:
        return self.path(rel).is_file()

    # -- atomic writers ----------------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> str:
        atomic_write_bytes(self.path(rel), data)
        return rel

    def write_json(self, rel: str, obj: Any) -> str:
        atomic_write_json(self.path(rel), obj)
        return rel

    def write_image(self, rel: str, image: Any) -> str:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return self.write_bytes(rel, buf.getvalue())

    def write_audio(self, rel: str, audio: Any) -> str:
        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, audio.samples.T, audio.sample_rate, format="WAV", subtype="PCM_16")
        return self.write_bytes(rel, buf.getvalue())

    def write_video(self, rel: str, clip: Any) -> str:
        from personavlog.engine.media import encode_video

        with atomic_path(self.path(rel)) as tmp:
            encode_video(clip, tmp)
        return rel

    @contextlib.contextmanager
    def writing(self, rel: str) -> Iterator[Path]:
        """For tools that write a file themselves (ffmpeg): they write the temp path, we move it into place."""
        with atomic_path(self.path(rel)) as tmp:
            yield tmp

    # -- readers -----------------------------------------------------------------------------------------------
    def read_json(self, rel: str) -> Any:
        return json.loads(self.path(rel).read_text())

    def read_image(self, rel: str) -> Any:
        from PIL import Image

        with Image.open(self.path(rel)) as im:
            return im.convert("RGB")

    def read_audio(self, rel: str) -> Any:
        import soundfile as sf

        from personavlog.actors.media import Audio

        data, sr = sf.read(self.path(rel), dtype="float32", always_2d=True)
        return Audio(samples=data.T, sample_rate=sr)

    # -- unit records ------------------------------------------------------------------------------------------
    @staticmethod
    def _record_name(unit: str) -> str:
        return "records/" + unit.replace("/", "__") + ".json"

    def record(self, unit: str) -> Optional[dict[str, Any]]:
        p = self.path(self._record_name(unit))
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a record we cannot read is as good as none: the unit runs again

    def records(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        rec_dir = self.dir / "records"
        if rec_dir.is_dir():
            for p in sorted(rec_dir.glob("*.json")):
                try:
                    rec = json.loads(p.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                out[rec.get("unit", p.stem.replace("__", "/"))] = rec
        return out

    def artifact_entry(self, rel: str) -> dict[str, Any]:
        return {"path": rel, "sha256": sha256_file(self.path(rel))}

    def put_record(self, unit: str, record: dict[str, Any]) -> None:
        """Write a unit's record. Call only after every artifact it names is in place."""
        rec = dict(record)
        rec["unit"] = unit
        self.write_json(self._record_name(unit), rec)

    def is_done(self, unit: str) -> bool:
        """Done = record says done and every artifact exists with the recorded sha256."""
        rec = self.record(unit)
        if not rec or rec.get("status") != "done":
            return False
        for entry in (rec.get("artifacts") or {}).values():
            p = self.path(entry["path"])
            if not p.is_file() or sha256_file(p) != entry.get("sha256"):
                return False
        return True

    def invalidate(self, unit: str) -> None:
        p = self.path(self._record_name(unit))
        if p.exists():
            p.unlink()

    # -- manifest ----------------------------------------------------------------------------------------------
    def write_manifest(self, *, spec: dict[str, Any], fingerprint: str, config: dict[str, Any],
                       units: list[str], status: str, error: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        with self._lock:
            recs = self.records()
            stages = {u: recs.get(u, {"status": "pending"}) for u in units}
            for rec in stages.values():
                rec.pop("unit", None)
            extra = {u: r for u, r in recs.items() if u not in stages}  # e.g. FRM sub-records
            usage: dict[str, int] = {}
            for rec in recs.values():
                for k, v in (rec.get("usage") or {}).items():
                    usage[k] = usage.get(k, 0) + int(v)
            manifest = {
                "manifest_version": MANIFEST_VERSION,
                "job_id": self.job_id,
                "status": status,
                "error": error,
                "spec": spec,
                "config_fingerprint": fingerprint,
                "config": config,
                "updated_at": now(),
                "usage": usage,
                "stages": stages,
            }
            frm = _frm_trail(units, stages)
            if frm:
                manifest["frm"] = frm
            if extra:
                manifest["other_records"] = extra
            self.write_json("manifest.json", manifest)
            return manifest


def _frm_trail(units: list[str], stages: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    """manifest["frm"]: {"image": [rounds of shot 0, rounds of shot 1, ...], "video": [...]}, for FRM units that ran.

    A shot whose FRM unit has not finished has `null` in its place.
    """
    out: dict[str, list[Any]] = {}
    for unit in units:
        stage, _, shot = unit.partition("/")
        if stage not in ("frm_image", "frm_video") or not shot:
            continue
        trail = out.setdefault(stage[4:], [])
        rec = stages.get(unit) or {}
        trail.append((rec.get("data") or {}).get("rounds") if rec.get("status") == "done" else None)
    return out
