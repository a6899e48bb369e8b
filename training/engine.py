"""Training and evaluation: the data a run trains on, its folds, one epoch, one fold.

Reads top to bottom: the device, the data and the folds, what a batch is made of (`Inputs`),
the loss, `train_one_epoch`, `evaluate`, and `train_fold`, which trains one fold from fresh
weights (or its checkpoint) and returns the fold's test probabilities (training/crossval.py runs every
fold of a run). Everything a function needs is passed to it; nothing here reads global state.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ckplus import geometry
import dataset
import models
import preprocess
from training import checkpoints, runs, start_weights
import utils
from utils import UserError

log = logging.getLogger(utils.LOGGER_NAME)

ORIGINAL_SPLIT_SEED = 20  # the original shuffled its KFold with random_state=20


def resolve_device(name: str) -> torch.device:
    """--device: auto (CUDA when present), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


# ----------------------------------------------------------------------------- data and folds


def load_data(args: argparse.Namespace, training: bool = True) -> tuple[dataset.CKPlusDataset, list[int]]:
    """The run's sequences (face crops and labels) and the AUs it recognises; for training, with
    the --frames N-1 frames before each peak (evaluation scores the peaks alone)."""
    for role in ("data_dir", "label_dir", "landmark_dir"):
        if not getattr(args, role):
            raise UserError("give DATA_DIR LABEL_DIR LANDMARK_DIR (the three CK+ folders), or --demo")
    frames = args.frames if training else 1
    records = dataset.index_ckplus(args.data_dir, args.label_dir, args.landmark_dir, skip_bad=args.skip_bad,
                                   frames=frames)
    aus = dataset.select_aus(records, aus=None if args.aus is None else dataset.parse_au_list(args.aus),
                             min_count=args.min_count)
    refuse_absent_aus(records, aus, args)
    data = dataset.CKPlusDataset(
        records, aus, size=args.image_size, crop=args.crop, margin=args.margin, fill=args.crop_fill,
        cache_dir=None if args.no_cache else args.cache_dir, workers=args.workers, skip_bad=args.skip_bad,
        images=args.model != models.LANDMARKS,  # the geometry-only model sees no image: nothing to decode
    )
    missing = [f"AU{au}" for au, n in zip(aus, data.labels.sum(0).tolist()) if n == 0]
    if missing:
        log.warning("no sequence codes %s: trained anyway, its metrics are reported as not available",
                    ", ".join(missing))
    log.info("%d sequences from %d subjects; AUs %s", len(data), len(set(data.subjects)),
             " ".join(f"AU{a}" for a in aus))
    if frames > 1:
        per_sequence = np.bincount(data.row_sequence, minlength=len(data))
        log.info("--frames %d: %d training images, the last %d frames of each sequence (%d sequences have fewer)",
                 frames, len(data.row_sequence), frames, int((per_sequence < frames).sum()))
    return data, aus


def refuse_absent_aus(records: list[dataset.Sequence], aus: list[int], args: argparse.Namespace) -> None:
    """An AU that no sequence of the copy codes cannot be learnt or scored: a run on it would train on
    all-negative labels and report nothing. Refused before any crop is made."""
    counts = dataset.label_counts(records)
    absent = [f"AU{a}" for a in aus if not counts.get(a)]
    if absent:
        chosen = f"--aus {args.aus}" if args.aus is not None else "the default AUs"
        coded = ",".join(str(a) for a in counts)
        raise UserError(f"{chosen}: no sequence in {args.label_dir} codes {', '.join(absent)}; choose among the "
                        f"AUs it codes ({coded}), e.g. --aus {','.join(str(a) for a in aus if counts.get(a)) or coded}")


def warn_missing_in_fold(k: int, labels: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
                         aus: list[int]) -> None:
    """An AU that one fold's training or test part lacks still trains and is scored on the pooled
    predictions, but that fold cannot learn it, or adds no positive of it: the log says so (an info
    line, not a warning: small copies lack a rare AU in some fold as a rule, and --quiet stays quiet)."""
    for part, idx in (("training", train_idx), ("test", test_idx)):
        lacking = [f"AU{a}" for a, n in zip(aus, labels[idx].sum(0).tolist()) if n == 0]
        if lacking:
            log.info("fold %d: no %s sequence codes %s", k, part, ", ".join(lacking))


