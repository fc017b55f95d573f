"""The FRM replace-or-roll-back rule: replace only when every score strictly improves."""

import math

import pytest

from personavlog.engine.errors import InputError
from personavlog.engine.frm_rule import IMAGE_SCORE_KEYS, VIDEO_SCORE_KEYS, accept, explain

KEY_SETS = pytest.mark.parametrize("keys", [IMAGE_SCORE_KEYS, VIDEO_SCORE_KEYS], ids=["image", "video"])


def scores(keys, value):
    return {k: (value(i) if callable(value) else value) for i, k in enumerate(keys)}


def test_key_sets_are_the_papers():
    assert IMAGE_SCORE_KEYS == ("m_i2i", "m_i2t")
    assert VIDEO_SCORE_KEYS == ("subject_consistency", "background_consistency", "motion_smoothness",
                                "dynamic_degree", "aesthetic_quality", "imaging_quality")


@KEY_SETS
def test_better_on_every_key_is_accepted(keys):
    before = scores(keys, lambda i: 0.1 * i)
    after = scores(keys, lambda i: 0.1 * i + 0.01)
    assert accept(before, after, keys) is True


@KEY_SETS
def test_worse_everywhere_rolls_back(keys):
    assert accept(scores(keys, 0.6), scores(keys, 0.5), keys) is False


@KEY_SETS
def test_tie_on_one_key_rolls_back(keys):
    before = scores(keys, 0.5)
    for tied in keys:
        after = {k: (0.5 if k == tied else 0.9) for k in keys}
        assert accept(before, after, keys) is False, tied


@KEY_SETS
def test_better_on_all_but_one_rolls_back(keys):
    before = scores(keys, 0.5)
    for worse in keys:
        after = {k: (0.4 if k == worse else 0.9) for k in keys}
        assert accept(before, after, keys) is False, worse


@KEY_SETS
def test_no_regeneration_rolls_back(keys):
    assert accept(scores(keys, 0.5), None, keys) is False


@KEY_SETS
def test_nan_on_either_side_rolls_back(keys):
    for key in keys:
        after = {k: (math.nan if k == key else 0.9) for k in keys}
        assert accept(scores(keys, 0.5), after, keys) is False
        before = {k: (math.nan if k == key else 0.1) for k in keys}
        assert accept(before, scores(keys, 0.9), keys) is False


def test_only_the_named_keys_count():
    before = {"m_i2i": 0.5, "m_i2t": 0.5, "other": 0.9}
    after = {"m_i2i": 0.6, "m_i2t": 0.6, "other": 0.1}
    assert accept(before, after, IMAGE_SCORE_KEYS) is True


def test_missing_key_or_bad_value_names_the_field():
    with pytest.raises(InputError) as err:
        accept({"m_i2i": 0.5}, {"m_i2i": 0.6, "m_i2t": 0.6}, IMAGE_SCORE_KEYS)
    assert err.value.field == "before.m_i2t"
    with pytest.raises(InputError) as err:
        accept({"m_i2i": 0.5, "m_i2t": 0.5}, {"m_i2i": "high", "m_i2t": 0.6}, IMAGE_SCORE_KEYS)
    assert err.value.field == "after.m_i2i"
    with pytest.raises(InputError) as err:
        accept({}, {}, "m_i2i")
    assert err.value.field == "keys"
    with pytest.raises(InputError):
        accept({}, {}, ())


def test_explain_reports_per_key_deltas_json_safe():
    before = {"m_i2i": 0.5, "m_i2t": 0.25}
    after = {"m_i2i": 0.75, "m_i2t": math.nan}
    out = explain(before, after, IMAGE_SCORE_KEYS)
    assert out["m_i2i"] == {"before": 0.5, "after": 0.75, "delta": 0.25, "improved": True}
    assert out["m_i2t"] == {"before": 0.25, "after": None, "delta": None, "improved": False}
    none = explain(before, None, IMAGE_SCORE_KEYS)
    assert none["m_i2i"] == {"before": 0.5, "after": None, "delta": None, "improved": False}


def test_rule_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, personavlog.engine.frm_rule; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
