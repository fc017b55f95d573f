"""Bearer tokens and the per-token rate limit of the HTTP API.

Tokens come from an environment variable (its name is in config, the token never is) and/or a secrets file with one
token per line. They are kept only as SHA-256 digests: a request's token is hashed and compared with
`hmac.compare_digest` against every known digest, so neither the comparison time nor its length reveals anything
about a token. A token is identified in logs and rate-limit state only by a short digest prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from personavlog.engine.errors import ConfigError


def token_id(token: str) -> str:
    """A short, non-reversible name for a token (for logs and rate-limit keys)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def load_tokens(conf: Any, environ: Optional[dict[str, str]] = None) -> list[str]:
    """Every configured token; refuses (ConfigError) when there is none or one is too short to be a secret."""
    env = os.environ if environ is None else environ
    tokens: list[str] = []
    value = env.get(conf.token_env, "").strip() if conf.token_env else ""
    if value:
        tokens.append(value)
    if conf.token_file:
        path = Path(str(conf.token_file)).expanduser()
        try:
            mode = path.stat().st_mode
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"serve.token_file: cannot read {path}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.warn(f"serve.token_file: {path} is readable by other users; chmod 600 it", stacklevel=2)
        tokens.extend(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not tokens:
        raise ConfigError(f"serve: no API token: set the environment variable {conf.token_env} (or serve.token_env) "
                          "or point serve.token_file at a secrets file; the endpoint never runs without one")
    short = [t for t in tokens if len(t) < conf.min_token_chars]
    if short:
        raise ConfigError(f"serve: an API token ({token_id(short[0])}) has {len(short[0])} characters; at least "
                          f"{conf.min_token_chars} are required (e.g. `python -c 'import secrets; "
                          "print(secrets.token_urlsafe(32))'`)")
    return list(dict.fromkeys(tokens))


class TokenAuth:
    def __init__(self, tokens: list[str]):
        if not tokens:
            raise ConfigError("serve: no API token")
        self._digests = [(hashlib.sha256(t.encode()).digest(), token_id(t)) for t in tokens]

    def identify(self, authorization: Optional[str]) -> Optional[str]:
        """The token id for an `Authorization: Bearer <token>` header value, or None."""
        if not authorization:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        digest = hashlib.sha256(value.strip().encode()).digest()
        found = None
        for known, tid in self._digests:  # no early exit: every token costs the same comparison
            if hmac.compare_digest(digest, known):
                found = tid
        return found


class RateLimiter:
    """Token bucket per key: `burst` requests at once, refilled at `rate` per second."""

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic):
        if rate <= 0 or burst < 1:
            raise ConfigError(f"serve.rate_limit: requests_per_s must be > 0 and burst >= 1, got {rate}, {burst}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0.0 when the request may proceed, else the seconds until it would."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
