"""A run folder: args.json, new and resumed runs, --epochs extensions, the pooled results.

A run folder is made once its data and folds are known to work; `--resume`, `-e` and
predict.py find their way back into it from here. What the checkpoints in it hold is
checkpoints.py's; the weights a run starts from are start_weights.py's.

    RUN_DIR/args.json                the run's settings (RUN_SETTINGS), data folders, command line
    RUN_DIR/foldK/                   fold K: checkpoint.pth, predictions.csv, metrics.csv
    RUN_DIR/backbone.pth             with --freeze-backbone: the one frozen backbone of every fold
    RUN_DIR/final/                   with --final: the model trained on every sequence
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Sequence

import numpy as np

import checkpoints
import dataset
import intervals
import metrics
import start_weights
import utils
from utils import UserError

# Flags that describe how a run is trained: saved in args.json, fixed for the life of a
# run. The rest (device, workers, paths, verbosity) may change when a run is resumed.
RUN_SETTINGS = (
    "model", "aus", "min_count", "crop", "margin", "image_size", "norm", "augment", "weights",
    "freeze_backbone", "epochs", "step", "gamma", "start_epoch", "batch_size", "lr", "backbone_lr", "loss",
    "momentum", "wd", "pos_weight", "threshold", "kfold", "split", "seed", "amp", "skip_bad", "final", "frames",
    "tta", "geometry", "crop_fill",
)
# Settings that only say how a run is scored: saved in args.json too, so -e scores a run as it was
# scored, but a resumed or re-evaluated run may be given others.
SCORING_SETTINGS = ("bootstrap",)
# What a run saved before these settings existed was trained with: the summed loss, one
# learning rate, peak frames only, no test-time augmentation, no landmark geometry, square crops
# padded black past the frame; it is scored with today's default bootstrap.
LEGACY_SETTINGS = {"loss": "sum", "backbone_lr": 1.0, "frames": 1, "tta": "none", "geometry": False,
                   "crop_fill": "black", "bootstrap": intervals.DEFAULT_RESAMPLES}


def run_settings(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in RUN_SETTINGS}


def saved_settings(saved: dict) -> dict:
    """A run's args.json (or a checkpoint's "args") in today's terms: `no_pretrained` becomes
    `weights`, and a setting added since the run started takes the value the run trained with."""
    saved = dict(saved)
    if "weights" not in saved:
        saved["weights"] = "none" if saved.get("no_pretrained") else "DEFAULT"
    saved.pop("no_pretrained", None)
    for key, value in LEGACY_SETTINGS.items():
        saved.setdefault(key, value)
    return saved


# ----------------------------------------------------------------------------- the run folder


def read_args_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable args.json ({e}): restore it from the run")


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
            theirs = saved_settings(read_args_json(saved))
            if {k: theirs.get(k) for k in RUN_SETTINGS} == run_settings(args):
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
    scoring = {k: getattr(args, k) for k in SCORING_SETTINGS}
    utils.write_json(saved, {**run_settings(args), **scoring, "data_dir": args.data_dir, "label_dir": args.label_dir,
                             "landmark_dir": args.landmark_dir, "command": command_line()})


def saved_setting(key: str, saved: dict):
    """A setting as the run used it: a run saved without --aus (and without --min-count) used the
    default AU list."""
    value = saved.get(key)
    if key == "aus" and value is None and saved.get("min_count") is None:
        return ",".join(map(str, dataset.DEFAULT_AUS))
    return value


def same_setting(key: str, given, saved) -> bool:
    """Whether a typed flag says what the run used (`--aus 1,2` is `--aus "1, 2"`)."""
    if key == "aus" and given is not None and saved is not None:
        return dataset.parse_au_list(str(given)) == dataset.parse_au_list(str(saved))
    return given == saved


def changed_settings(args: argparse.Namespace, saved: dict, typed: set[str], allowed: Sequence[str] = ()) -> list[str]:
    """The run settings the user typed (`typed`: argparse dests) that disagree with the run's
    args.json (`saved`), in RUN_SETTINGS order. Every setting is covered, so a new one needs no
    code here."""
    saved = saved_settings(saved)
    return [key for key in RUN_SETTINGS if key in typed and key not in allowed
            and not same_setting(key, getattr(args, key), saved_setting(key, saved))]


def adopt_saved_settings(args: argparse.Namespace, saved: dict, keep: Sequence[str] = ()) -> dict:
    """Take a run's own settings (`saved`: its args.json as read) for resume/evaluate, but those in
    `keep`, and its data folders unless given -> the settings in today's terms. Typed flags that
    disagree are refused before this (`changed_settings`)."""
    saved = saved_settings(saved)
    for key, value in saved.items():
        if (key in RUN_SETTINGS or key in SCORING_SETTINGS) and key not in keep:
            setattr(args, key, value)
    for role in ("data_dir", "label_dir", "landmark_dir"):
        setattr(args, role, getattr(args, role) or saved.get(role))
    return saved


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
    saved = read_args_json(run_dir / "args.json")
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


def write_results(out_dir: Path, args: argparse.Namespace, aus: list[int], parts: list[tuple]) -> dict:
    """Per-AU metrics of the out-of-fold predictions of every fold, pooled (never averaged per fold),
    written with the pooled predictions and the figures into `out_dir`.

    `parts`: one (ids, subjects, folds, targets, probs) per fold. `folds` in the results lists the
    folds they cover; when that is not all of them, the protocol says so too."""
    ids = [i for part in parts for i in part[0]]
    subjects = [s for part in parts for s in part[1]]
    folds = [k for part in parts for k in part[2]]
    targets = np.concatenate([np.asarray(part[3]) for part in parts])
    probs = np.concatenate([np.asarray(part[4]) for part in parts])
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
    metrics.write_predictions(out_dir / "predictions.csv", ids, subjects, aus, targets, probs, fold=folds)
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


def read_fold_predictions(fold_dir: Path, aus: list[int]) -> tuple:
    """A finished fold's predictions.csv -> (ids, subjects, folds, targets, probs)."""
    ids, subjects, folds, file_aus, targets, probs = metrics.read_predictions(fold_dir / "predictions.csv")
    if list(file_aus) != list(aus):
        raise UserError(f"{fold_dir / 'predictions.csv'} holds AUs {file_aus}, not {aus}: it belongs to another run")
    return ids, subjects, folds, targets, probs


