"""Every fold of a run: training the folds still to do (and --final) into a run folder, then the
pooled results once all folds are in; and -e, each fold's checkpoint on its own test sequences.

training/engine.py trains one fold (`engine.train_fold`); training/runs.py keeps the run folder and writes the results.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

import dataset
import models
from scoring import metrics
from training import checkpoints, engine, runs, start_weights
import utils
from utils import UserError

log = logging.getLogger(utils.LOGGER_NAME)


def test_predictions(data: dataset.CKPlusDataset, test_idx: np.ndarray, fold: int,
                     probs: np.ndarray) -> metrics.FoldPredictions:
    """A fold's test probabilities with the ids, subjects and labels of its test sequences."""
    return metrics.FoldPredictions(ids=[data.ids[i] for i in test_idx], subjects=[data.subjects[i] for i in test_idx],
                                   folds=[fold] * len(test_idx), targets=data.labels[test_idx].numpy(), probs=probs)


# ----------------------------------------------------------------------------- every fold of a run


def train_folds(args: argparse.Namespace, run_dir: Path, data: dataset.CKPlusDataset, aus: list[int],
                folds: list[np.ndarray], device: torch.device, start: start_weights.StartingWeights | None) -> dict | None:
    """The folds of an open run folder that are not finished (and --final), then the pooled results
    once every fold is in (printed, and returned)."""
    to_run = [args.fold] if args.fold is not None else list(range(args.kfold))
    fold_dirs = [run_dir / f"fold{k}" for k in range(args.kfold)]
    pending = [k for k in to_run
               if not checkpoints.fold_finished(fold_dirs[k], args, aus, k, [data.ids[i] for i in folds[k]])]
    for k in sorted(set(to_run) - set(pending)):
        log.info("fold %d: finished earlier, kept", k)

    backbone = None
    trains = bool(pending) or (args.final and args.fold is None)
    if trains:
        start = start or start_weights.starting_weights(args)
        log.info("weights: %s", ", ".join(f"{k} {v}" for k, v in start.record.items()))
    if args.freeze_backbone and trains:
        backbone = start_weights.run_backbone(run_dir, args, len(aus), start)
        if args.weights == "none":
            log.warning("--freeze-backbone with --weights none trains a head on random features")
    inputs = engine.make_inputs(data, args, device, backbone)
    clock = engine.Clock((args.epochs - args.start_epoch) * len(pending), args.quiet)
    run = engine.FoldRun(data, inputs, aus, args, device, clock, backbone, start)
    trained = {}
    current = None
    threads = torch.get_num_threads()
    if (inputs.features is not None or args.model == models.LANDMARKS) and device.type == "cpu":
        # Training a linear head on cached features (or on the landmarks alone) is thousands of
        # tiny matrix products: one thread is as fast, and several spin-wait each other to a crawl
        # on a busy CPU (the 593x10x100 protocol measured 6.6 s with one thread, 330 s with two under load).
        torch.set_num_threads(1)
    try:
        for k in pending:
            current = k
            test_idx = folds[k]
            train_idx = np.setdiff1d(np.arange(len(data)), test_idx)
            log.info("fold %d/%d: %d train, %d test sequences", k, args.kfold, len(train_idx), len(test_idx))
            engine.warn_missing_in_fold(k, data.labels.numpy(), train_idx, test_idx, aus)
            probs = engine.train_fold(k, train_idx, test_idx, fold_dirs[k], run)
            trained[k] = test_predictions(data, test_idx, k, probs)
            trained[k].write(fold_dirs[k] / "predictions.csv", aus)
        current = "final"
        if args.final and args.fold is None:
            train_final(run, run_dir)
    except KeyboardInterrupt:
        where = f"fold {current}" if current != "final" else "the final model"
        print(f"\ninterrupted in {where}; every finished epoch is saved. Resume with:\n"
              f"  {runs.resume_command(run_dir, args)}", file=sys.stderr)
        raise SystemExit(130)
    finally:
        torch.set_num_threads(threads)

    # another job's fold counts once it reached this run's epochs (after an --epochs extension its
    # predictions.csv may still be the shorter run's)
    finished_before = set(to_run) - set(pending)  # checked above: their checkpoints need not be read again
    done = [k for k in range(args.kfold)
            if k in trained or k in finished_before
            or checkpoints.fold_finished(fold_dirs[k], args, aus, k, [data.ids[i] for i in folds[k]])]
    if len(done) < args.kfold:
        log.info("%d of %d folds done in %s (%s on disk); the run's results are written when the last fold "
                 "finishes", len(done), args.kfold, run_dir, utils.format_bytes(utils.folder_size(run_dir)))
        return None
    parts = [trained[k] if k in trained else runs.read_fold_predictions(fold_dirs[k], aus) for k in done]
    results = runs.write_results(run_dir, args, aus, parts)
    print(metrics.format_table(results, results["model"]))
    print(f"\nrun folder: {run_dir} ({utils.format_bytes(utils.folder_size(run_dir))} on disk)")
    return results


def train_final(run: engine.FoldRun, run_dir: Path) -> None:
    """One more model on every sequence: the deployable model (the k-fold table stays the estimate)."""
    args, data = run.args, run.data
    final_dir = run_dir / "final"
    if checkpoints.checkpoint_finished(final_dir / checkpoints.CHECKPOINT, args, run.aus, args.kfold, []):
        return
    run.clock.epochs_left += args.epochs - args.start_epoch
    log.info("final model: training on all %d sequences", len(data))
    engine.train_fold(args.kfold, np.arange(len(data)), np.array([], dtype=int), final_dir, run)


def evaluate_checkpoints(args: argparse.Namespace, fold_dirs: list[Path], checkpoint: Path | None,
                         out_dir: Path) -> tuple[list[int], list[metrics.FoldPredictions]]:
    """-e: each fold's checkpoint (or the one `checkpoint` given) on that fold's own test sequences;
    each fold's predictions are written under `out_dir` -> (AUs, the predictions of each fold)."""
    device = engine.resolve_device(args.device)
    data, aus = engine.load_data(args, training=False)
    inputs = engine.make_inputs(data, args, device)
    index = {seq_id: i for i, seq_id in enumerate(data.ids)}
    parts = []
    for fold_dir in fold_dirs:
        ckpt_path = checkpoint or fold_dir / checkpoints.CHECKPOINT
        ckpt = checkpoints.load_fold_checkpoint(ckpt_path, args, aus, None, None)
        missing = [s for s in ckpt["test_ids"] if s not in index]
        if missing:
            raise UserError(f"checkpoint {ckpt_path} was tested on {missing[0]}, which is not in the data given: "
                            f"point at the same CK+ copy")
        test_idx = torch.tensor([index[s] for s in ckpt["test_ids"]], dtype=torch.long)
        model = engine.place(checkpoints.build_trained_model(ckpt, ckpt_path), device, inputs.channels_last)
        probs = engine.evaluate(model, inputs, test_idx, device, args.batch_size, args.amp, args.tta)
        part = test_predictions(data, test_idx.numpy(), ckpt["fold"], probs)
        eval_dir = out_dir / fold_dir.name
        eval_dir.mkdir(parents=True, exist_ok=True)
        part.write(eval_dir / "predictions.csv", aus)
        parts.append(part)
        log.info("%s: epoch %d checkpoint, %d test sequences", fold_dir.name, ckpt["epoch"] + 1, len(test_idx))
        if ckpt["epoch"] + 1 < args.epochs:
            log.warning("%s has trained %d of the run's %d epochs: these numbers are of an unfinished fold",
                        fold_dir.name, ckpt["epoch"] + 1, args.epochs)
    return aus, parts
