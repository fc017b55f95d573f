"""MLLMEngine on vLLM's offline `LLM` (GPU only; vllm comes with the `gpu` extra and is imported in start()).

Structured output uses vLLM's `structured_outputs` sampling parameter (the `guided_*` fields were removed in vLLM
0.12) with whitespace between JSON tokens disabled, which rules out the endless-whitespace failure of guided JSON.
`mllm.params` are passed to `vllm.LLM` as engine arguments (tensor_parallel_size, max_model_len,
gpu_memory_utilization, limit_mm_per_prompt, ...), except the schema caps max_string_chars / max_list_items.
"""

from __future__ import annotations

import gc
import threading
from typing import Any

from personavlog.engine.config import MLLMConf
from personavlog.engine.errors import ConfigError, StageError, UnusableOutputError
from personavlog.engine.mllm.base import Usage
from personavlog.engine.mllm.images import with_data_urls
from personavlog.engine.mllm.schema import cap_schema

_SCHEMA_PARAMS = ("max_string_chars", "max_list_items")


class VLLMEngine:
    """One vllm.LLM per engine, hosted in a GPU Ray actor by the drivers."""

    def __init__(self, conf: MLLMConf):
        self.conf = conf
        self.params = dict(conf.params or {})
        self.model_name = str(conf.model)
        self._llm: Any = None
        self._lock = threading.Lock()

    def engine_args(self) -> dict[str, Any]:
        args = {k: v for k, v in self.params.items() if k not in _SCHEMA_PARAMS}
        # OmegaConf containers (limit_mm_per_prompt) must reach vLLM as plain dicts.
        return {k: dict(v) if hasattr(v, "items") else v for k, v in args.items()}

    def start(self) -> None:
        if self._llm is not None:
            return
        try:
            import vllm
        except ImportError as exc:
            raise ConfigError(f"mllm.backend=vllm needs the vllm package: install the gpu extra "
                              f"(pip install 'personavlog[gpu]') on the GPU nodes ({exc})") from None
        if self.model_name == "tiny":
            raise ConfigError("mllm.model: 'tiny' is the local backend's toy model; vllm needs a hub id or a path")
        self._llm = vllm.LLM(model=self.model_name, revision=self.conf.revision, seed=0, **self.engine_args())

    def check_health(self) -> bool:
        return self._llm is not None

    def shutdown(self) -> None:
        self._llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def chat(self, messages: list[dict[str, Any]], json_schema: dict[str, Any], *, seed: int | None,
             temperature: float, max_tokens: int) -> tuple[str, Usage]:
        if self._llm is None:
            raise StageError("vllm MLLM: chat() before start()")
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        schema = cap_schema(json_schema, max_string_chars=self.params.get("max_string_chars"),
                            max_list_items=self.params.get("max_list_items"))
        sampling = SamplingParams(
            temperature=float(temperature), max_tokens=int(max_tokens), seed=seed,
            structured_outputs=StructuredOutputsParams(json=schema, disable_any_whitespace=True))
        msgs = with_data_urls(messages, int(self.conf.max_image_side))
        with self._lock:
            outputs = self._llm.chat(msgs, sampling_params=sampling, use_tqdm=False)
        if not outputs or not outputs[0].outputs:
            raise UnusableOutputError("vllm MLLM: no output")
        request = outputs[0]
        completion = request.outputs[0]
        if completion.finish_reason == "length":
            raise UnusableOutputError(f"vllm MLLM: output cut at max_tokens={max_tokens}")
        usage = Usage(prompt_tokens=len(request.prompt_token_ids or []),
                      completion_tokens=len(completion.token_ids or []), calls=1)
        return completion.text, usage