# ----------------------------------------------------------------------------- typed flags on a saved run


def typed_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests of the flags (and paths) the user typed: a typed default (`--epochs 100`) counts,
    which comparing values against the defaults could not tell."""
    untouched = object()
    # argparse leaves a value already in the namespace alone unless the flag is typed; a path
    # not given (nargs="?") is set to None
    start = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args([])), untouched))
    parsed = vars(parser.parse_args(argv, namespace=start))
    return {key for key, value in parsed.items() if value is not untouched and value is not None}


def non_default_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> set[str]:
    """For args not parsed from a command line: the dests whose value is not the parser's default."""
    defaults = vars(parser.parse_args([]))
    return {key for key, value in vars(args).items() if key in defaults and value != defaults[key]}


def flag_name(key: str) -> str:
    """An argparse dest -> the flag a user types for it (`batch_size` -> `--batch-size`): every
    long flag here is its dest in kebab case."""
    return "--" + key.replace("_", "-")


def describe_flag(key: str, value) -> str:
    flag = flag_name(key)
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    return f"{flag} {value}"


def refuse_changed_settings(args: argparse.Namespace, saved: dict, source: Path, what: str, typed: set[str],
                            allowed: tuple[str, ...] = ()) -> None:
    """A run keeps its settings for life: every typed flag that disagrees with its args.json is
    refused, all of them in one line (every key of RUN_SETTINGS, present and future)."""
    changed = changed_settings(args, saved, typed, allowed)
    if changed:
        def theirs(key: str) -> str:
            value = saved_setting(key, saved_settings(saved))
            return describe_flag(key, value) if isinstance(value, bool) else "not set" if value is None else str(value)

        listed = ", ".join(f"{describe_flag(k, getattr(args, k))} (run: {theirs(k)})" for k in changed)
        raise UserError(f"{what} keeps the settings in {source}; these flags disagree with it: {listed}: "
                        f"drop them, or start a new run with another --output-dir")


def typed_scoring(typed: set[str]) -> tuple[str, ...]:
    """The scoring settings the user typed on --resume or -e: they win over the run's args.json."""
    return tuple(k for k in SCORING_SETTINGS if k in typed)
