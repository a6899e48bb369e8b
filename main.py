"""Train and evaluate facial Action Unit recognisers on CK+ with k-fold cross-validation.

    python main.py DATA_DIR LABEL_DIR LANDMARK_DIR --model alexnet     # train, k folds
    python main.py DATA_DIR LABEL_DIR LANDMARK_DIR -e --resume RUN_DIR # re-evaluate a run
    python main.py --demo                                              # synthetic CK+, a few minutes on a CPU

Reads top to bottom: arguments, then the data, the folds, one fold's training loop, the
pooled out-of-fold evaluation, and the command-line entry point at the end.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

import dataset
import models
import preprocess
import utils
from utils import UserError

log = logging.getLogger("au")

# Flags that describe how a run is trained: saved in args.json, fixed for the life of a
# run. The rest (device, workers, paths, verbosity) may change when a run is resumed.
RUN_SETTINGS = (
    "model", "aus", "min_count", "crop", "margin", "image_size", "norm", "augment", "no_pretrained",
    "freeze_backbone", "epochs", "step", "gamma", "start_epoch", "batch_size", "lr", "momentum", "wd",
    "pos_weight", "threshold", "kfold", "split", "seed", "amp", "skip_bad", "final",
)
ORIGINAL_SPLIT_SEED = 20  # the original shuffled its KFold with random_state=20
CHECKPOINT = "checkpoint.pth"
DEMO = dict(subjects=60, model="res18", epochs=18, step=6, gamma=0.5, batch_size=16, lr=0.02,
            kfold=5, image_size=64, no_pretrained=True)


# ----------------------------------------------------------------------------- arguments


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py",
        description="Train and evaluate facial Action Unit recognisers on CK+ (k-fold cross-validation).",
        formatter_class=utils.HelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("data_dir", nargs="?", metavar="DATA_DIR", help="CK+ frames: .../cohn-kanade-images")
    d.add_argument("label_dir", nargs="?", metavar="LABEL_DIR", help="FACS labels: .../FACS_labels/FACS")
    d.add_argument("landmark_dir", nargs="?", metavar="LANDMARK_DIR", help="landmarks: .../Landmarks/Landmarks")
    d.add_argument("--aus", metavar="LIST", default=None,
                   help="AUs to recognise, e.g. 1,2,4 (default: 1,2,4,5,6,7,12,15,17,25)")
    d.add_argument("--min-count", type=int, metavar="N", default=None,
                   help="instead of --aus, keep the AUs coded in more than N sequences (the original's rule: 90)")
    d.add_argument("--crop", choices=preprocess.CROP_MODES, default=None,
                   help="face crop from the landmarks: square keeps the face's shape, original is the "
                        "original program's stretched rectangle (default: square)")
    d.add_argument("--margin", type=float, default=preprocess.DEFAULT_MARGIN, metavar="F",
                   help="square crop: extra side around the landmark box, as a fraction")
    d.add_argument("--image-size", type=int, metavar="PX", default=None,
                   help="model input size (default: the backbone's own, 224; 299 for inception)")
    d.add_argument("--norm", choices=preprocess.NORM_MODES, default=None,
                   help="input normalisation: the backbone weights' mean/std, or half (0.5/0.5, the original's) "
                        "(default: weights)")
    d.add_argument("--augment", action="store_true", help="random flips and small affine jitter on training batches")
    d.add_argument("--skip-bad", action="store_true", help="skip bad sequences with a warning instead of stopping")
    d.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where face crops (and the demo's synthetic CK+) are cached (default: "
                        "$XDG_CACHE_HOME/au-recognition, or ~/.cache/au-recognition)")
    d.add_argument("--no-cache", action="store_true", help="do not read or write the crop cache")

    m = p.add_argument_group("model")
    m.add_argument("--model", metavar="NAME", default=None,
                   help="backbone: alexnet vgg16 vgg16_bn vgg19 res18 res50 res101 inception, or any torchvision "
                        "classification model (default: alexnet)")
    m.add_argument("--no-pretrained", action="store_true", help="train from scratch instead of ImageNet weights")
    m.add_argument("--freeze-backbone", action="store_true",
                   help="train only the AU head, as the original did (backbone features are then computed once)")
    m.add_argument("--no-feature-cache", action="store_true",
                   help="with --freeze-backbone: run the frozen backbone on every batch of every epoch, as the "
                        "original did, instead of computing its features once (same predictions, slower)")

    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=100, metavar="N", help="epochs per fold")
    o.add_argument("--step", type=int, default=20, metavar="N", help="multiply the learning rate by --gamma every N epochs")
    o.add_argument("--gamma", type=float, default=0.5, metavar="F", help="learning-rate decay factor")
    o.add_argument("--start-epoch", type=int, default=0, metavar="N",
                   help="manual epoch number to start at (the schedule starts there too)")
    o.add_argument("-b", "--batch-size", type=int, default=32, metavar="N", help="mini-batch size")
    o.add_argument("--lr", "--learning-rate", type=float, default=0.01, metavar="LR", dest="lr",
                   help="initial learning rate")
    o.add_argument("--momentum", type=float, default=0.9, metavar="M", help="SGD momentum")
    o.add_argument("--wd", "--weight-decay", type=float, default=1e-4, metavar="W", dest="wd", help="weight decay")
    o.add_argument("--pos-weight", action="store_true",
                   help="weight each AU's positives by negatives/positives of the training part of each fold")
    o.add_argument("--threshold", type=float, default=0.5, metavar="P", help="an AU is on when its probability is above P")

    c = p.add_argument_group("cross-validation")
    c.add_argument("--kfold", type=int, default=10, metavar="K", help="number of folds")
    c.add_argument("--split", choices=("subject", "sequence"), default="subject",
                   help="subject: no subject in both train and test; sequence: the original's shuffled folds "
                        "over sequences (random_state 20)")
    c.add_argument("--fold", type=int, default=None, metavar="K",
                   help="run only fold K (0-based), e.g. one fold per job; the run merges when all folds are in")
    c.add_argument("--final", action="store_true",
                   help="after the folds, train one more model on every sequence (for predict.py)")

    r = p.add_argument_group("run")
    r.add_argument("--resume", metavar="PATH", default=None,
                   help="a run folder or a fold checkpoint: continue it (with -e: evaluate it)")
    r.add_argument("-e", "--evaluate", action="store_true",
                   help="evaluate the checkpoints named by --resume on their own test folds")
    r.add_argument("--output-dir", metavar="DIR", default=None, help="run folder (default: runs/<model>-<time>)")
    r.add_argument("-j", "--workers", type=int, default=None, metavar="N",
                   help="processes that decode and crop frames when the crop cache is cold (0: in this process) "
                        "(default: one per CPU core, at most 4)")
    r.add_argument("--seed", type=int, default=0, metavar="S", help="seed for weights, batch order and augmentation")
    r.add_argument("--device", default="auto", metavar="DEV", help="auto (CUDA when present), cpu, cuda or cuda:N")
    r.add_argument("--amp", action="store_true", help="mixed precision on CUDA (autocast + GradScaler)")
    r.add_argument("--quiet", action="store_true", help="only warnings and errors; no progress bars")
    r.add_argument("--demo", action="store_true",
                   help="no paths needed: generate a synthetic CK+ (cached) and run a small complete k-fold training")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Reject values that cannot work, naming the flag and the fix."""
    checks = [
        (args.epochs >= 1, "--epochs must be at least 1"),
        (args.step >= 1, "--step must be at least 1"),
        (0 < args.gamma <= 1, "--gamma must be in (0, 1]"),
        (0 <= args.start_epoch < args.epochs, f"--start-epoch must be in [0, --epochs) = [0, {args.epochs})"),
        (args.batch_size >= 1, "--batch-size must be at least 1"),
        (math.isfinite(args.lr) and args.lr > 0, "--lr must be a positive number"),
        (0 <= args.momentum < 1, "--momentum must be in [0, 1)"),
        (args.wd >= 0, "--wd must be zero or positive"),
        (0 < args.threshold < 1, "--threshold must be between 0 and 1 (exclusive)"),
        (args.kfold >= 2, "--kfold must be at least 2"),
        (args.fold is None or 0 <= args.fold < args.kfold, f"--fold must be in [0, --kfold) = [0, {args.kfold})"),
        (args.image_size is None or args.image_size >= 32, "--image-size must be at least 32"),
        (args.margin >= 0, "--margin must be zero or positive"),
        (args.min_count is None or args.min_count >= 0, "--min-count must be zero or positive"),
        (args.workers >= 0, "--workers must be zero or positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


# ----------------------------------------------------------------------------- run configuration


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def run_settings(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in RUN_SETTINGS}


def fill_defaults(args: argparse.Namespace) -> None:
    """Defaults that depend on other flags: stated in --help, applied here."""
    if args.model is None:
        args.model = "alexnet"
    if args.cache_dir is None:
        args.cache_dir = str(dataset.default_cache_dir())
    if args.workers is None:
        args.workers = min(4, os.cpu_count() or 1)
    if args.crop is None:
        args.crop = "square"
    if args.norm is None:
        args.norm = "weights"
    if args.image_size is None:
        args.image_size = models.model_config(args.model).input_size


def adopt_saved_settings(args: argparse.Namespace, source: Path) -> None:
    """Take a run's own settings (its args.json) for resume/evaluate, and its data folders
    unless given; explicit flags that disagree are an error."""
    saved = read_args_json(source)
    for key in ("model", "aus", "image_size", "crop", "norm"):
        given, wanted = getattr(args, key), saved.get(key)
        if given is not None and given != wanted:
            raise UserError(f"--{key.replace('_', '-')} {given} does not match {source}, which was trained with "
                            f"{wanted}: drop the flag")
    for key, value in saved.items():
        if key in RUN_SETTINGS:
            setattr(args, key, value)
    for role in ("data_dir", "label_dir", "landmark_dir"):
        setattr(args, role, getattr(args, role) or saved.get(role))


def demo_root(cache_dir: str | None = None) -> Path:
    """Where --demo keeps its synthetic CK+ (the notebook reads it too)."""
    return Path(cache_dir or dataset.default_cache_dir()) / f"synthetic-ckplus-{DEMO['subjects']}"


def ensure_demo_tree(cache_dir: str | None = None) -> Path:
    """The demo's synthetic CK+ root, generated on first use (into a temporary folder that is
    renamed when complete, so an interrupted generation is never mistaken for a tree)."""
    import synthetic

    root = demo_root(cache_dir)
    if not (root / "cohn-kanade-images").is_dir():
        log.info("generating a synthetic CK+ (%d subjects) in %s, once", DEMO["subjects"], root)
        tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        synthetic.generate(tmp, subjects=DEMO["subjects"], seed=0)
        os.replace(tmp, root)
    return root


def prepare_demo(args: argparse.Namespace) -> None:
    """Point the run at a cached synthetic CK+ and small settings that finish in minutes on a CPU."""
    root = ensure_demo_tree(args.cache_dir)
    args.data_dir = str(root / "cohn-kanade-images")
    args.label_dir = str(root / "FACS_labels" / "FACS")
    args.landmark_dir = str(root / "Landmarks" / "Landmarks")
    for key, value in DEMO.items():
        if key != "subjects":
            setattr(args, key, value)


def check_model_input(args: argparse.Namespace) -> None:
    """Fail before any file is written when the model cannot train on --image-size inputs.

    The model is built on the meta device (shapes only: no memory, no initialisation) and
    run forward once in training mode, which raises what the first real batch would."""
    try:
        with torch.device("meta"):
            model = models.build_model(args.model, 2, pretrained=False, freeze_backbone=args.freeze_backbone)
            model.train()
            model(torch.empty(2, 3, args.image_size, args.image_size))
    except RuntimeError as e:
        raise UserError(f"--image-size {args.image_size} is too small for {args.model} "
                        f"({str(e).splitlines()[0]}): use a larger --image-size, e.g. 224") from None


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
            theirs = read_args_json(saved)
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
    utils.write_json(saved, {**run_settings(args), "data_dir": args.data_dir, "label_dir": args.label_dir,
                             "landmark_dir": args.landmark_dir, "command": command_line()})


def read_args_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable args.json ({e}): restore it from the run")


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])


