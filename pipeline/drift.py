"""The pure math of drift and skew comparisons between two attribution runs.

NumPy only: no TensorFlow, Beam, pandas or SciPy, so the module is cheap to import anywhere and
every function is a plain computation on arrays or mappings. Nothing here reads runs or decides
alerts; callers feed it the statistics that `transforms.statistics` writes.

Histograms (``Histogram``, ``histogram_from_quantiles``)
    A run stores, per feature, ``q + 1`` quantile boundaries of the finite values (equal-mass
    buckets) and a NaN count. A bucket whose two bounds are equal is a point mass: a feature whose
    attributions are all exactly 0 has boundaries ``[0, 0, ..., 0]`` and all its mass at 0.

Alignment (``align``), exactly TFDV's ``AlignHistograms``
    (tensorflow_data_validation/anomalies/metrics.cc):

    1. strip point buckets (mass per point value) and buckets with a non-finite bound (summed as
       "infinite mass");
    2. if the remaining boundary sets differ, re-bucket both histograms onto the sorted union of
       boundaries assuming uniform mass within each bucket: a bucket ``[lo, hi)`` of mass ``m``
       gives ``m * (b[j+1] - b[j]) / (hi - lo)`` to each new bucket ``[b[j], b[j+1])`` inside it,
       and new buckets outside a histogram's buckets get 0;
    3. append one bucket per distinct point value of either histogram (0 where absent);
    4. append ``(inf1, 0)`` if the first histogram has infinite mass, then ``(0, inf2)`` if the
       second has;
    5. if either has NaNs, append one NaN bucket to both (``nan1`` and ``nan2``): NaN is kept
       apart from every value but compared with NaN. TFDV appends two buckets instead,
       ``[0, nan1]`` and ``[nan2, 0]``, so that NaN masses never overlap and two identical
       histograms whose NaN fraction is ``f`` score a Jensen-Shannon divergence of ``f``; igbeam
       deviates here because identical runs must score 0.

Jensen-Shannon divergence (``jensen_shannon_divergence``, ``..._of_counts``), TFDV's
    ``JensenShannonDivergence`` (Lin 1991, "Divergence measures based on the Shannon entropy"):
    with ``P`` and ``Q`` the aligned masses normalised to sum 1 and ``M = (P + Q) / 2``::

        JSD = (KL(P || M) + KL(Q || M)) / 2,   KL(P || M) = sum_{p_i > 0} p_i log2(p_i / m_i)

    in bits, so ``0 <= JSD <= 1`` (clipped to that range against rounding). This is the
    divergence, not its square root (the Jensen-Shannon distance).

Population stability index (``population_stability_index``, ``..._of_counts``)
    (Siddiqi 2006, "Credit Risk Scorecards"; Yurdakul 2018, "Statistical properties of the
    population stability index"): on the aligned, normalised masses, each floored at ``epsilon``
    first (``p_i <- max(p_i, epsilon)``, same for ``q_i``)::

        PSI = sum_i (p_i - q_i) ln(p_i / q_i)

    with the natural logarithm, as the credit-scoring literature uses it (rule of thumb: < 0.1
    stable, 0.1-0.25 moderate shift, > 0.25 large shift). The floor only changes buckets whose
    share is below ``epsilon``, in practice empty ones, where the index is otherwise infinite.

L-infinity distance (``l_infinity_distance``), TFDV's ``LInftyDistance``
    (``MaxNormalizedDifference`` in mode ``kSeparateTotal``): each side's counts divided by its
    own total, then the value with the largest ``|p_v - q_v|`` and that difference.

nDCG (``ndcg``), as SageMaker Clarify's feature-attribution drift monitor computes it (sklearn's
    ``ndcg_score`` with the baseline importances as the true relevance and the current ones as
    the scores; Clarify alerts below 0.9). Features ordered by current importance (descending),
    the gain at 1-based position ``i`` is that feature's *baseline* importance::

        DCG@k = sum_{i=1..k} gain_i / log2(i + 1),   nDCG@k = DCG@k / IDCG@k

    where IDCG@k is DCG@k with the features in baseline order.

Ranks and shares (``rank_changes``, ``share_vector``, ``share_distances``)
    Ranks are 1-based by descending importance with ties broken by feature name; shares are each
    importance over the sum of importances; share distances are the L1 and L-infinity norms of
    the difference of two share vectors.

Noise floor (``noise_floor``)
    A metric computed between disjoint random sub-samples (replicates) of one run measures what
    the metric reads when nothing changed. For two independent samples of sizes ``a`` and ``b``
    from one distribution over ``B`` buckets, a second-order expansion gives
    ``JSD ~ (1/8) sum_i (p_i - q_i)^2 / m_i`` (nats) and ``E[(p_i - q_i)^2] = m_i (1 - m_i)
    (1/a + 1/b)``, so ``E[JSD] ~ (B - 1) / (8 ln 2) * (1/a + 1/b)`` bits (and
    ``E[PSI] ~ (B - 1)(1/a + 1/b)``): such divergences shrink like ``1/n``. A difference of two
    means (or shares, or ranks) has standard deviation ``sigma * sqrt(1/a + 1/b)``. Replicates of
    size ``r`` have ``1/r + 1/r = 2/r``, hence the scale ``(1/a + 1/b) / (2/r)`` (``"inverse"``) or
    its square root (``"inverse_sqrt"``) from replicate scores to the comparison's sizes.

Empty or degenerate input never produces NumPy warnings: each function documents whether it
raises ``ValueError`` or returns NaN.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "Histogram",
    "align",
    "histogram_from_quantiles",
    "jensen_shannon_divergence",
    "jensen_shannon_divergence_of_counts",
    "l_infinity_distance",
    "ndcg",
    "noise_floor",
    "population_stability_index",
    "population_stability_index_of_counts",
    "rank_changes",
    "share_distances",
    "share_vector",
]

NOISE_RATES = ("inverse", "inverse_sqrt")
"""The accepted ``rate`` arguments of `noise_floor`."""


def _frozen_array(values: object, name: str) -> np.ndarray:
    """Returns `values` as a read-only, one-dimensional float64 copy."""
    array = np.array(values, dtype=np.float64, copy=True)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    array.setflags(write=False)
    return array


@dataclasses.dataclass(frozen=True, eq=False)
class Histogram:
    """A histogram of one feature's values: contiguous buckets plus a NaN count.

    Bucket ``i`` spans ``[boundaries[i], boundaries[i + 1])`` and holds ``counts[i]`` values; a
    bucket whose bounds are equal is a point mass at that value, one with an infinite bound holds
    "infinite mass" (see `align`). The arrays are stored as read-only float64 copies. Instances
    compare by identity (``eq=False``: NumPy arrays have no single truth value).

    Attributes:
      boundaries: ``k + 1`` non-decreasing, non-NaN bounds (``±inf`` allowed); empty when
        ``k == 0`` (a single bound is also accepted then).
      counts: ``k`` finite masses ``>= 0``.
      nan_count: The number (mass) of NaN values, finite and ``>= 0``.

    Raises:
      ValueError: On any violation of the above.
    """

    boundaries: np.ndarray
    counts: np.ndarray
    nan_count: float = 0.0

    def __post_init__(self) -> None:
        boundaries = _frozen_array(self.boundaries, "boundaries")
        counts = _frozen_array(self.counts, "counts")
        if counts.size == 0 and boundaries.size <= 1:
            boundaries = _frozen_array([], "boundaries")
        elif boundaries.size != counts.size + 1:
            raise ValueError(
                f"a histogram with {counts.size} buckets needs {counts.size + 1} boundaries, "
                f"got {boundaries.size}"
            )
        if np.isnan(boundaries).any():
            raise ValueError(f"boundaries must not be NaN, got {boundaries.tolist()}")
        if (np.diff(boundaries) < 0).any():
            raise ValueError(f"boundaries must be non-decreasing, got {boundaries.tolist()}")
        if not np.isfinite(counts).all() or (counts < 0).any():
            raise ValueError(f"counts must be finite and >= 0, got {counts.tolist()}")
        nan_count = float(self.nan_count)
        if not math.isfinite(nan_count) or nan_count < 0:
            raise ValueError(f"nan_count must be finite and >= 0, got {self.nan_count!r}")
        object.__setattr__(self, "boundaries", boundaries)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "nan_count", nan_count)

    @property
    def total(self) -> float:
        """The total mass: the bucket counts plus the NaN count."""
        return float(self.counts.sum()) + self.nan_count


def histogram_from_quantiles(
    boundaries: Sequence[float] | np.ndarray, count: float, nan_count: float = 0
) -> Histogram:
    """Builds the equal-mass histogram that ``q + 1`` quantile boundaries describe.

    Each of the ``q`` buckets holds ``count / q`` values; consecutive equal boundaries become
    point masses (a feature whose values are all 0 has boundaries ``[0, ..., 0]``: all its mass
    is a point mass at 0).

    Args:
      boundaries: The ``q + 1`` quantile boundaries of the finite values (ignored, and may be
        NaN, when ``count == 0``).
      count: The number of finite values.
      nan_count: The number of NaN values.

    Returns:
      The histogram; with ``count == 0`` it has no buckets, only `nan_count`.

    Raises:
      ValueError: If `count` is negative or not finite, or ``count > 0`` with fewer than two
        boundaries, or the boundaries are invalid (see `Histogram`).
    """
    count = float(count)
    if not math.isfinite(count) or count < 0:
        raise ValueError(f"count must be finite and >= 0, got {count!r}")
    if count == 0:
        return Histogram(np.empty(0), np.empty(0), nan_count)
    bounds = np.asarray(boundaries, dtype=np.float64)
    if bounds.ndim != 1 or bounds.size < 2:
        raise ValueError(
            f"count > 0 needs at least two quantile boundaries, got {np.ravel(bounds).tolist()}"
        )
    buckets = bounds.size - 1
    return Histogram(bounds, np.full(buckets, count / buckets), nan_count)


def _strip(
    histogram: Histogram,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[float, float], float]:
    """TFDV's ``StripPointAndInfiniteBuckets``.

    Returns:
      ``(lows, highs, counts)`` of the finite, non-point buckets, a map from point value to
      mass, and the total mass of buckets with a non-finite bound.
    """
    lows = histogram.boundaries[:-1]
    highs = histogram.boundaries[1:]
    counts = histogram.counts
    infinite = ~(np.isfinite(lows) & np.isfinite(highs))
    point = ~infinite & (lows == highs)
    regular = ~infinite & ~point
    points: dict[float, float] = {}
    for value, mass in zip(lows[point].tolist(), counts[point].tolist(), strict=True):
        points[value] = points.get(value, 0.0) + mass
    return lows[regular], highs[regular], counts[regular], points, float(counts[infinite].sum())


def _rebucket(
    lows: np.ndarray, highs: np.ndarray, counts: np.ndarray, union: np.ndarray
) -> np.ndarray:
    """TFDV's ``RebucketHistogram``: spreads each bucket's mass uniformly over the new buckets.

    Every bound of ``lows``/``highs`` is in `union`, so each new bucket lies inside one original
    bucket or outside all of them (mass 0).
    """
    new_lows, new_highs = union[:-1], union[1:]
    result = np.zeros(new_lows.size)
    if lows.size == 0:
        return result
    index = np.searchsorted(lows, new_lows, side="right") - 1
    clipped = np.clip(index, 0, lows.size - 1)
    inside = (index >= 0) & (new_highs <= highs[clipped])
    fraction = (new_highs[inside] - new_lows[inside]) / (
        highs[clipped[inside]] - lows[clipped[inside]]
    )
    result[inside] = counts[clipped[inside]] * fraction
    return result


def align(h1: Histogram, h2: Histogram) -> tuple[np.ndarray, np.ndarray]:
    """Aligns two histograms onto common buckets exactly as TFDV's ``AlignHistograms`` does.

    See the module docstring for the five steps (re-bucketing with uniform mass inside buckets,
    point masses, infinite masses, then the shared NaN bucket).

    Args:
      h1: The first (e.g. baseline) histogram.
      h2: The second (e.g. current) histogram.

    Returns:
      The two vectors of aligned bucket masses (not normalised), of equal length; each sums to
      its histogram's `Histogram.total`. Both empty when neither histogram has any mass or bucket.
    """
    lows1, highs1, counts1, points1, infinite1 = _strip(h1)
    lows2, highs2, counts2, points2, infinite2 = _strip(h2)
    bounds1 = np.unique(np.concatenate([lows1, highs1]))
    bounds2 = np.unique(np.concatenate([lows2, highs2]))
    if np.array_equal(bounds1, bounds2):
        # Same boundary sets: the stripped buckets are identical, TFDV keeps them as they are.
        parts1, parts2 = [counts1], [counts2]
    else:
        union = np.union1d(bounds1, bounds2)
        parts1 = [_rebucket(lows1, highs1, counts1, union)]
        parts2 = [_rebucket(lows2, highs2, counts2, union)]
    point_values = sorted(set(points1) | set(points2))
    parts1.append(np.array([points1.get(value, 0.0) for value in point_values]))
    parts2.append(np.array([points2.get(value, 0.0) for value in point_values]))
    if infinite1 != 0:
        parts1.append(np.array([infinite1]))
        parts2.append(np.array([0.0]))
    if infinite2 != 0:
        parts1.append(np.array([0.0]))
        parts2.append(np.array([infinite2]))
    if h1.nan_count > 0 or h2.nan_count > 0:  # one shared NaN bucket (TFDV: two disjoint ones)
        parts1.append(np.array([h1.nan_count]))
        parts2.append(np.array([h2.nan_count]))
    return np.concatenate(parts1).astype(np.float64), np.concatenate(parts2).astype(np.float64)


def _normalised(masses: np.ndarray, which: str) -> np.ndarray:
    """Returns `masses` divided by their sum; ValueError when the sum is 0 (empty)."""
    total = float(masses.sum())
    if not total > 0:
        raise ValueError(f"cannot compare an empty distribution: the {which} has no mass")
    return masses / total


def _jsd(masses1: np.ndarray, masses2: np.ndarray) -> float:
    """The Jensen-Shannon divergence (bits, in [0, 1]) of two aligned mass vectors."""
    p = _normalised(masses1, "first distribution")
    q = _normalised(masses2, "second distribution")
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum()
    return float(min(1.0, max(0.0, (kl_p + kl_q) / 2)))


def _psi(masses1: np.ndarray, masses2: np.ndarray, epsilon: float) -> float:
    """The population stability index (natural log) of two aligned mass vectors."""
    epsilon = float(epsilon)
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon!r}")
    p = np.maximum(_normalised(masses1, "first distribution"), epsilon)
    q = np.maximum(_normalised(masses2, "second distribution"), epsilon)
    return float(((p - q) * np.log(p / q)).sum())


def _count_vectors(
    counts_a: Mapping[str, float], counts_b: Mapping[str, float]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The sorted union of keys and both count vectors over it (missing key = 0).

    Raises:
      ValueError: If a count is negative or not finite.
    """
    keys = sorted(set(counts_a) | set(counts_b))
    vector_a = np.array([float(counts_a.get(key, 0.0)) for key in keys], dtype=np.float64)
    vector_b = np.array([float(counts_b.get(key, 0.0)) for key in keys], dtype=np.float64)
    for name, vector in (("counts_a", vector_a), ("counts_b", vector_b)):
        if not np.isfinite(vector).all() or (vector < 0).any():
            raise ValueError(f"{name} must be finite and >= 0, got {vector.tolist()}")
    return keys, vector_a, vector_b


