"""The weights a run starts from: what --weights means, and the frozen backbone a run shares.

--weights is torchvision's weights by name (DEFAULT, IMAGENET1K_V1, ...), none (random), or a
file: a state dict of the model, or a checkpoint of an earlier run of this program (its backbone).
"""
from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

import models
from training import checkpoints
import utils
from utils import UserError


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
        raise UserError(f"--weights {path} is a folder: give a file, e.g. {path / 'final' / checkpoints.CHECKPOINT}")
    try:
        state = checkpoints.torch_load_safely(path)
    except Exception as e:
        raise UserError(f"--weights {path} is not a readable PyTorch weights file ({utils.first_line(e, limit=160, with_type=True)}): give a state "
                        f"dict of {model} or a checkpoint of this program") from e
    if isinstance(state, dict) and all(k in state for k in checkpoints.CHECKPOINT_KEYS):
        arch = state["arch"]
        if models.resolve_arch(str(arch)) != models.resolve_arch(model):
            raise UserError(f"--weights {path} is a checkpoint of a {arch} run, not of {model}: pass --model {arch}, "
                            f"or give a {model} file")
        if state.get("frozen_backbone"):
            return checkpoints.frozen_backbone(path, "--weights"), "run checkpoint"
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
    path = run_dir / checkpoints.BACKBONE
    if path.is_file():
        state = checkpoints.load_checkpoint(path, required=checkpoints.BACKBONE_KEYS)
        if state["arch"] != args.model:
            raise UserError(f"{path} is a {state['arch']} backbone, not {args.model}: it belongs to another run")
        return state["backbone"]
    torch.manual_seed(args.seed)
    model = start.build(args.model, num_aus, freeze_backbone=True)
    state = model.backbone.state_dict()
    checkpoints.save_checkpoint(checkpoints.backbone_checkpoint(state, args.model, start.record), path)
    return state


