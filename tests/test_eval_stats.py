"""eval.stats: bootstrap intervals, paired deltas, mean +- SE; properties, not snapshots."""

import math

import numpy as np
import pytest

from eval import stats


def _flags(n, accuracy, seed):
    return (np.random.default_rng(seed).random(n) < accuracy).astype(float).tolist()


def test_interval_covers_the_value_and_shrinks_as_n_grows():
    small = stats.bootstrap_ci(_flags(24, 0.5, 0))
    large = stats.bootstrap_ci(_flags(2400, 0.5, 0))
    for interval in (small, large):
        assert interval.low <= interval.value <= interval.high
    assert (small.n, large.n) == (24, 2400)
    assert large.high - large.low < (small.high - small.low) / 5  # ~ 1/sqrt(n): 10x narrower


def test_deterministic_given_the_seed():
    values = _flags(100, 0.6, 1)
    assert stats.bootstrap_ci(values, seed=3) == stats.bootstrap_ci(values, seed=3)
    assert stats.bootstrap_ci(values, seed=3) != stats.bootstrap_ci(values, seed=4)
    assert np.array_equal(stats.resample_indices(50, seed=7), stats.resample_indices(50, seed=7))


def test_identical_runs_give_a_zero_delta_with_a_zero_width_interval():
    answers = _flags(2000, 0.7, 2)
    delta = stats.paired_bootstrap_delta(answers, list(answers))
    assert (delta.value, delta.low, delta.high, delta.n) == (0.0, 0.0, 0.0, 2000)
    assert delta.contains(0.0)


def test_one_different_answer_in_24_is_within_noise():
    base = _flags(24, 0.5, 3)
    other = list(base)
    other[0] = 1.0 - other[0]
    delta = stats.paired_bootstrap_delta(other, base)
    assert abs(delta.value) == pytest.approx(1 / 24)
    assert delta.contains(0.0)


def test_paired_interval_is_narrower_than_unpaired_for_correlated_runs():
    base = np.array(_flags(300, 0.5, 4))
    other = base.copy()
    other[:15] = 1.0  # the same questions, a few more right
    paired = stats.paired_bootstrap_delta(other.tolist(), base.tolist())
    # unpaired: each run redrawn on its own
    a = other[stats.resample_indices(300, seed=0)].mean(axis=1)
    b = base[stats.resample_indices(300, seed=1)].mean(axis=1)
    low, high = stats.percentile_interval(a - b)
    assert paired.high - paired.low < (high - low) / 2
    assert not paired.contains(0.0) and low <= 0.0 <= high  # the same data: significant only when paired


def test_strata_keep_their_size_and_a_statistic_over_units_works():
    strata = ["a"] * 5 + ["b"] * 45
    indices = stats.resample_indices(50, strata=strata, resamples=200, seed=0)
    assert ((indices < 5).sum(axis=1) == 5).all()  # every redraw holds exactly 5 units of "a"

    values = [1.0] * 5 + [0.0] * 45  # the mean of group means is 0.5 on every stratified redraw

    def mean_of_groups(units):
        groups = {}
        for group, value in units:
            groups.setdefault(group, []).append(value)
        return float(np.mean([np.mean(v) for v in groups.values()]))

    interval = stats.bootstrap_ci(list(zip(strata, values)), mean_of_groups, strata=strata)
    assert (interval.value, interval.low, interval.high) == (0.5, 0.5, 0.5)


def test_mean_se_and_paired_difference():
    mean, se = stats.mean_se([1.0, 2.0, 3.0])
    assert (mean, se) == (2.0, pytest.approx(1 / math.sqrt(3)))
    assert math.isnan(stats.mean_se([4.0])[1])
    a, b = [10.0, 12.0, 14.0, 20.0], [9.0, 11.0, 13.5, 19.0]  # seeds differ a lot, the methods little
    diff, se, n = stats.paired_difference(a, b)
    assert (diff, n) == (pytest.approx(0.875), 4)
    assert se == pytest.approx(np.std([1, 1, 0.5, 1], ddof=1) / 2)
    assert se < stats.mean_se(a)[1] / 10


def test_errors_say_what_is_wrong():
    with pytest.raises(stats.StatsError, match="equal lengths"):
        stats.paired_difference([1.0], [1.0, 2.0])
    with pytest.raises(stats.StatsError, match="0 units"):
        stats.bootstrap_ci([])
    with pytest.raises(stats.StatsError, match="NaN"):
        stats.percentile_interval([1.0, float("nan")])
    with pytest.raises(stats.StatsError, match="one stratum per unit"):
        stats.resample_indices(3, strata=["a"])


def test_device_and_dtype_default_to_the_gpu_in_float16_else_cpu_float32(monkeypatch):
    """LLaVA evaluates in float16 on the GPU; a CPU run stays float32. Explicit flags win."""
    import argparse

    import torch

    from eval.benchmarks.base import resolve_device

    def resolved(available, **given):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        args = argparse.Namespace(**{"device": None, "dtype": None, **given})
        resolve_device(args)
        return args.device, args.dtype

    assert resolved(True) == ("cuda", "float16")
    assert resolved(False) == ("cpu", "float32")
    assert resolved(True, dtype="bfloat16") == ("cuda", "bfloat16")
    assert resolved(True, device="cpu") == ("cpu", "float32")


def test_every_generation_benchmark_batches_by_default():
    """VQA (through lmms-eval) generates 8 questions at a time like MMVP and CV-Bench, not one."""
    from eval.__main__ import build_parser

    common = ["--model", "m", "--output", "o"]
    for argv in (["vqa", *common, "--tasks", "gqa", "--data-root", "d"], ["mmvp", *common, "--data", "d"],
                 ["cv-bench", *common, "--data", "d"]):
        assert build_parser().parse_args(argv).batch_size == 8, argv[0]
