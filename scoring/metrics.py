"""Scoring AU predictions: per-AU metrics of pooled predictions, the tables, the predictions
and results files, and the figures of a run folder.

Metrics are computed once from the pooled arrays of a whole split (never averaged per batch or
per fold), with scikit-learn's confusion matrices and ROC AUC.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from utils import UserError, atomic_write_bytes, au_name, write_csv, write_json

METRIC_KEYS = ("f1", "precision", "recall", "auc")


# ----------------------------------------------------------------------------- metrics


def compute_metrics(targets: np.ndarray, probs: np.ndarray, aus: Sequence[int], threshold: float = 0.5) -> dict:
    """Per-AU and macro F1 / precision / recall / ROC AUC of pooled predictions.

    An AU is predicted on when its probability is strictly above `threshold` (the original's
    p > 0.5). Values that do not exist for an AU are None, never NaN: an AU without a single
    positive has no F1, precision, recall or AUC and stays out of the macro averages
    (`macro["n_aus"]` counts the AUs that entered); an AU whose column holds one class only
    has no AUC. Everything returned is a plain Python int/float/None, ready for JSON.
    """
    targets = np.asarray(targets)
    probs = np.asarray(probs, dtype=np.float64)
    aus = [int(a) for a in aus]
    if targets.ndim != 2 or probs.shape != targets.shape or targets.shape[1] != len(aus):
        raise ValueError(f"targets {targets.shape} and probs {probs.shape} must both be (N, {len(aus)}) for AUs {aus}")
    if len(targets) == 0:
        raise ValueError("no predictions to score")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be 0/1")
    if not np.isfinite(probs).all():
        raise ValueError("probs must be finite")

    c = confusion_counts(targets, probs, threshold)
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    support, predicted = tp + fn, tp + fp
    has_pos = support > 0
    with np.errstate(divide="ignore", invalid="ignore"):  # the 0/0 cells are replaced by np.where
        precision = np.where(predicted > 0, tp / predicted, 0.0)  # nothing predicted on: precision 0
        recall = np.where(has_pos, tp / support, np.nan)
        f1 = np.where(has_pos, 2 * tp / (2 * tp + fp + fn), np.nan)
    from sklearn.metrics import roc_auc_score  # imported here: ~1 s that predict.py and an early stop never need

    auc = np.full(len(aus), np.nan)
    two_classes = has_pos & (support < len(targets))  # ROC AUC needs positives and negatives
    if two_classes.sum() == 1:
        auc[two_classes] = roc_auc_score(targets[:, two_classes].ravel(), probs[:, two_classes].ravel())
    elif two_classes.any():
        auc[two_classes] = roc_auc_score(targets[:, two_classes], probs[:, two_classes], average=None)

    def value(array: np.ndarray, j: int) -> float | None:
        return float(array[j]) if has_pos[j] and not np.isnan(array[j]) else None

    per_au = {
        au_name(au): {"f1": value(f1, j), "precision": value(precision, j), "recall": value(recall, j),
                      "auc": value(auc, j), "support": int(support[j]), "predicted": int(predicted[j])}
        for j, au in enumerate(aus)
    }

    def mean(array: np.ndarray) -> float | None:
        kept = array[has_pos & ~np.isnan(array)]
        return float(kept.mean()) if len(kept) else None

    macro = {"f1": mean(f1), "precision": mean(precision), "recall": mean(recall), "auc": mean(auc),
             "n_aus": int(has_pos.sum())}
    return {"threshold": float(threshold), "n": int(len(targets)), "per_au": per_au, "macro": macro}


def confusion_counts(targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """TP / FP / FN / TN per AU column, each an (A,) int array (scikit-learn's multilabel confusion)."""
    from sklearn.metrics import multilabel_confusion_matrix

    y = np.asarray(targets).astype(int)
    p = (np.asarray(probs) > threshold).astype(int)
    if y.shape[1] == 1:
        # scikit-learn reads one (N, 1) column as a binary problem with two classes; asking for
        # class 1 alone gives that column's own matrix
        matrices = multilabel_confusion_matrix(y.ravel(), p.ravel(), labels=[1])
    else:
        matrices = multilabel_confusion_matrix(y, p)
    return {"tn": matrices[:, 0, 0], "fp": matrices[:, 0, 1], "fn": matrices[:, 1, 0], "tp": matrices[:, 1, 1]}


# ----------------------------------------------------------------------------- tables


def format_value(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_with_interval(scores: dict, key: str, digits: int) -> str:
    """`0.81 [0.79, 0.84]` where `scores` holds a 95% interval for `key`, `0.81 [n/a]` where the
    bootstrap left it out, the value alone where no bootstrap ran."""
    value = format_value(scores[key], digits)
    if "ci" not in scores or scores[key] is None:
        return value
    ci = scores["ci"].get(key)
    return f"{value} [n/a]" if ci is None else f"{value} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def markdown_table(rows: list[list[str]]) -> str:
    """A markdown table padded so it also reads well in a terminal; the first row is the header."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])


def format_table(results: dict, model_name: str) -> str:
    """The README-style F1 row (one column per AU plus Avg), then the per-AU detail table.

    The AU columns are the keys of `results["per_au"]`, so the table always matches the AUs the
    model was trained on. Results over some folds of a run (`folds`) say so in the model's cell.
    With a bootstrap (`results["bootstrap"]`) the detail table gives each value's 95% interval,
    and a last line says how they were drawn and why any is missing.
    """
    per_au, macro = results["per_au"], results["macro"]
    folds, kfold = results.get("folds"), results.get("kfold")
    if folds is not None and kfold and len(folds) < kfold:
        model_name = f"{model_name}, {len(folds)} of {kfold} folds ({', '.join(f'fold{k}' for k in folds)})"
    names = list(per_au)
    summary = markdown_table([["Model", *names, "Avg"],
                         [model_name, *(format_value(per_au[n]["f1"], 2) for n in names), format_value(macro["f1"], 2)]])
    boot = results.get("bootstrap")
    digits = 3 if boot else 4
    detail_rows = [["AU", "F1", "Precision", "Recall", "AUC", "Support"]]
    detail_rows += [[n, *(format_with_interval(per_au[n], k, digits) for k in METRIC_KEYS), str(per_au[n]["support"])]
                    for n in names]
    detail_rows.append([f"macro ({macro['n_aus']} AUs)", *(format_with_interval(macro, k, digits) for k in METRIC_KEYS),
                        ""])
    text = summary + "\n\n" + markdown_table(detail_rows)
    if boot:
        notes = [f"{n} {k}: {why}" for n, scores in [*per_au.items(), ("macro", macro)]
                 for k, why in scores.get("ci_reason", {}).items() if scores[k] is not None]
        text += "\n\n" + boot["text"] + (f"; no interval for {'; '.join(notes)}" if notes else "")
    return text


# ----------------------------------------------------------------------------- predictions and results


def write_predictions(path: str | os.PathLike, ids: Sequence[str], subjects: Sequence[str], aus: Sequence[int],
                      targets: np.ndarray, probs: np.ndarray, fold: int | Sequence[int] | None = None) -> Path:
    """One row per sequence: `sequence,subject,fold,true_AU..,prob_AU..`.

    Probabilities are written with repr(), so reading them back gives exactly the same floats and
    metrics recomputed from the file match the run's. `fold` is one fold for every row, one per
    row, or None (an empty column).
    """
    aus = [int(a) for a in aus]
    targets, probs = np.asarray(targets), np.asarray(probs)
    n = len(ids)
    if fold is None or isinstance(fold, (int, np.integer)):
        fold = [fold] * n
    if not (len(subjects) == len(fold) == n and targets.shape == probs.shape == (n, len(aus))):
        raise ValueError(f"{n} ids, {len(subjects)} subjects, {len(fold)} folds, targets {targets.shape}, "
                         f"probs {probs.shape} do not match {len(aus)} AUs")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be 0/1")
    header = ["sequence", "subject", "fold", *(f"true_{au_name(a)}" for a in aus), *(f"prob_{au_name(a)}" for a in aus)]
    rows = [[seq, subj, "" if k is None else int(k), *(int(t) for t in trow), *(repr(float(p)) for p in prow)]
            for seq, subj, k, trow, prow in zip(ids, subjects, fold, targets, probs)]
    return write_csv(path, header, rows)


def read_predictions(path: str | os.PathLike) -> tuple[list[str], list[str], list[int | None], list[int],
                                                         np.ndarray, np.ndarray]:
    """Read a `write_predictions` file: (ids, subjects, folds, aus, targets float32 (N,A), probs float64 (N,A))."""
    path = Path(path)
    fix = "delete it and resume the run to write it again"

    def bad(what: str) -> UserError:
        return UserError(f"malformed predictions file {path}: {what}; {fix}")

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"predictions file {path} does not exist: check the run folder") from None
    except (OSError, UnicodeDecodeError) as e:
        raise bad(f"cannot be read as text ({e})") from e
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise bad("the file is empty")
    header = rows[0]
    true_cols = [c for c in header[3:] if c.startswith("true_AU")]
    aus_true = [c[len("true_AU"):] for c in true_cols]
    aus_prob = [c[len("prob_AU"):] for c in header[3 + len(true_cols):]]
    if (header[:3] != ["sequence", "subject", "fold"] or not aus_true or aus_true != aus_prob
            or not all(a.isdigit() for a in aus_true)
            or header[3 + len(true_cols):] != [f"prob_AU{a}" for a in aus_true]):
        raise bad("line 1 is not the header sequence,subject,fold,true_AU..,prob_AU..")
    aus = [int(a) for a in aus_true]
    n_aus = len(aus)
    ids, subjects, folds, targets, probs = [], [], [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 3 + 2 * n_aus:
            raise bad(f"line {line} has {len(row)} fields, expected {3 + 2 * n_aus}")
        try:
            fold = int(row[2]) if row[2] else None
            target = [int(v) for v in row[3:3 + n_aus]]
            prob = [float(v) for v in row[3 + n_aus:]]
        except ValueError:
            raise bad(f"line {line} holds a value that is not a number") from None
        if any(t not in (0, 1) for t in target) or not all(0.0 <= p <= 1.0 for p in prob):
            raise bad(f"line {line}: labels must be 0/1 and probabilities within [0, 1]")
        ids.append(row[0])
        subjects.append(row[1])
        folds.append(fold)
        targets.append(target)
        probs.append(prob)
    return (ids, subjects, folds, aus, np.array(targets, dtype=np.float32).reshape(-1, n_aus),
            np.array(probs, dtype=np.float64).reshape(-1, n_aus))


@dataclass
class FoldPredictions:
    """Test predictions, a row per sequence: of one fold, or of several pooled (`concat`). `folds`
    holds each row's fold (None where unknown); targets and probs are (N, A), AUs in the run's order."""

    ids: list[str]
    subjects: list[str]
    folds: list[int | None]
    targets: np.ndarray
    probs: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def concat(cls, parts: Sequence[FoldPredictions]) -> FoldPredictions:
        """Several folds' predictions as one pooled set, in the order given."""
        return cls(ids=[i for p in parts for i in p.ids], subjects=[s for p in parts for s in p.subjects],
                   folds=[k for p in parts for k in p.folds],
                   targets=np.concatenate([np.asarray(p.targets) for p in parts]),
                   probs=np.concatenate([np.asarray(p.probs) for p in parts]))

    def write(self, path: str | os.PathLike, aus: Sequence[int]) -> Path:
        """predictions.csv (`write_predictions`)."""
        return write_predictions(path, self.ids, self.subjects, aus, self.targets, self.probs, fold=self.folds)

    @classmethod
    def read(cls, path: str | os.PathLike) -> tuple[FoldPredictions, list[int]]:
        """A predictions.csv -> (its predictions, its AUs)."""
        ids, subjects, folds, aus, targets, probs = read_predictions(path)
        return cls(ids, subjects, folds, targets, probs), aus


def write_results(out_dir: str | os.PathLike, results: dict) -> dict[str, Path]:
    """results.json (everything), results.csv (one row per AU plus macro) and results.md (the printed table).

    `results` is `compute_metrics` output plus the run's description: at least `model`, `aus`,
    `per_au` and `macro` (`split`, `kfold` and any other keys go to the JSON as they are).
    In the CSV a value that does not exist (None) is an empty field; with a bootstrap, each
    metric's interval follows as METRIC_low, METRIC_high columns.
    """
    missing = [k for k in ("model", "aus", "per_au", "macro") if k not in results]
    if missing:
        raise ValueError(f"results lack {missing}")
    out_dir = Path(out_dir)

    def cell(value: float | None) -> float | str:
        return "" if value is None else value

    def bounds(m: dict) -> list:  # low, high per metric, after the columns a file without intervals has
        if not results.get("bootstrap"):
            return []
        return [cell(None if m["ci"][k] is None else m["ci"][k][i]) for k in METRIC_KEYS for i in (0, 1)]

    header = ["AU", *METRIC_KEYS, "support", "predicted"]
    if results.get("bootstrap"):
        header += [f"{k}_{end}" for k in METRIC_KEYS for end in ("low", "high")]
    rows = [[name, *(cell(m[k]) for k in METRIC_KEYS), m["support"], m["predicted"], *bounds(m)]
            for name, m in results["per_au"].items()]
    macro = results["macro"]
    rows.append(["macro", *(cell(macro[k]) for k in METRIC_KEYS), "", "", *bounds(macro)])
    return {
        "json": write_json(out_dir / "results.json", results),
        "csv": write_csv(out_dir / "results.csv", header, rows),
        "md": atomic_write_bytes(out_dir / "results.md",
                                 (format_table(results, results["model"]) + "\n").encode("utf-8")),
    }


# ----------------------------------------------------------------------------- plots


def new_figure(width: float, height: float):
    """A figure on the Agg canvas, without pyplot: no global figure list to leak, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    fig.clear()
    return atomic_write_bytes(path, buffer.getvalue())


def plot_f1(results: dict, path: str | os.PathLike) -> Path:
    """Per-AU F1, precision and recall as grouped bars (F1 labelled), the macro F1 as a dashed line;
    AUs without a value are marked n/a."""
    names = list(results["per_au"])
    fig = new_figure(max(7.0, 0.9 * len(names) + 2), 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    width = 0.27
    for offset, key, color in ((-width, "f1", "tab:blue"), (0.0, "precision", "tab:green"),
                               (width, "recall", "tab:orange")):
        values = [results["per_au"][n][key] for n in names]
        bars = ax.bar(x + offset, [v or 0.0 for v in values], width, color=color, label=key if key != "f1" else "F1")
        if key == "f1":
            ax.bar_label(bars, labels=[format_value(v, 2) for v in values], fontsize=7, padding=2)
    macro = results["macro"]["f1"]
    if macro is not None:
        ax.axhline(macro, color="tab:red", linestyle="--", label=f"macro F1 {macro:.2f}")
    ax.legend(loc="lower right", fontsize=8, ncol=4)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(f"on when p > {results.get('threshold', 0.5):g}")
    where = ", ".join(str(s) for s in (
        f"{results['split']}-independent" if results.get("split") else None,
        f"{results['kfold']}-fold" if results.get("kfold") else None) if s)
    ax.set_title(f"{results.get('model', 'model')} per-AU F1, precision and recall" + (f" ({where})" if where else ""))
    fig.tight_layout()
    return save_png(fig, path)


def plot_confusion(targets: np.ndarray, probs: np.ndarray, aus: Sequence[int], threshold: float,
                   path: str | os.PathLike) -> Path:
    """A grid of per-AU 2x2 confusion matrices (rows: true no/yes, columns: predicted no/yes) with counts."""
    counts = confusion_counts(targets, probs, threshold)
    # (A, 2, 2): [[TN, FP], [FN, TP]] per AU, the usual layout of a confusion matrix
    matrices = np.stack([np.stack([counts["tn"], counts["fp"]], -1), np.stack([counts["fn"], counts["tp"]], -1)], 1)
    cols = min(5, len(aus))
    rows = math.ceil(len(aus) / cols)
    fig = new_figure(2.4 * cols, 2.4 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, au, matrix in zip(axes, aus, matrices):
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
        for (i, j), count in np.ndenumerate(matrix):  # the four labels of one plot
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > matrix.max() / 2 else "black")
        ax.set_title(au_name(int(au)), fontsize=10)
        ax.set_xticks([0, 1], ["no", "yes"])
        ax.set_yticks([0, 1], ["no", "yes"])
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
    for ax in axes[len(aus):]:
        ax.set_visible(False)
    fig.suptitle(f"confusion per AU (on when p > {threshold:g})")
    fig.tight_layout()
    return save_png(fig, path)