def make_folds(subjects: list[str], kfold: int, split: str) -> list[np.ndarray]:
    """Test indices of each fold.

    `subject`: scikit-learn's GroupKFold over subjects (the largest subjects first, each to the
    fold with the fewest sequences so far), so no subject is on both sides and folds are
    balanced. `sequence`: the original's shuffled KFold over sequences (random_state 20).
    """
    from sklearn.model_selection import GroupKFold, KFold

    n = len(subjects)
    if split == "sequence":
        if kfold > n:
            raise UserError(f"--kfold {kfold} is more than the {n} sequences: lower --kfold")
        splitter = KFold(n_splits=kfold, shuffle=True, random_state=ORIGINAL_SPLIT_SEED)
        return [test for _, test in splitter.split(np.zeros(n))]
    n_subjects = len(set(subjects))
    if kfold > n_subjects:
        raise UserError(f"--kfold {kfold} is more than the {n_subjects} subjects: lower --kfold, "
                        f"or use --split sequence")
    return [test for _, test in GroupKFold(n_splits=kfold).split(np.zeros(n), groups=subjects)]


# ----------------------------------------------------------------------------- what a batch is


@dataclass
class Inputs:
    """What a fold trains on: uint8 crops normalised per batch on the device, or, with a frozen
    backbone and no augmentation, the backbone's features of every image (computed once per
    run by `make_inputs`), in which case only the model's head runs (`forward`). With --tta
    flip the features of the mirrored peak frames are computed once too. `geometry`: each row's
    normalised landmarks (dataset.CKPlusDataset.geometry), which a --geometry model takes beside
    the image; a mirrored image (an --augment flip, --tta flip) gets them mirrored."""

    labels: torch.Tensor
    images: torch.Tensor
    features: torch.Tensor | None = None
    flipped_features: torch.Tensor | None = None
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    augment: bool = False
    channels_last: bool = False
    geometry: torch.Tensor | None = None

    def batch(self, idx: torch.Tensor, device: torch.device, generator: torch.Generator | None, train: bool,
              flip: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rows `idx` as the model takes them, (images or features, geometry or None); `flip`:
        their mirror images (for --tta flip)."""
        shape = None if self.geometry is None else self.geometry[idx]
        if shape is not None and flip:
            shape = geometry.mirror(shape)
        if self.features is not None:
            features = self.flipped_features if flip else self.features
            return features[idx].to(device, non_blocking=True), _to(shape, device)
        x = self.images[idx].to(device, non_blocking=True)
        draws = None
        if self.augment and train:
            # one draw decides both the image's flip and its landmarks'
            draws = preprocess.augment_draws(len(idx), generator)
            if shape is not None:
                mirrored = preprocess.flipped(draws)
                shape = torch.where(mirrored[:, None], geometry.mirror(shape), shape)
        x = preprocess.prepare_batch(x, self.mean, self.std, augment=draws is not None, draws=draws,
                                     channels_last=self.channels_last)
        return (x.flip(-1) if flip else x), _to(shape, device)

    def forward(self, model: models.AUNet, batch: tuple[torch.Tensor, torch.Tensor | None]):
        """The model on a batch: the head alone on cached features, the whole model on images."""
        x, shape = batch
        return model.forward_head(x, shape) if self.features is not None else model(x, shape)


def _to(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device, non_blocking=True)


def place(model: models.AUNet, device: torch.device, channels_last: bool) -> models.AUNet:
    """The model on `device`, in the memory layout its batches come in (Inputs.channels_last):
    a convolution whose weights and input agree on the layout needs no reorder per call."""
    model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def autocast(device: torch.device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda")


def make_inputs(data: dataset.CKPlusDataset, args: argparse.Namespace, device: torch.device,
                frozen_backbone: dict | None = None) -> Inputs:
    """The run's inputs on `device`; with `frozen_backbone` (and no augmentation, and the feature
    cache not turned off) its features of every image, computed here once."""
    config = models.model_config(args.model)
    mean, std = preprocess.resolve_norm(args.norm, config.mean, config.std)
    images = data.images
    if device.type == "cuda":
        # The whole uint8 set is tens of MB: one pinned copy to the GPU, then batches are
        # gathered and normalised there with no host round trip.
        images = images.pin_memory().to(device, non_blocking=True)
    inputs = Inputs(labels=data.labels, images=images, mean=mean, std=std, augment=args.augment,
                    channels_last=models.channels_last(args.model, device), geometry=data.geometry)
    if frozen_backbone is not None and not args.augment and not args.no_feature_cache:
        t0 = time.perf_counter()
        extractor = place(models.build_model(args.model, len(data.aus), pretrained=False, freeze_backbone=True,
                                             backbone_state=frozen_backbone), device, inputs.channels_last).eval()

        @torch.no_grad()
        def features(rows: int, flip: bool) -> torch.Tensor:
            chunks = []
            for idx in torch.arange(rows).split(max(args.batch_size, 64)):
                with autocast(device, args.amp):
                    x, _ = inputs.batch(idx, device, None, train=False, flip=flip)
                    chunks.append(extractor.forward_features(x).float())
            return torch.cat(chunks)

        # Both from images: once `inputs.features` is set, `inputs.batch` hands out features.
        flipped = features(len(data), flip=True) if args.tta == "flip" else None  # only peaks are evaluated
        inputs.features, inputs.flipped_features = features(len(data.labels), flip=False), flipped
        log.info("frozen backbone: features of %d images computed once in %.1fs", len(data.labels),
                 time.perf_counter() - t0)
    return inputs


# ----------------------------------------------------------------------------- one epoch


def epoch_generator(seed: int, fold: int, epoch: int) -> torch.Generator:
    """Batch order, augmentation and dropout of an epoch depend on (seed, fold, epoch) only,
    so an epoch replayed after a resume is bit for bit the one that was interrupted (and no
    RNG state needs saving)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + fold * 10_007 + epoch)


