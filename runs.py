"""A run folder and what it holds: args.json, the checkpoint format, resume and rebuilding a model.

One checkpoint format, built by `fold_checkpoint` and read by `load_checkpoint` (with a
`"version"` key, checked on load). A run folder is made once its data and folds are known to
work; `--resume`, `-e` and predict.py find their way back into it from here.

    RUN_DIR/args.json                the run's settings (settings.SETTINGS), data folders, command line
    RUN_DIR/foldK/checkpoint.pth     fold K's model, optimizer, schedule, epoch, history, test IDs,
                                     the weights it started from
    RUN_DIR/backbone.pth             with --freeze-backbone: the one frozen backbone of every fold
    RUN_DIR/final/checkpoint.pth     with --final: the model trained on every sequence
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Sequence

import torch

import intervals
import metrics
import models
import settings
import utils
from settings import run_settings, saved_settings
from utils import UserError

CHECKPOINT = "checkpoint.pth"
BACKBONE = "backbone.pth"
# Bumped when a checkpoint's keys change meaning; files without the key predate it (format 1).
# 3: the optimizer has two parameter groups (backbone, head) and "weights" says what the
# model started from; `upgrade_checkpoint` reads formats 1 and 2 as format 3.
FORMAT_VERSION = 3
CHECKPOINT_KEYS = ("model", "epoch", "aus", "arch")

# ----------------------------------------------------------------------------- checkpoint files


def state_bytes(state) -> int:
    """The bytes of every tensor in a (nested) checkpoint dict: what torch.save writes, give or take
    a few KB of zip headers and pickled keys. Works on meta tensors too (sizes without memory)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """torch.save `state` atomically: a crash mid-save never replaces a good checkpoint with half of one.
    A full disk is a `utils.DiskFull` naming the folder and the checkpoint's size."""
    return utils.write_atomically(path, lambda f: torch.save(state, f), size=state_bytes(state))


def torch_load_safely(path: Path):
    """torch.load onto the CPU with weights_only=True: tensors and plain data only, so a file crafted
    to run code when unpickled is refused before anything in it runs."""
    with warnings.catch_warnings():
        # torch warns about the pickle protocol of files it did not write; our errors say it better
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True)


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
        state = torch_load_safely(path)
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
            f"{path} is not a readable checkpoint (truncated or not written by main.py): {utils.first_line(e, limit=160, with_type=True)}"
        ) from e
    if not isinstance(state, dict):
        raise UserError(f"{path} is not an AU checkpoint (it holds a {type(state).__name__}, not a dict): "
                        f"give a checkpoint written by main.py")
    missing = [key for key in required if key not in state]
    if missing:
        raise UserError(f"{path} is not an AU checkpoint (missing keys {', '.join(missing)}): "
                        f"give a checkpoint written by main.py")
    version = state.get("version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format version {version}, newer than this program reads "
                        f"({FORMAT_VERSION}): update this program to the one that wrote it")
    return state




def fold_checkpoint(model: models.AUNet, optimizer, scheduler, scaler, *, epoch: int, fold: int, args,
                    aus: Sequence[int], test_ids: list[str], history: list[dict], weights: dict,
                    finished: bool = False) -> dict:
    """The one checkpoint format: everything `--resume`, `-e` and predict.py read back.

    A frozen backbone is left out (the run's backbone.pth holds it once). `weights`: what the
    model started from (`StartingWeights.record`). A `finished` fold keeps its optimizer's
    settings but not its per-parameter state (SGD's momentum, as large as the model): -e and
    predict.py need only the weights, and an --epochs extension restarts momentum from zero,
    which halves what a run keeps on disk."""
    return {
        "version": FORMAT_VERSION, "model": model_state(model), "frozen_backbone": model.frozen,
        "optimizer": slim_optimizer_state(optimizer.state_dict()) if finished else optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "epoch": epoch, "fold": fold, "kfold": args.kfold, "arch": args.model, "aus": list(aus),
        "args": run_settings(args), "test_ids": test_ids, "history": history, "weights": weights,
    }


def slim_optimizer_state(state: dict) -> dict:
    """An optimizer state dict without its per-parameter buffers (learning rates etc. stay)."""
    return {**state, "state": {}}


def upgrade_checkpoint(ckpt: dict, model: models.AUNet) -> None:
    """Read a format 1 or 2 checkpoint as format 3, in place, to resume it: its optimizer's one
    parameter group (the backbone's parameters, then the head's, in model order) becomes
    the backbone and head groups `engine.make_optimizer` builds, at the same learning rate."""
    if ckpt.get("version", 1) >= 3:
        return
    groups = ckpt["optimizer"]["param_groups"]
    backbone = sum(1 for p in model.backbone.parameters() if p.requires_grad)
    if len(groups) == 1 and backbone:
        group = groups[0]
        ckpt["optimizer"]["param_groups"] = [{**group, "params": group["params"][:backbone], "name": "backbone"},
                                             {**group, "params": group["params"][backbone:], "name": "head"}]
        schedule = ckpt["lr_scheduler"]
        for key in ("base_lrs", "_last_lr"):
            if len(schedule.get(key) or []) == 1:
                schedule[key] = schedule[key] * 2
    elif len(groups) == 1:
        groups[0]["name"] = "head"
    ckpt["args"] = saved_settings(ckpt.get("args", {}))


