"""A run folder: args.json, new and resumed runs, --epochs extensions, the pooled results.

A run folder is made once its data and folds are known to work; `--resume`, `-e` and
predict.py find their way back into it from here. What the checkpoints in it hold is
training/checkpoints.py's; the weights a run starts from are training/start_weights.py's.

    RUN_DIR/args.json                the run's settings (settings.SETTINGS), data folders, command line
    RUN_DIR/foldK/                   fold K: checkpoint.pth, predictions.csv, metrics.csv
    RUN_DIR/backbone.pth             with --freeze-backbone: the one frozen backbone of every fold
    RUN_DIR/final/                   with --final: the model trained on every sequence
"""
from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Sequence

from scoring import intervals, metrics
from training import checkpoints, settings, start_weights
from training.settings import run_settings
import utils
from utils import UserError


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])


def new_run_dir(args: argparse.Namespace) -> Path:
    if args.output_dir:
        return Path(args.output_dir)
    return Path("runs") / f"{args.model}-{datetime.now():%Y%m%d-%H%M%S}"


def check_run_dir(run_dir: Path, args: argparse.Namespace) -> None:
    """Refuse a run folder that would overwrite an earlier run.

    A folder that already holds this run's args.json may be joined by a --fold job (folds
    run as separate jobs and merge); anything else must be continued with --resume.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--output-dir {run_dir} is a file: choose a folder name")
    saved = run_dir / "args.json"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if args.fold is not None and saved.is_file():
            theirs = settings.read_run_settings(saved)
            if {k: theirs[k] for k in settings.RUN_SETTINGS} == run_settings(args):
                if (run_dir / f"fold{args.fold}").exists():
                    raise UserError(f"{run_dir / f'fold{args.fold}'} exists: continue it with --resume {run_dir} "
                                    f"--fold {args.fold}")
                return
            raise UserError(f"{run_dir} holds a run with other settings: choose another --output-dir")
        raise UserError(f"{run_dir} already holds files (an earlier run?): continue it with --resume {run_dir}, "
                        f"or choose another --output-dir")


def open_run_dir(run_dir: Path, args: argparse.Namespace) -> None:
    """Create the run folder and its args.json (kept when a --fold job joins its run)."""
    check_run_dir(run_dir, args)
    saved = run_dir / "args.json"
    if saved.is_file():
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run folder {run_dir} ({e.strerror}): choose another --output-dir")
    scoring = {k: getattr(args, k) for k in settings.SCORING_SETTINGS}
    utils.write_json(saved, {**run_settings(args), **scoring, "data_dir": args.data_dir, "label_dir": args.label_dir,
                             "landmark_dir": args.landmark_dir, "command": command_line()})


def epochs_done(run_dir: Path, kfold: int) -> dict[str, int]:
    """Epochs each fold (and the final model) has trained, from their checkpoints, by folder name."""
    done = {}
    for name in [f"fold{k}" for k in range(kfold)] + ["final"]:
        path = run_dir / name / checkpoints.CHECKPOINT
        if path.is_file():
            done[name] = checkpoints.load_checkpoint(path)["epoch"] + 1
    return done


def check_extension(run_dir: Path, args: argparse.Namespace) -> None:
    """--resume RUN --epochs N may lengthen a run, or shorten one whose folds have not gone past N."""
    done = epochs_done(run_dir, args.kfold)
    furthest = max(done.values(), default=0)
    if args.epochs < furthest:
        which = ", ".join(name for name, n in done.items() if n == furthest)
        raise UserError(f"--epochs {args.epochs}: {which} of {run_dir} already trained {furthest} epochs; "
                        f"give --epochs {furthest} or more, or start a new run")


def extend_run(run_dir: Path, args: argparse.Namespace, before: int) -> None:
    """--resume RUN --epochs N: train the run to N epochs instead of `before`, as torchvision's
    references do (`check_extension` first). args.json says so (epochs N, and an `extended`
    entry), so a later plain --resume also goes to N."""
    saved = settings.read_args_json(run_dir / "args.json")
    history = [*saved.get("extended", []), {"from": before, "to": args.epochs, "command": command_line(),
                                            "time": datetime.now().isoformat(timespec="seconds")}]
    utils.write_json(run_dir / "args.json", {**saved, "epochs": args.epochs, "extended": history})


def locate_run(path: Path) -> tuple[Path, int | None]:
    """--resume PATH: a run folder, or a fold checkpoint inside one -> (run folder, fold or None)."""
    if not path.exists():
        raise UserError(f"--resume {path} does not exist: give a run folder or a fold's checkpoint.pth")
    if path.is_dir():
        if not (path / "args.json").is_file():
            raise UserError(f"--resume {path} is not a run folder (no args.json): give the folder main.py created")
        return path, None
    ckpt = checkpoints.load_checkpoint(path)
    run_dir = path.parent.parent
    if not (run_dir / "args.json").is_file():
        raise UserError(f"checkpoint {path} is not inside a run folder (no {run_dir / 'args.json'})")
    fold = ckpt.get("fold")
    return run_dir, (None if fold == ckpt.get("kfold") else fold)


def resume_command(run_dir: Path, args) -> str:
    parts = ["python", "main.py", args.data_dir, args.label_dir, args.landmark_dir, "--resume", str(run_dir)]
    if args.fold is not None:
        parts += ["--fold", str(args.fold)]
    return " ".join(shlex.quote(p) for p in parts)


# ----------------------------------------------------------------------------- results


def protocol(args: argparse.Namespace, folds: Sequence[int] | None = None) -> str:
    """The cross-validation protocol in words, for results.json and the tables; `folds`, when not
    all of them, says which folds the numbers cover."""
    kind = ("subject-independent folds (GroupKFold over subjects)" if args.split == "subject"
            else "folds over sequences (a subject can be in train and test)")
    text = f"{args.kfold}-fold cross-validation, {kind}, pooled out-of-fold predictions"
    if folds is not None and sorted(folds) != list(range(args.kfold)):
        text = f"{covered(folds, args.kfold)} of a {text}"
    return text


def covered(folds: Sequence[int], kfold: int) -> str:
    """'fold 2 only', 'folds 0, 2 only' -- a result over part of a run says so."""
    names = ", ".join(str(k) for k in sorted(folds))
    return f"fold{'s' if len(folds) > 1 else ''} {names} only ({len(folds)} of {kfold})"


def write_results(out_dir: Path, args: argparse.Namespace, aus: list[int],
                  parts: Sequence[metrics.FoldPredictions]) -> dict:
    """Per-AU metrics of the out-of-fold predictions of every fold, pooled (never averaged per fold),
    written with the pooled predictions and the figures into `out_dir`.

    `parts`: one per fold. `folds` in the results lists the folds they cover; when that is not all
    of them, the protocol says so too."""
    pooled = metrics.FoldPredictions.concat(parts)
    ids, subjects, folds, targets, probs = pooled.ids, pooled.subjects, pooled.folds, pooled.targets, pooled.probs
    scores = metrics.compute_metrics(targets, probs, aus, args.threshold)
    resampling = bootstrap(args, ids, subjects)
    if resampling is not None:
        intervals.add_intervals(scores, resampling, targets, probs, aus, args.threshold)
    covers = sorted({int(k) for k in folds if k is not None})
    results = {
        "model": args.model, "aus": list(aus), "split": args.split, "kfold": args.kfold, "folds": covers,
        "protocol": protocol(args, covers),
        "pretrained": args.weights.lower() != "none", "weights": start_weights.describe_weights(args),
        "freeze_backbone": args.freeze_backbone, "epochs": args.epochs, "loss": args.loss, "frames": args.frames,
        "tta": args.tta, "geometry": args.geometry, "crop_fill": args.crop_fill,
        "image_size": args.image_size, "crop": args.crop, "sequences": len(ids),
        "bootstrap": None if resampling is None else resampling.record(), **scores,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics.write_results(out_dir, results)
    pooled.write(out_dir / "predictions.csv", aus)
    metrics.plot_f1(results, out_dir / "f1.png")
    metrics.plot_confusion(targets, probs, aus, args.threshold, out_dir / "confusion.png")
    return results


def bootstrap(args: argparse.Namespace, ids: Sequence[str], subjects: Sequence[str]) -> intervals.Resampling | None:
    """The run's --bootstrap resamples, seeded from --seed: over subjects, or over sequences under
    --split sequence (whose folds do not keep a subject's sequences together either); None with 0."""
    n = getattr(args, "bootstrap", intervals.DEFAULT_RESAMPLES)
    if not n:
        return None
    by_sequence = args.split == "sequence"
    return intervals.draw(ids if by_sequence else subjects, n, args.seed, "sequence" if by_sequence else "subject")


def read_fold_predictions(fold_dir: Path, aus: list[int]) -> metrics.FoldPredictions:
    """A finished fold's predictions.csv, of the run's AUs."""
    predictions, file_aus = metrics.FoldPredictions.read(fold_dir / "predictions.csv")
    if list(file_aus) != list(aus):
        raise UserError(f"{fold_dir / 'predictions.csv'} holds AUs {file_aus}, not {aus}: it belongs to another run")
    return predictions
