"""Toy builds of the real model classes: tiny configs, random weights, offline tokenizers.

`source: tiny` in conf/models builds each model family from these: the same pipeline classes as the real checkpoints,
only shrunk, so everything downstream (shapes, dtypes, file formats, Ray hops) is exercised without a download.
Weights come from a fixed seed inside `torch.random.fork_rng`, so a toy model is identical in every process and
building one never disturbs the caller's random state.

Nothing here imports torch, diffusers or transformers at module level: they are imported by the builders only.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


TOY_WEIGHT_SEED = 0


# --------------------------------------------------------------------------------------------------------------------
# offline tokenizers


def _byte_alphabet() -> list[str]:
    """One printable character per byte value, the alphabet byte-level BPE vocabularies (CLIP, GPT-2) are spelled in.

    Bytes that are printable stand for themselves; the rest are shifted past U+00FF so no token contains whitespace
    or control characters.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), 256))
    alphabet = []
    shifted = 0
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + shifted))
            shifted += 1
    return alphabet


def clip_tokenizer(model_max_length: int = 77) -> Any:
    """A CLIPTokenizer whose vocabulary is every byte, alone and word-final, with no merges (514 tokens)."""
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


# Characters the toy T5 vocabulary spells text with; anything else becomes <unk>, as rare characters do in the real
# sentencepiece vocabularies.
_T5_CHARS = [chr(c) for c in range(ord("!"), ord("~") + 1)] + list("àáâäçèéêëìíîïñòóôöùúûüß")


def t5_tokenizer(model_max_length: int = 512) -> Any:
    """A T5 (unigram) tokenizer over single characters, built in memory: pad=0, eos=1, unk=2 as in T5's vocabulary."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(ch, -3.0) for ch in _T5_CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


T5_TOY_VOCAB_SIZE = 4 + len(_T5_CHARS)


def vits_tokenizer() -> Any:
    """A character-level VitsTokenizer (the printable ASCII characters), as MMS-TTS models use.

    Unlike a real MMS-TTS checkpoint (normalize=True: lower-case, then drop what the vocabulary lacks) the toy keeps
    every character and maps the ones it lacks to <unk>. The toy MLLM has random weights and writes arbitrary text,
    often a lone "," or a CJK character; a real model dropping those would leave nothing to say and fail the job for
    a reason that only exists at toy size. The check for unspeakable text still runs on the real path.
    """
    from transformers import VitsTokenizer

    symbols = ["<pad>", "<unk>"] + [chr(c) for c in range(ord(" "), ord("~") + 1)]
    vocab = {s: i for i, s in enumerate(symbols)}
    # VitsTokenizer only reads a vocabulary file; it keeps the mapping in memory, so the file can go right away.
    with tempfile.TemporaryDirectory(prefix="toy-vits-") as tmp:
        path = os.path.join(tmp, "vocab.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(vocab, f)
        return VitsTokenizer(vocab_file=path, add_blank=True, normalize=False, phonemize=False)


# --------------------------------------------------------------------------------------------------------------------
# tiny text encoders


def _t5_encoder(cls_name: str = "T5EncoderModel", d_model: int = 32) -> Any:
    import transformers

    config_cls = transformers.UMT5Config if cls_name == "UMT5EncoderModel" else transformers.T5Config
    config = config_cls(vocab_size=T5_TOY_VOCAB_SIZE, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                        decoder_start_token_id=0)
    return getattr(transformers, cls_name)(config).eval()


def _clip_text_encoder() -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, projection_dim=32, max_position_embeddings=77,
                            bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_act="gelu")
    return CLIPTextModel(config).eval()


# --------------------------------------------------------------------------------------------------------------------
# tiny pipelines (components for the real pipeline constructors)


def flux_kontext_components() -> dict[str, Any]:
    """FluxKontextPipeline parts. The VAE downsamples 8x like FLUX's, so sizes must be multiples of 16 as for the real
    model; latent channels 4 -> the transformer sees 16 channels per packed 2x2 patch."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TOY_WEIGHT_SEED)
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                             pooled_projection_dim=32, guidance_embeds=True,
                                             axes_dims_rope=(4, 6, 6))
        vae = AutoencoderKL(in_channels=3, out_channels=3,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4,
                            norm_num_groups=4, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
                            shift_factor=0.0609, scaling_factor=1.5035)
        text_encoder = _clip_text_encoder()
        text_encoder_2 = _t5_encoder("T5EncoderModel")
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": vae.eval(),
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": t5_tokenizer(),
        "transformer": transformer.eval(),
        "image_encoder": None,
        "feature_extractor": None,
    }


