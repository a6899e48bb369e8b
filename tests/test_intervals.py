"""95% intervals by a bootstrap over subjects: the vectorised resamples against a slow reference
(a Python loop of scikit-learn calls on the same resampled subjects), seeding, missing intervals,
and what a finished run's results hold."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from conftest import REPO
from scoring import intervals, metrics

AUS = [1, 2, 4, 9]


def small_case(seed: int = 3):
    """40 sequences of 12 subjects (1 to 5 each), 4 AUs: two common ones, one with ties in its
    probabilities, and AU9, coded in one subject only (too rare for an interval)."""
    rng = np.random.default_rng(seed)
    subjects = [f"S{int(s):03d}" for s in np.sort(rng.integers(0, 12, 40))]
    targets = (rng.random((40, 4)) < [0.4, 0.3, 0.5, 0.0]).astype(int)
    targets[[subjects.index(subjects[-1]) + i for i in range(subjects.count(subjects[-1]))], 3] = 1
    probs = np.clip(0.35 * targets + 0.65 * rng.random((40, 4)), 0, 1)
    probs[:, 2] = np.round(probs[:, 2], 1)  # ties: AUC counts them half
    return subjects, targets, probs


def reference_intervals(resampling: intervals.Resampling, targets, probs, threshold=0.5):
    """Per AU and metric, the 2.5 and 97.5 percentiles of scikit-learn's scores of each resample
    (its rows repeated as often as their subject was drawn), over the resamples where it exists,
    or None where it does not exist in more than 1% of them; and the macro's the same way."""
    unit_rows = [np.flatnonzero(resampling.unit_of == g) for g in range(len(resampling.units))]
    per_au = {k: [] for k in metrics.METRIC_KEYS}
    for draws in resampling.draws:  # the slow way: one resample at a time
        rows = np.concatenate([unit_rows[g] for g in draws])
        y, p = targets[rows], probs[rows]
        on = (p > threshold).astype(int)
        values = {k: [] for k in metrics.METRIC_KEYS}
        for j in range(y.shape[1]):
            positives = y[:, j].sum()
            values["f1"].append(f1_score(y[:, j], on[:, j], zero_division=0) if positives else np.nan)
            values["precision"].append(precision_score(y[:, j], on[:, j], zero_division=0) if positives else np.nan)
            values["recall"].append(recall_score(y[:, j], on[:, j]) if positives else np.nan)
            values["auc"].append(roc_auc_score(y[:, j], p[:, j]) if 0 < positives < len(y) else np.nan)
        for k in values:
            per_au[k].append(values[k])

    def interval(column):
        column = np.asarray(column)
        if np.isnan(column).mean() > 0.01:
            return None
        return list(np.percentile(column[~np.isnan(column)], [2.5, 97.5]))

    out = {k: [interval(np.asarray(per_au[k])[:, j]) for j in range(targets.shape[1])] for k in per_au}
    macro = {k: interval([np.nanmean(row) if not np.isnan(row).all() else np.nan for row in np.asarray(per_au[k])])
             for k in per_au}
    return out, macro


def scored(subjects, targets, probs, n=300, seed=7):
    resampling = intervals.draw(subjects, n, seed)
    scores = metrics.compute_metrics(targets, probs, AUS)
    return intervals.add_intervals(scores, resampling, targets, probs, AUS, 0.5), resampling


def test_intervals_equal_a_slow_scikit_learn_reference_on_the_same_resamples():
    subjects, targets, probs = small_case()
    scores, resampling = scored(subjects, targets, probs)
    per_au, macro = reference_intervals(resampling, targets, probs)
    for j, au in enumerate(AUS):
        ci = scores["per_au"][f"AU{au}"]["ci"]
        for k in metrics.METRIC_KEYS:
            if per_au[k][j] is None:
                assert ci[k] is None, (au, k)
            else:
                assert ci[k] == pytest.approx(per_au[k][j], abs=1e-12), (au, k)
    for k in metrics.METRIC_KEYS:
        assert scores["macro"]["ci"][k] == pytest.approx(macro[k], abs=1e-12), k
    # the common AUs have real intervals around their pooled value
    f1 = scores["per_au"]["AU1"]
    assert f1["ci"]["f1"][0] < f1["f1"] < f1["ci"]["f1"][1]


