"""VLLMEngine: imports and fails clearly without vllm; runs for real only on a GPU box with a local model."""

import importlib.util
import os

import pytest
from PIL import Image
from pydantic import BaseModel, Field

from personavlog.engine.config import MLLMConf
from personavlog.engine.errors import ConfigError, StageError
from personavlog.engine.mllm.schema import json_schema_for, validate

HAS_VLLM = importlib.util.find_spec("vllm") is not None


class Look(BaseModel):
    subject: str
    colors: list[str] = Field(min_length=1, max_length=3)


def test_module_imports_without_vllm_and_passes_engine_args():
    from personavlog.engine.mllm.vllm_engine import VLLMEngine

    conf = MLLMConf(backend="vllm", model="Qwen/Qwen2.5-VL-7B-Instruct", revision="main",
                    params={"tensor_parallel_size": 1, "limit_mm_per_prompt": {"image": 4}, "max_string_chars": 200})
    engine = VLLMEngine(conf)
    assert engine.engine_args() == {"tensor_parallel_size": 1, "limit_mm_per_prompt": {"image": 4}}
    assert engine.check_health() is False
    with pytest.raises(StageError, match="before start"):
        engine.chat([{"role": "user", "content": "hi"}], json_schema_for(Look), seed=0, temperature=0.0,
                    max_tokens=16)


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_start_without_vllm_says_install_the_gpu_extra():
    from personavlog.engine.mllm.vllm_engine import VLLMEngine

    with pytest.raises(ConfigError, match="gpu extra"):
        VLLMEngine(MLLMConf(backend="vllm", model="some/model")).start()


@pytest.mark.gpu
def test_vllm_engine_on_gpu():
    path = os.environ.get("PERSONAVLOG_VLLM_MODEL")
    if not path:
        pytest.skip("set PERSONAVLOG_VLLM_MODEL to a local VLM checkpoint (e.g. Qwen2.5-VL-3B-Instruct)")
    from personavlog.engine.mllm.vllm_engine import VLLMEngine

    conf = MLLMConf(backend="vllm", model=path, revision=None, max_image_side=256,
                    params={"max_model_len": 4096, "gpu_memory_utilization": 0.5,
                            "limit_mm_per_prompt": {"image": 1}, "max_string_chars": 64})
    engine = VLLMEngine(conf)
    engine.start()
    try:
        msgs = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (200, 120), (220, 20, 20))},
                                             {"type": "text", "text": "Describe the image as JSON."}]}]
        text, usage = engine.chat(msgs, json_schema_for(Look), seed=0, temperature=0.7, max_tokens=256)
        data = validate(Look, text)
        assert 1 <= len(data["colors"]) <= 3 and usage.completion_tokens > 0 and usage.prompt_tokens > 0
        again, _ = engine.chat(msgs, json_schema_for(Look), seed=0, temperature=0.7, max_tokens=256)
        assert again == text
    finally:
        engine.shutdown()
