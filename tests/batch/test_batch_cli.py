"""`personavlog batch` command-line errors: exit 2, one line naming what is wrong, before anything starts."""

import json
import subprocess


from batch_support import CLI, env


def run(*args):
    return subprocess.run([CLI, "batch", *args], capture_output=True, text=True, timeout=120, env=env())


def test_missing_jobs_file_is_exit_2(tmp_path):
    p = run("--jobs", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out"))
    assert p.returncode == 2 and "jobs: file not found" in p.stderr


def test_unknown_format_is_exit_2(tmp_path):
    f = tmp_path / "jobs.xlsx"
    f.write_text("x")
    p = run("--jobs", str(f), "--out", str(tmp_path / "out"))
    assert p.returncode == 2 and "unknown format" in p.stderr


def test_bad_override_is_exit_2(tmp_path):
    f = tmp_path / "jobs.jsonl"
    f.write_text(json.dumps({"theme": "t", "style": "s", "image": "x.png"}) + "\n")
    p = run("--jobs", str(f), "--out", str(tmp_path / "out"), "shotz=3")
    assert p.returncode == 2 and "shotz" in p.stderr


def test_bad_concurrency_is_exit_2(tmp_path):
    f = tmp_path / "jobs.jsonl"
    f.write_text("")
    p = run("--jobs", str(f), "--out", str(tmp_path / "out"), "--concurrency", "0")
    assert p.returncode == 2 and "--concurrency" in p.stderr
