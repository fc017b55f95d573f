import pytest

from personavlog.engine.config import MLLMConf, load_config
from personavlog.engine.errors import ConfigError
from personavlog.engine.mllm.factory import make_client, make_engine, needs_actor
from personavlog.engine.mllm.local import LocalVLMEngine
from personavlog.engine.mllm.openai_client import OpenAIClient
from personavlog.engine.mllm.vllm_engine import VLLMEngine


def test_backends_from_composed_config(monkeypatch):
    local = load_config([]).mllm
    assert needs_actor(local) and isinstance(make_engine(local), LocalVLMEngine)
    vllm = load_config(["mllm=vllm"]).mllm
    assert needs_actor(vllm) and isinstance(make_engine(vllm), VLLMEngine)
    openai = load_config(["mllm=openai", "mllm.api_key_env=PERSONAVLOG_TEST_FACTORY_KEY"]).mllm
    assert not needs_actor(openai)
    with pytest.raises(ConfigError, match="mllm.backend"):
        make_engine(openai)
    with pytest.raises(ConfigError, match="PERSONAVLOG_TEST_FACTORY_KEY"):
        make_client(openai)
    monkeypatch.setenv("PERSONAVLOG_TEST_FACTORY_KEY", "k")
    client = make_client(openai, parse_retries=5)
    assert isinstance(client, OpenAIClient) and client.parse_retries == 5 and client.model == "gpt-4.1"


def test_unknown_backend_names_the_key():
    conf = MLLMConf(backend="llamacpp")
    for fn in (needs_actor, make_engine, make_client):
        with pytest.raises(ConfigError, match="mllm.backend.*llamacpp"):
            fn(conf)


def test_plain_dict_conf_as_drivers_ship_it():
    from omegaconf import OmegaConf

    as_dict = OmegaConf.to_container(load_config([]).mllm, resolve=True)
    engine = make_engine(as_dict)
    assert isinstance(engine, LocalVLMEngine) and engine.conf.max_tokens == 384
    assert engine.params["max_string_chars"] == 48
    with pytest.raises(ConfigError, match="mllm.max_tokenz"):
        make_engine({**as_dict, "max_tokenz": 1})
