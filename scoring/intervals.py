"""95% intervals for the pooled metrics: a bootstrap over subjects (or sequences), vectorised.

A resample draws the run's subjects with replacement, as many as there are; every sequence of a
drawn subject enters once per draw. The pooled metrics of a resample are then weighted counts:
TP, FP and FN per AU are matrix products of the (B, N) multiplicity matrix with the (N, A)
indicator columns, and the ROC AUC is a weighted Mann-Whitney statistic from one sort per AU.
The interval is the 2.5th to 97.5th percentile of the resampled values.

A metric that does not exist in too many resamples (an AU whose few positives come from a few
subjects, so that many resamples hold none) gets no interval (None) and a reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from utils import au_name

METRIC_KEYS = ("f1", "precision", "recall", "auc")
DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95
# An interval is left out when the metric does not exist in more than this share of the resamples:
# the interval of the rest would describe only the resamples where the AU happened to be drawn.
MAX_UNDEFINED = 0.01


@dataclass
class Resampling:
    """The drawn units of every resample and what they mean per sequence."""

    unit: str  # "subject" or "sequence"
    seed: int
    draws: np.ndarray  # (B, G) indices of the drawn units, into `units`
    units: list[str]  # the G distinct units, sorted
    unit_of: np.ndarray  # (N,) each sequence's unit index

    @property
    def resamples(self) -> int:
        return len(self.draws)

    def weights(self) -> np.ndarray:
        """(B, N) float64: how many times each sequence enters each resample."""
        b, g = self.draws.shape
        offsets = (np.arange(b)[:, None] * g + self.draws).ravel()
        counts = np.bincount(offsets, minlength=b * g).reshape(b, g)
        return counts[:, self.unit_of].astype(np.float64)

    def describe(self) -> str:
        return (f"{CONFIDENCE:.0%} intervals: percentile bootstrap over {self.unit}s "
                f"({self.resamples} resamples of {len(self.units)} {self.unit}s, seed {self.seed})")

    def record(self) -> dict:
        """What results.json says about the intervals."""
        return {"resamples": self.resamples, "unit": self.unit, "units": len(self.units), "seed": self.seed,
                "confidence": CONFIDENCE, "method": "percentile", "text": self.describe()}


def draw(groups: Sequence[str], n_resamples: int, seed: int, unit: str = "subject") -> Resampling:
    """Resample the distinct `groups` (one per sequence) with replacement, `n_resamples` times,
    from a numpy Generator seeded with `seed`: the same seed gives the same resamples."""
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    units, unit_of = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(units), size=(n_resamples, len(units)))
    return Resampling(unit=unit, seed=int(seed), draws=draws, units=units.tolist(), unit_of=unit_of.ravel())


# ----------------------------------------------------------------------------- metrics of every resample


def resampled_metrics(weights: np.ndarray, targets: np.ndarray, probs: np.ndarray,
                      threshold: float) -> dict[str, np.ndarray]:
    """Per-AU F1, precision, recall and AUC of every resample: (B, A) arrays, NaN where a metric does
    not exist in a resample (the same rules as metrics.compute_metrics: no positives, no F1, precision
    or recall; one class only, no AUC; nothing predicted on, precision 0)."""
    y = np.asarray(targets, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    on = (probs > threshold).astype(np.float64)
    tp, fp, fn = weights @ (y * on), weights @ ((1 - y) * on), weights @ (y * (1 - on))
    support, predicted = tp + fn, tp + fp
    has_pos = support > 0
    with np.errstate(divide="ignore", invalid="ignore"):  # the 0/0 cells are replaced by np.where
        precision = np.where(has_pos, np.where(predicted > 0, tp / predicted, 0.0), np.nan)
        recall = np.where(has_pos, tp / support, np.nan)
        f1 = np.where(has_pos, 2 * tp / (2 * tp + fp + fn), np.nan)
    return {"f1": f1, "precision": precision, "recall": recall, "auc": resampled_auc(weights, y, probs)}


def resampled_auc(weights: np.ndarray, y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(B, A) ROC AUC of every resample: the weighted share of (positive, negative) pairs that the
    positive wins, ties counting half, from one sort per AU; NaN where a resample lacks a class."""
    auc = np.full((len(weights), y.shape[1]), np.nan)
    for j in range(y.shape[1]):  # one sort per AU; every resample at once
        order = np.argsort(probs[:, j], kind="stable")
        scores = probs[order, j]
        starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])  # the groups of tied scores
        w = weights[:, order]
        pos = np.add.reduceat(w * y[order, j], starts, axis=1)
        neg = np.add.reduceat(w * (1 - y[order, j]), starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each score
        wins = (pos * (below + 0.5 * neg)).sum(1)
        pairs = pos.sum(1) * neg.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            auc[:, j] = np.where(pairs > 0, wins / pairs, np.nan)
    return auc


def macro_of(values: np.ndarray) -> np.ndarray:
    """(B,) the mean over the AUs where a metric exists in each resample (NaN where none does),
    as the point estimate's macro average is taken."""
    defined = ~np.isnan(values)
    counts = defined.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, np.where(defined, values, 0.0).sum(1) / counts, np.nan)


