"""`personavlog serve` refuses to start without a usable token or with bad flags: exit 2, one line, no Ray."""

import os
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).with_name("personavlog"))


def run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PERSONAVLOG_API_TOKEN"}
    env.update(env_extra or {})
    return subprocess.run([CLI, "serve", *args], capture_output=True, text=True, timeout=120, env=env)


def test_serve_without_a_token_refuses_to_start():
    proc = run("--port", "18999")
    assert proc.returncode == 2
    assert "PERSONAVLOG_API_TOKEN" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_serve_with_a_weak_token_refuses_and_does_not_print_it():
    proc = run(env_extra={"PERSONAVLOG_API_TOKEN": "letmein"})
    assert proc.returncode == 2 and "letmein" not in proc.stderr + proc.stdout
    assert "at least" in proc.stderr


def test_serve_rejects_bad_flags_and_overrides():
    assert run("--port", "70000", env_extra={"PERSONAVLOG_API_TOKEN": "x" * 32}).returncode == 2
    proc = run("serve.queue_sise=3", env_extra={"PERSONAVLOG_API_TOKEN": "x" * 32})
    assert proc.returncode == 2 and "queue_sise" in proc.stderr
    proc = run("--host", "127.0.0.1;rm", env_extra={"PERSONAVLOG_API_TOKEN": "x" * 32})
    assert proc.returncode == 2 and "--host" in proc.stderr
