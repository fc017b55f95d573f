"""`personavlog generate` with bad input: exit 2, one clear line on stderr naming the field, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from _support import png_header_only

CLI = [str(Path(sys.executable).with_name("personavlog"))]


def run_cli(*args, cwd):
    return subprocess.run(CLI + ["generate", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def assert_clean_error(proc, field):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"personavlog: error: {field}"), lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_missing_image_file(tmp_path):
    p = run_cli("--theme", "beach", "--style", "Pixar", "--image", str(tmp_path / "nope.png"), cwd=tmp_path)
    assert_clean_error(p, "image")
    assert "file not found" in p.stderr


def test_text_file_named_png(tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_text("definitely not an image\n")
    p = run_cli("--theme", "beach", "--style", "Pixar", "--image", str(fake), cwd=tmp_path)
    assert_clean_error(p, "image")
    assert "not a PNG, JPEG or WebP" in p.stderr


def test_20000_by_20000_png(tmp_path):
    bomb = tmp_path / "huge.png"
    bomb.write_bytes(png_header_only(20000, 20000))
    p = run_cli("--theme", "beach", "--style", "Pixar", "--image", str(bomb), cwd=tmp_path)
    assert_clean_error(p, "image")
    assert "pixels" in p.stderr


def test_empty_theme(tmp_path, example_image):
    p = run_cli("--theme", "", "--style", "Pixar", "--image", str(example_image), cwd=tmp_path)
    assert_clean_error(p, "theme")


def test_10kb_theme(tmp_path, example_image):
    p = run_cli("--theme", "t" * 10_240, "--style", "Pixar", "--image", str(example_image), cwd=tmp_path)
    assert_clean_error(p, "theme")
    assert "10240 characters" in p.stderr


@pytest.mark.parametrize("args,field", [
    (["--shots", "2"], "shots"),
    (["--seed", "x"], "seed"),
    (["shots=notanumber"], "config"),
    (["notanoverride"], "overrides"),
])
def test_other_bad_fields(tmp_path, example_image, args, field):
    p = run_cli("--theme", "beach", "--style", "Pixar", "--image", str(example_image), *args, cwd=tmp_path)
    assert_clean_error(p, field)


def test_missing_required_option(tmp_path):
    p = subprocess.run(CLI + ["generate", "--style", "x"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--theme" in p.stderr and "Traceback" not in p.stderr