LOSS_MODES = ("auto", "mean", "sum")


def resolve_loss(loss: str, head_only: bool) -> str:
    """--loss auto: the original's sum when only the head trains (`head_only`: a frozen backbone, or
    --model landmarks, which has none; each AU's head is then its own logistic regression at --lr),
    the mean when a shared backbone trains (so --lr means what it means in torchvision's and timm's
    recipes, whatever the number of AUs)."""
    if loss == "auto":
        return "sum" if head_only else "mean"
    return loss


def au_loss(criterion: nn.Module, output, target: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """BCE per image and AU (`criterion` has reduction="none"), then `sum`: averaged over the
    batch and summed over AUs (the original's loss), or `mean`: averaged over both.
    Inception's auxiliary output adds 0.4 of its own loss, reduced alike, as torchvision's recipe does."""
    def reduce(loss: torch.Tensor) -> torch.Tensor:
        return loss.mean() if reduction == "mean" else loss.mean(0).sum()

    if isinstance(output, tuple):
        logits, aux = output
        return reduce(criterion(logits, target)) + models.AUX_WEIGHT * reduce(criterion(aux, target))
    return reduce(criterion(output, target))


def make_optimizer(model: models.AUNet, args) -> torch.optim.SGD:
    """SGD over two parameter groups: the backbone at --lr x --backbone-lr, the AU head(s) at --lr.
    A frozen backbone has no group. The backbone's parameters come first, in model order, as
    in the single list that checkpoints before format 3 held."""
    backbone = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    head = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    groups = [{"params": backbone, "lr": args.lr * args.backbone_lr, "name": "backbone"}] if backbone else []
    groups.append({"params": head, "lr": args.lr, "name": "head"})
    # fused: one kernel for every parameter's update on a CPU, instead of four ops per tensor
    # (mobilenet_v2: 9 ms a step against 24 ms, the same weights to 1e-8: docs/performance.md)
    on_cpu = all(p.device.type == "cpu" for group in groups for p in group["params"])
    return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, weight_decay=args.wd, fused=on_cpu or None)


