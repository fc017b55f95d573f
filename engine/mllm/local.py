"""An in-process transformers vision-language model whose decoding is constrained by a JSON schema (xgrammar).

`mllm.model: tiny` builds a random-weight toy LLaVA offline (see toy_vlm.py); anything else is a hub id or a local
path loaded with AutoProcessor / AutoModelForImageTextToText at `mllm.revision`.

Decoding runs through `model.generate` (which knows each architecture's cache and position handling) with one logits
processor doing all the choosing: it masks the logits with xgrammar's next-token bitmask, samples from what is left
with its own seeded generator, and hands `generate` a one-hot score so generate's greedy step takes that token. The
sampler's RNG is private, so a seed reproduces the same text regardless of what else touched torch's global RNG.

`mllm.params` read here: max_string_chars, max_list_items (schema caps), device ("auto"), dtype ("float32"),
torch_threads (1 for the toy model, else torch's default), and the toy sizes of toy_vlm.build_toy_vlm.
"""

from __future__ import annotations

import gc
import json
import threading
from typing import Any

from personavlog.engine.config import MLLMConf
from personavlog.engine.errors import ConfigError, StageError, UnusableOutputError
from personavlog.engine.mllm.base import Usage
from personavlog.engine.mllm.images import downscale, map_parts
from personavlog.engine.mllm.schema import cap_schema

_GRAMMAR_CACHE_SIZE = 64


class _GrammarSampler:
    """A transformers LogitsProcessor that samples the next token itself, within the grammar."""

    def __init__(self, matcher: Any, vocab_size: int, temperature: float, seed: int | None):
        import torch
        import xgrammar as xgr

        self.matcher = matcher
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.temperature = temperature
        self.generator = torch.Generator(device="cpu")
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))
        self.steps = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch
        import xgrammar as xgr

        if self.steps:
            # generate() appended the token chosen last step; the matcher must see it before the next mask.
            last = int(input_ids[0, -1])
            if not self.matcher.accept_token(last):
                raise StageError(f"local MLLM: the grammar rejected token {last} it had allowed")
        self.steps += 1
        logits = scores[:1].detach().float().cpu()
        self.matcher.fill_next_token_bitmask(self.bitmask)
        xgr.apply_token_bitmask_inplace(logits, self.bitmask)
        if self.temperature <= 0:
            choice = int(torch.argmax(logits[0]))
        else:
            probs = torch.softmax(logits[0] / self.temperature, dim=-1)
            choice = int(torch.multinomial(probs, 1, generator=self.generator))
        forced = torch.full_like(scores, float("-inf"))
        forced[:, choice] = 0.0
        return forced


