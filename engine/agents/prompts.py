"""Loads the prompt templates shipped in personavlog.prompts and fills them."""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml


@dataclass(frozen=True)
class PromptTemplate:
    role: str
    version: int
    system: str
    user: str
    sha256: str

    def render(self, **values: Any) -> tuple[str, str]:
        """(system, user) with $placeholders filled; a missing value is an error, not a silent blank."""
        system = _preamble().substitute(values) + "\n" + string.Template(self.system).substitute(values)
        return system.strip(), string.Template(self.user).substitute(values).strip()


@lru_cache(maxsize=None)
def _preamble() -> string.Template:
    data = yaml.safe_load(resources.files("personavlog.prompts").joinpath("_shared.yaml").read_text())
    return string.Template(data["preamble"])


@lru_cache(maxsize=None)
def load_template(role: str) -> PromptTemplate:
    raw = resources.files("personavlog.prompts").joinpath(f"{role}.yaml").read_text()
    data = yaml.safe_load(raw)
    return PromptTemplate(role=role, version=int(data["version"]), system=data["system"], user=data["user"],
                          sha256=hashlib.sha256(raw.encode()).hexdigest())