def jensen_shannon_divergence(h1: Histogram, h2: Histogram) -> float:
    """TFDV's Jensen-Shannon divergence of two histograms, base 2, in ``[0, 1]``.

    Aligns the histograms (`align`), normalises each to sum 1 and returns
    ``(KL(P || M) + KL(Q || M)) / 2`` with ``M = (P + Q) / 2`` (terms with ``p == 0`` skipped).
    Symmetric. NaN masses share one bucket (see `align` for how this departs from TFDV).

    Args:
      h1: The first histogram.
      h2: The second histogram.

    Returns:
      The divergence: 0 for identical distributions, 1 for disjoint supports.

    Raises:
      ValueError: If either histogram is empty (zero total mass).
    """
    return _jsd(*align(h1, h2))


def jensen_shannon_divergence_of_counts(
    counts_a: Mapping[str, float], counts_b: Mapping[str, float]
) -> float:
    """The Jensen-Shannon divergence (base 2, in ``[0, 1]``) of two categorical distributions.

    The same formula as `jensen_shannon_divergence` on the value counts over the union of values
    (a value missing from one side counts 0 there). Unlike TFDV, which rejects a zero count, a
    count of 0 is accepted and means the value is absent.

    Args:
      counts_a: Value to count (or mass) of the first distribution.
      counts_b: The same for the second distribution.

    Returns:
      The divergence.

    Raises:
      ValueError: If a count is negative or not finite, or either side is empty (sums to 0).
    """
    _, vector_a, vector_b = _count_vectors(counts_a, counts_b)
    return _jsd(vector_a, vector_b)