class LocalVLMEngine:
    """MLLMEngine backed by a transformers VLM in this process (hosted in a Ray actor by the drivers)."""

    def __init__(self, conf: MLLMConf):
        self.conf = conf
        self.params = dict(conf.params or {})
        self.model_name = str(conf.model)
        self._model: Any = None
        self._processor: Any = None
        self._compiler: Any = None
        self._vocab_size = 0
        self._stop_ids: list[int] = []
        self._grammars: dict[str, Any] = {}
        self._device = "cpu"
        self._dtype: Any = None
        self._lock = threading.Lock()  # one generate at a time: the model and grammar cache are not thread-safe

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._model is not None:
            return
        import xgrammar as xgr

        from personavlog.actors.base import resolve_device, torch_dtype

        self._device = resolve_device(str(self.params.get("device", "auto")))
        try:
            dtype = torch_dtype(str(self.params.get("dtype", "float32")))
        except ValueError as exc:
            raise ConfigError(f"mllm.params.{exc}") from None
        threads = self.params.get("torch_threads", 1 if self.model_name == "tiny" else None)
        if threads:
            import torch

            # Process-wide, which is fine in a dedicated actor. A toy model's matmuls are too small to split:
            # on a busy 2-core box, intra-op threads made decoding ~10x slower (20 ms vs 2 ms per token).
            torch.set_num_threads(int(threads))
        if self.model_name == "tiny":
            from personavlog.engine.mllm.toy_vlm import build_toy_vlm

            model, processor = build_toy_vlm(self.params)
        else:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            try:
                processor = AutoProcessor.from_pretrained(self.model_name, revision=self.conf.revision)
                model = AutoModelForImageTextToText.from_pretrained(self.model_name, revision=self.conf.revision,
                                                                    dtype=dtype)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"mllm.model: cannot load {self.model_name!r} "
                                  f"(revision {self.conf.revision}): {str(exc).splitlines()[0]}") from None
        model = model.to(device=self._device, dtype=dtype).eval()
        tokenizer = processor.tokenizer
        out_emb = model.get_output_embeddings()
        self._vocab_size = int(out_emb.weight.shape[0]) if out_emb is not None else len(tokenizer)
        stop = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
        self._stop_ids = sorted({int(s) for s in (stop if isinstance(stop, list) else [stop])})
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self._vocab_size,
                                                  stop_token_ids=self._stop_ids)
        self._compiler = xgr.GrammarCompiler(info)
        self._model, self._processor, self._dtype = model, processor, dtype

    def check_health(self) -> bool:
        return self._model is not None

    def shutdown(self) -> None:
        self._model = self._processor = self._compiler = None
        self._grammars.clear()
        gc.collect()
        if self._device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    # -- one call --------------------------------------------------------------------------------------------------

    def chat(self, messages: list[dict[str, Any]], json_schema: dict[str, Any], *, seed: int | None,
             temperature: float, max_tokens: int) -> tuple[str, Usage]:
        if self._model is None:
            raise StageError("local MLLM: chat() before start()")
        if max_tokens < 1:
            raise ConfigError(f"mllm.max_tokens: must be >= 1, got {max_tokens}")
        with self._lock:
            return self._chat(messages, json_schema, seed, float(temperature), int(max_tokens))

    def _grammar(self, json_schema: dict[str, Any]) -> Any:
        capped = cap_schema(json_schema, max_string_chars=self.params.get("max_string_chars"),
                            max_list_items=self.params.get("max_list_items"))
        key = json.dumps(capped)  # property order is kept: it is the order the model writes fields in
        grammar = self._grammars.get(key)
        if grammar is None:
            try:
                grammar = self._compiler.compile_json_schema(key, any_whitespace=False, separators=(",", ":"))
            except (RuntimeError, ValueError) as exc:  # xgrammar raises RuntimeError subclasses on bad schemas
                raise ConfigError(f"schema: xgrammar cannot compile it: {str(exc).splitlines()[0]}") from None
            if len(self._grammars) >= _GRAMMAR_CACHE_SIZE:
                self._grammars.pop(next(iter(self._grammars)))
            self._grammars[key] = grammar
        return grammar

    def _chat(self, messages: list[dict[str, Any]], json_schema: dict[str, Any], seed: int | None,
              temperature: float, max_tokens: int) -> tuple[str, Usage]:
        import torch
        import xgrammar as xgr
        from transformers import GenerationConfig, LogitsProcessorList

        max_side = int(self.conf.max_image_side)
        templated = map_parts(messages, lambda img: {"type": "image", "image": downscale(img, max_side).convert("RGB")})
        grammar = self._grammar(json_schema)
        processor = self._processor
        # The processor's own chat-template path: it places each model's image tokens and special tokens itself.
        inputs = processor.apply_chat_template(templated, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        inputs = inputs.to(self._device, dtype=self._dtype)  # floating tensors only (pixel values)
        prompt_len = int(inputs["input_ids"].shape[1])

        matcher = xgr.GrammarMatcher(grammar)
        sampler = _GrammarSampler(matcher, self._vocab_size, temperature, seed)
        gen_conf = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=self._stop_ids,
                                    pad_token_id=processor.tokenizer.pad_token_id or self._stop_ids[0])
        with torch.inference_mode():
            out = self._model.generate(**inputs, generation_config=gen_conf,
                                       logits_processor=LogitsProcessorList([sampler]))
        new = [int(t) for t in out[0, prompt_len:]]
        # generate() stops right after the stop token without showing it to the sampler: accept it here.
        finished = bool(new) and new[-1] in self._stop_ids and matcher.accept_token(new[-1]) and \
            matcher.is_terminated()
        if not finished:
            raise UnusableOutputError(f"local MLLM: no complete JSON within max_tokens={max_tokens} "
                                      f"({len(new)} tokens generated)")
        text = processor.tokenizer.decode(new[:-1], skip_special_tokens=True)
        return text, Usage(prompt_tokens=prompt_len, completion_tokens=len(new), calls=1)
