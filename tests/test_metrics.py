"""scoring/metrics.py: metrics against hand-counted examples, tables, predictions and results files, plots."""
from __future__ import annotations

import csv
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from scoring import metrics
from utils import UserError


# ----------------------------------------------------------------------------- metrics


def hand_example():
    """6 sequences, 2 AUs (called AU4 and AU12 to show the labels come from the AU list).

    AU4:  true  1    1    1    0    0    0
          prob  .9   .8   .3   .7   .2   .1   -> on: 1 1 0 1 0 0
          TP 2 (rows 1, 2), FN 1 (row 3), FP 1 (row 4), TN 2
          precision 2/3, recall 2/3, F1 2*2/(2*2+1+1) = 2/3
          AUC: 3 positives x 3 negatives = 9 pairs; .9 and .8 beat all 3 negatives, .3 beats .2 and .1
               but not .7 -> 8/9
    AU12: true  1    0    0    0    1    0
          prob  .6   .55  .4   .1   .45  .05  -> on: 1 1 0 0 0 0
          TP 1 (row 1), FP 1 (row 2), FN 1 (row 5), TN 3
          precision 1/2, recall 1/2, F1 1/2
          AUC: 2 x 4 = 8 pairs; .6 beats all 4, .45 beats .4 .1 .05 but not .55 -> 7/8
    """
    targets = np.array([[1, 1], [1, 0], [1, 0], [0, 0], [0, 1], [0, 0]], dtype=np.float32)
    probs = np.array([[.9, .6], [.8, .55], [.3, .4], [.7, .1], [.2, .45], [.1, .05]])
    return targets, probs, [4, 12]


def test_metrics_match_hand_counts():
    targets, probs, aus = hand_example()
    m = metrics.compute_metrics(targets, probs, aus)

    assert list(m["per_au"]) == ["AU4", "AU12"]
    assert m["threshold"] == 0.5 and m["n"] == 6
    # F1/precision/recall are exact ratios of counts; scikit-learn's AUC (trapezoids) may differ in the last bit
    assert m["per_au"]["AU4"] == {"f1": 2 / 3, "precision": 2 / 3, "recall": 2 / 3, "auc": pytest.approx(8 / 9),
                                  "support": 3, "predicted": 3}
    assert m["per_au"]["AU12"] == {"f1": 1 / 2, "precision": 1 / 2, "recall": 1 / 2, "auc": pytest.approx(7 / 8),
                                   "support": 2, "predicted": 2}
    # macro: plain mean over the two AUs
    assert m["macro"]["n_aus"] == 2
    assert m["macro"]["f1"] == pytest.approx((2 / 3 + 1 / 2) / 2, abs=1e-12)
    assert m["macro"]["precision"] == pytest.approx(7 / 12, abs=1e-12)
    assert m["macro"]["recall"] == pytest.approx(7 / 12, abs=1e-12)
    assert m["macro"]["auc"] == pytest.approx((8 / 9 + 7 / 8) / 2, abs=1e-12)
    # plain Python types: the dict goes straight to results.json
    json.dumps(m, allow_nan=False)
    assert type(m["per_au"]["AU4"]["support"]) is int and type(m["macro"]["f1"]) is float


def test_single_au_is_scored_as_that_au():
    # 3 sequences, 1 AU: true 1 0 1, on 1 0 0 -> TP 1, FN 1, FP 0: precision 1, recall 1/2, F1 2/3
    m = metrics.compute_metrics(np.array([[1], [0], [1]]), np.array([[.9], [.2], [.4]]), [25])
    assert m["per_au"]["AU25"]["precision"] == 1.0
    assert m["per_au"]["AU25"]["recall"] == 0.5
    assert m["per_au"]["AU25"]["f1"] == 2 / 3


def test_threshold_is_strict():
    # p == threshold is "off", as in the original's p > 0.5
    targets = np.array([[1], [0], [1]])
    probs = np.array([[0.5], [0.5], [0.5]])
    m = metrics.compute_metrics(targets, probs, [1])
    # nothing on: TP 0, FP 0, FN 2 -> precision 0 (not NaN), recall 0, F1 0; every score tied -> AUC 1/2
    assert m["per_au"]["AU1"] == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "auc": 0.5,
                                  "support": 2, "predicted": 0}
    # just below it, all three are on: TP 2, FP 1 -> precision 2/3, recall 1, F1 4/5
    m = metrics.compute_metrics(targets, probs, [1], threshold=0.4999)
    assert m["threshold"] == 0.4999
    au1 = m["per_au"]["AU1"]
    assert (au1["predicted"], au1["precision"], au1["recall"], au1["f1"]) == (3, 2 / 3, 1.0, 0.8)