def model_state(model: models.AUNet) -> dict:
    """What a checkpoint keeps of a model: everything, or only the head when the backbone is frozen."""
    state = model.state_dict()
    if model.frozen:
        state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    return state


def load_model_state(model: models.AUNet, ckpt: dict, path: Path) -> None:
    try:
        if ckpt.get("frozen_backbone"):
            missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
            if unexpected or any(not k.startswith("backbone.") for k in missing):
                raise UserError(f"checkpoint {path} does not fit a {ckpt['arch']} AU head (missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]}): retrain")
        else:
            model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint {path} does not fit a {ckpt['arch']} model with {len(ckpt['aus'])} AUs: "
                        f"{utils.first_line(e)}") from None


def load_fold_checkpoint(path: Path, args, aus: list[int], fold: int | None, test_ids: list[str] | None) -> dict:
    """A fold checkpoint that belongs to this run, or one clear error saying why not."""
    ckpt = load_checkpoint(path)
    if ckpt["arch"] != args.model:
        raise UserError(f"checkpoint {path} is a {ckpt['arch']} model, not {args.model}: pass the matching --model "
                        f"or another checkpoint")
    if list(ckpt["aus"]) != list(aus):
        raise UserError(f"checkpoint {path} recognises AUs {ckpt['aus']}, not {aus}: drop --aus/--min-count or use "
                        f"another checkpoint")
    if fold is not None and ckpt.get("fold") != fold:
        raise UserError(f"checkpoint {path} is fold {ckpt.get('fold')}, not fold {fold}: check the run folder")
    if test_ids is not None and list(ckpt.get("test_ids", [])) != test_ids:
        raise UserError(f"checkpoint {path} was tested on other sequences than this fold: the data changed since the "
                        f"run started; start a new run")
    return ckpt


def checkpoint_finished(path: Path, args, aus: list[int], fold: int, test_ids: list[str]) -> bool:
    """The checkpoint belongs to this run and fold (or is the final model) and reached the last epoch."""
    return path.is_file() and load_fold_checkpoint(path, args, aus, fold, test_ids)["epoch"] >= args.epochs - 1


def fold_finished(fold_dir: Path, args, aus: list[int], fold: int, test_ids: list[str]) -> bool:
    """A fold is finished when its predictions exist and its checkpoint reached the last epoch."""
    return (fold_dir / "predictions.csv").is_file() and checkpoint_finished(fold_dir / CHECKPOINT, args, aus, fold,
                                                                            test_ids)


# ----------------------------------------------------------------------------- models from a run


# ----------------------------------------------------------------------------- the weights a run starts from


@dataclass
class StartingWeights:
    """What --weights means for a run: torchvision's weights `name` (IMAGENET1K_V1, ...), a
    backbone `state` taken from a file, or neither (random); `record` is what checkpoints and
    results.json keep of it."""

    name: str | None = None
    state: dict | None = field(default=None, repr=False)
    record: dict = field(default_factory=lambda: {"weights": "none"})

    @classmethod
    def none(cls) -> StartingWeights:
        return cls()

    def build(self, arch: str, num_aus: int, freeze_backbone: bool, geometry: bool = False) -> models.AUNet:
        """A model of `arch` whose backbone starts from these weights, with a fresh AU head (and
        with `geometry`, a fresh landmark branch)."""
        return models.build_model(arch, num_aus, pretrained=self.name is not None, weights=self.name or "DEFAULT",
                                  freeze_backbone=freeze_backbone, backbone_state=self.state, geometry=geometry)


def is_weights_name(value: str) -> bool:
    """--weights VALUE names weights (none, DEFAULT, IMAGENET1K_V1, ...) rather than a file: it
    has no path separator and no file suffix, and no such file exists."""
    return not Path(value).exists() and "/" not in value and "\\" not in value and not Path(value).suffix


def describe_weights(args: argparse.Namespace) -> dict:
    """What --weights means, without reading any file: for results.json and the log."""
    value = args.weights
    if value.lower() == "none":
        return {"weights": "none"}
    if is_weights_name(value):
        name = models.resolve_weights(args.model, value)
        return {"weights": name, "file": models.weights_file(args.model, name)[0]}
    return {"weights": "file", "file": str(Path(value).resolve())}


def starting_weights(args: argparse.Namespace) -> StartingWeights:
    """Check --weights and read a weights file (once per run); a UserError names what is wrong."""
    record = describe_weights(args)
    if record["weights"] == "none":
        return StartingWeights.none()
    if record["weights"] != "file":
        return StartingWeights(name=record["weights"], record=record)
    path = Path(args.weights)
    state, kind = read_weights_file(path, args.model)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return StartingWeights(state=state, record={**record, "kind": kind, "sha256": digest})


