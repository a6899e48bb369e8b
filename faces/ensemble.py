"""The trained models that predict on new faces: a run folder's final model or the mean of its
fold models, a --seeds run's models of every seed, or one checkpoint; the run settings their
inputs need; and their mean probability for a batch of crops, evaluated exactly as main.py
evaluates (engine.evaluate)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ckplus import geometry
import models
import preprocess
from scoring import seeds_folder
from training import checkpoints, engine
from training import settings as run_settings
import utils
from utils import UserError

log = logging.getLogger(utils.LOGGER_NAME)

# Settings that decide a model's input: checkpoints averaged together must agree on all of them.
INPUT_SETTINGS = ("crop", "margin", "image_size", "norm")


@dataclass
class Ensemble:
    """The checkpoints whose probabilities are averaged, and the run settings they share. Called
    on crops once `load` has put its models on a device."""

    checkpoints: list[Path]
    description: str  # the CSV's `models` column: "final", "mean of 5 folds", "fold2 checkpoint"
    arch: str
    aus: list[int]
    settings: dict  # the run's args: crop, margin, image_size, norm, threshold, ...
    threshold: float
    tta: str = "none"  # test-time augmentation: the run's --tta, or predict.py's
    members: list[models.AUNet] = field(default_factory=list, repr=False)
    device: torch.device = torch.device("cpu")
    batch_size: int = 32

    @property
    def mean_std(self) -> tuple[tuple, tuple]:
        config = models.model_config(self.arch)
        return preprocess.resolve_norm(self.settings["norm"], config.mean, config.std)

    def load(self, device: torch.device, batch_size: int) -> None:
        """Load every model (checked to belong to the run) onto `device`: they are kept, since the
        crops come a batch at a time and reloading each model per batch would cost more than
        predicting. Raises UserError for a checkpoint that is not this run's."""
        self.device, self.batch_size = device, batch_size
        self.members = [engine.place(load_member(self, path), device, self.channels_last) for path in self.checkpoints]
        log.info("predicting with %d model%s (%s)", len(self.members), "" if len(self.members) == 1 else "s",
                 self.description)

    @property
    def channels_last(self) -> bool:
        """The layout main.py trains and scores this model in on the device (models.channels_last)."""
        return models.channels_last(self.arch, self.device)

    def __call__(self, crops: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        """The mean probability (N, A) of the models for uint8 crops (N, S, S); `landmarks`: each
        crop's 68 points in image pixels (N, 68, 2), which a --geometry model reads too."""
        images = torch.from_numpy(crops).unsqueeze(1)
        mean, std = self.mean_std
        total = np.zeros((len(crops), len(self.aus)), dtype=np.float64)
        for model in self.members:
            total += predict_crops(model, images, mean, std, self.device, self.batch_size, self.tta, landmarks,
                                   channels_last=self.channels_last)
        return total / len(self.members)


def checkpoint_paths(path: Path) -> tuple[list[Path], str | None]:
    """RUN_DIR_OR_CHECKPOINT -> the checkpoints to use, and what they are (None: ask the checkpoint)."""
    if not path.exists():
        raise UserError(f"{path} does not exist: give a run folder main.py wrote, or a checkpoint.pth in one")
    if path.is_file():
        return [path], None
    if seeds_folder.is_seeds_run(path):
        return seeds_checkpoints(path)
    final, folds = run_checkpoints(path)
    if final:
        return final, "final"
    if not folds:
        raise UserError(f"{path} holds no trained model (no final/{checkpoints.CHECKPOINT}, no "
                        f"fold<k>/{checkpoints.CHECKPOINT}): give a run folder main.py trained, or one of its checkpoints")
    if len(folds) == 1:
        return folds, f"{folds[0].parent.name} checkpoint"
    return folds, f"mean of {len(folds)} folds"


def run_checkpoints(path: Path) -> tuple[list[Path], list[Path]]:
    """A run folder's final checkpoint ([] or [it]) and its fold checkpoints, in fold order."""
    final = path / "final" / checkpoints.CHECKPOINT
    folds = sorted((p for p in path.glob(f"fold*/{checkpoints.CHECKPOINT}") if p.parent.name[4:].isdigit()),
                   key=lambda p: int(p.parent.name[4:]))
    return [final] if final.is_file() else [], folds


def seeds_checkpoints(root: Path) -> tuple[list[Path], str]:
    """Every seed's models of a --seeds run: each seed's final model where it has one, else its fold
    models. A seed not trained yet (or part of one) is left out with a warning."""
    info = seeds_folder.read_seeds_file(root)
    paths, kinds = [], []
    for seed_dir in seeds_folder.seed_dirs(root, info["seeds"]):
        final, folds = run_checkpoints(seed_dir)
        if not final and not folds:
            log.warning("%s holds no trained model: predicting with the other seeds' models", seed_dir)
            continue
        kfold = run_settings.read_args_json(seed_dir / "args.json").get("kfold") if not final else None
        if kfold and len(folds) < kfold:
            log.warning("%s has %d of its %d fold checkpoints: predicting with those", seed_dir, len(folds), kfold)
        paths += final or folds
        kinds.append("final" if final else len(folds))
    if not paths:
        raise UserError(f"{root} is a --seeds run none of whose seeds holds a trained model: train it first "
                        f"(python main.py --resume {root})")
    n = len(kinds)
    if kinds == ["final"] * n:
        return paths, f"mean of {n} seeds' final models"
    if len(set(kinds)) == 1:
        return paths, f"mean of {n} seeds x {kinds[0]} folds"
    return paths, f"mean of {len(paths)} models of {n} seeds"


def open_ensemble(path: Path, threshold: float | None, tta: str | None = None) -> Ensemble:
    """Which models predict, with the settings their inputs need; reads the first checkpoint
    (Ensemble.load loads the models). `tta` None: the run's own test-time augmentation."""
    paths, description = checkpoint_paths(path)
    ckpt = checkpoints.load_checkpoint(paths[0])
    settings = ckpt.get("args")
    if not isinstance(settings, dict) or any(k not in settings for k in INPUT_SETTINGS):
        raise UserError(f"{paths[0]} holds no run settings (crop, image size, normalisation): it was not written "
                        f"by this main.py; retrain")
    settings = run_settings.check_complete(settings, paths[0])
    if tta is not None and tta != settings["tta"]:
        log.warning("predicting with --tta %s; the run was trained and scored with --tta %s", tta, settings["tta"])
    tta = tta or settings["tta"]
    if description is None:
        is_final = ckpt.get("fold") is not None and ckpt.get("fold") == ckpt.get("kfold")
        description = "final checkpoint" if is_final else f"fold{ckpt.get('fold')} checkpoint"
    if threshold is None:  # a --seeds run's seeds share it: seed 0's says
        run_args = (seeds_folder.seed_dirs(path, 1)[0] if seeds_folder.is_seeds_run(path) else path) / "args.json"
        if path.is_dir() and run_args.is_file():
            threshold = run_settings.read_args_json(run_args).get("threshold")
        if threshold is None:
            threshold = settings.get("threshold", 0.5)
    kfold = settings.get("kfold")
    # (a --seeds run's seeds have said so each for itself)
    if description.startswith("mean of") and kfold and len(paths) < kfold and not seeds_folder.is_seeds_run(path):
        log.warning("%s has %d of its %d fold checkpoints: predicting with the mean of those", path, len(paths), kfold)
    if tta == "flip":
        description += ", flip TTA"
    return Ensemble(paths, description, ckpt["arch"], [int(a) for a in ckpt["aus"]], settings, float(threshold),
                    tta)


def check_same_run(ckpt: dict, path: Path, ensemble: Ensemble) -> None:
    """Checkpoints averaged together must see the same input and predict the same AUs."""
    first = ensemble.checkpoints[0]
    if ckpt["arch"] != ensemble.arch or [int(a) for a in ckpt["aus"]] != ensemble.aus:
        raise UserError(f"{path} is a {ckpt['arch']} model of AUs {ckpt['aus']}, but {first} is a {ensemble.arch} "
                        f"model of AUs {ensemble.aus}: they are not one run")
    for key in INPUT_SETTINGS:
        if ckpt.get("args", {}).get(key) != ensemble.settings[key]:
            raise UserError(f"{path} was trained with {key} {ckpt.get('args', {}).get(key)}, {first} with "
                            f"{ensemble.settings[key]}: they are not one run")


def load_member(ensemble: Ensemble, path: Path) -> models.AUNet:
    """One of the ensemble's models, checked to belong to the run, on the CPU."""
    model, ckpt = checkpoints.load_trained_model(path)
    check_same_run(ckpt, path, ensemble)
    epochs = ckpt.get("args", {}).get("epochs")
    if epochs and ckpt["epoch"] + 1 < epochs:
        log.warning("%s stopped at epoch %d of %d: its training is not finished", path, ckpt["epoch"] + 1, epochs)
    return model


@torch.no_grad()
def predict_crops(model: models.AUNet, crops: torch.Tensor, mean, std, device: torch.device,
                  batch_size: int, tta: str = "none", landmarks: np.ndarray | None = None,
                  channels_last: bool = False) -> np.ndarray:
    """Sigmoid probabilities (N, A) of uint8 crops (N, 1, S, S), normalised as in training, and
    evaluated as main.py evaluates (engine.evaluate), mirror images included with tta="flip".
    `landmarks` (N, 68, 2, image pixels) become the normalised shape a --geometry model reads."""
    shape = None if landmarks is None else torch.from_numpy(geometry.normalise(landmarks))
    inputs = engine.Inputs(labels=torch.zeros(len(crops), model.num_aus), images=crops, mean=mean, std=std,
                           geometry=shape, channels_last=channels_last)
    return engine.evaluate(model, inputs, torch.arange(len(crops)), device, batch_size, tta=tta)
