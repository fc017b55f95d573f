"""QualityScorer at toy size (real classes, seeded random weights, offline): known answers and contracts."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from personavlog.actors.scorers import TOY_CLIP, QualityScorer, load_scorer_conf
from personavlog.engine.errors import ConfigError, InputError
from personavlog.engine.frm_rule import IMAGE_SCORE_KEYS, VIDEO_SCORE_KEYS

SIZE = 128  # RAFT's minimum side, so no resize hides anything


def gradient(size=SIZE):
    ramp = np.linspace(0, 255, size).astype(np.uint8)
    return np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)),
                     np.full((size, size), 128, np.uint8)], axis=-1)


def noise(size=SIZE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


STATIC = np.stack([gradient()] * 9)
ALTERNATING = np.stack([noise() if i % 2 else gradient() for i in range(9)])


@pytest.fixture(scope="module")
def scorer():
    return QualityScorer(load_scorer_conf("tiny"))


@pytest.fixture(scope="module")
def static_scores(scorer):
    return scorer.video_scores(frames=STATIC, fps=16.0)


@pytest.fixture(scope="module")
def alternating_scores(scorer):
    return scorer.video_scores(frames=ALTERNATING, fps=16.0)


def in_unit_interval(scores):
    return all(isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0 for v in scores.values())


def test_static_clip_is_perfectly_consistent_and_still(static_scores):
    assert tuple(static_scores) == VIDEO_SCORE_KEYS
    assert static_scores["subject_consistency"] == pytest.approx(1.0, abs=1e-5)
    assert static_scores["background_consistency"] == pytest.approx(1.0, abs=1e-5)
    assert static_scores["dynamic_degree"] == 0.0
    # the toy flow is zero, so each dropped frame is rebuilt exactly from its identical neighbours
    assert static_scores["motion_smoothness"] == pytest.approx(1.0, abs=1e-6)


def test_alternating_clip_scores_below_static(static_scores, alternating_scores):
    for key in ("subject_consistency", "background_consistency", "motion_smoothness"):
        assert alternating_scores[key] < static_scores[key] - 1e-4, key
    # the dropped frames are noise, rebuilt from two gradients: far off on the 0-255 grid
    assert alternating_scores["motion_smoothness"] < 0.9


def test_every_score_is_finite_in_unit_interval(scorer, static_scores, alternating_scores):
    assert in_unit_interval(static_scores) and in_unit_interval(alternating_scores)
    other = scorer.image_scores(image=Image.fromarray(gradient()), reference=Image.fromarray(noise()),
                                text="a woman hikes up a misty mountain trail at dawn")
    assert tuple(other) == IMAGE_SCORE_KEYS and in_unit_interval(other)


def test_image_matches_itself(scorer):
    img = Image.fromarray(gradient())
    same = scorer.image_scores(image=img, reference=img.copy(), text="a person")
    assert same["m_i2i"] == pytest.approx(1.0, abs=1e-5)
    unrelated = scorer.image_scores(image=img, reference=Image.fromarray(noise()), text="a person")
    assert unrelated["m_i2i"] < same["m_i2i"] - 1e-4


def test_keyframe_and_reference_may_differ_in_size(scorer):
    wide = Image.fromarray(noise(96)).resize((160, 96))
    out = scorer.image_scores(image=wide, reference=Image.fromarray(gradient(64)), text="a cat")
    assert in_unit_interval(out)


def test_same_seed_same_scores(scorer, alternating_scores):
    again = QualityScorer(load_scorer_conf("tiny"))
    assert again.subject_consistency(frames=ALTERNATING, fps=16) == alternating_scores["subject_consistency"]
    assert again.background_consistency(frames=ALTERNATING, fps=16) == alternating_scores["background_consistency"]


def test_weights_load_once_across_calls():
    s = QualityScorer(load_scorer_conf("tiny"))
    small = np.stack([gradient(64), noise(64), gradient(64)])  # the fewest frames every score accepts
    img = Image.fromarray(gradient(64))
    for _ in range(3):
        s.image_scores(image=img, reference=img, text="a dog")
        s.video_scores(frames=small, fps=8)
    s(image=img, reference=img, text="a dog")
    s(frames=small, fps=8)
    assert s.loads == {"clip": 1, "background_clip": 1, "aesthetic_clip": 1, "aesthetic_head": 1, "dino": 1,
                       "raft": 1, "imaging": 1}
    assert s.calls == 8
    # the toy uses one CLIP for all three roles: loaded once, not three times
    assert s.clip is s.background_clip is s.aesthetic_clip
    assert s.check_health() is True


def test_local_weights_round_trip(scorer, alternating_scores, tmp_path):
    """The real loading paths, fed files written from the toy models: the scores must not change."""
    import torch
    from safetensors.torch import save_file

    torch.save(scorer.clip.model.state_dict(), tmp_path / "clip.pt")
    bg = tmp_path / "bg_clip"  # an open_clip local-dir folder, like a hub snapshot
    bg.mkdir()
    (bg / "open_clip_config.json").write_text(json.dumps({"model_cfg": TOY_CLIP}))
    save_file({k: v.contiguous() for k, v in scorer.background_clip.model.state_dict().items()},
              str(bg / "open_clip_model.safetensors"))
    scorer.dino.model.save_pretrained(tmp_path / "dino")
    torch.save(scorer.raft.model.state_dict(), tmp_path / "raft.pt")
    torch.save(scorer.aesthetic_head.linear.state_dict(), tmp_path / "aesthetic.pt")
    torch.save(scorer.imaging.model.state_dict(), tmp_path / "musiq.pt")
    conf = load_scorer_conf("tiny", [
        f"weights_root={tmp_path}", "allow_random_weights=false", "seed=7",  # a different seed: weights must win
        "clip.weights=clip.pt", "aesthetic_clip.weights=clip.pt", "background_clip.arch=ViT-B-32",
        "background_clip.weights=bg_clip", "background_clip.config=null", "aesthetic_head.weights=aesthetic.pt",
        "dino.weights=dino", "raft.weights=raft.pt", "raft.zero_flow_head=false", "imaging.weights=musiq.pt"])
    loaded = QualityScorer(conf)
    assert loaded.clip is loaded.aesthetic_clip and loaded.background_clip is not loaded.clip
    scores = loaded.video_scores(frames=ALTERNATING, fps=16.0)
    for key in VIDEO_SCORE_KEYS:
        assert scores[key] == pytest.approx(alternating_scores[key], abs=1e-5), key
    img, ref = Image.fromarray(gradient()), Image.fromarray(noise())
    assert loaded.image_scores(image=img, reference=ref, text="a dog") == pytest.approx(
        scorer.image_scores(image=img, reference=ref, text="a dog"), abs=1e-5)


def test_bad_inputs_name_the_field(scorer):
    img = Image.fromarray(gradient(64))
    cases = [
        (dict(frames=STATIC.tolist(), fps=16), "frames"),
        (dict(frames=STATIC.astype(np.float32), fps=16), "frames"),
        (dict(frames=STATIC[:2], fps=16), "frames"),
        (dict(frames=STATIC[:, :16, :16], fps=16), "frames"),
        (dict(frames=STATIC[..., :1], fps=16), "frames"),
        (dict(frames=STATIC, fps=0), "fps"),
        (dict(frames=STATIC, fps=float("nan")), "fps"),
        (dict(frames=STATIC, fps=True), "fps"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InputError) as err:
            scorer.video_scores(**kwargs)
        assert err.value.field == field
    for kwargs, field in [(dict(image=gradient(), reference=img, text="x"), "image"),
                          (dict(image=img, reference=None, text="x"), "reference"),
                          (dict(image=img, reference=img, text="  "), "text")]:
        with pytest.raises(InputError) as err:
            scorer.image_scores(**kwargs)
        assert err.value.field == field
    with pytest.raises(InputError):
        scorer()


def test_full_conf_is_valid_and_never_falls_back_to_random_weights():
    conf = load_scorer_conf("full")
    assert conf.allow_random_weights is False and conf.raft.arch == "raft_large" and conf.imaging.arch == "musiq"
    with pytest.raises(ConfigError, match=r"scorers\.clip\.weights: no such local file"):
        QualityScorer(conf)  # /models/scorers is absent here; fails before any model is built
    with pytest.raises(ConfigError, match=r"scorers\.clip\.weights: required"):
        QualityScorer(load_scorer_conf("full", ["clip.weights=null"]))


def test_conf_typos_are_config_errors():
    with pytest.raises(ConfigError):
        load_scorer_conf("tiny", ["raft.num_flow_update=3"])
    with pytest.raises(ConfigError):
        load_scorer_conf("nope")


def test_sub_model_choices_are_checked():
    from personavlog.actors import scorer_models as sm

    with pytest.raises(ConfigError, match="scorers.imaging.arch"):
        sm.ImagingQualityModel(arch="brisque", weights=None, config={}, max_side=512, device="cpu", seed=0,
                               field="scorers.imaging")
    with pytest.raises(ConfigError, match="scorers.raft.arch"):
        sm.FlowEstimator(arch="raft_huge", weights=None, num_flow_updates=2, min_side=128, max_side=None,
                         zero_flow_head=True, device="cpu", seed=0, field="scorers.raft")


def test_toy_vit_imaging_stand_in():
    import torch

    from personavlog.actors import scorer_models as sm

    model = sm.ImagingQualityModel(arch="toy_vit", weights=None, device="cpu", seed=0, field="scorers.imaging",
                                   config={"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1,
                                           "num_heads": 2}, max_side=512)
    scores = model.score_frames(torch.rand(3, 3, 48, 64), batch_size=2)
    assert scores.shape == (3,) and bool(((scores > 0) & (scores < 1)).all())


def test_musiq_architecture_from_pyiqa_at_toy_size():
    """The real imaging-quality path (conf/scorers/full.yaml) uses pyiqa's MUSIQ class: build it small, offline."""
    pytest.importorskip("pyiqa", reason="pyiqa is the optional `scorers` extra")
    import torch

    from personavlog.actors import scorer_models as sm

    model = sm.ImagingQualityModel(arch="musiq", weights=None, device="cpu", seed=0, field="scorers.imaging",
                                   config={"hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "num_layers": 1,
                                           "longer_side_lengths": [64], "max_seq_len_from_original_res": 16},
                                   max_side=512)
    scores = model.score_frames(torch.rand(2, 3, 48, 64), batch_size=2)
    assert scores.shape == (2,) and bool(((scores >= 0) & (scores <= 1)).all())
