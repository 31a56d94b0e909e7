"""Tests for pipeline.drift: the pure math of drift/skew comparisons, against hand-computed values.

Every expected number is worked out by hand in the comments (never by calling the function under
test). Warnings are errors in this file: degenerate input must not spam NumPy RuntimeWarnings.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline import drift
from pipeline.drift import (
    Histogram,
    align,
    histogram_from_quantiles,
    jensen_shannon_divergence,
    jensen_shannon_divergence_of_counts,
    l_infinity_distance,
    ndcg,
    noise_floor,
    population_stability_index,
    population_stability_index_of_counts,
    rank_changes,
    share_distances,
    share_vector,
)

pytestmark = pytest.mark.filterwarnings("error")

INF = math.inf
LOG2_3 = math.log2(3)  # 1.5849625007211562


def h(boundaries, counts, nan_count=0.0) -> Histogram:
    return Histogram(np.array(boundaries, dtype=float), np.array(counts, dtype=float), nan_count)


def assert_aligned(h1, h2, expected1, expected2):
    got1, got2 = align(h1, h2)
    np.testing.assert_allclose(got1, expected1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got2, expected2, rtol=0, atol=1e-12)
    assert got1.dtype == got2.dtype == np.float64


# --- Histogram and histogram_from_quantiles -----------------------------------------------------


def test_histogram_total_and_frozen_copies():
    boundaries = np.array([0.0, 1.0, 2.0])
    hist = Histogram(boundaries, [1, 2], nan_count=3)
    assert hist.total == 6.0  # 1 + 2 + 3
    boundaries[0] = -5.0  # the histogram holds its own copy
    assert hist.boundaries[0] == 0.0
    with pytest.raises(ValueError):
        hist.counts[0] = 7.0  # read-only
    assert hist.counts.dtype == np.float64


@pytest.mark.parametrize(
    ("boundaries", "counts", "nan_count", "message"),
    [
        ([0, 1], [1, 2], 0, "needs 3 boundaries"),
        ([1, 0], [1], 0, "non-decreasing"),
        ([0, math.nan], [1], 0, "NaN"),
        ([0, 1], [-1], 0, ">= 0"),
        ([0, 1], [math.inf], 0, ">= 0"),
        ([0, 1], [1], -1, "nan_count"),
        ([[0, 1]], [1], 0, "one-dimensional"),
    ],
)
def test_histogram_rejects_invalid_input(boundaries, counts, nan_count, message):
    with pytest.raises(ValueError, match=message):
        Histogram(boundaries, counts, nan_count)


def test_histogram_from_quantiles_equal_mass_and_point_masses():
    # 4 buckets over 8 finite values: 8 / 4 = 2 each; [0, 0] twice is a point mass at 0 (2 + 2).
    hist = histogram_from_quantiles([0, 0, 0, 1, 2], count=8, nan_count=2)
    np.testing.assert_array_equal(hist.counts, [2, 2, 2, 2])
    np.testing.assert_array_equal(hist.boundaries, [0, 0, 0, 1, 2])
    assert hist.nan_count == 2.0
    assert hist.total == 10.0
    # Aligned with itself: regular buckets [0,1]: 2, [1,2]: 2; the point at 0: 2 + 2 = 4; then
    # the shared NaN bucket: 2 in both.
    assert_aligned(hist, hist, [2, 2, 4, 2], [2, 2, 4, 2])


def test_histogram_from_quantiles_empty_feature():
    # count == 0: the boundaries are NaN (transforms.statistics) and ignored.
    hist = histogram_from_quantiles([math.nan] * 11, count=0, nan_count=5)
    assert hist.counts.size == 0 and hist.boundaries.size == 0
    assert hist.total == 5.0


def test_histogram_from_quantiles_rejects_bad_input():
    with pytest.raises(ValueError, match="at least two"):
        histogram_from_quantiles([1.0], count=3)
    with pytest.raises(ValueError, match="count"):
        histogram_from_quantiles([0, 1], count=-1)
    with pytest.raises(ValueError, match="non-decreasing"):
        histogram_from_quantiles([2, 1], count=4)


def test_all_zero_attributions_are_one_point_mass_and_jsd_zero():
    # 10 buckets of 100/10 = 10 at the point 0 vs 10 buckets of 50/10 = 5 at the point 0:
    # aligned [100] vs [50] -> both normalise to [1] -> JSD = 0.
    zeros_a = histogram_from_quantiles([0.0] * 11, count=100)
    zeros_b = histogram_from_quantiles([0.0] * 11, count=50)
    assert_aligned(zeros_a, zeros_b, [100], [50])
    assert jensen_shannon_divergence(zeros_a, zeros_b) == 0.0
    assert population_stability_index(zeros_a, zeros_b) == 0.0


# --- align ---------------------------------------------------------------------------------------


def test_align_rebuckets_onto_the_union_of_boundaries():
    # Union [0, 1, 2, 3]. h1 [0,2) mass 4 spreads 4*1/2 = 2 onto [0,1) and [1,2), 0 on [2,3);
    # h2 [1,3) mass 2: 0 on [0,1), 2*1/2 = 1 on [1,2) and [2,3).
    assert_aligned(h([0, 2], [4]), h([1, 3], [2]), [2, 2, 0], [0, 1, 1])


def test_align_rebuckets_several_buckets_with_a_gap():
    # Union [0, 1, 2, 3, 4]. h1 [0,1): 1 -> 1; [1,3): 4 -> 4*1/2 = 2 on [1,2) and [2,3);
    # [3,4) lies outside h1 -> 0. h2 [2,4): 2 -> 0, 0, 2*1/2 = 1, 1.
    assert_aligned(h([0, 1, 3], [1, 4]), h([2, 4], [2]), [1, 2, 2, 0], [0, 0, 1, 1])


def test_align_keeps_identical_boundaries():
    assert_aligned(h([0, 1, 5], [3, 1]), h([0, 1, 5], [2, 2]), [3, 1], [2, 2])


def test_align_point_masses_get_their_own_buckets():
    # h1 = [0,0]: 3 (point at 0), [0,1): 1.  h2 = [0,1): 1, [1,1]: 2 (point at 1), [1,2): 1.
    # Stripped boundary sets {0, 1} vs {0, 1, 2} differ -> union [0, 1, 2]:
    #   h1 [1, 0], h2 [1, 1]; then one bucket per point value 0, 1: h1 [3, 0], h2 [0, 2].
    h1 = h([0, 0, 1], [3, 1])
    h2 = h([0, 1, 1, 2], [1, 2, 1])
    assert_aligned(h1, h2, [1, 0, 3, 0], [1, 1, 0, 2])
    assert_aligned(h2, h1, [1, 1, 0, 2], [1, 0, 3, 0])


def test_a_point_mass_never_overlaps_a_range_containing_it():
    # TFDV: all mass at the point 0 vs [-1, 1) holding 4: union [-1, 1] -> h1 [0], h2 [4]; the
    # point bucket -> h1 [4], h2 [0]. Disjoint: P = [0, 1], Q = [1, 0] -> JSD = 1.
    point = histogram_from_quantiles([0.0, 0.0, 0.0], count=4)
    spread = h([-1, 1], [4])
    assert_aligned(point, spread, [0, 4], [4, 0])
    assert jensen_shannon_divergence(point, spread) == pytest.approx(1.0, abs=1e-12)


def test_align_nan_bucket_is_shared():
    # Same boundaries -> [2] vs [3]; NaN present -> one NaN bucket each: h1 1, h2 2 (igbeam;
    # TFDV would append two disjoint buckets, [0, 1] and [2, 0]).
    assert_aligned(h([0, 1], [2], nan_count=1), h([0, 1], [3], nan_count=2), [2, 1], [3, 2])
    # Only the second histogram has NaNs: the bucket is still added, h1 0, h2 4.
    assert_aligned(h([0, 1], [2]), h([0, 1], [3], nan_count=4), [2, 0], [3, 4])


def test_align_infinite_masses():
    # h1: [-inf, 0): 2 is infinite mass, [0, 1): 3.  h2: [0, 1): 4, [1, inf): 1 infinite mass.
    # Stripped sets {0, 1} equal -> [3] vs [4]; then (2, 0) for h1's, (0, 1) for h2's.
    assert_aligned(h([-INF, 0, 1], [2, 3]), h([0, 1, INF], [4, 1]), [3, 2, 0], [4, 0, 1])
    # Both ends infinite in one histogram: 1 + 3 = 4 in one bucket (4, 0); none in h2.
    assert_aligned(h([-INF, 0, 1, INF], [1, 2, 3]), h([0, 1], [5]), [2, 4], [5, 0])


def test_align_all_kinds_together_in_tfdv_order():
    # h1: [-inf,0): 1 (inf), [0,0]: 2 (point 0), [0,2): 4, nan 1.  h2: [1,3): 2, nan 0.
    # Union [0,1,2,3]: h1 [2, 2, 0], h2 [0, 1, 1]; point 0: h1 2, h2 0; inf: (1, 0);
    # NaN bucket: h1 1, h2 0.
    h1 = h([-INF, 0, 0, 2], [1, 2, 4], nan_count=1)
    h2 = h([1, 3], [2])
    assert_aligned(h1, h2, [2, 2, 0, 2, 1, 1], [0, 1, 1, 0, 0, 0])


def test_align_empty_histograms():
    empty = histogram_from_quantiles([], count=0)
    got1, got2 = align(empty, empty)
    assert got1.size == 0 and got2.size == 0
    # Empty vs [0, 1): 2: union [0, 1] -> [0] vs [2].
    assert_aligned(empty, h([0, 1], [2]), [0], [2])


def _cdf_rebucket(boundaries, counts, union):
    """Independent reference: mass in [u_j, u_j+1) from the piecewise-linear CDF."""
    cdf = np.concatenate([[0.0], np.cumsum(counts)])
    return np.diff(np.interp(union, boundaries, cdf, left=0.0, right=cdf[-1]))


def test_align_matches_the_piecewise_linear_cdf_on_random_histograms():
    rng = np.random.default_rng(7)
    for _ in range(50):
        b1 = np.sort(rng.choice(np.arange(40.0), size=rng.integers(2, 8), replace=False))
        b2 = np.sort(rng.choice(np.arange(40.0), size=rng.integers(2, 8), replace=False))
        c1 = rng.integers(0, 10, size=b1.size - 1).astype(float)
        c2 = rng.integers(0, 10, size=b2.size - 1).astype(float)
        union = np.union1d(b1, b2)
        got1, got2 = align(Histogram(b1, c1), Histogram(b2, c2))
        if np.array_equal(b1, b2):
            np.testing.assert_allclose(got1, c1)
            np.testing.assert_allclose(got2, c2)
            continue
        np.testing.assert_allclose(got1, _cdf_rebucket(b1, c1, union), atol=1e-9)
        np.testing.assert_allclose(got2, _cdf_rebucket(b2, c2, union), atol=1e-9)


# --- Jensen-Shannon divergence -------------------------------------------------------------------


def test_jsd_identical_is_zero_and_disjoint_is_one():
    hist = h([0, 1, 2, 5], [3, 1, 6])
    assert jensen_shannon_divergence(hist, hist) == 0.0
    # Union [0,1,2,3]: [5, 0, 0] vs [0, 0, 7] -> P = [1,0,0], Q = [0,0,1], M = [.5,0,.5]:
    # KL(P||M) = 1*log2(1/.5) = 1, KL(Q||M) = 1 -> JSD = 1.
    assert jensen_shannon_divergence(h([0, 1], [5]), h([2, 3], [7])) == pytest.approx(1.0)


def test_jsd_hand_computed():
    # P = [.5, .5], Q = [1, 0], M = [.75, .25]
    # KL(P||M) = .5*log2(.5/.75) + .5*log2(.5/.25) = .5*(1 - log2 1.5) = .5*(2 - log2 3)
    # KL(Q||M) = 1*log2(1/.75) = 2 - log2 3
    # JSD = (.5 + 1)/2 * (2 - log2 3) = .75 * (2 - 1.5849625007) = .75 * .4150374993 = .3112781244
    expected = 0.75 * (2 - LOG2_3)
    assert expected == pytest.approx(0.311278, abs=1e-6)
    p_hist = h([0, 1, 2], [1, 1])
    q_hist = h([0, 1, 2], [2, 0])
    assert jensen_shannon_divergence(p_hist, q_hist) == pytest.approx(expected, rel=1e-12)
    assert jensen_shannon_divergence(q_hist, p_hist) == pytest.approx(expected, rel=1e-12)


def test_jsd_rebucketed():
    # Aligned [2, 2, 0] vs [0, 1, 1] -> P = [.5,.5,0], Q = [0,.5,.5], M = [.25,.5,.25]:
    # KL(P||M) = .5*log2(.5/.25) + .5*log2(.5/.5) = .5; KL(Q||M) = .5 -> JSD = .5.
    assert jensen_shannon_divergence(h([0, 2], [4]), h([1, 3], [2])) == pytest.approx(0.5)


def test_jsd_of_identical_histograms_with_nans_is_zero():
    # One shared NaN bucket: [3, 1] vs [3, 1] -> P = Q -> JSD = 0 (TFDV's disjoint NaN buckets
    # would give 1/4 here: identical runs must score 0).
    hist = h([0, 1], [3], nan_count=1)
    assert jensen_shannon_divergence(hist, hist) == 0.0
    # NaN fractions that differ: [3, 1] vs [1, 3] on the same buckets -> P = [3/4, 1/4],
    # Q = [1/4, 3/4], M = [1/2, 1/2]: KL(P||M) = 3/4 log2(3/2) + 1/4 log2(1/2) = KL(Q||M).
    other = h([0, 1], [1], nan_count=3)
    expected = 0.75 * math.log2(1.5) - 0.25
    assert jensen_shannon_divergence(hist, other) == pytest.approx(expected, rel=1e-12)


def test_jsd_of_counts():
    # {a: 1, b: 1} vs {a: 2}: P = [.5, .5], Q = [1, 0] -> .75*(2 - log2 3) as above.
    expected = 0.75 * (2 - LOG2_3)
    got = jensen_shannon_divergence_of_counts({"a": 1, "b": 1}, {"a": 2})
    assert got == pytest.approx(expected, rel=1e-12)
    assert jensen_shannon_divergence_of_counts({"a": 2}, {"b": 1, "a": 0}) == pytest.approx(1.0)
    assert jensen_shannon_divergence_of_counts({"a": 2, "b": 6}, {"b": 3, "a": 1}) == 0.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: jensen_shannon_divergence(histogram_from_quantiles([], 0), h([0, 1], [1])),
        lambda: jensen_shannon_divergence(h([0, 1], [1]), h([0, 1], [0])),
        lambda: jensen_shannon_divergence_of_counts({}, {"a": 1}),
        lambda: jensen_shannon_divergence_of_counts({"a": 0}, {"a": 1}),
        lambda: population_stability_index(h([0, 1], [1]), histogram_from_quantiles([], 0)),
        lambda: population_stability_index_of_counts({"a": 1}, {}),
    ],
)
def test_divergences_reject_empty_input(call):
    with pytest.raises(ValueError, match="empty"):
        call()


def test_counts_reject_negative_or_non_finite():
    with pytest.raises(ValueError, match=">= 0"):
        jensen_shannon_divergence_of_counts({"a": -1, "b": 2}, {"a": 1})
    with pytest.raises(ValueError, match=">= 0"):
        population_stability_index_of_counts({"a": 1}, {"a": math.nan})


def test_jsd_and_psi_symmetric_and_in_range_on_random_histograms():
    rng = np.random.default_rng(12345)
    for _ in range(100):
        hists = []
        for _ in range(2):
            buckets = int(rng.integers(1, 6))
            boundaries = np.sort(rng.normal(size=buckets + 1))
            if rng.random() < 0.3:
                boundaries[1] = boundaries[0]  # a point mass
            counts = rng.integers(0, 20, size=buckets).astype(float)
            counts[0] += 1  # never empty
            hists.append(Histogram(boundaries, counts, float(rng.integers(0, 3))))
        jsd = jensen_shannon_divergence(*hists)
        assert 0.0 <= jsd <= 1.0
        assert jsd == pytest.approx(jensen_shannon_divergence(*reversed(hists)), abs=1e-12)
        psi = population_stability_index(*hists)
        assert psi >= 0.0
        assert psi == pytest.approx(population_stability_index(*reversed(hists)), rel=1e-12)


# --- population stability index ------------------------------------------------------------------


def test_psi_hand_computed():
    # P = [.5, .5], Q = [.25, .75]:
    # PSI = (.5 - .25)*ln(.5/.25) + (.5 - .75)*ln(.5/.75) = .25*ln 2 - .25*ln(2/3)
    #     = .25*(ln 2 + ln 1.5) = .25*ln 3 = .25 * 1.0986122887 = .2746530722
    expected = 0.25 * math.log(3)
    assert expected == pytest.approx(0.274653, abs=1e-6)
    got = population_stability_index(h([0, 1, 2], [2, 2]), h([0, 1, 2], [1, 3]))
    assert got == pytest.approx(expected, rel=1e-12)
    got = population_stability_index_of_counts({"x": 1, "y": 1}, {"x": 1, "y": 3})
    assert got == pytest.approx(expected, rel=1e-12)
    assert population_stability_index(h([0, 1, 2], [2, 2]), h([0, 1, 2], [4, 4])) == 0.0


def test_psi_floors_empty_buckets_at_epsilon():
    # P = [1, 0] -> floored [1, 1e-4]; Q = [.5, .5] (unchanged):
    # PSI = (1 - .5)*ln(1/.5) + (1e-4 - .5)*ln(1e-4/.5)
    #     = .5*.6931471806 + (-.4999)*(-8.5171931914) = .3465735903 + 4.2577448764 = 4.6043184667
    expected = 0.5 * math.log(2) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert expected == pytest.approx(4.604318, abs=1e-6)
    got = population_stability_index(h([0, 1, 2], [6, 0]), h([0, 1, 2], [3, 3]))
    assert got == pytest.approx(expected, rel=1e-12)
    # The empty bucket on the current side instead: every term is the same, with both signs
    # flipped -> the same 4.6043184667.
    got = population_stability_index(h([0, 1, 2], [3, 3]), h([0, 1, 2], [6, 0]))
    assert got == pytest.approx(expected, rel=1e-12)
    # epsilon = 1e-2: (1e-2 - .5)*ln(1e-2/.5) = -.49*ln .02 = .49*3.9120230054 = 1.9168912726,
    # plus .5*ln 2 = .3465735903 -> 2.2634648629.
    got = population_stability_index(h([0, 1, 2], [6, 0]), h([0, 1, 2], [3, 3]), epsilon=1e-2)
    assert got == pytest.approx(0.5 * math.log(2) + 0.49 * -math.log(0.02), rel=1e-12)
    with pytest.raises(ValueError, match="epsilon"):
        population_stability_index(h([0, 1], [1]), h([0, 1], [1]), epsilon=0)


# --- L-infinity distance -------------------------------------------------------------------------


def test_l_infinity_tie_goes_to_the_value_that_sorts_last():
    # p = {a: 2/4, b: 2/4}, q = {a: 3/4, b: 1/4}: |.5 - .75| = .25 = |.5 - .25| -> tie; TFDV
    # scans keys in sorted order keeping a candidate on >=, so "b" wins.
    assert l_infinity_distance({"a": 2, "b": 2}, {"a": 3, "b": 1}) == ("b", 0.25)
    assert l_infinity_distance({"b": 2, "a": 2}, {"b": 1, "a": 3}) == ("b", 0.25)


def test_l_infinity_value_on_one_side_only():
    # p = {a: 3/4, b: 1/4, c: 0}, q = {a: 3/8, b: 1/8, c: 4/8}:
    # |a| = .375, |b| = .125, |c| = .5 -> ("c", .5).
    assert l_infinity_distance({"a": 3, "b": 1}, {"a": 3, "b": 1, "c": 4}) == ("c", 0.5)
    # Only "z" on the left: p = {z: 1}, q = {a: 1}: both differences 1 -> tie -> "z".
    assert l_infinity_distance({"z": 5}, {"a": 2}) == ("z", 1.0)


def test_l_infinity_identical_and_empty():
    assert l_infinity_distance({"a": 1, "b": 3}, {"a": 2, "b": 6}) == (None, 0.0)
    with pytest.raises(ValueError, match="empty"):
        l_infinity_distance({}, {"a": 1})
    with pytest.raises(ValueError, match="empty"):
        l_infinity_distance({"a": 1}, {"a": 0})


# --- nDCG ----------------------------------------------------------------------------------------


def test_ndcg_reversed_ranking():
    # Current order c, b, a; gains (baseline) 1, 2, 3:
    # DCG = 1/log2 2 + 2/log2 3 + 3/log2 4 = 1 + 1.2618595071 + 1.5 = 3.7618595071
    # IDCG (order a, b, c) = 3/1 + 2/log2 3 + 1/2 = 4.7618595071 -> nDCG = .7899980042
    expected = (1 + 2 / LOG2_3 + 3 / 2) / (3 + 2 / LOG2_3 + 1 / 2)
    assert expected == pytest.approx(0.789998, abs=1e-6)
    baseline = {"a": 3, "b": 2, "c": 1}
    got = ndcg(baseline, {"a": 0.1, "b": 0.2, "c": 0.3})
    assert got == pytest.approx(expected, rel=1e-12)
    # k = 1: DCG@1 = gain of c = 1, IDCG@1 = 3 -> 1/3.
    assert ndcg(baseline, {"a": 0.1, "b": 0.2, "c": 0.3}, k=1) == pytest.approx(1 / 3)
    # k larger than the number of features counts all of them.
    assert ndcg(baseline, {"a": 0.1, "b": 0.2, "c": 0.3}, k=10) == pytest.approx(expected)


def test_ndcg_identical_rankings_are_one():
    baseline = {"a": 3, "b": 2, "c": 1}
    assert ndcg(baseline, {"a": 30, "b": 20, "c": 10}) == 1.0
    # k = 1: only the top matters: a first in both (b/c swapped below) -> 3/3 = 1.
    assert ndcg(baseline, {"a": 30, "b": 1, "c": 2}, k=1) == 1.0


def test_ndcg_feature_new_in_current():
    # Features {a, b, d}; current order d, a, b with gains 0, 3, 2:
    # DCG = 0 + 3/log2 3 + 2/log2 4 = 1.8927892607 + 1 = 2.8927892607
    # IDCG (a, b, d) = 3 + 2/log2 3 + 0 = 4.2618595071 -> nDCG = .6787622295
    expected = (3 / LOG2_3 + 1) / (3 + 2 / LOG2_3)
    assert ndcg({"a": 3, "b": 2}, {"d": 5, "a": 3, "b": 2}) == pytest.approx(expected, rel=1e-12)
    # k = 1: DCG@1 = gain of d = 0 -> 0.
    assert ndcg({"a": 3, "b": 2}, {"d": 5, "a": 3, "b": 2}, k=1) == 0.0


def test_ndcg_ties_break_by_name():
    # Current a = b tie -> order a, b (by name); gains 1, 2:
    # DCG = 1 + 2/log2 3 = 2.2618595071; IDCG = 2 + 1/log2 3 = 2.6309297536 -> .8597186999
    # (sklearn would average over the tie: (1.5 + 1.5/log2 3)/IDCG = .9298593499.)
    expected = (1 + 2 / LOG2_3) / (2 + 1 / LOG2_3)
    assert ndcg({"a": 1, "b": 2}, {"a": 1, "b": 1}) == pytest.approx(expected, rel=1e-12)
    assert ndcg({"a": 2, "b": 1}, {"a": 1, "b": 1}) == 1.0


def test_ndcg_degenerate_inputs():
    assert math.isnan(ndcg({}, {}))
    assert ndcg({"a": 0, "b": 0}, {"a": 0}) == 1.0  # no feature matters on either side
    assert math.isnan(ndcg({"a": 0, "b": 0}, {"a": 1}))  # baseline gives nothing to rank against
    assert math.isnan(ndcg({}, {"a": 1}))
    with pytest.raises(ValueError, match="k"):
        ndcg({"a": 1}, {"a": 1}, k=0)
    with pytest.raises(ValueError, match="finite"):
        ndcg({"a": math.nan}, {"a": 1})
    with pytest.raises(ValueError, match=">= 0"):
        ndcg({"a": -1}, {"a": 1})


# --- rank changes and shares ---------------------------------------------------------------------


def test_rank_changes():
    # Baseline ranks a 1, b 2, c 3, d 4. Current ranks e 1, c 2, b 3, a 4; d absent -> 4 + 1 = 5.
    # Top 2: baseline a, b; current e, c. a: 4 - 1 = 3; b: 3 - 2 = 1;
    # e (absent from baseline -> 4 + 1 = 5): 1 - 5 = -4; c: 2 - 3 = -1.
    got = rank_changes({"a": 3, "b": 2, "c": 1, "d": 0}, {"a": 1, "b": 2, "c": 3, "e": 5}, 2)
    assert got == {"a": 3, "b": 1, "e": -4, "c": -1}
    assert list(got) == ["a", "b", "e", "c"]
    # Ties by name: baseline x = y -> x 1, y 2; current y 1, x 2 -> x: +1, y: -1.
    assert rank_changes({"x": 1, "y": 1}, {"x": 1, "y": 2}, 1) == {"x": 1, "y": -1}
    assert rank_changes({}, {}, 3) == {}
    with pytest.raises(ValueError, match="top_k"):
        rank_changes({"a": 1}, {"a": 1}, 0)


def test_share_vector():
    assert share_vector({"a": 1, "b": 3}) == {"a": 0.25, "b": 0.75}  # 1/4, 3/4
    got = share_vector({"a": math.nan, "b": 2, "c": 2})  # NaN left out of the sum 4
    assert math.isnan(got["a"]) and got["b"] == 0.5 and got["c"] == 0.5
    for degenerate in ({"a": 0, "b": 0}, {"a": math.nan, "b": math.nan}):
        assert all(math.isnan(value) for value in share_vector(degenerate).values())
    assert share_vector({}) == {}
    with pytest.raises(ValueError, match=">= 0"):
        share_vector({"a": -1, "b": 2})


def test_share_distances():
    # Diffs over {a, b, c}: |.5 - .25| = .25, |.5 - .5| = 0, |0 - .25| = .25
    # -> L1 = .5, L-infinity = .25.
    assert share_distances({"a": 0.5, "b": 0.5}, {"a": 0.25, "b": 0.5, "c": 0.25}) == (0.5, 0.25)
    assert share_distances({"a": 1.0}, {"a": 1.0}) == (0.0, 0.0)
    assert all(math.isnan(value) for value in share_distances({}, {}))
    assert all(math.isnan(value) for value in share_distances({"a": math.nan}, {"a": 1.0}))


# --- noise floor ---------------------------------------------------------------------------------


def test_noise_floor_scales():
    scores = [0.01, 0.03, math.nan, 0.02]
    # scale = (1/2000 + 1/4000) / (2/1000) = (.0005 + .00025) / .002 = .375; max score .03
    # inverse: .03 * .375 = .01125; inverse_sqrt: .03 * sqrt(.375) = .03 * .6123724357 = .0183712
    got = noise_floor(scores, rate="inverse", replicate_size=1000, full_sizes=(2000, 4000))
    assert got == pytest.approx(0.01125, rel=1e-12)
    got = noise_floor(scores, rate="inverse_sqrt", replicate_size=1000, full_sizes=(2000, 4000))
    assert got == pytest.approx(0.03 * 0.6123724356957945, rel=1e-12)
    # Equal sizes: (1/1000 + 1/1000) / (2/1000) = 1 -> the largest score unchanged.
    got = noise_floor([0.2, 0.1], rate="inverse", replicate_size=1000, full_sizes=(1000, 1000))
    assert got == pytest.approx(0.2)


def test_noise_floor_degenerate():
    kwargs = dict(rate="inverse", replicate_size=10, full_sizes=(10, 10))
    assert math.isnan(noise_floor([], **kwargs))
    assert math.isnan(noise_floor([math.nan, math.nan], **kwargs))
    with pytest.raises(ValueError, match="rate"):
        noise_floor([0.1], rate="linear", replicate_size=10, full_sizes=(10, 10))
    with pytest.raises(ValueError, match="> 0"):
        noise_floor([0.1], rate="inverse", replicate_size=0, full_sizes=(10, 10))
    with pytest.raises(ValueError, match="> 0"):
        noise_floor([0.1], rate="inverse", replicate_size=10, full_sizes=(10, math.inf))


def test_public_api():
    # Every public name exists and says what it computes.
    for name in drift.__all__:
        assert getattr(drift, name).__doc__, name
    assert "jensen_shannon_divergence" in drift.__all__ and "noise_floor" in drift.__all__
