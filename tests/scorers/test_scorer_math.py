"""Known answers for the score arithmetic, independent of any network weights."""

import math

import numpy as np
import pytest
import torch

from personavlog.actors import scorer_models as sm


def unit(*rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_consistency_of_identical_features_is_one():
    f = unit([0.3, -1.0, 2.0]).repeat(5, 1)
    assert sm.consistency_from_features(f) == pytest.approx(1.0, abs=1e-6)


def test_consistency_formula_known_answer():
    # frames e1, e2, e1: s1 = ½[cos(e1,e2) + cos(e1,e2)] = 0, s2 = ½[cos(e2,e1) + cos(e1,e1)] = ½  -> mean ¼
    f = unit([1.0, 0.0], [0.0, 1.0], [1.0, 0.0])
    assert sm.consistency_from_features(f) == pytest.approx(0.25, abs=1e-6)
    # negative cosines count as 0, not as a penalty below 0
    assert sm.consistency_from_features(unit([1.0, 0.0], [-1.0, 0.0])) == pytest.approx(0.0, abs=1e-6)
    # features need not arrive normalised
    assert sm.consistency_from_features(torch.tensor([[2.0, 0.0], [5.0, 0.0]])) == pytest.approx(1.0, abs=1e-6)


def test_top_fraction_mean():
    values = torch.arange(100, dtype=torch.float32).view(1, 10, 10)
    assert sm.top_fraction_mean(values, 0.05).item() == pytest.approx(97.0)  # mean of 95..99
    assert sm.top_fraction_mean(torch.ones(2, 3, 3), 0.05).tolist() == [1.0, 1.0]  # at least one value


def test_dynamic_degree_rule():
    # 256x256: a pair moves above 6 px; 8 pairs need round(32/16) = 2 moving pairs
    assert sm.dynamic_from_peaks([7, 7, 0, 0, 0, 0, 0, 0], 256, 256) == 1.0
    assert sm.dynamic_from_peaks([7, 0, 0, 0, 0, 0, 0, 0], 256, 256) == 0.0
    assert sm.dynamic_from_peaks([6.0] * 8, 256, 256) == 0.0  # must exceed, not equal
    # threshold scales with the shorter side: 512x1024 -> 12 px
    assert sm.dynamic_from_peaks([11.0] * 8, 512, 1024) == 0.0
    assert sm.dynamic_from_peaks([13.0] * 8, 512, 1024) == 1.0
    # round(4n/16) is 0 for n <= 2; a still short clip must still be static
    assert sm.dynamic_from_peaks([0.0, 0.0], 256, 256) == 0.0
    assert sm.dynamic_from_peaks([7.0, 0.0], 256, 256) == 1.0
    with pytest.raises(ValueError):
        sm.dynamic_from_peaks([], 256, 256)


def test_dynamic_subsampling_step():
    assert sm.dynamic_subsample_step(16, 81) == 2
    assert sm.dynamic_subsample_step(24, 81) == 3
    assert sm.dynamic_subsample_step(8, 81) == 1
    assert sm.dynamic_subsample_step(4, 81) == 1
    assert sm.dynamic_subsample_step(30, 3) == 2  # never fewer than two frames


def smooth_pattern(h, w, shift_x=0.0):
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x = xs - shift_x
    img = np.stack([0.5 + 0.4 * np.sin(2 * math.pi * x / 16), 0.5 + 0.4 * np.cos(2 * math.pi * ys / 16),
                    0.5 + 0.2 * np.sin(2 * math.pi * (x + ys) / 32)])
    return torch.tensor(img, dtype=torch.float32).unsqueeze(0)


def test_backward_warp_zero_flow_is_identity():
    # float32 round trip pixel -> [-1, 1] grid -> pixel is exact only to a few ulps, hence 1e-5
    img = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sm.backward_warp(img, torch.zeros(2, 2, 20, 24)), img, atol=1e-5)


def test_midpoint_interpolation_of_a_uniform_translation():
    # content moves 4 px right from a to b: the true midpoint moved 2 px
    a, b, truth = smooth_pattern(32, 48), smooth_pattern(32, 48, 4), smooth_pattern(32, 48, 2)
    flow_ab = torch.zeros(1, 2, 32, 48)
    flow_ab[:, 0] = 4.0
    mid = sm.interpolate_midpoint(a, b, flow_ab, -flow_ab)
    inner = (slice(None), slice(None), slice(None), slice(4, -4))  # borders are clamped, not extrapolated
    assert torch.allclose(mid[inner], truth[inner], atol=1e-5)
    # without the flow the reconstruction is a blend, visibly wrong
    blend = sm.interpolate_midpoint(a, b, torch.zeros_like(flow_ab), torch.zeros_like(flow_ab))
    assert (blend[inner] - truth[inner]).abs().mean() > 0.02


def test_smoothness_from_errors():
    assert sm.smoothness_from_errors([0.0, 0.0]) == 1.0
    assert sm.smoothness_from_errors([255.0]) == 0.0
    assert sm.smoothness_from_errors([51.0, 51.0]) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        sm.smoothness_from_errors([])


def test_raft_working_size():
    est = sm.FlowEstimator.__new__(sm.FlowEstimator)  # geometry only, no network needed
    est.min_side, est.max_side = 128, 1024
    assert est.working_size(64, 96) == (128, 192)
    assert est.working_size(480, 832) == (480, 832)
    assert est.working_size(481, 833) == (488, 840)  # up to multiples of 8
    assert est.working_size(1080, 1920) == (576, 1024)
