"""Tokens and the per-token rate limit, without a server."""

from types import SimpleNamespace

import pytest

from personavlog.engine.errors import ConfigError
from personavlog.serve.auth import RateLimiter, TokenAuth, load_tokens, token_id

GOOD = "k" * 32


def conf(**kw):
    base = {"token_env": "PV_TEST_TOKEN", "token_file": None, "min_token_chars": 16}
    return SimpleNamespace(**{**base, **kw})


def test_no_token_anywhere_refuses_to_start():
    with pytest.raises(ConfigError, match="PV_TEST_TOKEN"):
        load_tokens(conf(), environ={})


def test_short_tokens_are_refused_without_echoing_them():
    with pytest.raises(ConfigError, match="at least 16") as exc:
        load_tokens(conf(), environ={"PV_TEST_TOKEN": "hunter2"})
    assert "hunter2" not in str(exc.value)


def test_tokens_from_env_and_secrets_file(tmp_path):
    secrets = tmp_path / "tokens"
    secrets.write_text(f"# comment\n\n{'f' * 20}\n{GOOD}\n")
    secrets.chmod(0o600)
    tokens = load_tokens(conf(token_file=str(secrets)), environ={"PV_TEST_TOKEN": GOOD})
    assert tokens == [GOOD, "f" * 20]
    with pytest.raises(ConfigError, match="cannot read"):
        load_tokens(conf(token_file=str(tmp_path / "missing")), environ={})


def test_world_readable_secrets_file_warns(tmp_path):
    secrets = tmp_path / "tokens"
    secrets.write_text(GOOD + "\n")
    secrets.chmod(0o644)
    with pytest.warns(UserWarning, match="chmod 600"):
        load_tokens(conf(token_file=str(secrets)), environ={})


def test_bearer_header_identifies_the_token():
    auth = TokenAuth([GOOD, "z" * 40])
    assert auth.identify(f"Bearer {GOOD}") == token_id(GOOD)
    assert auth.identify(f"bearer   {'z' * 40}  ") == token_id("z" * 40)
    for bad in (None, "", GOOD, f"Basic {GOOD}", f"Bearer {GOOD[:-1]}", f"Bearer {GOOD}x", "Bearer "):
        assert auth.identify(bad) is None, bad
    assert GOOD not in token_id(GOOD) and len(token_id(GOOD)) == 12


def test_rate_limit_bucket_per_key_refills_over_time():
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a")
    assert wait == pytest.approx(0.5)
    assert limiter.take("b") == 0.0  # another token has its own bucket
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    now[0] += 100
    assert [limiter.take("a") for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # refills up to burst, not beyond
    with pytest.raises(ConfigError):
        RateLimiter(rate=0, burst=1)
