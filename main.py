"""Train and evaluate facial Action Unit recognisers on CK+ with k-fold cross-validation.

    python main.py DATA_DIR LABEL_DIR LANDMARK_DIR --model alexnet     # train, k folds
    python main.py DATA_DIR LABEL_DIR LANDMARK_DIR -e --resume RUN_DIR # re-evaluate a run
    python main.py --demo                                              # synthetic CK+, a few minutes on a CPU

Only the command line: the arguments, then `train` and `evaluate_run`, which call the library
(training/engine.py trains a fold, training/crossval.py every fold of a run, training/runs.py keeps the run folder,
training/checkpoints.py its checkpoints, training/settings.py declares the run settings, scoring/metrics.py scores).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
from pathlib import Path

import ckplus
from ckplus import crop_cache
import dataset
import models
import preprocess
from scoring import metrics
from training import checkpoints, crossval, engine, runs, seeds, settings, start_weights
import utils
from utils import UserError

log = logging.getLogger(utils.LOGGER_NAME)

# The demo on dataset.ensure_demo_tree's synthetic CK+: under a minute on a 2-core CPU (benchmarks/demo.py).
DEMO = dict(model="res18", epochs=8, step=3, gamma=0.5, batch_size=32, lr=0.02, kfold=2, image_size=64,
            margin=0.0, weights="none", loss="sum")


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
    d.add_argument("--aus", metavar="LIST", default=settings.default("aus"),
                   help="AUs to recognise, e.g. 1,2,4 (default: 1,2,4,5,6,7,12,15,17,25)")
    d.add_argument("--min-count", type=int, metavar="N", default=settings.default("min_count"),
                   help="instead of --aus, keep the AUs coded in more than N sequences (the original's rule: 90)")
    d.add_argument("--crop", choices=preprocess.CROP_MODES, default=settings.default("crop"),
                   help="face crop from the landmarks: square keeps the face's shape, original is the "
                        "original program's stretched rectangle (default: square)")
    d.add_argument("--margin", type=float, default=settings.default("margin"), metavar="F",
                   help="square crop: extra side around the landmark box, as a fraction")
    d.add_argument("--crop-fill", choices=preprocess.CROP_FILLS, default=settings.default("crop_fill"),
                   help="a square crop past the frame: black pads it (the default); image shifts it inside (or "
                        "repeats the edge)")
    d.add_argument("--image-size", type=int, metavar="PX", default=settings.default("image_size"),
                   help="model input size (default: the backbone's own, 224; 299 for inception)")
    d.add_argument("--norm", choices=preprocess.NORM_MODES, default=settings.default("norm"),
                   help="input normalisation: the backbone weights' mean/std, or half (0.5/0.5, the original's) "
                        "(default: weights)")
    d.add_argument("--augment", action="store_true", help="random flips and small affine jitter on training batches")
    d.add_argument("--frames", type=int, default=settings.default("frames"), metavar="N",
                   help="train on the last N frames of each training sequence, each with its own landmarks and "
                        "the sequence's labels; test folds are scored on the peak alone (default: 1, as the original)")
    d.add_argument("--skip-bad", action="store_true", help="skip bad sequences with a warning instead of stopping")
    d.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where face crops (and the demo's synthetic CK+) are cached; crops beyond "
                        f"${crop_cache.CACHE_LIMIT_ENV} MiB ({crop_cache.DEFAULT_CACHE_LIMIT_MB} unless set) go least "
                        "recently used first (default: $XDG_CACHE_HOME/au-recognition, or ~/.cache/au-recognition)")
    d.add_argument("--no-cache", action="store_true", help="do not read or write the crop cache")

    m = p.add_argument_group("model")
    m.add_argument("--model", metavar="NAME", default=settings.default("model"),
                   help="backbone: alexnet vgg16 vgg16_bn vgg19 res18 res50 res101 inception, or any torchvision "
                        "classification model, or landmarks: no image, the landmarks' geometry alone (default: alexnet)")
    m.add_argument("--geometry", action="store_true",
                   help="also feed each frame's normalised 68 landmarks through a branch joining the AU head")
    m.add_argument("--weights", metavar="NAME|FILE", default=settings.default("weights"),
                   help="the backbone's starting weights: a torchvision weights name of --model (DEFAULT, "
                        "IMAGENET1K_V1, ...), none (random: train from scratch), or a file: a state dict of the "
                        "torchvision model, or a checkpoint.pth of an earlier run of this program (its backbone; "
                        "the AU head starts fresh)")
    m.add_argument("--no-pretrained", dest="weights", action="store_const", const="none",
                   help="the same as --weights none")
    m.add_argument("--freeze-backbone", action="store_true",
                   help="train only the AU head, as the original did (backbone features are then computed once)")
    m.add_argument("--no-feature-cache", action="store_true",
                   help="with --freeze-backbone: run the backbone on every batch, as the original did, instead "
                        "of computing its features once (same predictions, slower)")

    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=settings.default("epochs"), metavar="N", help="epochs per fold")
    o.add_argument("--step", type=int, default=settings.default("step"), metavar="N", help="multiply the learning rate by --gamma every N epochs")
    o.add_argument("--gamma", type=float, default=settings.default("gamma"), metavar="F", help="learning-rate decay factor")
    o.add_argument("--start-epoch", type=int, default=settings.default("start_epoch"), metavar="N",
                   help="manual epoch number to start at (the schedule starts there too)")
    o.add_argument("-b", "--batch-size", type=int, default=settings.default("batch_size"), metavar="N", help="mini-batch size")
    o.add_argument("--lr", "--learning-rate", type=float, default=settings.default("lr"), metavar="LR", dest="lr",
                   help="initial learning rate of the AU head, and (times --backbone-lr) of the backbone. With "
                        "--loss mean it is the rate torchvision's and timm's recipes mean; with --loss sum each "
                        "AU's loss gets it (a shared backbone then moves as at A x LR with the mean, A AUs)")
    o.add_argument("--backbone-lr", type=float, default=settings.default("backbone_lr"), metavar="F",
                   help="the backbone's learning rate as a fraction of --lr (its own parameter group; --step "
                        "decays both). On real faces a slower backbone alone measured worse than one rate for "
                        "all (README: On your CK+ copy)")
    o.add_argument("--loss", choices=engine.LOSS_MODES, default=settings.default("loss"),
                   help="combining the per-AU binary cross-entropies: mean over images and AUs (fine-tuning); "
                        "sum, the mean over images summed over AUs (the original's: each AU's head is its own "
                        "logistic regression at --lr); auto: sum with --freeze-backbone or --model landmarks, "
                        "else mean")
    o.add_argument("--momentum", type=float, default=settings.default("momentum"), metavar="M", help="SGD momentum")
    o.add_argument("--wd", "--weight-decay", type=float, default=settings.default("wd"), metavar="W", dest="wd", help="weight decay")
    o.add_argument("--pos-weight", action="store_true",
                   help="weight each AU's positives by negatives/positives of the training part of each fold")
    o.add_argument("--threshold", type=float, default=settings.default("threshold"), metavar="P", help="an AU is on when its probability is above P")
    o.add_argument("--bootstrap", type=int, default=settings.default("bootstrap"), metavar="N",
                   help="95%% intervals of every result from N resamples of the subjects (of the sequences under "
                        "--split sequence), seeded from --seed; 0: none. May change on --resume and -e")

    c = p.add_argument_group("cross-validation")
    c.add_argument("--kfold", type=int, default=settings.default("kfold"), metavar="K", help="number of folds")
    c.add_argument("--split", choices=("subject", "sequence"), default=settings.default("split"),
                   help="subject: no subject in both train and test; sequence: the original's shuffled folds "
                        "over sequences (random_state 20)")
    c.add_argument("--fold", type=int, default=None, metavar="K",
                   help="run only fold K (0-based), e.g. one fold per job; the run merges when all folds are in")
    c.add_argument("--final", action="store_true",
                   help="after the folds, train one more model on every sequence (for predict.py)")
    c.add_argument("--tta", choices=engine.TTA_MODES, default=settings.default("tta"),
                   help="test-time augmentation: flip scores each test face by the mean probability of it and its "
                        "mirror image; -e and predict.py use the run's unless told (default: none)")

    r = p.add_argument_group("run")
    r.add_argument("--resume", metavar="PATH", default=None,
                   help="a run folder or a fold checkpoint: continue it (with -e: evaluate it)")
    r.add_argument("-e", "--evaluate", action="store_true",
                   help="evaluate the checkpoints named by --resume on their own test folds")
    r.add_argument("--output-dir", metavar="DIR", default=None, help="run folder (default: runs/<model>-<time>)")
    r.add_argument("-j", "--workers", type=int, default=None, metavar="N",
                   help="processes that decode and crop frames when the crop cache is cold (0: in this process) "
                        "(default: one per CPU core, at most 4)")
    r.add_argument("--seed", type=int, default=settings.default("seed"), metavar="S", help="seed for weights, batch order and augmentation")
    r.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train the whole run N times, with seeds S, S+1, ..., into RUN/seed0/, RUN/seed1/, ..., and "
                        "report each figure's mean and spread across them, and their ensemble (each sequence's mean "
                        "probability over the seeds) with its difference from seed 0 (--resume and -e take RUN)")
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
        (math.isfinite(args.backbone_lr) and args.backbone_lr > 0, "--backbone-lr must be a positive number"),
        (args.frames >= 1, "--frames must be at least 1"),
        (0 <= args.momentum < 1, "--momentum must be in [0, 1)"),
        (args.wd >= 0, "--wd must be zero or positive"),
        (0 < args.threshold < 1, "--threshold must be between 0 and 1 (exclusive)"),
        (args.kfold >= 2, "--kfold must be at least 2"),
        (args.fold is None or 0 <= args.fold < args.kfold, f"--fold must be in [0, --kfold) = [0, {args.kfold})"),
        (args.image_size is None or args.image_size >= 32, "--image-size must be at least 32"),
        (args.margin >= 0, "--margin must be zero or positive"),
        (args.min_count is None or args.min_count >= 0, "--min-count must be zero or positive"),
        (args.workers >= 0, "--workers must be zero or positive"),
        (args.bootstrap >= 0, "--bootstrap must be zero (no intervals) or a number of resamples"),
        (not (args.freeze_backbone and args.model == models.LANDMARKS),
         f"--freeze-backbone: --model {models.LANDMARKS} has no backbone to freeze (it trains one logistic regression "
         f"per AU on the landmarks alone): drop --freeze-backbone"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def fill_defaults(args: argparse.Namespace) -> None:
    """Defaults that depend on other flags (or on the machine): stated in --help, applied here; the
    constant ones are the parser's, from settings.SETTINGS."""
    if args.cache_dir is None:
        args.cache_dir = str(dataset.default_cache_dir())
    if args.workers is None:
        args.workers = min(4, os.cpu_count() or 1)
    if args.image_size is None:
        args.image_size = models.model_config(args.model).input_size
    args.loss = engine.resolve_loss(args.loss, args.freeze_backbone or args.model == models.LANDMARKS)
    if args.model == models.LANDMARKS:  # no backbone: no weights; the geometry is the model
        args.weights = "none" if args.weights == "DEFAULT" else args.weights
        args.geometry = True
    if args.weights.lower() == "none":
        args.weights = "none"
    elif not start_weights.is_weights_name(args.weights):
        args.weights = str(Path(args.weights).resolve())  # a file: found again from any folder on --resume