# ----------------------------------------------------------------------------- intervals


def percentile_interval(values: np.ndarray, what: str) -> tuple[list[float] | None, str | None]:
    """([low, high], None) from the resamples where the value exists, or (None, the reason)."""
    undefined = np.isnan(values)
    share = float(undefined.mean())
    if share > MAX_UNDEFINED:
        return None, f"{what} in {share:.0%} of the resamples"
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values[~undefined], [tail, 100 - tail])
    return [float(low), float(high)], None


UNDEFINED = {"f1": "no positives", "precision": "no positives", "recall": "no positives",
             "auc": "no positives or no negatives"}


def add_intervals(scores: dict, resampling: Resampling, targets: np.ndarray, probs: np.ndarray,
                  aus: Sequence[int], threshold: float) -> dict:
    """`scores` (metrics.compute_metrics output) with a `ci` per AU and for the macro average:
    {metric: [low, high] or None}, and a `ci_reason` {metric: why} for each None. The metric's own
    point value being None is reason enough."""
    values = resampled_metrics(resampling.weights(), targets, probs, threshold)
    scored = [(au_name(int(a)), j) for j, a in enumerate(aus)]
    for name, j in scored:
        entry = scores["per_au"][name]
        entry["ci"], entry["ci_reason"] = intervals_of({k: values[k][:, j] for k in METRIC_KEYS}, entry)
    macro = scores["macro"]
    macro["ci"], macro["ci_reason"] = intervals_of({k: macro_of(values[k]) for k in METRIC_KEYS}, macro)
    return scores


def intervals_of(columns: dict[str, np.ndarray], point: dict) -> tuple[dict, dict]:
    ci, reasons = {}, {}
    for key, column in columns.items():
        if point.get(key) is None:
            ci[key], reasons[key] = None, f"no {key} to begin with"
            continue
        ci[key], why = percentile_interval(column, UNDEFINED[key])
        if why:
            reasons[key] = why
    return ci, reasons


# ----------------------------------------------------------------------------- paired differences


@dataclass
class PairedDifference:
    """One run's macro figure minus the baseline's, and its paired interval (None: see `reason`)."""

    metric: str
    difference: float | None
    interval: list[float] | None
    reason: str | None

    @property
    def excludes_zero(self) -> bool:
        return self.interval is not None and (self.interval[0] > 0 or self.interval[1] < 0)

    def text(self) -> str:
        """`+0.012 [-0.008, +0.019]`, with * where the interval excludes 0; `n/a` without a difference."""
        if self.difference is None:
            return "n/a"
        text = f"{self.difference:+.3f}"
        if self.interval is None:
            return f"{text} [n/a]"
        return f"{text} [{self.interval[0]:+.3f}, {self.interval[1]:+.3f}]" + ("*" if self.excludes_zero else "")

    def record(self) -> dict:
        """What a results.json says of it."""
        return {"difference": self.difference, "interval": self.interval, "reason": self.reason}


def paired_differences(resampling: Resampling, base: tuple[np.ndarray, np.ndarray],
                       other: tuple[np.ndarray, np.ndarray], threshold_base: float, threshold_other: float,
                       point: dict[str, tuple[float | None, float | None]],
                       keys: Sequence[str] = ("f1", "auc")) -> dict[str, PairedDifference]:
    """Macro `keys` of `other` minus `base` ((targets, probs), rows of the same sequences in the same
    order), each resample drawing the same units for both runs. `point`: {key: (base, other)} macro
    values as the runs' results hold them."""
    weights = resampling.weights()
    a = resampled_metrics(weights, *base, threshold_base)
    b = resampled_metrics(weights, *other, threshold_other)
    out = {}
    for key in keys:
        before, after = point[key]
        if before is None or after is None:
            out[key] = PairedDifference(key, None, None, f"a run has no macro {key}")
            continue
        interval, why = percentile_interval(macro_of(b[key]) - macro_of(a[key]), f"no macro {key}")
        out[key] = PairedDifference(key, after - before, interval, why)
    return out