# ----------------------------------------------------------------------------- data and folds


def load_data(args: argparse.Namespace) -> tuple[dataset.CKPlusDataset, list[int]]:
    for role in ("data_dir", "label_dir", "landmark_dir"):
        if not getattr(args, role):
            raise UserError("give DATA_DIR LABEL_DIR LANDMARK_DIR (the three CK+ folders), or --demo")
    records = dataset.index_ckplus(args.data_dir, args.label_dir, args.landmark_dir, skip_bad=args.skip_bad)
    aus = dataset.select_aus(records, aus=None if args.aus is None else dataset.parse_au_list(args.aus),
                             min_count=args.min_count)
    data = dataset.CKPlusDataset(
        records, aus, size=args.image_size, crop=args.crop, margin=args.margin,
        cache_dir=None if args.no_cache else args.cache_dir, workers=args.workers, skip_bad=args.skip_bad,
    )
    missing = [f"AU{au}" for au, n in zip(aus, data.labels.sum(0).tolist()) if n == 0]
    if missing:
        log.warning("no sequence codes %s: trained anyway, its metrics are reported as not available",
                    ", ".join(missing))
    log.info("%d sequences from %d subjects; AUs %s", len(data), len(set(data.subjects)),
             " ".join(f"AU{a}" for a in aus))
    return data, aus


