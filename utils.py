"""Shared helpers: the user-error type, metrics, checkpoints, logging and plots."""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import random
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch


class UserError(Exception):
    """An error the user can fix (bad path, bad file, bad flag).

    main.py prints the message as a single line on stderr and exits with code 2; the
    message names the file or flag at fault and says how to fix it.
    """


LOGGER_NAME = "au"
CHECKPOINT_KEYS = ("model", "epoch", "aus", "arch")
METRIC_KEYS = ("f1", "precision", "recall", "auc")
_TEMP_RE = re.compile(r"\.tmp-\d+$")


def au_name(au: int) -> str:
    return f"AU{au}"


# ----------------------------------------------------------------------------- metrics


def compute_metrics(targets: np.ndarray, probs: np.ndarray, aus: Sequence[int], threshold: float = 0.5) -> dict:
    """Per-AU and macro F1 / precision / recall / ROC AUC of pooled predictions.

    An AU is predicted on when its probability is strictly above `threshold` (the original's
    p > 0.5). Values that do not exist for an AU are None, never NaN: an AU without a single
    positive has no F1, precision, recall or AUC and stays out of the macro averages
    (`macro["n_aus"]` counts the AUs that entered); an AU whose column holds one class only
    has no AUC. Everything returned is a plain Python int/float/None, ready for JSON.
    """
    from sklearn.metrics import roc_auc_score  # slow import, only needed here

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

    # Counted per column directly: scikit-learn's precision_recall_fscore_support reads a one-AU
    # (N, 1) array as a binary problem and reports both classes, so it cannot be trusted here.
    c = confusion_counts(targets, probs, threshold)
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    support, predicted = tp + fn, tp + fp
    has_pos = support > 0
    with np.errstate(divide="ignore", invalid="ignore"):  # the 0/0 cells are replaced by np.where
        precision = np.where(predicted > 0, tp / predicted, 0.0)  # nothing predicted on: precision 0
        recall = np.where(has_pos, tp / support, np.nan)
        f1 = np.where(has_pos, 2 * tp / (2 * tp + fp + fn), np.nan)
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
    """TP / FP / FN / TN per AU column, each an (A,) int array."""
    y = np.asarray(targets).astype(bool)
    p = np.asarray(probs) > threshold
    return {"tp": (y & p).sum(0), "fp": (~y & p).sum(0), "fn": (y & ~p).sum(0), "tn": (~y & ~p).sum(0)}


