"""What every model call shares: argument checks that name their field, call defaults from `params`, and seeded
sampling that leaves the caller's random state alone.

Every bad call argument fails the same way, an InputError naming the field; a bad `params` entry in conf is a
ConfigError naming its key. Nothing here imports torch at module level: the paper-model adapters import this module
inside their own Python environments, and the simulation stand-ins must stay torch-free.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any

from personavlog.engine.errors import ConfigError, InputError




def pick(value: Any, params: dict[str, Any], key: str, fallback: Any = None) -> Any:
    """The call's value if given, else the config default `params[key]`, else `fallback`."""
    if value is not None:
        return value
    return params.get(key, fallback)


def check_int(field: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(field, f"must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InputError(field, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InputError(field, f"must be <= {maximum}, got {value}")
    return value


def check_float(field: str, value: Any, *, minimum: float | None = None, exclusive_minimum: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(field, f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(field, f"must be finite, got {value}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        raise InputError(field, f"must be {'>' if exclusive_minimum else '>='} {minimum}, got {value}")
    return value


def check_seed(value: Any) -> int:
    # torch.Generator.manual_seed takes any 64-bit value; keeping seeds non-negative and below 2**63 keeps them
    # portable to numpy and to the paper models' own seeding (AudioX takes uint32).
    return check_int("seed", value, minimum=0, maximum=2**63 - 1)


def check_text(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InputError(field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InputError(field, "must not be empty")
    return value


def check_string(field: str, value: Any) -> str:
    """Any string, empty allowed (negative prompts)."""
    if not isinstance(value, str):
        raise InputError(field, f"must be a string, got {type(value).__name__}")
    return value


def check_size(field: str, value: Any, multiple_of: int) -> int:
    value = check_int(field, value, minimum=multiple_of)
    if value % multiple_of:
        raise InputError(field, f"must be a multiple of {multiple_of} for this model, got {value}")
    return value


def check_image(field: str, value: Any) -> Any:
    from PIL import Image

    if not isinstance(value, Image.Image):
        raise InputError(field, f"must be a PIL image, got {type(value).__name__}")
    if min(value.size) < 1:
        raise InputError(field, f"is empty ({value.size[0]}x{value.size[1]})")
    return value.convert("RGB") if value.mode != "RGB" else value


def check_params(role: str, params: dict[str, Any], checks: dict[str, Callable[[str, Any], Any]]) -> dict[str, Any]:
    """Validate a model's call defaults from config at load time, so a bad value or a misspelt key fails when the
    actor starts, naming `models.<role>.params.<key>`, instead of on the first job."""
    unknown = sorted(set(params) - set(checks))
    if unknown:
        raise ConfigError(f"models.{role}.params: unknown key(s) {', '.join(unknown)} (known: {', '.join(checks)})")
    for key, value in params.items():
        if value is None:
            continue
        try:
            checks[key](key, value)
        except InputError as exc:
            raise ConfigError(f"models.{role}.params.{exc}") from None
    return dict(params)


@contextlib.contextmanager
def seeded(seed: int, device: str = "cpu") -> Iterator[None]:
    """Run a block under `torch.manual_seed(seed)` without changing the caller's random state afterwards.

    For models whose sampling draws from torch's global generator instead of taking a `generator` argument.
    """
    import torch

    devices = [torch.device(device).index or 0] if str(device).startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