# ----------------------------------------------------------------------------- the demo


def prepare_demo(args: argparse.Namespace) -> None:
    """Point the run at a cached synthetic CK+ and small settings that finish in a minute on a CPU;
    the settings are defaults: a flag the user typed wins, and the log says what the demo used."""
    given = [role for role in ("data_dir", "label_dir", "landmark_dir") if role in args.typed]
    if given:
        raise UserError("--demo trains on its own synthetic CK+: drop DATA_DIR LABEL_DIR LANDMARK_DIR, "
                        "or drop --demo to train on your copy")
    root = dataset.ensure_demo_tree(args.cache_dir)
    args.data_dir, args.label_dir, args.landmark_dir = map(str, ckplus.training_dirs(root))
    for key, value in DEMO.items():
        if key not in args.typed:
            setattr(args, key, value)
    used = " ".join(settings.describe(key, getattr(args, key)) + (" (typed)" if key in args.typed else "")
                    for key in DEMO)
    log.info("demo settings: %s", used)


# ----------------------------------------------------------------------------- modes


def train(args: argparse.Namespace) -> dict | None:
    """Train every pending fold (and --final), then write the pooled results when all folds are in."""
    resume_dir = extended_from = None
    if args.resume:
        resume_dir, fold_from_ckpt = runs.locate_run(Path(args.resume))
        source = resume_dir / "args.json"
        saved = settings.read_run_settings(source)
        settings.refuse_changed(args, saved, source, f"--resume {args.resume}", args.typed)
        if args.output_dir and Path(args.output_dir).resolve() != resume_dir.resolve():
            raise UserError(f"--output-dir {args.output_dir}: --resume continues {resume_dir} in place; "
                            f"drop --output-dir, or start a new run there without --resume")
        if fold_from_ckpt is not None and args.fold is not None and args.fold != fold_from_ckpt:
            raise UserError(f"--fold {args.fold}: --resume {args.resume} is fold {fold_from_ckpt}'s checkpoint; "
                            f"drop --fold, or resume {resume_dir} --fold {args.fold}")
        extend = "epochs" in args.typed and args.epochs != saved["epochs"]
        extended_from = saved["epochs"] if extend else None
        settings.adopt(args, saved, keep=settings.typed_scoring(args.typed) + (("epochs",) if extend else ()))
        if fold_from_ckpt is not None:
            args.fold = fold_from_ckpt
    fill_defaults(args)
    check_args(args)
    if extended_from is not None:
        runs.check_extension(resume_dir, args)
    device = engine.resolve_device(args.device)
    if args.amp and device.type != "cuda":
        log.warning("--amp needs CUDA; training in float32 on %s", device)
    models.model_config(args.model)  # an unknown model fails here, before any data is read
    run_dir = args.run_dir = resume_dir or runs.new_run_dir(args)
    if resume_dir is None:
        runs.check_run_dir(run_dir, args)
    models.check_input_size(args.model, args.image_size, args.freeze_backbone)
    # A bad --weights fails before any data is read; a resumed run reads its file only if a fold still trains.
    start = None if resume_dir else start_weights.starting_weights(args)
    if args.freeze_backbone and args.backbone_lr != 1.0:
        log.warning("--backbone-lr has no effect with --freeze-backbone: only the head trains")
    data, aus = engine.load_data(args)
    folds = engine.make_folds(data.subjects, args.kfold, args.split)
    if resume_dir is None:  # only now that the data and the folds are known to work
        runs.open_run_dir(run_dir, args)
    utils.add_log_file(run_dir / "log.txt")
    if extended_from is not None:
        runs.extend_run(run_dir, args, extended_from)
        log.info("run %s extended from %d to %d epochs (args.json updated): finished folds continue from their "
                 "last epoch and the learning-rate schedule goes on%s", run_dir, extended_from, args.epochs,
                 "; their momentum restarts from zero" if args.momentum else "")
    try:
        return crossval.train_folds(args, run_dir, data, aus, folds, device, start)
    except utils.DiskFull as e:
        raise e.with_fix(f"free some space, then continue with: {runs.resume_command(run_dir, args)}") from None