def test_au_without_positives_is_not_available_and_left_out_of_macro():
    targets, probs, _ = hand_example()
    targets = np.hstack([targets, np.zeros((6, 1)), np.ones((6, 1))])  # AU43 never coded, AU45 always
    probs = np.hstack([probs, np.array([[.9], [.1], [.1], [.1], [.1], [.1]]), np.full((6, 1), .8)])
    m = metrics.compute_metrics(targets, probs, [4, 12, 43, 45])

    assert m["per_au"]["AU43"] == {"f1": None, "precision": None, "recall": None, "auc": None,
                                   "support": 0, "predicted": 1}
    # all six positive and all predicted on: F1 1, but no negatives, so no AUC
    assert m["per_au"]["AU45"] == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "auc": None,
                                   "support": 6, "predicted": 6}
    assert m["macro"]["n_aus"] == 3
    assert m["macro"]["f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3, abs=1e-12)
    assert m["macro"]["auc"] == pytest.approx((8 / 9 + 7 / 8) / 2, abs=1e-12)  # AUs with an AUC only
    assert "NaN" not in json.dumps(m)

    nothing = metrics.compute_metrics(np.zeros((4, 2)), np.full((4, 2), .9), [1, 2])
    assert nothing["macro"] == {"f1": None, "precision": None, "recall": None, "auc": None, "n_aus": 0}


@pytest.mark.parametrize("targets, probs, aus", [
    (np.zeros((4, 2)), np.zeros((4, 3)), [1, 2]),       # shapes differ
    (np.zeros((4, 2)), np.zeros((4, 2)), [1, 2, 4]),    # AU list does not match the columns
    (np.zeros(4), np.zeros(4), [1]),                     # not 2-D
    (np.zeros((0, 2)), np.zeros((0, 2)), [1, 2]),       # nothing to score
    (np.full((4, 1), 2), np.zeros((4, 1)), [1]),        # labels not 0/1
    (np.zeros((4, 1)), np.full((4, 1), np.nan), [1]),   # a diverged model's NaN
])
def test_metrics_reject_bad_arrays(targets, probs, aus):
    with pytest.raises(ValueError):
        metrics.compute_metrics(targets, probs, aus)


# ----------------------------------------------------------------------------- tables


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_table_is_labelled_from_the_results():
    targets, probs, _ = hand_example()
    targets = np.hstack([targets, np.zeros((6, 1))])
    probs = np.hstack([probs, np.full((6, 1), .1)])
    results = metrics.compute_metrics(targets, probs, [6, 25, 43])
    lines = metrics.format_table(results, "alexnet").splitlines()

    assert cells(lines[0]) == ["Model", "AU6", "AU25", "AU43", "Avg"]
    assert set(lines[1]) <= set("|-")
    # F1 2/3, 1/2, n/a (no positives); Avg over the two AUs that have an F1
    assert cells(lines[2]) == ["alexnet", "0.67", "0.50", "n/a", "0.58"]
    assert lines[3] == ""
    assert cells(lines[4]) == ["AU", "F1", "Precision", "Recall", "AUC", "Support"]
    assert cells(lines[6]) == ["AU6", "0.6667", "0.6667", "0.6667", "0.8889", "3"]
    assert cells(lines[8]) == ["AU43", "n/a", "n/a", "n/a", "n/a", "0"]
    assert cells(lines[9])[:2] == ["macro (2 AUs)", "0.5833"]
    assert len(lines) == 10


# ----------------------------------------------------------------------------- atomic files


# ----------------------------------------------------------------------------- predictions and results


def test_predictions_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"S{100 + i:03d}_00{i % 3 + 1}" for i in range(7)]
    subjects = [s[:4] for s in ids]
    targets = rng.integers(0, 2, (7, 3)).astype(np.float32)
    probs = rng.random((7, 3))
    probs[0] = [0.0, 1.0, 1e-300]
    probs[1] = [0.1, 1 - 2 ** -53, 5e-324]
    probs[2] = np.float32(1 / 3)  # a float32 model output goes through float64 unchanged
    metrics.write_predictions(tmp_path / "p.csv", ids, subjects, [1, 2, 25], targets, probs, fold=[0, 0, 1, 1, 2, 2, 2])

    r_ids, r_subjects, r_folds, r_aus, r_targets, r_probs = metrics.read_predictions(tmp_path / "p.csv")
    assert (r_ids, r_subjects, r_folds, r_aus) == (ids, subjects, [0, 0, 1, 1, 2, 2, 2], [1, 2, 25])
    assert np.array_equal(r_targets, targets)
    assert r_probs.dtype == np.float64 and r_probs.view(np.int64).tolist() == probs.view(np.int64).tolist()
    assert metrics.compute_metrics(r_targets, r_probs, r_aus) == metrics.compute_metrics(targets, probs, [1, 2, 25])
    header = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert header == "sequence,subject,fold,true_AU1,true_AU2,true_AU25,prob_AU1,prob_AU2,prob_AU25"

    metrics.write_predictions(tmp_path / "q.csv", ids[:2], subjects[:2], [1, 2, 25], targets[:2], probs[:2], fold=4)
    assert metrics.read_predictions(tmp_path / "q.csv")[2] == [4, 4]
    metrics.write_predictions(tmp_path / "r.csv", ids[:2], subjects[:2], [1, 2, 25], targets[:2], probs[:2])
    assert metrics.read_predictions(tmp_path / "r.csv")[2] == [None, None]


