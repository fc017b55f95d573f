"""Model kinds named in conf/models/*.yaml -> the class that implements them (imported lazily)."""

from __future__ import annotations

import importlib
from typing import Any

from personavlog.engine.config import ModelConf
from personavlog.engine.errors import ConfigError

# role -> kind -> "module:Class"
# "sim": calibrated stand-ins for scale tests (models=sim, personavlog/actors/sim.py).
MODEL_KINDS: dict[str, dict[str, str]] = {
    "image_edit": {
        "flux_kontext": "personavlog.actors.image_edit:FluxKontextImageEdit",
        "sim": "personavlog.actors.sim:SimImageEdit",
    },
    "image_to_video": {
        "wan_i2v": "personavlog.actors.image_to_video:WanImageToVideo",
        "sim": "personavlog.actors.sim:SimImageToVideo",
    },
    "music": {
        "stable_audio": "personavlog.actors.music:StableAudioMusic",
        "audiox": "personavlog.actors.music:AudioXMusic",
        "sim": "personavlog.actors.sim:SimMusic",
    },
    "speech": {
        "vits": "personavlog.actors.speech:VitsSpeech",
        "cosyvoice2": "personavlog.actors.speech:CosyVoice2Speech",
        "sim": "personavlog.actors.sim:SimSpeech",
    },
}


def model_class(role: str, kind: str) -> type:
    kinds = MODEL_KINDS.get(role)
    if kinds is None:
        raise ConfigError(f"models: unknown model role {role!r} (known: {', '.join(MODEL_KINDS)})")
    target = kinds.get(kind)
    if target is None:
        raise ConfigError(f"models.{role}.kind: unknown kind {kind!r} (known: {', '.join(kinds)})")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


# Roles whose config is not a ModelConf: role -> "module:Class" built from its own config schema.
SPECIAL_ROLES: dict[str, str] = {"scorer": "personavlog.actors.scorers:QualityScorer"}


def coerce_conf(role: str, conf: Any) -> Any:
    """The typed config object for a role from a dataclass, a mapping or an OmegaConf node."""
    from omegaconf import OmegaConf

    if role == "scorer":
        from personavlog.actors.scorers import as_scorer_conf

        return as_scorer_conf(conf)
    if isinstance(conf, ModelConf):
        return conf
    node = conf if OmegaConf.is_config(conf) else OmegaConf.create(dict(conf))
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConf), node))
    except Exception as exc:  # noqa: BLE001 - a bad key or type in the YAML
        raise ConfigError(f"models.{role}: {str(exc).splitlines()[0]}") from None


def build_model(role: str, conf: Any) -> Any:
    if role in SPECIAL_ROLES:
        module, cls = SPECIAL_ROLES[role].split(":")
        return getattr(importlib.import_module(module), cls)(conf)
    return model_class(role, conf.kind)(conf)
