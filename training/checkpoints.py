"""The checkpoint format, built and read here and nowhere else.

A fold's (or the final model's) checkpoint is built by `fold_checkpoint` and a run's frozen
backbone by `backbone_checkpoint`; both are read back by `load_checkpoint`, which refuses a file
whose `"version"` is not FORMAT_VERSION. Where they live in a run folder:

    RUN_DIR/foldK/checkpoint.pth     fold K's model, optimizer, schedule, epoch, history, test IDs,
                                     the weights it started from
    RUN_DIR/backbone.pth             with --freeze-backbone: the one frozen backbone of every fold
    RUN_DIR/final/checkpoint.pth     with --final: the model trained on every sequence
"""
from __future__ import annotations

import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Sequence

import torch

import models
from training import settings
import utils
from utils import UserError

CHECKPOINT = "checkpoint.pth"
BACKBONE = "backbone.pth"
# Bumped when a checkpoint's keys change meaning; a file without the key is format 1.
# 3: the optimizer has two parameter groups (backbone, head) and "weights" says what the model
#    started from.
# 4: "args" holds every run setting, --geometry and --crop-fill included, and "model" holds the
#    landmark branch of a --geometry model. A format 3 file written before --geometry lacks both
#    settings, and nothing in it tells it from one written after; read with today's defaults it
#    would crop with --crop-fill image a model trained on black padding. So every other format
#    is refused rather than guessed at.
FORMAT_VERSION = 4
CHECKPOINT_KEYS = ("model", "epoch", "aus", "arch")
BACKBONE_KEYS = ("backbone", "arch")


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
    if version != FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format version {version}, and this program reads only format "
                        f"{FORMAT_VERSION}: retrain the run, or use the version of this program that wrote it")
    return state


def fold_checkpoint(model: models.AUNet, optimizer, scheduler, scaler, *, epoch: int, fold: int, settings: dict,
                    aus: Sequence[int], test_ids: list[str], history: list[dict], weights: dict,
                    finished: bool = False) -> dict:
    """The one checkpoint format: everything `--resume`, `-e` and predict.py read back.

    `settings`: the run's settings (`runs.run_settings(args)`), kept as "args". A frozen backbone
    is left out (the run's backbone.pth holds it once). `weights`: what the model started from
    (`start_weights.StartingWeights.record`). A `finished` fold keeps its optimizer's settings but not
    its per-parameter state (SGD's momentum, as large as the model): -e and predict.py need only
    the weights, and an --epochs extension restarts momentum from zero, which halves what a run
    keeps on disk."""
    return {
        "version": FORMAT_VERSION, "model": model_state(model), "frozen_backbone": model.frozen,
        "optimizer": slim_optimizer_state(optimizer.state_dict()) if finished else optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "epoch": epoch, "fold": fold, "kfold": settings["kfold"], "arch": settings["model"],
        "aus": list(aus), "args": dict(settings), "test_ids": test_ids, "history": history, "weights": weights,
    }


def slim_optimizer_state(state: dict) -> dict:
    """An optimizer state dict without its per-parameter buffers (learning rates etc. stay)."""
    return {**state, "state": {}}


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
        # a --model landmarks run from before issue 24 held an MLP where the model is now linear
        raise UserError(f"checkpoint {path} does not fit a {ckpt['arch']} model with {len(ckpt['aus'])} AUs "
                        f"({utils.first_line(e)}): an older version of this program wrote it; retrain the run with "
                        f"this version, or use the version that wrote it") from None


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


def backbone_checkpoint(state: dict, arch: str, weights: dict) -> dict:
    """RUN_DIR/backbone.pth of a --freeze-backbone run: the backbone's `state`, the same for every
    fold, and `weights`, what it started from (`start_weights.StartingWeights.record`)."""
    return {"version": FORMAT_VERSION, "backbone": state, "arch": arch, "pretrained": weights["weights"] != "none",
            "weights": weights}


def frozen_backbone(path: Path, what: str = "checkpoint") -> dict:
    """The backbone a frozen-backbone checkpoint at `path` trained its head on: its run's
    backbone.pth, two levels up (RUN_DIR/foldK/checkpoint.pth -> RUN_DIR/backbone.pth). `what`
    names the checkpoint in the error ("checkpoint", "--weights")."""
    backbone_path = Path(path).parent.parent / BACKBONE
    if not backbone_path.is_file():
        raise UserError(f"{what} {path} trained a head on a frozen backbone, and {backbone_path} is missing: "
                        f"keep the checkpoint inside its run folder")
    return load_checkpoint(backbone_path, required=BACKBONE_KEYS)["backbone"]


def build_trained_model(ckpt: dict, path: Path) -> models.AUNet:
    """The trained model a fold (or final) checkpoint describes, on the CPU, in eval mode.

    `path` is the checkpoint's file; a frozen-backbone checkpoint takes its backbone from
    the run folder two levels up (RUN_DIR/foldK/checkpoint.pth -> RUN_DIR/backbone.pth)."""
    backbone = frozen_backbone(path) if ckpt.get("frozen_backbone") else None
    # format 4 keeps every run setting in "args"; one that lacks some (--geometry among them) is
    # refused in one line rather than guessed
    geometry = bool(settings.check_complete(ckpt.get("args", {}), path)["geometry"])
    try:
        model = models.build_model(ckpt["arch"], len(ckpt["aus"]), pretrained=False,
                                   freeze_backbone=bool(ckpt.get("frozen_backbone")), backbone_state=backbone,
                                   geometry=geometry)
    except UserError as e:
        raise UserError(f"checkpoint {path}: {e}") from None
    load_model_state(model, ckpt, path)
    return model.eval()


def load_trained_model(path: str | Path) -> tuple[models.AUNet, dict]:
    """A checkpoint written by main.py -> (model in eval mode on the CPU, the checkpoint dict)."""
    ckpt = load_checkpoint(path)
    return build_trained_model(ckpt, Path(path)), ckpt