def train_one_epoch(model: models.AUNet, criterion: nn.Module, optimizer, scaler, inputs: Inputs,
                    train_idx: torch.Tensor, device: torch.device, generator: torch.Generator, progress, *,
                    batch_size: int, loss: str, amp: bool = False) -> float:
    """One pass over `train_idx` in the generator's order, in batches of `batch_size`, with the
    --loss reduction `loss` (and autocast with `amp` on CUDA) -> the mean training loss."""
    model.train()
    order = train_idx[torch.randperm(len(train_idx), generator=generator)]
    total, count = torch.zeros((), device=device), 0
    for idx in order.split(batch_size):
        if len(idx) == 1 and len(order) > 1:
            continue  # BatchNorm cannot train on a batch of one; skipped for every model alike
        batch = inputs.batch(idx, device, generator, train=True)
        y = inputs.labels[idx].to(device, non_blocking=True)
        with autocast(device, amp):
            batch_loss = au_loss(criterion, inputs.forward(model, batch), y, loss)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(batch_loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += batch_loss.detach() * len(idx)  # stays on the device: no sync per batch
        count += len(idx)
        progress.update(len(idx))
    return (total / max(count, 1)).item()


TTA_MODES = ("none", "flip")


@torch.no_grad()
def evaluate(model: models.AUNet, inputs: Inputs, idx: torch.Tensor, device: torch.device, batch_size: int,
             amp: bool = False, tta: str = "none") -> np.ndarray:
    """Sigmoid probabilities (n, A) for the sequences `idx` (their peak frames); with tta="flip"
    the mean of the probabilities of each face and of its mirror image."""
    model.eval()
    out = []
    for chunk in idx.split(batch_size):
        views = (False, True) if tta == "flip" else (False,)
        probs = []
        for flip in views:
            with autocast(device, amp):
                logits = inputs.forward(model, inputs.batch(chunk, device, None, train=False, flip=flip))
            probs.append(torch.sigmoid(logits.float()))
        out.append((sum(probs) / len(probs)).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, inputs.labels.shape[1]), np.float32)


def positive_weights(labels: torch.Tensor) -> torch.Tensor:
    """negatives / positives per AU from the training part only; 1 where an AU has no positives."""
    pos = labels.sum(0)
    neg = len(labels) - pos
    return torch.where(pos > 0, neg / pos.clamp(min=1), torch.ones_like(pos))


# ----------------------------------------------------------------------------- one fold


class Diverged(UserError):
    """The loss became NaN or infinite: a user-fixable setting (usually --lr)."""


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


def fresh_model(args, num_aus: int, start: start_weights.StartingWeights, frozen_backbone: dict | None) -> models.AUNet:
    """A fold's model before training: the run's frozen backbone (shared by every fold), or the
    backbone --weights names (torchvision's weights, a file's, or random), and a fresh head."""
    if frozen_backbone is not None:
        return start_weights.StartingWeights(state=frozen_backbone).build(args.model, num_aus, freeze_backbone=True,
                                                                 geometry=args.geometry)
    return start.build(args.model, num_aus, args.freeze_backbone, geometry=args.geometry)


@dataclass
class FoldRun:
    """What every fold of a run shares: the data and its inputs, the AUs, the run's settings, the
    device, the clock, and the weights folds start from: the run's `frozen_backbone` (shared by
    every fold), else `start` (--weights)."""

    data: dataset.CKPlusDataset
    inputs: Inputs
    aus: list[int]
    args: argparse.Namespace
    device: torch.device
    clock: Clock
    frozen_backbone: dict | None = None
    start: start_weights.StartingWeights | None = None