# ----------------------------------------------------------------------------- tables


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _markdown(rows: list[list[str]]) -> str:
    """A markdown table padded so it also reads well in a terminal; the first row is the header."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])


def format_table(results: dict, model_name: str) -> str:
    """The README-style F1 row (one column per AU plus Avg), then the per-AU detail table.

    The AU columns are the keys of `results["per_au"]`, so the table always matches the AUs the
    model was trained on.
    """
    per_au, macro = results["per_au"], results["macro"]
    names = list(per_au)
    summary = _markdown([["Model", *names, "Avg"],
                         [model_name, *(_fmt(per_au[n]["f1"], 2) for n in names), _fmt(macro["f1"], 2)]])
    detail_rows = [["AU", "F1", "Precision", "Recall", "AUC", "Support"]]
    detail_rows += [[n, *(_fmt(per_au[n][k], 4) for k in METRIC_KEYS), str(per_au[n]["support"])] for n in names]
    detail_rows.append([f"macro ({macro['n_aus']} AUs)", *(_fmt(macro[k], 4) for k in METRIC_KEYS), ""])
    return summary + "\n\n" + _markdown(detail_rows)


# ----------------------------------------------------------------------------- atomic files


def _temp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; not every platform or filesystem allows it, hence best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. directories cannot be fsynced on this filesystem: the file itself is already synced
    finally:
        os.close(fd)


def _write_atomically(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Run `write` on a temp file beside `path`, sync it, then rename it over `path`.

    A reader sees the old file or the new one, never half of one. If `write` raises, the temp file
    is removed and the old file is untouched; a hard crash can leave `<name>.tmp-<pid>` behind, which
    `clean_temp_files` removes.
    """
    path = Path(path)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace `path` with `data` atomically."""
    return _write_atomically(path, lambda f: f.write(data))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON, indented, keys in insertion order; NaN is refused so the file stays valid JSON."""
    text = json.dumps(obj, indent=2, allow_nan=False, default=_json_default) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Atomic CSV; floats are written by str(), which is exact (it is repr) for Python floats."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def clean_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove `*.tmp-<pid>` files a crashed write left under `directory` (recursively)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.rglob("*.tmp-*")):
        if _TEMP_RE.search(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """torch.save `state` atomically: a crash mid-save never replaces a good checkpoint with half of one."""
    return _write_atomically(path, lambda f: torch.save(state, f))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def load_checkpoint(path: str | os.PathLike, required: Sequence[str] = CHECKPOINT_KEYS) -> dict:
    """Load a checkpoint written by `save_checkpoint`, safely, onto the CPU.

    weights_only=True means only tensors and plain data are rebuilt: a file crafted to run code
    when unpickled is refused before anything in it runs. Every failure is a UserError naming the
    file and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist: check the path")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory: give the checkpoint file (e.g. {path / 'checkpoint.pth'})")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UserError(f"checkpoint {path} cannot be read ({e.strerror}): check its permissions") from e
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive
        what = "is empty" if not magic else "is not a PyTorch file"
        raise UserError(f"{path} {what}, so not a checkpoint: give a checkpoint.pth written by main.py")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it did not write; the error below says it better
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as e:
        raise UserError(f"checkpoint {path} cannot be read ({e.strerror}): check its permissions") from e
    except Exception as e:
        refused = re.search(r"GLOBAL ([\w.]+)", str(e)) if "Weights only load failed" in str(e) else None
        if refused:
            raise UserError(
                f"checkpoint {path} was refused: it holds objects other than tensors and plain data "
                f"({refused.group(1)}), which could run code when loaded; nothing in it was executed. "
                f"Use only checkpoints written by main.py"
            ) from e
        if "PytorchStreamReader" in str(e) or isinstance(e, (EOFError, zipfile.BadZipFile)):
            raise UserError(f"checkpoint {path} is truncated or damaged (an interrupted copy?): copy it again, "
                            f"or delete it and resume the run to retrain that fold") from e
        raise UserError(
            f"{path} is not a readable checkpoint (truncated or not written by main.py): {_first_line(e)}"
        ) from e
    if not isinstance(state, dict):
        raise UserError(f"{path} is not an AU checkpoint (it holds a {type(state).__name__}, not a dict): "
                        f"give a checkpoint written by main.py")
    missing = [key for key in required if key not in state]
    if missing:
        raise UserError(f"{path} is not an AU checkpoint (missing keys {', '.join(missing)}): "
                        f"give a checkpoint written by main.py")
    return state


# ----------------------------------------------------------------------------- random state


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG a training step may touch, as tensors and plain data only.

    Nothing here needs weights_only=False to load again, so a checkpoint holding it stays safe.
    """
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": [version, list(internal), gauss],
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured (parts it lacks are left alone).

    CUDA states are restored for as many devices as both the state and this machine have, so a
    run resumed on another machine still continues.
    """
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        for device, device_state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, device)
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state(("MT19937", s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"],
                             s["cached_gaussian"]))
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------- command lines


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" where a flag has a value default and its help does not state one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default:" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def run_cli(parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], Any],
            argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run `main`: a UserError becomes one line on stderr and exit code 2."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


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


def write_results(out_dir: str | os.PathLike, results: dict) -> dict[str, Path]:
    """results.json (everything), results.csv (one row per AU plus macro) and results.md (the printed table).

    `results` is `compute_metrics` output plus the run's description: at least `model`, `aus`,
    `per_au` and `macro` (`split`, `kfold` and any other keys go to the JSON as they are).
    In the CSV a value that does not exist (None) is an empty field.
    """
    missing = [k for k in ("model", "aus", "per_au", "macro") if k not in results]
    if missing:
        raise ValueError(f"results lack {missing}")
    out_dir = Path(out_dir)

    def cell(value: float | None) -> float | str:
        return "" if value is None else value

    header = ["AU", *METRIC_KEYS, "support", "predicted"]
    rows = [[name, *(cell(m[k]) for k in METRIC_KEYS), m["support"], m["predicted"]]
            for name, m in results["per_au"].items()]
    macro = results["macro"]
    rows.append(["macro", *(cell(macro[k]) for k in METRIC_KEYS), "", ""])
    return {
        "json": write_json(out_dir / "results.json", results),
        "csv": write_csv(out_dir / "results.csv", header, rows),
        "md": atomic_write_bytes(out_dir / "results.md",
                                 (format_table(results, results["model"]) + "\n").encode("utf-8")),
    }


# ----------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float):
    """A figure on the Agg canvas, without pyplot: no global figure list to leak, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    fig.clear()
    return atomic_write_bytes(path, buffer.getvalue())


def plot_f1(results: dict, path: str | os.PathLike) -> Path:
    """Bar chart of per-AU F1 with the macro F1 as a dashed line; AUs without an F1 are marked n/a."""
    names = list(results["per_au"])
    f1 = [results["per_au"][n]["f1"] for n in names]
    fig = _new_figure(max(6.0, 0.6 * len(names) + 2), 4.0)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    bars = ax.bar(x, [v or 0.0 for v in f1], color="tab:blue")
    ax.bar_label(bars, labels=[_fmt(v, 2) for v in f1], fontsize=8, padding=2)
    macro = results["macro"]["f1"]
    if macro is not None:
        ax.axhline(macro, color="tab:red", linestyle="--", label=f"macro F1 {macro:.2f}")
        ax.legend(loc="lower right")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(f"F1 (p > {results.get('threshold', 0.5):g})")
    where = ", ".join(str(s) for s in (
        f"{results['split']}-independent" if results.get("split") else None,
        f"{results['kfold']}-fold" if results.get("kfold") else None) if s)
    ax.set_title(f"{results.get('model', 'model')} per-AU F1" + (f" ({where})" if where else ""))
    fig.tight_layout()
    return _save_png(fig, path)


def plot_confusion(targets: np.ndarray, probs: np.ndarray, aus: Sequence[int], threshold: float,
                   path: str | os.PathLike) -> Path:
    """A grid of per-AU 2x2 confusion matrices (rows: true no/yes, columns: predicted no/yes) with counts."""
    counts = confusion_counts(targets, probs, threshold)
    # (A, 2, 2): [[TN, FP], [FN, TP]] per AU, the usual layout of a confusion matrix
    matrices = np.stack([np.stack([counts["tn"], counts["fp"]], -1), np.stack([counts["fn"], counts["tp"]], -1)], 1)
    cols = min(5, len(aus))
    rows = math.ceil(len(aus) / cols)
    fig = _new_figure(2.4 * cols, 2.4 * rows + 0.4)
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
    return _save_png(fig, path)


# ----------------------------------------------------------------------------- logging


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time, so a test's captured stderr sees the log too."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


class _Formatter(logging.Formatter):
    """`HH:MM:SS message`, with the level named only when it is a warning or worse."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            stamp, _, message = text.partition(" ")
            text = f"{stamp} {record.levelname.lower()}: {message}"
        return text


def _drop_handlers(logger: logging.Logger, role: str) -> None:
    for handler in [h for h in logger.handlers if getattr(h, "_au_role", None) == role]:
        logger.removeHandler(handler)
        handler.close()


def setup_logging(quiet: bool = False, log_file: str | os.PathLike | None = None) -> logging.Logger:
    """Configure the "au" logger: INFO to stderr (WARNING only when quiet), optionally INFO to a file.

    Calling it again replaces the handlers it installed before, so a process that runs main()
    several times (the tests) does not print every line twice. Records still propagate to the root
    logger, so pytest's caplog sees them.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)  # the file keeps INFO even when stderr is quiet
    _drop_handlers(logger, "stderr")
    _drop_handlers(logger, "file")
    handler = _StderrHandler()
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    handler.setFormatter(_Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    handler._au_role = "stderr"  # type: ignore[attr-defined]
    logger.addHandler(handler)
    if log_file is not None:
        add_log_file(log_file)
    return logger


def add_log_file(path: str | os.PathLike) -> logging.Handler:
    """Also append INFO and up to `path` (e.g. run_dir/log.txt), replacing a log file set earlier."""
    logger = logging.getLogger(LOGGER_NAME)
    _drop_handlers(logger, "file")
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
    handler._au_role = "file"  # type: ignore[attr-defined]
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def format_duration(seconds: float) -> str:
    """A short human duration: "12s", "3m05s", "1h02m"."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