def wan_i2v_components() -> dict[str, Any]:
    """WanImageToVideoPipeline parts in the Wan2.1 I2V layout: UMT5 text encoder, CLIP vision image encoder whose
    penultimate hidden state feeds the transformer (image_dim), a VAE with 8x spatial / 4x temporal compression, and
    a transformer that takes noise (16) + first-frame mask (4) + conditioning latents (16) = 36 channels."""
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TOY_WEIGHT_SEED)
        vae = AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                            in_channels=36, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32,
                                            num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                            rope_max_seq_len=32, image_dim=8)
        text_encoder = _t5_encoder("UMT5EncoderModel")
        image_encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                                         num_attention_heads=2, image_size=32, patch_size=8,
                                                         projection_dim=8)).eval()
    return {
        "tokenizer": t5_tokenizer(),
        "text_encoder": text_encoder,
        "vae": vae.eval(),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "image_processor": CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        "image_encoder": image_encoder,
        "transformer": transformer.eval(),
    }


# The toy Stable Audio makes up to TOY_AUDIO_SAMPLE_SIZE * hop / rate = 4.096 s of stereo 16 kHz audio per call.
TOY_AUDIO_RATE = 16_000
TOY_AUDIO_SAMPLE_SIZE = 256


def stable_audio_components() -> dict[str, Any]:
    """StableAudioPipeline parts: DiT over 4 latent channels, Oobleck VAE with hop 256, T5 text encoder, projection
    of text and start/end seconds into one conditioning space, and the cosine DPM-Solver scheduler Stable Audio
    Open ships with."""
    import torch
    from diffusers import (AutoencoderOobleck, CosineDPMSolverMultistepScheduler, StableAudioDiTModel,
                           StableAudioProjectionModel)

    conditioning_dim = 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TOY_WEIGHT_SEED)
        transformer = StableAudioDiTModel(sample_size=TOY_AUDIO_SAMPLE_SIZE, in_channels=4, num_layers=2,
                                          attention_head_dim=8, num_attention_heads=2,
                                          num_key_value_attention_heads=1, out_channels=4, cross_attention_dim=16,
                                          time_proj_dim=16, global_states_input_dim=2 * conditioning_dim,
                                          cross_attention_input_dim=conditioning_dim)
        vae = AutoencoderOobleck(encoder_hidden_size=8, downsampling_ratios=[2, 4, 4, 8],
                                 channel_multiples=[1, 2, 2, 2], decoder_channels=8, decoder_input_channels=4,
                                 audio_channels=2, sampling_rate=TOY_AUDIO_RATE)
        text_encoder = _t5_encoder("T5EncoderModel")
        projection_model = StableAudioProjectionModel(text_encoder_dim=text_encoder.config.d_model,
                                                      conditioning_dim=conditioning_dim, min_value=0, max_value=512)
    scheduler = CosineDPMSolverMultistepScheduler(solver_order=2, prediction_type="v_prediction", sigma_data=1.0,
                                                  sigma_schedule="exponential")
    return {
        "vae": vae.eval(),
        "text_encoder": text_encoder,
        "projection_model": projection_model.eval(),
        "tokenizer": t5_tokenizer(model_max_length=128),
        "transformer": transformer.eval(),
        "scheduler": scheduler,
    }


def vits_model() -> tuple[Any, Any]:
    """(VitsModel, VitsTokenizer): MMS-TTS's architecture at 16 kHz with 256 samples per spectrogram frame."""
    import torch
    from transformers import VitsConfig, VitsModel

    tokenizer = vits_tokenizer()
    config = VitsConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        ffn_dim=16, flow_size=16, spectrogram_bins=33, upsample_initial_channel=16,
                        upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8], resblock_kernel_sizes=[3],
                        resblock_dilation_sizes=[[1, 3]], duration_predictor_filter_channels=16,
                        duration_predictor_num_flows=2, prior_encoder_num_flows=2, prior_encoder_num_wavenet_layers=2,
                        posterior_encoder_num_wavenet_layers=2, depth_separable_num_layers=2, layerdrop=0.0,
                        sampling_rate=16_000, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TOY_WEIGHT_SEED)
        model = VitsModel(config)
    return model.eval(), tokenizer
