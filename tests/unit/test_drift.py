import random

import numpy as np
import pytest

from serve_app.drift import (
    LENGTH_BINS,
    MAX_TOKENS_PER_PROMPT,
    TOKEN_BUCKETS,
    DriftMonitor,
    RollingHistogram,
    length_bin,
    length_counts,
    psi,
    token_buckets,
)


def prompts(rng: random.Random, n: int, *, length: tuple[int, int], vocab: range) -> list[list[int]]:
    return [[rng.choice(vocab) for _ in range(rng.randint(*length))] for _ in range(n)]


def test_length_bins_are_log2_and_capped():
    assert [length_bin(n) for n in (0, 1, 2, 3, 4, 7, 8, 1000)] == [0, 1, 2, 2, 3, 3, 4, 10]
    assert length_bin(10**9) == LENGTH_BINS - 1
    with pytest.raises(ValueError):
        length_bin(-1)


def test_length_counts_are_one_hot():
    counts = length_counts(5)
    assert counts.shape == (LENGTH_BINS,) and counts.sum() == 1 and counts[3] == 1


def test_token_buckets_are_stable_and_spread_a_broad_vocabulary_evenly():
    ids = list(range(64_000))
    counts = token_buckets(ids)
    assert counts.shape == (TOKEN_BUCKETS,) and counts.sum() <= MAX_TOKENS_PER_PROMPT
    assert np.array_equal(counts, token_buckets(ids))
    spread = token_buckets(list(range(0, 64_000, 16)))  # 4,000 ids, no sampling
    mean = 4000 / TOKEN_BUCKETS
    assert spread.min() > 0.5 * mean and spread.max() < 1.5 * mean


def test_a_narrow_run_of_ids_fills_only_part_of_the_buckets():
    # What a multiplicative hash would get wrong: 60 consecutive ids must not cover every bucket.
    occupied = int((token_buckets(list(range(5000, 5060))) > 0).sum())
    assert occupied < 0.5 * TOKEN_BUCKETS


def test_psi_is_zero_for_identical_distributions_and_scale_free():
    assert psi([10, 20, 30], [10, 20, 30]) == pytest.approx(0.0)
    assert psi([1, 2, 3], [100, 200, 300]) == pytest.approx(0.0)


def test_psi_grows_with_the_shift_and_is_symmetric():
    small = psi([50, 50], [55, 45])
    large = psi([50, 50], [90, 10])
    assert 0 < small < 0.1 < 0.25 < large
    assert psi([90, 10], [50, 50]) == pytest.approx(large)


def test_psi_of_disjoint_histograms_is_large_but_finite():
    value = psi([10, 0], [0, 10])
    assert 5 < value < float("inf")


def test_psi_refuses_mismatched_or_empty_histograms():
    with pytest.raises(ValueError, match="bins"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="observation"):
        psi([0, 0], [1, 1])


def test_rolling_histogram_forgets_what_leaves_the_window():
    histogram = RollingHistogram(bins=3, window=2)
    histogram.add(np.array([1, 0, 0]))
    histogram.add(np.array([0, 2, 0]))
    histogram.add(np.array([0, 0, 5]))
    assert histogram.counts == (0, 2, 5)
    assert histogram.size == 2
    with pytest.raises(ValueError, match="bins"):
        histogram.add(np.array([1, 2]))
    histogram.clear()
    assert histogram.counts == (0, 0, 0) and histogram.size == 0


def test_monitor_reports_nothing_until_both_windows_are_full_enough():
    monitor = DriftMonitor(reference_size=10, window_size=10, min_current=5, report_every=1)
    rng = random.Random(0)
    for prompt in prompts(rng, 10, length=(5, 20), vocab=range(1000)):
        assert monitor.observe(prompt) is None
    assert monitor.reference_full
    results = [monitor.observe(p) for p in prompts(rng, 5, length=(5, 20), vocab=range(1000))]
    assert results[:4] == [None] * 4
    assert results[4] is not None and results[4].current_size == 5


def test_same_traffic_scores_near_zero():
    rng = random.Random(1)
    monitor = DriftMonitor(reference_size=2000, window_size=2000, min_current=2000, report_every=2000)
    for prompt in prompts(rng, 2000, length=(20, 200), vocab=range(30000)):
        monitor.observe(prompt)
    scores = None
    for prompt in prompts(rng, 2000, length=(20, 200), vocab=range(30000)):
        scores = monitor.observe(prompt) or scores
    assert scores is not None
    assert scores.prompt_length < 0.02
    assert scores.token_ids < 0.02


def test_longer_prompts_and_another_vocabulary_score_large():
    rng = random.Random(2)
    monitor = DriftMonitor(reference_size=500, window_size=500, min_current=500, report_every=500)
    for prompt in prompts(rng, 500, length=(10, 40), vocab=range(0, 2000)):
        monitor.observe(prompt)
    for prompt in prompts(rng, 500, length=(400, 1600), vocab=range(2000, 2100)):
        scores = monitor.observe(prompt)
    assert scores is not None
    assert scores.prompt_length > 0.25
    assert scores.token_ids > 0.25


def test_only_the_changed_feature_moves():
    # Same lengths, another vocabulary: token ids drift, lengths do not.
    rng = random.Random(3)
    monitor = DriftMonitor(reference_size=1000, window_size=1000, min_current=1000, report_every=1000)
    for prompt in prompts(rng, 1000, length=(50, 100), vocab=range(0, 5000)):
        monitor.observe(prompt)
    for prompt in prompts(rng, 1000, length=(50, 100), vocab=range(5000, 5050)):
        scores = monitor.observe(prompt)
    assert scores is not None
    assert scores.prompt_length < 0.02 < 0.25 < scores.token_ids


def test_current_window_rolls_so_drift_that_ends_is_forgotten():
    rng = random.Random(4)
    monitor = DriftMonitor(reference_size=300, window_size=300, min_current=300, report_every=300)
    for prompt in prompts(rng, 300, length=(10, 40), vocab=range(3000)):
        monitor.observe(prompt)
    for prompt in prompts(rng, 300, length=(500, 900), vocab=range(3000)):
        shifted = monitor.observe(prompt)
    for prompt in prompts(rng, 300, length=(10, 40), vocab=range(3000)):
        recovered = monitor.observe(prompt)
    assert shifted is not None and recovered is not None
    assert shifted.prompt_length > 0.25 > 0.05 > recovered.prompt_length


def test_reset_reference_starts_over():
    monitor = DriftMonitor(reference_size=2, window_size=2, min_current=1, report_every=1)
    for prompt in ([1, 2], [3], [4, 5, 6]):
        monitor.observe(prompt)
    assert monitor.scores() is not None
    monitor.reset_reference()
    assert not monitor.reference_full and monitor.scores() is None


def test_monitor_refuses_impossible_sizes():
    with pytest.raises(ValueError):
        DriftMonitor(reference_size=0)
    with pytest.raises(ValueError):
        DriftMonitor(window_size=10, min_current=20)