def make_folds(subjects: list[str], kfold: int, split: str) -> list[np.ndarray]:
    """Test indices of each fold.

    `subject`: subjects are shuffled (seed 20) and dealt to the fold with the fewest
    sequences so far, so folds are balanced and no subject is on both sides. `sequence`:
    the original's shuffled KFold over sequences (random_state 20).
    """
    n = len(subjects)
    if split == "sequence":
        if kfold > n:
            raise UserError(f"--kfold {kfold} is more than the {n} sequences: lower --kfold")
        from sklearn.model_selection import KFold

        splitter = KFold(n_splits=kfold, shuffle=True, random_state=ORIGINAL_SPLIT_SEED)
        return [test for _, test in splitter.split(np.zeros(n))]
    names = sorted(set(subjects))
    if kfold > len(names):
        raise UserError(f"--kfold {kfold} is more than the {len(names)} subjects: lower --kfold, or use --split sequence")
    rng = np.random.RandomState(ORIGINAL_SPLIT_SEED)
    order = [names[i] for i in rng.permutation(len(names))]
    size = {s: subjects.count(s) for s in names}
    order.sort(key=lambda s: -size[s])  # stable: ties keep the shuffled order
    loads = [0] * kfold
    fold_of = {}
    for s in order:
        k = loads.index(min(loads))
        fold_of[s] = k
        loads[k] += size[s]
    return [np.array([i for i, s in enumerate(subjects) if fold_of[s] == k]) for k in range(kfold)]