def evaluate_run(args: argparse.Namespace) -> dict:
    """-e --resume RUN_DIR|CHECKPOINT: each fold's checkpoint on that fold's own test sequences."""
    if not args.resume:
        raise UserError("-e/--evaluate needs --resume RUN_DIR or --resume CHECKPOINT")
    path = Path(args.resume)
    run_dir, fold_from_ckpt = runs.locate_run(path)
    source = run_dir / "args.json"
    # -e --tta may differ from the run's: a question asked of its checkpoints, not a contradiction
    saved = settings.read_run_settings(source)
    settings.refuse_changed(args, saved, source, "-e --resume", args.typed, evaluating=True)
    if args.fold is not None:  # -e --resume RUN --fold K: that fold's checkpoint
        if path.is_file() and fold_from_ckpt != args.fold:
            raise UserError(f"--fold {args.fold}: {path} is the checkpoint of "
                            f"{'the final model' if fold_from_ckpt is None else f'fold {fold_from_ckpt}'}; drop --fold")
        path = run_dir / f"fold{args.fold}" / checkpoints.CHECKPOINT
        if not path.is_file():
            raise UserError(f"--fold {args.fold}: {path} does not exist: train that fold first "
                            f"(--resume {run_dir} --fold {args.fold})")
    asked_tta = args.tta if "tta" in args.typed else None
    settings.adopt(args, saved, keep=settings.typed_scoring(args.typed))
    trained_tta = args.tta
    if asked_tta is not None and asked_tta != trained_tta:
        log.warning("evaluating with --tta %s; the run was trained and scored with --tta %s, so the figures will "
                    "differ from its results.json", asked_tta, trained_tta)
        args.tta = asked_tta
    fill_defaults(args)
    if path.is_dir():
        missing = [k for k in range(args.kfold) if not (run_dir / f"fold{k}" / checkpoints.CHECKPOINT).is_file()]
        if len(missing) == args.kfold:
            raise UserError(f"{run_dir} holds no fold checkpoints: train it first")
        if missing:  # a pooled number over k-1 folds would pass for the run's result
            names = ", ".join(f"fold{k}" for k in missing)
            raise UserError(f"{run_dir} has no checkpoint for {names} of its {args.kfold} folds, so there is no "
                            f"{args.kfold}-fold result to evaluate: train the missing folds with --resume {run_dir} "
                            f"--fold {missing[0]}, or evaluate one fold with -e --resume "
                            f"{run_dir / f'fold{min(set(range(args.kfold)) - set(missing))}' / checkpoints.CHECKPOINT}")
    out_dir = Path(args.output_dir) if args.output_dir else (
        run_dir / "evaluate" if path.is_dir() else path.parent / "evaluate")
    if (out_dir / "args.json").is_file():
        raise UserError(f"--output-dir {out_dir} is a run folder: -e would overwrite its results; choose another")
    fold_dirs = [path.parent] if path.is_file() else [run_dir / f"fold{k}" for k in range(args.kfold)]
    aus, parts = crossval.evaluate_checkpoints(args, fold_dirs, path if path.is_file() else None, out_dir)
    results = runs.write_results(out_dir, args, aus, parts)
    print(metrics.format_table(results, results["model"]))
    reference = run_dir / "results.json"
    if path.is_dir() and reference.is_file() and len(parts) == args.kfold:
        before = json.loads(reference.read_text())["macro"]["f1"]
        verdict = "matches" if before == results["macro"]["f1"] else "DIFFERS FROM"
        why = f", which was scored with --tta {trained_tta} (here: {args.tta})" if args.tta != trained_tta else ""
        print(f"\nmacro F1 {results['macro']['f1']:.4f} {verdict} results.json ({before:.4f}){why}")
    print(f"evaluation written to {out_dir}")
    return results