def train_fold(fold: int, train_idx: np.ndarray, test_idx: np.ndarray, fold_dir: Path, run: FoldRun) -> np.ndarray:
    """Train one fold from fresh weights (or its checkpoint) into `fold_dir` and return its test probabilities.

    `train_idx`/`test_idx` are sequences: training takes every row of the training sequences
    (with --frames, the frames before their peaks too), the test scores their peak frames.
    With the run's frozen backbone only the head starts fresh; otherwise the model starts from
    `run.start` (--weights)."""
    data, inputs, aus, args, device, clock = run.data, run.inputs, run.aus, run.args, run.device, run.clock
    fold_dir.mkdir(parents=True, exist_ok=True)
    utils.clean_temp_files(fold_dir)
    ckpt_path = fold_dir / checkpoints.CHECKPOINT
    start = run.start or start_weights.StartingWeights.none()
    torch.manual_seed(args.seed + fold)  # fresh weights for every fold, the same on a re-run
    model = place(fresh_model(args, len(aus), start, run.frozen_backbone), device, inputs.channels_last)
    optimizer = make_optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.step, gamma=args.gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")
    train_t = torch.as_tensor(data.rows_of(train_idx), dtype=torch.long)
    test_t = torch.as_tensor(test_idx, dtype=torch.long)
    pos_weight = positive_weights(data.labels[train_t]).to(device) if args.pos_weight else None
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="none")
    test_ids = [data.ids[i] for i in test_idx]

    first, history, weights = args.start_epoch, [], start.record
    if ckpt_path.exists():
        ckpt = checkpoints.load_fold_checkpoint(ckpt_path, args, aus, fold, test_ids)
        checkpoints.load_model_state(model, ckpt, ckpt_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        first, history, weights = ckpt["epoch"] + 1, ckpt["history"], ckpt.get("weights", weights)
        if first >= args.epochs and ckpt["optimizer"]["state"]:
            # finished at a shorter --epochs than it was started with: slim it like any finished fold
            checkpoints.save_checkpoint({**ckpt, "optimizer": checkpoints.slim_optimizer_state(ckpt["optimizer"])}, ckpt_path)
        del ckpt  # its copy of the weights (hundreds of MB for vgg) need not live through the fold
        if first < args.epochs:
            restart = " (an --epochs extension of a finished fold: momentum restarts from zero)" \
                if args.momentum and not optimizer.state_dict()["state"] else ""
            log.info("fold %d: resuming at epoch %d from %s%s", fold, first, ckpt_path, restart)
    else:
        with warnings.catch_warnings():  # stepping the schedule before any optimizer step is the point here
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            for _ in range(args.start_epoch):  # --start-epoch: the schedule starts where the epochs do
                scheduler.step()

    for epoch in range(first, args.epochs):
        t0 = time.perf_counter()
        generator = epoch_generator(args.seed, fold, epoch)
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))  # dropout
        lr = optimizer.param_groups[-1]["lr"]  # the head's: --lr as scheduled (the backbone's is --backbone-lr x it)
        with clock.bar(len(train_t), f"fold {fold} epoch {epoch + 1}/{args.epochs}") as progress:
            loss = train_one_epoch(model, criterion, optimizer, scaler, inputs, train_t, device, generator, progress,
                                   batch_size=args.batch_size, loss=args.loss, amp=args.amp)
        if not math.isfinite(loss):
            raise Diverged(
                f"fold {fold} epoch {epoch + 1}: the loss became {loss} (the learning rate {lr:g} is likely too "
                f"high: lower --lr); the last good checkpoint is kept in {ckpt_path if ckpt_path.exists() else fold_dir}"
            )
        scheduler.step()
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch, "loss": loss, "lr": lr, "seconds": round(seconds, 3)})
        checkpoints.save_checkpoint(checkpoints.fold_checkpoint(
            model, optimizer, scheduler, scaler, epoch=epoch, fold=fold, settings=runs.run_settings(args), aus=aus,
            test_ids=test_ids, history=history, weights=weights, finished=epoch == args.epochs - 1), ckpt_path)
        utils.write_csv(fold_dir / "metrics.csv", ["epoch", "loss", "lr", "seconds"],
                        [[h["epoch"] + 1, h["loss"], h["lr"], h["seconds"]] for h in history])
        clock.epoch_done(seconds)
        log.info("fold %d epoch %d/%d  loss %.4f  lr %.3g  %.1fs  (%s left)", fold, epoch + 1, args.epochs, loss, lr,
                 seconds, clock.eta())
    return evaluate(model, inputs, test_t, device, args.batch_size, args.amp, args.tta)
