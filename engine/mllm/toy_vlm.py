"""A toy-size LLaVA (CLIP vision tower + Llama text model) with random weights, built offline from config objects.

It exercises the same classes a real checkpoint loads into (LlavaForConditionalGeneration, LlavaProcessor), so the
local engine's code path is the real one, only the weights are random. The tokenizer is a byte-level BPE built in
memory with the `tokenizers` library: the 256 byte symbols (any text encodes) plus whole-word tokens and JSON
punctuation merged from them. Whole words matter for speed: a random-weight model under a JSON grammar picks tokens
almost uniformly, so longer tokens fill a capped string in a few steps instead of one step per character.
"""

from __future__ import annotations

from typing import Any

# Words the toy vocabulary holds whole (with and without a leading space). Chosen to look like vlog plans; the
# content is meaningless with random weights, only the token lengths matter.
_WORDS = (
    "the a an and or of to in on at for with from by as is are was be this that it its we our you your my i me "
    "day morning evening night city street park beach mountain river lake forest cafe coffee market train bus "
    "walk walking run running sit sitting look looking smile smiling laugh talk talking eat eating drink cook "
    "travel trip journey road sky sun rain snow light warm cold bright soft calm happy quiet busy slow fast "
    "friend friends family home room window door table book camera photo video scene shot clip frame story "
    "music song voice sound wind wave waves tree trees flower flowers garden food bread tea water ocean sunset "
    "sunrise cloud clouds close wide medium pan tilt zoom static tracking handheld aerial view angle style "
    "character person woman man girl boy young old face hair eyes hands red blue green yellow white black "
    "golden gentle cozy vibrant peaceful lively moment memory new first last next then now here there very "
    "pass fail good great nice love like feel see go come make take time life world people place way"
).split()
_PUNCT = ('{"', '":', '":"', '","', '"}', '"]', '["', '},{', '}]', '":[', '":{', ". ", ", ")

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<unk>", "<image>")
IMAGE_TOKEN = "<image>"

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<image>{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
    "{% endfor %}{% endif %}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def _byte_symbols() -> list[str]:
    """GPT-2's reversible byte -> printable-unicode map (the alphabet the ByteLevel pre-tokenizer works in)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    by_byte = dict(zip(printable, codes))
    return [chr(by_byte[b]) for b in range(256)]


def build_toy_tokenizer() -> Any:
    """A byte-level BPE tokenizer (transformers fast tokenizer) built in memory, deterministic across processes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = _byte_symbols()
    sym = {b: symbols[b] for b in range(256)}
    vocab: dict[str, int] = {}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    for b in range(256):
        vocab[sym[b]] = len(vocab)
    merges: list[tuple[str, str]] = []

    def add_word(text: str, head: str = "") -> None:
        """Merge `text` left to right onto `head` (an existing token), so encoding reproduces the whole word."""
        pieces = [sym[b] for b in text.encode("utf-8")]
        current = head or pieces.pop(0)
        for nxt in pieces:
            merged = current + nxt
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((current, nxt))
            current = merged

    space = sym[ord(" ")]
    for word in _WORDS:
        for form in dict.fromkeys((word, word.capitalize())):
            add_word(form)
            if space + form not in vocab:
                vocab[space + form] = len(vocab)
                merges.append((space, form))
    for punct in _PUNCT:
        add_word(punct)

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                 unk_token="<unk>", extra_special_tokens={"image_token": IMAGE_TOKEN})
    hf.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_toy_vlm(params: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(model, processor) of a random-weight toy LLaVA. Sizes come from `params` (mllm.params), small defaults."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    p = dict(params or {})
    image_size = int(p.get("toy_image_size", 32))
    patch = int(p.get("toy_patch_size", 8))
    hidden = int(p.get("toy_hidden_size", 32))
    layers = int(p.get("toy_layers", 2))

    tokenizer = build_toy_tokenizer()
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                               image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=1,
                              num_attention_heads=2, image_size=image_size, patch_size=patch,
                              projection_dim=hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=16384, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         image_seq_length=(image_size // patch) ** 2, vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    # Fixed weights: the toy model is the same in every process, so a seeded call is reproducible anywhere.
    state = torch.random.get_rng_state()
    torch.manual_seed(int(p.get("toy_weights_seed", 0)))
    try:
        model = LlavaForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(state)
    model.eval()
    return model, processor