def main(args: argparse.Namespace) -> dict | None:
    """Run what `args` asks; `args.typed`: the dests of the flags the user typed (`cli` records them)."""
    utils.setup_logging(args.quiet)
    if args.demo:
        if args.resume or args.evaluate:
            raise UserError("--demo starts a new run: drop --resume/-e, or resume the demo's run folder without --demo")
        prepare_demo(args)
    results = seeds.run_seeds(args, args.typed, train, evaluate_run)
    if args.evaluate:
        return results
    if args.demo and results is not None:
        print(next_steps(args.run_dir))
    return results


def next_steps(run_dir: Path) -> str:
    """What a newcomer runs after the demo: their own copy, -e, predict.py."""
    run = shlex.quote(str(run_dir))
    return ("\nnext:\n"
            "  python main.py CK+/cohn-kanade-images CK+/FACS_labels/FACS CK+/Landmarks/Landmarks --model res18"
            "   # train on your CK+ copy\n"
            f"  python main.py -e --resume {run}   # evaluate this run's checkpoints again\n"
            f"  python predict.py {run} photo.jpg --out predictions.csv   # AUs on your photos")


def cli(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]

    def run(args: argparse.Namespace) -> dict | None:
        args.typed = settings.typed_flags(get_args_parser(), argv)  # after run_cli's parse: --help and bad values are its
        return main(args)

    return utils.run_cli(get_args_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(cli())
