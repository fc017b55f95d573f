"""Every YAML under conf/ composes against the typed schema; fingerprints ignore where a job runs."""

from pathlib import Path

import pytest

from personavlog.engine.config import fingerprint, load_config
from personavlog.engine.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


def _groups():
    for group_dir in sorted(p for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("__")):
        for yml in sorted(group_dir.glob("*.yaml")):
            yield group_dir.name, yml.stem


@pytest.mark.parametrize("group,name", list(_groups()))
def test_every_group_yaml_composes(group, name):
    cfg = load_config([f"{group}={name}"])
    assert group in cfg
    if group == "models":
        for role in ("image_edit", "image_to_video", "music", "speech"):
            assert cfg.models[role].kind != "???", f"{name}.yaml leaves models.{role}.kind unset"
    if group == "mllm":
        assert cfg.mllm.backend in ("local", "openai", "vllm", "sim")


def test_every_yaml_file_is_covered():
    covered = {f"{g}/{n}.yaml" for g, n in _groups()} | {"config.yaml"}
    found = {str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml")}
    assert found == covered


def test_paper_config_names_paper_models():
    cfg = load_config(["models=paper", "mllm=openai"])
    assert cfg.models.image_edit.source == "black-forest-labs/FLUX.1-Kontext-dev"
    assert cfg.models.image_edit.params.steps == 20 and cfg.models.image_edit.params.guidance == 3.5
    assert (cfg.models.image_edit.params.height, cfg.models.image_edit.params.width) == (768, 1360)
    assert cfg.models.music.kind == "audiox" and cfg.models.speech.kind == "cosyvoice2"
    assert cfg.mllm.model == "gpt-4.1"


def test_typo_in_override_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="shotz"):
        load_config(["shotz=5"])
    with pytest.raises(ConfigError):
        load_config(["shots=many"])
    with pytest.raises(ConfigError):
        load_config(["models=nonexistent"])


def test_fingerprint_ignores_placement_but_not_outputs():
    base = fingerprint(load_config([]))
    assert fingerprint(load_config(["models.image_edit.resources.num_gpus=2", "ray.address=auto", "out=/x"])) == base
    assert fingerprint(load_config(["models.image_edit.params.steps=3"])) != base
    assert fingerprint(load_config(["macf.max_rounds=1"])) != base
