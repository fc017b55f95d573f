"""Error classes shared by every layer.

`InputError` is the user's fault (a bad field): the CLI turns it into exit code 2 and one line naming the field.
`StageError` fails one job and is recorded in its manifest; `TransientError` may be retried by a driver.
"""

from __future__ import annotations


class PersonaVlogError(Exception):
    """Base class of every error this project raises on purpose."""


class InputError(PersonaVlogError, ValueError):
    """A job-spec field (or a config key) is invalid. `field` names it for the user."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def __reduce__(self):  # Ray pickles exceptions raised in actors; the default would drop `field`
        return (type(self), (self.field, self.message))


class ConfigError(PersonaVlogError, ValueError):
    """The composed configuration cannot be used (unknown model kind, missing key, bad override)."""


class StageError(PersonaVlogError):
    """A stage failed for a reason that retrying will not fix (the job fails alone)."""


class TransientError(PersonaVlogError):
    """A failure worth retrying a bounded number of times (HTTP 429/5xx, timeouts, a dead actor)."""


class UnusableOutputError(StageError):
    """The MLLM kept returning output that does not parse or does not fit the schema."""


class ClusterError(PersonaVlogError):
    """Ray could not be started or joined (the job did not start; nothing was written)."""
