"""The statistics of an adapter evaluation: pure functions over numbers, testable without a model.

Two comparisons, each with a 95% interval so a reader can tell a real gain from noise on a few dozen tasks:
- ROUGE-L F against the reference, paired per task: the mean of (adapter - base) with a percentile
  bootstrap interval over tasks (resampling pairs, not the two sides apart, keeps the pairing).
- A judge's pairwise verdicts: the win rate (wins + ties/2)/n with a Wilson score interval, which, unlike
  the normal approximation, stays inside [0, 1] and keeps its coverage near 0 and 1 and for small n.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal, NamedTuple, Sequence

import numpy as np

from frd_assets.core.metrics.rouge_l import rouge_l_f

CONFIDENCE = 0.95

Outcome = Literal["win", "tie", "loss"]  # from the adapter's side


class Interval(NamedTuple):
    low: float
    high: float

    def excludes(self, value: float) -> bool:
        return value < self.low or value > self.high


def rouge_l_scores(references: Sequence[str], answers: Sequence[str]) -> list[float]:
    """ROUGE-L F of each answer against its reference (rouge-score's definition over the project's words,
    see metrics.rouge_l): Russian or Chinese answers score by their own words, not 0."""
    if len(references) != len(answers):
        raise ValueError(f"{len(references)} references but {len(answers)} answers; they must pair up")
    return [rouge_l_f(ref, ans) for ref, ans in zip(references, answers, strict=True)]


# Resampled means are computed in blocks of about this many indices: a 2,000 x 10,000 index matrix at once
# would take 160 MB for no gain in speed.
_BOOTSTRAP_BLOCK = 2**22


def bootstrap_mean_interval(
    values: Sequence[float], *, samples: int = 2000, seed: int = 0, confidence: float = CONFIDENCE
) -> Interval:
    """Percentile bootstrap interval of the mean: resample the values with replacement `samples` times
    and take the (1-confidence)/2 and (1+confidence)/2 quantiles of the resampled means. Seeded."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError("the bootstrap needs a non-empty list of numbers")
    if data.min() == data.max():
        # Every resample has this very mean; summing floats would only add rounding noise to it.
        return Interval(float(data[0]), float(data[0]))
    rng = np.random.default_rng(seed)
    n = data.size
    rows_per_block = max(1, _BOOTSTRAP_BLOCK // n)
    means = np.empty(samples)
    for start in range(0, samples, rows_per_block):
        rows = min(rows_per_block, samples - start)
        means[start : start + rows] = data[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(low), float(high))


def wilson_interval(successes: float, n: int, *, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval for a proportion successes/n; successes may end in .5 (a tie counts half).

    center = (p + z^2/2n) / (1 + z^2/n), half-width = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n).
    With n = 0 nothing is known: [0, 1].
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return Interval(0.0, 1.0)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(max(0.0, center - half), min(1.0, center + half))


class WinRate(NamedTuple):
    wins: int
    ties: int
    losses: int
    rate: float  # (wins + ties/2) / n
    interval: Interval  # Wilson score, 95%


def win_rate(outcomes: Sequence[Outcome], *, confidence: float = CONFIDENCE) -> WinRate:
    wins, ties, losses = (sum(o == kind for o in outcomes) for kind in ("win", "tie", "loss"))
    n = wins + ties + losses
    if n != len(outcomes):
        raise ValueError(f"outcomes must be 'win', 'tie' or 'loss'; got {sorted(set(outcomes))}")
    successes = wins + ties / 2
    rate = successes / n if n else 0.5
    return WinRate(wins, ties, losses, rate, wilson_interval(successes, n, confidence=confidence))


def position_consistency(pairs: Sequence[tuple[Outcome | None, Outcome | None]]) -> float:
    """The share of tasks whose two verdicts (adapter shown first, base shown first), both read from the
    adapter's side, name the same outcome; an unparsable verdict (None) agrees with nothing. 1.0 for no
    tasks: nothing was inconsistent."""
    if not pairs:
        return 1.0
    return sum(a is not None and a == b for a, b in pairs) / len(pairs)


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else 0.0