def population_stability_index(h1: Histogram, h2: Histogram, epsilon: float = 1e-4) -> float:
    """The population stability index of two histograms (natural log).

    On the aligned (`align`), normalised masses, every share floored at `epsilon`:
    ``sum_i (p_i - q_i) ln(p_i / q_i)``. Symmetric, ``>= 0``. The floor only changes buckets
    whose share is below `epsilon` (in practice empty buckets, where PSI is otherwise infinite).

    Args:
      h1: The first (baseline) histogram.
      h2: The second (current) histogram.
      epsilon: The floor of every share, finite and ``> 0``.

    Returns:
      The index.

    Raises:
      ValueError: If either histogram is empty (zero total mass) or `epsilon` is not ``> 0``.
    """
    return _psi(*align(h1, h2), epsilon)


def population_stability_index_of_counts(
    counts_a: Mapping[str, float], counts_b: Mapping[str, float], epsilon: float = 1e-4
) -> float:
    """The population stability index (natural log) of two categorical distributions.

    The same formula as `population_stability_index` on the value counts over the union of
    values (missing value = count 0, floored at `epsilon` after normalisation).

    Args:
      counts_a: Value to count (or mass) of the first distribution.
      counts_b: The same for the second distribution.
      epsilon: The floor of every share, finite and ``> 0``.

    Returns:
      The index.

    Raises:
      ValueError: If a count is negative or not finite, either side is empty (sums to 0), or
        `epsilon` is not ``> 0``.
    """
    _, vector_a, vector_b = _count_vectors(counts_a, counts_b)
    return _psi(vector_a, vector_b, epsilon)