def read_weights_file(path: Path, model: str) -> tuple[dict, str]:
    """--weights FILE -> (the backbone's state dict for `model`, what the file was).

    A plain state dict of torchvision's model (its classifier is dropped), or a checkpoint of
    an earlier run of this program (its backbone; a frozen run's comes from its backbone.pth).
    Loaded with weights_only=True: tensors and plain data only, never code."""
    if not path.exists():
        raise UserError(f"--weights {path} does not exist: give a weights name of {model} "
                        f"({', '.join(models.weights_names(model)) or 'none'}), none, or a weights file")
    if path.is_dir():
        raise UserError(f"--weights {path} is a folder: give a file, e.g. {path / 'final' / CHECKPOINT}")
    try:
        state = torch_load_safely(path)
    except Exception as e:
        raise UserError(f"--weights {path} is not a readable PyTorch weights file ({utils.first_line(e, limit=160, with_type=True)}): give a state "
                        f"dict of {model} or a checkpoint of this program") from e
    if isinstance(state, dict) and all(k in state for k in CHECKPOINT_KEYS):
        arch = state["arch"]
        if models.resolve_arch(str(arch)) != models.resolve_arch(model):
            raise UserError(f"--weights {path} is a checkpoint of a {arch} run, not of {model}: pass --model {arch}, "
                            f"or give a {model} file")
        if state.get("frozen_backbone"):
            backbone_path = path.parent.parent / BACKBONE
            if not backbone_path.is_file():
                raise UserError(f"--weights {path} trained a head on a frozen backbone, and {backbone_path} is "
                                f"missing: keep the checkpoint inside its run folder")
            return load_checkpoint(backbone_path, required=("backbone", "arch"))["backbone"], "run checkpoint"
        prefix = "backbone."
        return {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}, "run checkpoint"
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--weights {path} holds neither a state dict of {model} nor a checkpoint of this program: "
                        f"give one of those")
    return models.backbone_state(model, state, str(path)), "state dict"


def run_backbone(run_dir: Path, args, num_aus: int, start: StartingWeights) -> dict:
    """The frozen backbone's weights, the same for every fold of a run: built once (--weights,
    or random from --seed) and saved as RUN_DIR/backbone.pth, so fold checkpoints hold only
    the head and a resumed or evaluated run uses exactly the same features."""
    path = run_dir / BACKBONE
    if path.is_file():
        state = load_checkpoint(path, required=("backbone", "arch"))
        if state["arch"] != args.model:
            raise UserError(f"{path} is a {state['arch']} backbone, not {args.model}: it belongs to another run")
        return state["backbone"]
    torch.manual_seed(args.seed)
    model = start.build(args.model, num_aus, freeze_backbone=True)
    state = model.backbone.state_dict()
    save_checkpoint({"version": FORMAT_VERSION, "backbone": state, "arch": args.model,
                     "pretrained": start.record["weights"] != "none", "weights": start.record}, path)
    return state


def build_trained_model(ckpt: dict, path: Path) -> models.AUNet:
    """The trained model a fold (or final) checkpoint describes, on the CPU, in eval mode.

    `path` is the checkpoint's file; a frozen-backbone checkpoint takes its backbone from
    the run folder two levels up (RUN_DIR/foldK/checkpoint.pth -> RUN_DIR/backbone.pth)."""
    backbone = None
    if ckpt.get("frozen_backbone"):
        backbone_path = Path(path).parent.parent / BACKBONE
        if not backbone_path.is_file():
            raise UserError(f"checkpoint {path} trained a head on a frozen backbone, and {backbone_path} is missing: "
                            f"keep the checkpoint inside its run folder")
        backbone = load_checkpoint(backbone_path, required=("backbone", "arch"))["backbone"]
    try:
        model = models.build_model(ckpt["arch"], len(ckpt["aus"]), pretrained=False,
                                   freeze_backbone=bool(ckpt.get("frozen_backbone")), backbone_state=backbone,
                                   geometry=bool(settings.check_complete(ckpt.get("args", {}), path)["geometry"]))
    except UserError as e:
        raise UserError(f"checkpoint {path}: {e}") from None
    load_model_state(model, ckpt, path)
    return model.eval()


def load_trained_model(path: str | Path) -> tuple[models.AUNet, dict]:
    """A checkpoint written by main.py -> (model in eval mode on the CPU, the checkpoint dict)."""
    ckpt = load_checkpoint(path)
    return build_trained_model(ckpt, Path(path)), ckpt


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
        path = run_dir / name / CHECKPOINT
        if path.is_file():
            done[name] = load_checkpoint(path)["epoch"] + 1
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
    ckpt = load_checkpoint(path)
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
        "pretrained": args.weights.lower() != "none", "weights": describe_weights(args),
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
