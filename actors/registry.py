"""Model kinds named in conf/models/*.yaml -> the class that implements them (imported lazily)."""

from __future__ import annotations

import importlib
from typing import Any

from personavlog.engine.config import ModelConf
from personavlog.engine.errors import ConfigError

# role -> kind -> "module:Class"
MODEL_KINDS: dict[str, dict[str, str]] = {
    "image_edit": {"flux_kontext": "personavlog.actors.image_edit:FluxKontextImageEdit"},
    "image_to_video": {"wan_i2v": "personavlog.actors.image_to_video:WanImageToVideo"},
    "music": {
        "stable_audio": "personavlog.actors.music:StableAudioMusic",
        "audiox": "personavlog.actors.music:AudioXMusic",
    },
    "speech": {
        "vits": "personavlog.actors.speech:VitsSpeech",
        "cosyvoice2": "personavlog.actors.speech:CosyVoice2Speech",
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


def build_model(role: str, conf: ModelConf) -> Any:
    return model_class(role, conf.kind)(conf)