def l_infinity_distance(
    counts_a: Mapping[str, float], counts_b: Mapping[str, float]
) -> tuple[str | None, float]:
    """TFDV's ``LInftyDistance``: the largest difference of two normalised value counts.

    Each side is divided by its own total (TFDV's ``kSeparateTotal``); over the union of values
    (missing = 0) the result is the value with the largest ``|p_v - q_v|`` and that difference.
    Ties go to the value that sorts last, as in TFDV (it scans the values in sorted order and
    keeps a candidate on ``>=``). When every difference is 0, the value is None (TFDV reports the
    last value with difference 0).

    Args:
      counts_a: Value to count of the first distribution.
      counts_b: The same for the second distribution.

    Returns:
      ``(value, difference)`` with ``0 <= difference <= 1``.

    Raises:
      ValueError: If a count is negative or not finite, or either side is empty or sums to 0.
    """
    keys, vector_a, vector_b = _count_vectors(counts_a, counts_b)
    p = _normalised(vector_a, "first distribution (counts_a)")
    q = _normalised(vector_b, "second distribution (counts_b)")
    differences = np.abs(p - q)
    largest = float(differences.max())
    if largest == 0:
        return None, 0.0
    last = int(np.flatnonzero(differences == largest)[-1])
    return keys[last], largest