@dataclass
class Inputs:
    """What a fold trains on: uint8 crops normalised per batch, or precomputed features.

    With a frozen backbone and no augmentation the backbone's output never changes, so
    `features` holds it for every image (computed once per run) and only the head runs.
    """

    labels: torch.Tensor
    images: torch.Tensor | None = None
    features: torch.Tensor | None = None
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    augment: bool = False
    channels_last: bool = False

    def batch(self, idx: torch.Tensor, device: torch.device, generator: torch.Generator | None, train: bool):
        if self.features is not None:
            return self.features[idx].to(device, non_blocking=True)
        x = self.images[idx].to(device, non_blocking=True)
        return preprocess.prepare_batch(x, self.mean, self.std, augment=self.augment and train,
                                        generator=generator, channels_last=self.channels_last)


def forward_fn(model: models.AUNet, inputs: Inputs):
    return model.head if inputs.features is not None else model


def make_inputs(data: dataset.CKPlusDataset, args: argparse.Namespace, device: torch.device) -> Inputs:
    config = models.model_config(args.model)
    mean, std = preprocess.resolve_norm(args.norm, config.mean, config.std)
    images = data.images
    if device.type == "cuda":
        # The whole uint8 set is tens of MB: one pinned copy to the GPU, then batches are
        # gathered and normalised there with no host round trip.
        images = images.pin_memory().to(device, non_blocking=True)
    return Inputs(labels=data.labels, images=images, mean=mean, std=std, augment=args.augment,
                  channels_last=device.type == "cuda")


@torch.no_grad()
def compute_features(model: models.AUNet, inputs: Inputs, device: torch.device, batch_size: int, amp: bool) -> torch.Tensor:
    """The frozen backbone's output for every image, once."""
    model.eval()
    out = []
    for idx in torch.arange(len(inputs.labels)).split(batch_size):
        with autocast(device, amp):
            out.append(model.backbone(inputs.batch(idx, device, None, train=False)).float())
    return torch.cat(out)


# ----------------------------------------------------------------------------- one fold