@pytest.mark.parametrize("content, what", [
    ("", "empty"),
    ("id,subject,fold,true_AU1,prob_AU1\nS005_001,S005,0,1,0.5\n", "line 1"),
    ("sequence,subject,fold,true_AU1,prob_AU2\nS005_001,S005,0,1,0.5\n", "line 1"),
    ("sequence,subject,fold,true_AU1,prob_AU1\nS005_001,S005,0,1\n", "line 2 has 4 fields"),
    ("sequence,subject,fold,true_AU1,prob_AU1\nS005_001,S005,0,1,0.5\nS005_002,S005,0,1,high\n", "line 3"),
    ("sequence,subject,fold,true_AU1,prob_AU1\nS005_001,S005,0,1,1.5\n", "line 2"),
])
def test_malformed_predictions_are_user_errors(tmp_path, content, what):
    path = tmp_path / "predictions.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=re.escape(what)) as e:
        metrics.read_predictions(path)
    assert str(path) in str(e.value) and "delete it" in str(e.value)


def test_missing_predictions_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        metrics.read_predictions(tmp_path / "predictions.csv")


def run_results() -> tuple[dict, np.ndarray, np.ndarray]:
    targets, probs, _ = hand_example()
    targets = np.hstack([targets, np.zeros((6, 1))])
    probs = np.hstack([probs, np.full((6, 1), .7)])
    scores = metrics.compute_metrics(targets, probs, [1, 2, 43])
    return {"model": "res18", "aus": [1, 2, 43], "split": "subject", "kfold": 10, **scores}, targets, probs


def test_write_results(tmp_path):
    results, _, _ = run_results()
    paths = metrics.write_results(tmp_path, results)

    assert json.loads(paths["json"].read_text()) == results
    rows = list(csv.reader(paths["csv"].open()))
    assert rows[0] == ["AU", "f1", "precision", "recall", "auc", "support", "predicted"]
    auc = results["per_au"]["AU1"]["auc"]
    assert rows[1] == ["AU1", repr(2 / 3), repr(2 / 3), repr(2 / 3), repr(auc), "3", "3"]  # full precision
    assert rows[3] == ["AU43", "", "", "", "", "0", "6"]  # not available: empty fields
    assert rows[4][0] == "macro" and float(rows[4][1]) == results["macro"]["f1"]
    assert len(rows) == 5
    assert paths["md"].read_text() == metrics.format_table(results, "res18") + "\n"


# ----------------------------------------------------------------------------- plots


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plots_write_png_files(tmp_path):
    results, targets, probs = run_results()
    f1 = metrics.plot_f1(results, tmp_path / "f1.png")
    confusion = metrics.plot_confusion(targets, probs, [1, 2, 43], 0.5, tmp_path / "confusion.png")
    assert f1.stat().st_size > 5000 and confusion.stat().st_size > 5000
    assert png_size(f1)[0] > png_size(f1)[1]
    # 12 AUs: a grid of 5 columns and 3 rows, taller than the 3-AU row
    wide = np.tile(targets, 4), np.tile(probs, 4)
    grid = metrics.plot_confusion(*wide, list(range(1, 13)), 0.5, tmp_path / "grid.png")
    assert png_size(grid)[1] > 2 * png_size(confusion)[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "f1.png", "grid.png"]


def test_f1_figure_draws_f1_precision_and_recall_per_au(tmp_path, monkeypatch):
    """f1.png shows what the README says: per AU a bar each for F1, precision and recall."""
    results, _, _ = run_results()
    drawn = {}
    save = metrics.save_png

    def look(fig, path):
        ax = fig.axes[0]
        drawn["bars"] = [[rect.get_height() for rect in bars] for bars in ax.containers]
        drawn["legend"] = [text.get_text() for text in ax.get_legend().get_texts()]
        drawn["ticks"] = [label.get_text() for label in ax.get_xticklabels()]
        return save(fig, path)

    monkeypatch.setattr(metrics, "save_png", look)
    metrics.plot_f1(results, tmp_path / "f1.png")
    per_au = results["per_au"]
    expected = [[per_au[au][key] or 0.0 for au in per_au] for key in ("f1", "precision", "recall")]
    assert np.allclose(drawn["bars"], expected)
    assert {"F1", "precision", "recall"} <= set(drawn["legend"])
    assert drawn["ticks"] == ["AU1", "AU2", "AU43"]