def _check_importance(importance: Mapping[str, float], name: str) -> dict[str, float]:
    """Returns `importance` as a dict of floats; ValueError on a non-finite value."""
    values = {str(key): float(value) for key, value in importance.items()}
    bad = {key: value for key, value in values.items() if not math.isfinite(value)}
    if bad:
        raise ValueError(f"{name} must be finite, got {bad}")
    return values


def _ranking(importance: Mapping[str, float]) -> list[str]:
    """Feature names by descending importance, ties broken by name (ascending)."""
    return sorted(importance, key=lambda feature: (-importance[feature], feature))


def ndcg(
    baseline_importance: Mapping[str, float],
    current_importance: Mapping[str, float],
    k: int | None = None,
) -> float:
    """Normalised discounted cumulative gain of the current ranking against the baseline.

    As SageMaker Clarify's feature-attribution drift monitor (sklearn's ``ndcg_score`` with the
    baseline importances as relevance and the current importances as scores; Clarify alerts
    below 0.9). Features are ordered by current importance, descending; the gain at 1-based
    position ``i`` is the feature's baseline importance (0 for a feature new in current):
    ``DCG@k = sum_{i<=k} gain_i / log2(i + 1)``, and ``IDCG@k`` is the same in baseline order.

    Definition choices: a feature missing from one mapping has importance 0 there; ties in an
    ordering are broken by feature name, ascending (deterministic; sklearn averages the gain over
    tied scores instead); identical rankings give 1.0.

    Args:
      baseline_importance: Feature to baseline importance (the relevance), finite and ``>= 0``.
      current_importance: Feature to current importance (the scores), finite.
      k: Positions counted (``>= 1``; larger than the number of features means all of them).
        None: every feature of either mapping.

    Returns:
      ``DCG@k / IDCG@k`` in ``[0, 1]``. When ``IDCG@k == 0`` (the baseline gives no feature any
      importance) nDCG is undefined: 1.0 when the current importances are all 0 as well (no
      feature matters on either side: nothing moved), NaN otherwise (sklearn would report 0).
      NaN when both mappings are empty.

    Raises:
      ValueError: If an importance is not finite, a baseline importance is negative, or
        ``k < 1``.
    """
    baseline = _check_importance(baseline_importance, "baseline_importance")
    current = _check_importance(current_importance, "current_importance")
    negative = {key: value for key, value in baseline.items() if value < 0}
    if negative:
        raise ValueError(f"baseline_importance (the relevance) must be >= 0, got {negative}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1 or None, got {k}")
    features = set(baseline) | set(current)
    if not features:
        return math.nan
    cutoff = len(features) if k is None else min(int(k), len(features))
    full_baseline = {feature: baseline.get(feature, 0.0) for feature in features}
    full_current = {feature: current.get(feature, 0.0) for feature in features}
    discounts = 1.0 / np.log2(np.arange(2, cutoff + 2))
    current_gains = np.array([full_baseline[f] for f in _ranking(full_current)[:cutoff]])
    ideal_gains = np.array([full_baseline[f] for f in _ranking(full_baseline)[:cutoff]])
    dcg = float((current_gains * discounts).sum())
    idcg = float((ideal_gains * discounts).sum())
    if idcg == 0:
        return 1.0 if all(value == 0 for value in full_current.values()) else math.nan
    return float(min(1.0, dcg / idcg))