def test_an_au_too_rare_for_an_interval_is_null_with_a_reason():
    subjects, targets, probs = small_case()
    scores, _ = scored(subjects, targets, probs)
    rare = scores["per_au"]["AU9"]
    assert rare["f1"] is not None  # it has a pooled F1: its positives come from one subject ...
    assert rare["ci"]["f1"] is None and rare["ci"]["auc"] is None  # ... which most resamples do not draw
    assert "no positives in" in rare["ci_reason"]["f1"] and "% of the resamples" in rare["ci_reason"]["f1"]
    assert scores["per_au"]["AU1"]["ci_reason"] == {}
    table = metrics.format_table({"model": "m", "aus": AUS, **scores,
                                  "bootstrap": intervals.draw(subjects, 300, 7).record()}, "m")
    assert "n/a]" in table and "AU9 f1: no positives in" in table
    assert "percentile bootstrap over subjects (300 resamples of" in table


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    subjects, targets, probs = small_case()
    first, _ = scored(subjects, targets, probs, seed=11)
    again, _ = scored(subjects, targets, probs, seed=11)
    other, _ = scored(subjects, targets, probs, seed=12)
    assert again["macro"]["ci"] == first["macro"]["ci"] and again["per_au"] == first["per_au"]
    assert other["macro"]["ci"]["f1"] != first["macro"]["ci"]["f1"]


def test_resampling_sequences_treats_each_sequence_as_its_own_unit():
    subjects, _, _ = small_case()
    ids = [f"{s}_{i:03d}" for i, s in enumerate(subjects)]
    by_sequence = intervals.draw(ids, 50, 0, "sequence")
    assert len(by_sequence.units) == 40 and by_sequence.weights().sum(1).tolist() == [40.0] * 50
    by_subject = intervals.draw(subjects, 50, 0)
    weights = by_subject.weights()
    # all of a subject's sequences enter a resample together, as often as the subject was drawn
    for s in set(subjects):
        rows = [i for i, x in enumerate(subjects) if x == s]
        assert (weights[:, rows] == weights[:, rows[:1]]).all()
    assert "over sequences" in by_sequence.describe()


def test_a_run_holds_the_intervals_of_its_own_predictions(fast_run):
    """results.json, results.csv and the printed table of a finished run hold the 95% intervals of
    its pooled predictions, resampled over its subjects with its --seed."""
    results = json.loads((fast_run / "results.json").read_text())
    ids, subjects, _, aus, targets, probs = metrics.read_predictions(fast_run / "predictions.csv")
    boot = results["bootstrap"]
    assert boot["unit"] == "subject" and boot["resamples"] == 2000 and boot["seed"] == 0
    assert boot["units"] == len(set(subjects))
    again = intervals.add_intervals(metrics.compute_metrics(targets, probs, aus), intervals.draw(subjects, 2000, 0),
                                    targets, probs, aus, 0.5)
    assert results["per_au"] == json.loads(json.dumps(again["per_au"]))
    assert results["macro"]["ci"] == json.loads(json.dumps(again["macro"]["ci"]))
    low, high = results["macro"]["ci"]["f1"]
    assert low <= results["macro"]["f1"] <= high and low < high
    with open(fast_run / "results.csv", newline="") as f:
        rows = {row["AU"]: row for row in csv.DictReader(f)}
    assert float(rows["macro"]["f1_low"]) == low and float(rows["macro"]["f1_high"]) == high
    table = (fast_run / "results.md").read_text()
    assert f"{results['macro']['f1']:.3f} [{low:.3f}, {high:.3f}]" in table
    assert "95% intervals: percentile bootstrap over subjects (2000 resamples" in table


def test_the_benchmark_prints_the_bootstrap_time():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bootstrap.py"), "--sequences", "60",
                           "--subjects", "12", "--resamples", "50", "--repeats", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "60 sequences x 10 AUs, 12 subjects, 50 resamples:" in proc.stdout and " s " in proc.stdout


def test_bootstrap_is_a_scoring_setting_that_e_may_change(fast_run, tmp_path):
    """--bootstrap is saved in args.json (so -e scores a run as it was scored) but, unlike a training
    setting, -e may be given another: 0 scores the run without intervals."""
    import main

    assert json.loads((fast_run / "args.json").read_text())["bootstrap"] == 2000
    out = tmp_path / "no-intervals"
    assert main.cli(["-e", "--resume", str(fast_run), "--bootstrap", "0", "--output-dir", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    first = json.loads((fast_run / "results.json").read_text())
    assert results["bootstrap"] is None and "ci" not in results["macro"]
    assert results["macro"]["f1"] == first["macro"]["f1"]
    assert "f1_low" not in (out / "results.csv").read_text().splitlines()[0]
