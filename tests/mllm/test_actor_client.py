"""ActorMLLMClient on the toy local engine hosted in a real Ray actor."""

import dataclasses
import os

import time

import pytest
from PIL import Image
from pydantic import BaseModel, Field, field_validator

from personavlog.engine.config import MLLMConf
from personavlog.engine.errors import ConfigError, TransientError, UnusableOutputError
from personavlog.engine.mllm.actor_client import ActorMLLMClient, MLLMEngineActor
from personavlog.engine.mllm.factory import make_client

CONF = MLLMConf(backend="local", model="tiny", temperature=1.0, max_tokens=384, max_image_side=64, timeout_s=120,
                params={"max_string_chars": 32})


class Frame(BaseModel):
    subject: str
    colors: list[str] = Field(min_length=2, max_length=2)


class EvenTitle(BaseModel):
    """A rule the JSON schema cannot express, so only validation after decoding catches it."""

    title: str

    @field_validator("title")
    @classmethod
    def even_length(cls, v: str) -> str:
        if len(v) % 2:
            raise ValueError("title length must be even")
        return v


@pytest.fixture(scope="module")
def ray_session():
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def actor(ray_session):
    # A plain dict, as the drivers ship the mllm section to the actor.
    handle = ray_session.remote(MLLMEngineActor).options(num_cpus=0).remote(dataclasses.asdict(CONF))
    assert ray_session.get(handle.check_health.remote(), timeout=120) is True
    return handle


def image_messages():
    return [{"role": "user", "content": [{"type": "text", "text": "Name the subject and two colours."},
                                         {"type": "image", "image": Image.new("RGB", (120, 80), (10, 200, 40))}]}]


def test_chat_through_actor_validates_and_reports_usage(actor):
    client = make_client(CONF, actor_handle=actor, parse_retries=1)
    assert isinstance(client, ActorMLLMClient) and client.model == "tiny"
    result = client.chat(image_messages(), Frame, seed=4)
    assert len(result.data["colors"]) == 2 and isinstance(result.data["subject"], str)
    assert all(len(c) <= 32 for c in result.data["colors"])
    assert result.usage.calls == 1 and result.usage.prompt_tokens > 16 and result.usage.completion_tokens > 0
    assert client.chat(image_messages(), Frame, seed=4).text == result.text  # seeded across the actor boundary


def test_unusable_output_is_retried_with_new_seeds(actor):
    client = ActorMLLMClient(actor, CONF, parse_retries=5)
    calls = []
    for seed in range(0, 60, 6):
        calls.append(client.chat([{"role": "user", "content": "A title."}], EvenTitle, seed=seed).usage.calls)
    assert max(calls) > 1  # some first drafts failed validation and a later seed fixed them

    # The engine itself gives up (max_tokens too small): every attempt fails, then the client does.
    with pytest.raises(UnusableOutputError, match="3 attempt"):
        ActorMLLMClient(actor, CONF, parse_retries=2).chat(image_messages(), Frame, seed=0, max_tokens=4)


def test_missing_handle_is_a_config_error():
    with pytest.raises(ConfigError, match="mllm.backend=local"):
        make_client(CONF)


def test_dead_actor_is_transient(ray_session, actor):
    # Last in the file: it kills the module's actor.
    client = ActorMLLMClient(actor, CONF)
    assert client.chat(image_messages(), Frame, seed=1).data
    ray_session.kill(actor, no_restart=True)
    # ray.kill is asynchronous: wait until the actor is gone before asserting how the client reports it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray_session.get(actor.check_health.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - any failure means the kill has landed
            break
        time.sleep(0.2)
    with pytest.raises(TransientError, match="unavailable"):
        client.chat(image_messages(), Frame, seed=1)