def rank_changes(
    baseline_importance: Mapping[str, float],
    current_importance: Mapping[str, float],
    top_k: int,
) -> dict[str, int]:
    """How far each top feature moved: current rank minus baseline rank.

    Ranks are 1-based by descending importance, ties broken by feature name (ascending); a
    feature absent from one side gets rank ``len(that side) + 1`` there. A positive change means
    the feature fell (less important now), a negative one that it rose.

    Args:
      baseline_importance: Feature to baseline importance, finite.
      current_importance: Feature to current importance, finite.
      top_k: How many top features of each ranking to report (``>= 1``).

    Returns:
      Feature to ``current_rank - baseline_rank`` for every feature among the `top_k` of either
      ranking: the baseline's top features in baseline order, then the current's other top
      features in current order. Empty when both sides are empty.

    Raises:
      ValueError: If an importance is not finite or ``top_k < 1``.
    """
    baseline = _check_importance(baseline_importance, "baseline_importance")
    current = _check_importance(current_importance, "current_importance")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    baseline_order = _ranking(baseline)
    current_order = _ranking(current)
    baseline_rank = {feature: rank for rank, feature in enumerate(baseline_order, start=1)}
    current_rank = {feature: rank for rank, feature in enumerate(current_order, start=1)}
    changes: dict[str, int] = {}
    for feature in baseline_order[:top_k] + current_order[:top_k]:
        if feature not in changes:
            changes[feature] = current_rank.get(feature, len(current) + 1) - baseline_rank.get(
                feature, len(baseline) + 1
            )
    return changes