def autocast(device: torch.device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda")


def epoch_generator(seed: int, fold: int, epoch: int) -> torch.Generator:
    """Batch order, augmentation and dropout of an epoch depend on (seed, fold, epoch) only,
    so an epoch replayed after a resume is bit for bit the one that was interrupted."""
    return torch.Generator().manual_seed(seed * 1_000_003 + fold * 10_007 + epoch)


def au_loss(criterion: nn.Module, output, target: torch.Tensor) -> torch.Tensor:
    """BCE per AU, averaged over the batch and summed over AUs (the original's loss);
    inception's auxiliary output adds 0.4 of its own loss, as torchvision's recipe does."""
    if isinstance(output, tuple):
        logits, aux = output
        return criterion(logits, target).mean(0).sum() + models.AUX_WEIGHT * criterion(aux, target).mean(0).sum()
    return criterion(output, target).mean(0).sum()


def train_one_epoch(model, forward, criterion, optimizer, scaler, inputs: Inputs, train_idx: torch.Tensor,
                    device: torch.device, epoch: int, args, generator: torch.Generator, progress) -> float:
    model.train()
    order = train_idx[torch.randperm(len(train_idx), generator=generator)]
    total, count = torch.zeros((), device=device), 0
    for idx in order.split(args.batch_size):
        if len(idx) == 1 and len(order) > 1:
            continue  # BatchNorm cannot train on a batch of one; skipped for every model alike
        x = inputs.batch(idx, device, generator, train=True)
        y = inputs.labels[idx].to(device, non_blocking=True)
        with autocast(device, args.amp):
            loss = au_loss(criterion, forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach() * len(idx)  # stays on the device: no sync per batch
        count += len(idx)
        progress.update(len(idx))
    return (total / max(count, 1)).item()


@torch.no_grad()
def evaluate(model, forward, inputs: Inputs, idx: torch.Tensor, device: torch.device, batch_size: int,
             amp: bool = False) -> np.ndarray:
    """Sigmoid probabilities (n, A) for the sequences `idx`."""
    model.eval()
    out = []
    for chunk in idx.split(batch_size):
        with autocast(device, amp):
            logits = forward(inputs.batch(chunk, device, None, train=False))
        out.append(torch.sigmoid(logits.float()).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, inputs.labels.shape[1]), np.float32)


def positive_weights(labels: torch.Tensor) -> torch.Tensor:
    """negatives / positives per AU from the training part only; 1 where an AU has no positives."""
    pos = labels.sum(0)
    neg = len(labels) - pos
    return torch.where(pos > 0, neg / pos.clamp(min=1), torch.ones_like(pos))


class Diverged(UserError):
    pass


def train_fold(fold: int, train_idx: np.ndarray, test_idx: np.ndarray, data: dataset.CKPlusDataset, inputs: Inputs,
               aus: list[int], args, device: torch.device, fold_dir: Path, clock: "Clock",
               frozen_backbone: dict | None = None) -> np.ndarray:
    """Train one fold from fresh weights (or its checkpoint) and return its test probabilities."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    utils.clean_temp_files(fold_dir)
    ckpt_path = fold_dir / CHECKPOINT
    torch.manual_seed(args.seed + fold)  # fresh weights for every fold, the same on a re-run
    if frozen_backbone is not None:
        # A frozen backbone is the run's, shared by every fold (its features are computed once);
        # only the head starts fresh.
        model = models.build_model(args.model, len(aus), pretrained=False, freeze_backbone=True)
        model.backbone.load_state_dict(frozen_backbone)
    else:
        model = models.build_model(args.model, len(aus), pretrained=not args.no_pretrained,
                                   freeze_backbone=args.freeze_backbone)
    model.to(device)
    if inputs.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = forward_fn(model, inputs)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.step, gamma=args.gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")
    train_t = torch.as_tensor(train_idx, dtype=torch.long)
    test_t = torch.as_tensor(test_idx, dtype=torch.long)
    pos_weight = positive_weights(data.labels[train_t]).to(device) if args.pos_weight else None
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="none")
    test_ids = [data.ids[i] for i in test_idx]

    start, history = args.start_epoch, []
    if ckpt_path.exists():
        ckpt = load_fold_checkpoint(ckpt_path, args, aus, fold, test_ids)
        load_model_state(model, ckpt)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        utils.set_rng_state(ckpt["rng"])
        start, history = ckpt["epoch"] + 1, ckpt["history"]
        del ckpt  # its copy of the weights (hundreds of MB for vgg) need not live through the fold
        if start < args.epochs:
            log.info("fold %d: resuming at epoch %d from %s", fold, start, ckpt_path)
    else:
        with warnings.catch_warnings():  # stepping the schedule before any optimizer step is the point here
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            for _ in range(args.start_epoch):  # --start-epoch: the schedule starts where the epochs do
                scheduler.step()

    for epoch in range(start, args.epochs):
        t0 = time.perf_counter()
        generator = epoch_generator(args.seed, fold, epoch)
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))  # dropout
        lr = optimizer.param_groups[0]["lr"]
        with clock.bar(len(train_idx), f"fold {fold} epoch {epoch + 1}/{args.epochs}") as progress:
            loss = train_one_epoch(model, forward, criterion, optimizer, scaler, inputs, train_t, device, epoch,
                                   args, generator, progress)
        if not math.isfinite(loss):
            raise Diverged(
                f"fold {fold} epoch {epoch + 1}: the loss became {loss} (the learning rate {lr:g} is likely too "
                f"high: lower --lr); the last good checkpoint is kept in {ckpt_path if ckpt_path.exists() else fold_dir}"
            )
        scheduler.step()
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch, "loss": loss, "lr": lr, "seconds": round(seconds, 3)})
        utils.save_checkpoint({
            "model": model_state(model), "frozen_backbone": model.frozen, "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "fold": fold, "kfold": args.kfold, "arch": args.model,
            "aus": list(aus), "args": {**run_settings(args)}, "test_ids": test_ids, "rng": utils.rng_state(),
            "history": history,
        }, ckpt_path)
        utils.write_csv(fold_dir / "metrics.csv", ["epoch", "loss", "lr", "seconds"],
                        [[h["epoch"] + 1, h["loss"], h["lr"], h["seconds"]] for h in history])
        clock.epoch_done(seconds)
        log.info("fold %d epoch %d/%d  loss %.4f  lr %.3g  %.1fs  (%s left)", fold, epoch + 1, args.epochs, loss, lr,
                 seconds, clock.eta())
    return evaluate(model, forward, inputs, test_t, device, args.batch_size, args.amp)


def load_fold_checkpoint(path: Path, args, aus: list[int], fold: int | None, test_ids: list[str] | None) -> dict:
    """A fold checkpoint that belongs to this run, or one clear error saying why not."""
    ckpt = utils.load_checkpoint(path)
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


BACKBONE = "backbone.pth"


def run_backbone(run_dir: Path, args, num_aus: int) -> dict:
    """The frozen backbone's weights, the same for every fold of a run: built once (ImageNet
    weights, or random from --seed) and saved as RUN_DIR/backbone.pth, so fold checkpoints
    hold only the head and a resumed or evaluated run uses exactly the same features."""
    path = run_dir / BACKBONE
    if path.is_file():
        state = utils.load_checkpoint(path, required=("backbone", "arch"))
        if state["arch"] != args.model:
            raise UserError(f"{path} is a {state['arch']} backbone, not {args.model}: it belongs to another run")
        return state["backbone"]
    torch.manual_seed(args.seed)
    model = models.build_model(args.model, num_aus, pretrained=not args.no_pretrained, freeze_backbone=True)
    state = model.backbone.state_dict()
    utils.save_checkpoint({"backbone": state, "arch": args.model, "pretrained": not args.no_pretrained}, path)
    return state


def model_state(model: models.AUNet) -> dict:
    """What a checkpoint keeps of a model: everything, or only the head when the backbone is
    frozen (the run's backbone.pth holds the rest, once, instead of in every epoch's file)."""
    state = model.state_dict()
    if model.frozen:
        state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    return state


def load_model_state(model: models.AUNet, ckpt: dict) -> None:
    if ckpt.get("frozen_backbone"):
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
        if unexpected or any(not k.startswith("backbone.") for k in missing):
            raise UserError(f"checkpoint does not fit a {ckpt['arch']} AU model (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}): it was written by another version; retrain")
    else:
        model.load_state_dict(ckpt["model"])


def build_trained_model(ckpt: dict, path: Path) -> models.AUNet:
    """The trained model a fold (or final) checkpoint describes, on the CPU, in eval mode.

    `path` is the checkpoint's file; a frozen-backbone checkpoint takes its backbone from
    the run folder two levels up (RUN_DIR/foldK/checkpoint.pth -> RUN_DIR/backbone.pth)."""
    frozen = bool(ckpt.get("frozen_backbone"))
    try:
        model = models.build_model(ckpt["arch"], len(ckpt["aus"]), pretrained=False, freeze_backbone=frozen)
    except UserError as e:
        raise UserError(f"checkpoint {path}: {e}") from None
    if frozen:
        backbone_path = Path(path).parent.parent / BACKBONE
        if not backbone_path.is_file():
            raise UserError(f"checkpoint {path} trained a head on a frozen backbone, and {backbone_path} is missing: "
                            f"keep the checkpoint inside its run folder")
        state = utils.load_checkpoint(backbone_path, required=("backbone", "arch"))
        model.backbone.load_state_dict(state["backbone"])
    try:
        load_model_state(model, ckpt)
    except RuntimeError as e:
        raise UserError(f"checkpoint {path} does not fit a {ckpt['arch']} model with {len(ckpt['aus'])} AUs: "
                        f"{str(e).splitlines()[0]}") from None
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return model.eval()


def load_trained_model(path: str | os.PathLike) -> tuple[models.AUNet, dict]:
    """A checkpoint written by main.py -> (model in eval mode on the CPU, the checkpoint dict)."""
    ckpt = utils.load_checkpoint(path)
    return build_trained_model(ckpt, Path(path)), ckpt


class Clock:
    """Progress bars and the estimate of time left, over all epochs the run still has to do."""

    def __init__(self, epochs_left: int, quiet: bool):
        self.epochs_left = epochs_left
        self.done_seconds, self.done = 0.0, 0
        self.show_bar = not quiet and sys.stderr.isatty()

    def bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not self.show_bar)

    def epoch_done(self, seconds: float) -> None:
        self.done_seconds += seconds
        self.done += 1
        self.epochs_left -= 1

    def eta(self) -> str:
        if not self.done:
            return "?"
        return utils.format_duration(self.done_seconds / self.done * max(self.epochs_left, 0))


def fold_finished(fold_dir: Path, args, aus: list[int], fold: int, test_ids: list[str]) -> bool:
    """A fold is finished when its predictions exist and its checkpoint, which must belong to
    this run and fold, reached the last epoch."""
    if not (fold_dir / "predictions.csv").is_file() or not (fold_dir / CHECKPOINT).is_file():
        return False
    return checkpoint_finished(fold_dir / CHECKPOINT, args, aus, fold, test_ids)


def checkpoint_finished(path: Path, args, aus: list[int], fold: int, test_ids: list[str]) -> bool:
    """The checkpoint belongs to this run and fold (or is the final model) and reached the last epoch."""
    return load_fold_checkpoint(path, args, aus, fold, test_ids)["epoch"] >= args.epochs - 1


# ----------------------------------------------------------------------------- results


def pooled_results(run_dir: Path, args, aus: list[int], fold_dirs: list[Path], out_dir: Path) -> dict:
    """Per-AU metrics on the out-of-fold predictions of every fold, pooled (never averaged per fold)."""
    ids, subjects, folds, targets, probs = [], [], [], [], []
    for fold_dir in fold_dirs:
        f_ids, f_subjects, f_folds, f_aus, f_targets, f_probs = utils.read_predictions(fold_dir / "predictions.csv")
        if list(f_aus) != list(aus):
            raise UserError(f"{fold_dir / 'predictions.csv'} holds AUs {f_aus}, not {aus}: it belongs to another run")
        ids += f_ids
        subjects += f_subjects
        folds += f_folds
        targets.append(f_targets)
        probs.append(f_probs)
    targets, probs = np.concatenate(targets), np.concatenate(probs)
    metrics = utils.compute_metrics(targets, probs, aus, args.threshold)
    results = {
        "model": args.model, "aus": list(aus), "split": args.split, "kfold": args.kfold,
        "protocol": f"{args.kfold}-fold cross-validation, "
                    + ("subject-independent folds" if args.split == "subject"
                       else "folds over sequences (a subject can be in train and test)")
                    + ", pooled out-of-fold predictions",
        "pretrained": not args.no_pretrained, "freeze_backbone": args.freeze_backbone, "epochs": args.epochs,
        "image_size": args.image_size, "crop": args.crop, "sequences": len(ids), **metrics,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    utils.write_results(out_dir, results)
    utils.write_predictions(out_dir / "predictions.csv", ids, subjects, aus, targets, probs, fold=folds)
    utils.plot_f1(results, out_dir / "f1.png")
    utils.plot_confusion(targets, probs, aus, args.threshold, out_dir / "confusion.png")
    return results


def print_table(results: dict) -> None:
    print(utils.format_table(results, results["model"]))


# ----------------------------------------------------------------------------- modes


def train(args) -> dict | None:
    device = resolve_device(args.device)
    if args.amp and device.type != "cuda":
        log.warning("--amp needs CUDA; training in float32 on %s", device)
    resume_dir = None
    if args.resume:
        resume_dir, fold_from_ckpt = locate_run(Path(args.resume))
        adopt_saved_settings(args, resume_dir / "args.json")
        if fold_from_ckpt is not None:
            args.fold = fold_from_ckpt
    fill_defaults(args)
    check_args(args)
    models.model_config(args.model)  # an unknown model fails here, before any data is read
    run_dir = resume_dir or new_run_dir(args)
    if resume_dir is None:
        check_run_dir(run_dir, args)
    check_model_input(args)
    data, aus = load_data(args)
    folds = make_folds(data.subjects, args.kfold, args.split)
    if resume_dir is None:  # only now that the data and the folds are known to work
        open_run_dir(run_dir, args)
    utils.add_log_file(run_dir / "log.txt")
    to_run = [args.fold] if args.fold is not None else list(range(args.kfold))
    fold_dirs = [run_dir / f"fold{k}" for k in range(args.kfold)]
    pending = [k for k in to_run
               if not fold_finished(fold_dirs[k], args, aus, k, [data.ids[i] for i in folds[k]])]
    for k in sorted(set(to_run) - set(pending)):
        log.info("fold %d: finished earlier, kept", k)

    inputs = make_inputs(data, args, device)
    backbone = None
    if args.freeze_backbone and (pending or (args.final and args.fold is None)):
        backbone = run_backbone(run_dir, args, len(aus))
        if not args.augment and not args.no_feature_cache:
            t0 = time.perf_counter()
            extractor = models.build_model(args.model, len(aus), pretrained=False, freeze_backbone=True)
            extractor.backbone.load_state_dict(backbone)
            extractor.to(device)
            if inputs.channels_last:
                extractor.to(memory_format=torch.channels_last)
            inputs.features = compute_features(extractor, inputs, device, max(args.batch_size, 64), args.amp)
            del extractor
            log.info("frozen backbone: features of %d images computed once in %.1fs", len(data),
                     time.perf_counter() - t0)
        if args.no_pretrained:
            log.warning("--freeze-backbone with --no-pretrained trains a head on random features")

    clock = Clock((args.epochs - args.start_epoch) * len(pending), args.quiet)
    current = None
    threads = torch.get_num_threads()
    if inputs.features is not None and device.type == "cpu":
        # Training a linear head on cached features is thousands of tiny matrix products: one
        # thread is as fast, and several spin-wait each other to a crawl on a busy CPU (the
        # 593x10x100 protocol measured 6.6 s with one thread, 330 s with two under load).
        torch.set_num_threads(1)
    try:
        for k in pending:
            current = k
            test_idx = folds[k]
            train_idx = np.setdiff1d(np.arange(len(data)), test_idx)
            log.info("fold %d/%d: %d train, %d test sequences", k, args.kfold, len(train_idx), len(test_idx))
            probs = train_fold(k, train_idx, test_idx, data, inputs, aus, args, device, fold_dirs[k], clock, backbone)
            utils.write_predictions(fold_dirs[k] / "predictions.csv", [data.ids[i] for i in test_idx],
                                    [data.subjects[i] for i in test_idx], aus, data.labels[test_idx].numpy(), probs,
                                    fold=[k] * len(test_idx))
        current = "final"
        if args.final and args.fold is None:
            train_final(data, inputs, aus, args, device, run_dir, clock, backbone)
    except KeyboardInterrupt:
        where = f"fold {current}" if current != "final" else "the final model"
        print(f"\ninterrupted in {where}; every finished epoch is saved. Resume with:\n"
              f"  {resume_command(run_dir, args)}", file=sys.stderr)
        raise SystemExit(130)
    finally:
        torch.set_num_threads(threads)

    done = [d for d in fold_dirs if (d / "predictions.csv").is_file()]
    if len(done) < args.kfold:
        log.info("%d of %d folds done in %s; the run's results are written when the last fold finishes",
                 len(done), args.kfold, run_dir)
        return None
    results = pooled_results(run_dir, args, aus, fold_dirs, run_dir)
    print_table(results)
    print(f"\nrun folder: {run_dir}")
    return results


def train_final(data, inputs, aus, args, device, run_dir: Path, clock: Clock, backbone: dict | None) -> None:
    """One more model on every sequence: the deployable model (the k-fold table stays the estimate)."""
    final_dir = run_dir / "final"
    if (final_dir / CHECKPOINT).is_file() and checkpoint_finished(final_dir / CHECKPOINT, args, aus, args.kfold, []):
        return
    clock.epochs_left += args.epochs - args.start_epoch
    log.info("final model: training on all %d sequences", len(data))
    train_fold(args.kfold, np.arange(len(data)), np.array([], dtype=int), data, inputs, aus, args, device,
               final_dir, clock, backbone)


def resume_command(run_dir: Path, args) -> str:
    parts = ["python", "main.py", args.data_dir, args.label_dir, args.landmark_dir, "--resume", str(run_dir)]
    if args.fold is not None:
        parts += ["--fold", str(args.fold)]
    return " ".join(shlex.quote(p) for p in parts)


def locate_run(path: Path) -> tuple[Path, int | None]:
    """--resume PATH: a run folder, or a fold checkpoint inside one -> (run folder, fold or None)."""
    if not path.exists():
        raise UserError(f"--resume {path} does not exist: give a run folder or a fold's checkpoint.pth")
    if path.is_dir():
        if not (path / "args.json").is_file():
            raise UserError(f"--resume {path} is not a run folder (no args.json): give the folder main.py created")
        return path, None
    ckpt = utils.load_checkpoint(path)
    run_dir = path.parent.parent
    if not (run_dir / "args.json").is_file():
        raise UserError(f"checkpoint {path} is not inside a run folder (no {run_dir / 'args.json'})")
    fold = ckpt.get("fold")
    return run_dir, (None if fold == ckpt.get("kfold") else fold)


def evaluate_run(args) -> dict:
    """-e --resume RUN_DIR|CHECKPOINT: each fold's checkpoint on that fold's own test sequences."""
    if not args.resume:
        raise UserError("-e/--evaluate needs --resume RUN_DIR or --resume CHECKPOINT")
    path = Path(args.resume)
    run_dir, fold = locate_run(path)
    adopt_saved_settings(args, run_dir / "args.json")
    fill_defaults(args)
    device = resolve_device(args.device)
    data, aus = load_data(args)
    inputs = make_inputs(data, args, device)
    index = {seq_id: i for i, seq_id in enumerate(data.ids)}
    fold_dirs = [path.parent] if path.is_file() else sorted(
        (run_dir / f"fold{k}" for k in range(args.kfold) if (run_dir / f"fold{k}" / CHECKPOINT).is_file()),
        key=lambda p: int(p.name[4:]))
    if not fold_dirs:
        raise UserError(f"{run_dir} holds no fold checkpoints: train it first")
    out_dir = run_dir / "evaluate" if path.is_dir() else path.parent / "evaluate"
    eval_dirs = []
    for fold_dir in fold_dirs:
        ckpt_path = path if path.is_file() else fold_dir / CHECKPOINT
        ckpt = load_fold_checkpoint(ckpt_path, args, aus, None, None)
        missing = [s for s in ckpt["test_ids"] if s not in index]
        if missing:
            raise UserError(f"checkpoint {ckpt_path} was tested on {missing[0]}, which is not in the data given: "
                            f"point at the same CK+ copy")
        test_idx = torch.tensor([index[s] for s in ckpt["test_ids"]], dtype=torch.long)
        model = build_trained_model(ckpt, ckpt_path)
        model.to(device)
        probs = evaluate(model, model, inputs, test_idx, device, args.batch_size, args.amp)
        eval_dir = out_dir / fold_dir.name
        eval_dir.mkdir(parents=True, exist_ok=True)
        utils.write_predictions(eval_dir / "predictions.csv", ckpt["test_ids"], [data.subjects[i] for i in test_idx],
                                aus, data.labels[test_idx].numpy(), probs, fold=[ckpt["fold"]] * len(test_idx))
        eval_dirs.append(eval_dir)
        log.info("%s: epoch %d checkpoint, %d test sequences", fold_dir.name, ckpt["epoch"] + 1, len(test_idx))
    results = pooled_results(run_dir, args, aus, eval_dirs, out_dir)
    print_table(results)
    reference = run_dir / "results.json"
    if path.is_dir() and reference.is_file() and len(eval_dirs) == args.kfold:
        before = json.loads(reference.read_text())["macro"]["f1"]
        verdict = "matches" if before == results["macro"]["f1"] else "DIFFERS FROM"
        print(f"\nmacro F1 {results['macro']['f1']:.4f} {verdict} results.json ({before:.4f})")
    print(f"evaluation written to {out_dir}")
    return results


def main(args: argparse.Namespace) -> dict | None:
    utils.setup_logging(args.quiet)
    if args.demo:
        if args.resume or args.evaluate:
            raise UserError("--demo starts a new run: drop --resume/-e, or resume the demo's run folder without --demo")
        prepare_demo(args)
    if args.evaluate:
        return evaluate_run(args)
    return train(args)


def cli(argv: list[str] | None = None) -> int:
    return utils.run_cli(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