def share_vector(importance: Mapping[str, float]) -> dict[str, float]:
    """Each feature's share of the total importance: ``value / sum(values)``.

    NaN-safe: NaN values are left out of the sum and keep a NaN share; when no finite value is
    positive (all NaN, all 0), every share is NaN.

    Args:
      importance: Feature to importance, ``>= 0`` or NaN.

    Returns:
      Feature to share, in the input's order; empty for empty input.

    Raises:
      ValueError: If a value is negative or infinite.
    """
    values = np.array([float(value) for value in importance.values()], dtype=np.float64)
    finite = ~np.isnan(values)
    if np.isinf(values).any() or (values[finite] < 0).any():
        raise ValueError(f"importance must be >= 0 or NaN, got {dict(importance)}")
    total = float(values[finite].sum())
    if not total > 0:
        return {feature: math.nan for feature in importance}
    return {
        feature: float(value) / total for feature, value in zip(importance, values, strict=True)
    }


def share_distances(
    shares_a: Mapping[str, float], shares_b: Mapping[str, float]
) -> tuple[float, float]:
    """The L1 and L-infinity distances of two share vectors.

    Over the union of features (a missing feature has share 0). A NaN share makes both
    distances NaN.

    Args:
      shares_a: Feature to share (e.g. from `share_vector`).
      shares_b: The same for the other run.

    Returns:
      ``(sum_f |a_f - b_f|, max_f |a_f - b_f|)``; ``(nan, nan)`` when both are empty.
    """
    features = sorted(set(shares_a) | set(shares_b))
    if not features:
        return math.nan, math.nan
    a = np.array([float(shares_a.get(feature, 0.0)) for feature in features], dtype=np.float64)
    b = np.array([float(shares_b.get(feature, 0.0)) for feature in features], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        differences = np.abs(a - b)
    if np.isnan(differences).any():
        return math.nan, math.nan
    return float(differences.sum()), float(differences.max())


def noise_floor(
    replicate_scores: Sequence[float],
    *,
    rate: str,
    replicate_size: float,
    full_sizes: tuple[float, float],
) -> float:
    """The largest replicate score scaled to the comparison's sample sizes.

    `replicate_scores` are a metric computed between disjoint random sub-samples (replicates) of
    one run, each of `replicate_size` examples: what the metric reads when nothing changed.
    With ``(a, b) = full_sizes``, ``scale = (1/a + 1/b) / (2 / replicate_size)`` for
    ``rate="inverse"`` (divergences whose no-change value shrinks like ``1/n``: JSD, PSI) and
    its square root for ``rate="inverse_sqrt"`` (differences of means, shares, ranks); see the
    module docstring for the derivation.

    Args:
      replicate_scores: The metric's values between pairs of replicates; non-finite values
        (NaN) are ignored.
      rate: ``"inverse"`` or ``"inverse_sqrt"``.
      replicate_size: Examples per replicate, ``> 0``.
      full_sizes: ``(n_baseline, n_current)``, both ``> 0``.

    Returns:
      ``max(score) * scale`` over the finite scores; NaN when there is none.

    Raises:
      ValueError: On an unknown `rate` or a size that is not finite and ``> 0``.
    """
    if rate not in NOISE_RATES:
        raise ValueError(f"rate must be one of {NOISE_RATES}, got {rate!r}")
    sizes = [float(replicate_size), *(float(size) for size in full_sizes)]
    if len(sizes) != 3 or not all(math.isfinite(size) and size > 0 for size in sizes):
        raise ValueError(
            "replicate_size and both full_sizes must be finite and > 0, got "
            f"replicate_size={replicate_size!r}, full_sizes={full_sizes!r}"
        )
    replicate, size_a, size_b = sizes
    scale = (1 / size_a + 1 / size_b) / (2 / replicate)
    if rate == "inverse_sqrt":
        scale = math.sqrt(scale)
    scores = np.array([float(score) for score in replicate_scores], dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return math.nan
    return float(scores.max()) * scale
