"""How fast is this program on a CPU? One run measures the three costs a user waits for.

    python benchmarks/bench.py                          # CK+-sized: 593 sequences, 10 folds x 100 epochs
    python benchmarks/bench.py --json /tmp/b.json       # also write the figures as JSON
    python benchmarks/bench.py --sequences 20 --epochs 2 --kfold 2 --image-size 64   # a smoke test

- index: listing CK+ and cropping every peak frame, with a cold crop cache and a warm one.
- frozen: the original's protocol (a frozen AlexNet, only the AU head trains) end to end
  through `python main.py`, with the backbone features computed once per run, against the
  original's way of running the backbone on every batch of every epoch
  (--no-feature-cache, timed on a few epochs and extrapolated), and how far apart the two
  paths' out-of-fold predictions are on a short identical run.
- finetune: images per second of engine.train_one_epoch against the model's bare
  forward + backward + SGD step on the same batches, already normalised, so the
  difference is what the loop itself costs; plus one checkpoint write.

Everything runs on a synthetic CK+ (synthetic.py) with random weights (--no-pretrained):
no ImageNet weights are reachable offline, and the timings do not depend on the weights.
The tree is generated once per --workdir and reused.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import time
from itertools import accumulate
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import ckplus  # noqa: E402
from ckplus import synthetic  # noqa: E402
import dataset  # noqa: E402
import models  # noqa: E402
from scoring import metrics  # noqa: E402
from training import checkpoints, engine, settings  # noqa: E402
import utils  # noqa: E402

MODEL = "alexnet"
TREE_MARKER = "bench-tree.json"


# ----------------------------------------------------------------------------- arguments


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sequences", type=int, default=593, metavar="N", help="sequences in the synthetic CK+ (593: CK+'s)")
    p.add_argument("--epochs", type=int, default=100, metavar="N", help="epochs per fold of the frozen protocol")
    p.add_argument("--kfold", type=int, default=10, metavar="K", help="folds of the frozen protocol")
    p.add_argument("--image-size", type=int, default=224, metavar="PX", help="model input size (alexnet's own: 224)")
    p.add_argument("-b", "--batch-size", type=int, default=32, metavar="N", help="mini-batch size")
    p.add_argument("-j", "--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="crop workers for the cold cache (main.py's default)")
    p.add_argument("--recompute-epochs", type=int, default=3, metavar="N",
                   help="epochs of one fold timed on the recompute path (the first is a warm-up)")
    p.add_argument("--check-epochs", type=int, default=2, metavar="N", help="epochs of the run comparing both paths")
    p.add_argument("--check-kfold", type=int, default=3, metavar="K", help="folds of the run comparing both paths")
    p.add_argument("--check-image-size", type=int, default=None, metavar="PX",
                   help="input size of the run comparing both paths (default: --image-size)")
    p.add_argument("--finetune-batches", type=int, default=6, metavar="N", help="batches in one timed fine-tuning pass")
    p.add_argument("--repeats", type=int, default=3, metavar="N", help="timed repeats of each short measurement")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the synthetic CK+ and of the runs")
    p.add_argument("--workdir", metavar="DIR", default=None,
                   help="keep the synthetic CK+ here and reuse it next time (default: a temporary folder, removed)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the figures to this JSON file")
    return p


# ----------------------------------------------------------------------------- the synthetic CK+


def subjects_for(sequences: int, seed: int) -> int:
    """The fewest synthetic subjects holding at least `sequences` sequences (~4.8 each)."""
    plan = synthetic.subject_plan(seed, synthetic.MAX_SUBJECTS)
    for n, total in enumerate(accumulate(len(recipes) for _, recipes in plan), 1):
        if total >= sequences:
            return n
    raise SystemExit(f"error: --sequences {sequences}: the generator makes at most {total} sequences")


def prepare_tree(root: Path, sequences: int, seed: int) -> list[str]:
    """A synthetic CK+ under `root` with exactly `sequences` sequences -> the three folders main.py takes.

    A tree a previous run left complete (its marker file says so) is reused."""
    dirs = [str(d) for d in ckplus.training_dirs(root)]
    marker = root / TREE_MARKER
    wanted = {"sequences": sequences, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return dirs
    if root.exists():
        shutil.rmtree(root)
    subjects = subjects_for(sequences, seed)
    t0 = time.perf_counter()
    summary = synthetic.generate(root, subjects=subjects, seed=seed, workers=max(1, min(4, os.cpu_count() or 1)))
    # The last subject may bring more sequences than asked: drop its last ones (every folder
    # of them), so the tree is exactly the first `sequences` of the generator's.
    extra = summary.sequences - sequences
    if extra:
        folders = ckplus.folders(root)
        for seq_dir in sorted(folders["facs"].glob("S*/*"))[-extra:]:
            subject, seq = seq_dir.parent.name, seq_dir.name
            for top in folders.values():
                shutil.rmtree(top / subject / seq, ignore_errors=True)
    log(f"synthetic CK+: {subjects} subjects, {sequences} sequences written in {time.perf_counter() - t0:.0f}s")
    marker.write_text(json.dumps(wanted))
    return dirs


# ----------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def spread(values: list[float]) -> dict:
    """min / median / max of repeated timings, rounded for the report."""
    return {"min": round(min(values), 4), "median": round(statistics.median(values), 4), "max": round(max(values), 4),
            "n": len(values)}


def sync(device: torch.device) -> None:
    """CUDA runs asynchronously: wait for it before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_seconds(run_dir: Path, fold: int) -> list[float]:
    """Training seconds of each epoch of a fold, as train_fold logged them in metrics.csv
    (the epoch's batches only: no checkpoint write, no evaluation)."""
    lines = (run_dir / f"fold{fold}" / "metrics.csv").read_text().splitlines()[1:]
    return [float(line.split(",")[3]) for line in lines]


def features_seconds(run_dir: Path) -> float:
    """How long the one pass of the frozen backbone took, from the run's log.txt."""
    for line in (run_dir / "log.txt").read_text().splitlines():
        if "computed once in" in line:
            return float(line.rsplit(" ", 1)[1].rstrip("s"))
    raise SystemExit(f"{run_dir / 'log.txt'} does not say how long the features took: did main.py change?")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "cpu": cpu_name(), "device": str(device),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2)}
    if device.type == "cuda":
        info["device"] = f"{device} ({torch.cuda.get_device_name(device)})"
    return info


# ----------------------------------------------------------------------------- index


def bench_index(dirs: list[str], args, cache_root: Path) -> tuple[dict, dataset.CKPlusDataset]:
    """index_ckplus + CKPlusDataset, each time with an empty crop cache (cold) and then a filled one (warm).

    "Cold" is the crop cache only: the frames were just written, so the OS file cache is warm.
    """
    def load(cache_dir: Path) -> tuple[float, float, dataset.CKPlusDataset]:
        t0 = time.perf_counter()
        records = dataset.index_ckplus(*dirs)
        t1 = time.perf_counter()
        data = dataset.CKPlusDataset(records, dataset.select_aus(records), size=args.image_size, cache_dir=cache_dir,
                                     workers=args.workers)
        return t1 - t0, time.perf_counter() - t0, data

    cold, warm, warm_index = [], [], []
    for r in range(args.repeats):
        cache = cache_root / f"cold-{r}"
        _, seconds, data = load(cache)
        cold.append(seconds)
        if r:
            shutil.rmtree(cache)  # the first one stays: it is the warm cache from here on
    for _ in range(args.repeats):
        index_s, seconds, data = load(cache_root / "cold-0")
        warm.append(seconds)
        warm_index.append(index_s)
    result = {"sequences": len(data), "cold_s": round(min(cold), 3), "warm_s": round(min(warm), 3),
              "workers": args.workers, "cold_spread_s": spread(cold), "warm_spread_s": spread(warm),
              "warm_index_only_s": round(min(warm_index), 3)}
    log(f"index: cold {result['cold_s']:.2f}s, warm {result['warm_s']:.3f}s for {len(data)} sequences")
    return result, data


# ----------------------------------------------------------------------------- frozen protocol


def frozen_argv(dirs: list[str], args, out: Path, cache: Path, *, epochs: int, kfold: int, size: int,
                extra: tuple[str, ...] = ()) -> list[str]:
    return [*dirs, "--model", MODEL, "--no-pretrained", "--freeze-backbone", "--epochs", str(epochs),
            "--kfold", str(kfold), "-b", str(args.batch_size), "--image-size", str(size), "--seed", str(args.seed),
            "-j", str(args.workers), "--cache-dir", str(cache), "--output-dir", str(out), "--quiet", *extra]


def fold_sizes(run_dir: Path, kfold: int) -> tuple[int, list[int]]:
    """(sequences, test sequences of each fold) from the run's pooled predictions."""
    _, _, folds, _, _, _ = metrics.read_predictions(run_dir / "predictions.csv")
    return len(folds), [folds.count(k) for k in range(kfold)]


def bench_frozen(dirs: list[str], args, work: Path, cache: Path) -> dict:
    """The frozen protocol with the feature cache, end to end, against the recompute path.

    A run whose settings another measurement needs too is run once: with the check's settings
    equal to the protocol's (the tiny scales of a smoke test), the check reuses the cached run,
    and the recompute timing is read off fold 0 of the check's recompute run."""
    run_root = work / "runs"
    check_size = (args.check_epochs, args.check_kfold, args.check_image_size)
    check_is_cached_run = check_size == (args.epochs, args.kfold, args.image_size)
    check_times_recompute = check_size == (args.recompute_epochs, args.kfold, args.image_size)

    def frozen_run(name: str, *, epochs: int, kfold: int, size: int, extra: tuple[str, ...] = ()) -> Path:
        run_dir = run_root / name
        utils.run_main_py(frozen_argv(dirs, args, run_dir, cache, epochs=epochs, kfold=kfold, size=size, extra=extra))
        return run_dir

    # 1. the whole protocol, cached, end to end (the crop cache is warm: bench_index filled it)
    t0 = time.perf_counter()
    cached_dir = frozen_run("cached", epochs=args.epochs, kfold=args.kfold, size=args.image_size)
    cached_s = time.perf_counter() - t0
    n, tests = fold_sizes(cached_dir, args.kfold)
    train_images = sum(n - t for t in tests) * args.epochs  # every epoch of every fold
    features_s = features_seconds(cached_dir)
    epochs_s = sum(sum(epoch_seconds(cached_dir, k)) for k in range(args.kfold))
    log(f"frozen, cached: {cached_s:.1f}s end to end ({features_s:.1f}s features, {epochs_s:.1f}s in epochs)")

    # 2. both paths on one short identical run: how far apart are their predictions?
    check_dirs = [cached_dir if check_is_cached_run else
                  frozen_run("check-cached", epochs=args.check_epochs, kfold=args.check_kfold,
                             size=args.check_image_size),
                  frozen_run("check-recompute", epochs=args.check_epochs, kfold=args.check_kfold,
                             size=args.check_image_size, extra=("--no-feature-cache",))]
    preds, f1 = [], []
    for run_dir in check_dirs:
        preds.append(metrics.read_predictions(run_dir / "predictions.csv"))
        results = json.loads((run_dir / "results.json").read_text())
        f1.append([results["macro"]["f1"], *(m["f1"] for m in results["per_au"].values())])
    if preds[0][0] != preds[1][0]:
        raise SystemExit("the cached and recompute runs predicted different sequences: a bug in main.py")
    max_abs_diff = float(np.abs(preds[0][5] - preds[1][5]).max())
    log(f"frozen, check: max |p_cached - p_recompute| = {max_abs_diff:.2e}")

    # 3. the recompute path: a few epochs of fold 0, per training image, extrapolated
    recompute_dir = check_dirs[1] if check_times_recompute else \
        frozen_run("recompute", epochs=args.recompute_epochs, kfold=args.kfold, size=args.image_size,
                   extra=("--no-feature-cache", "--fold", "0"))
    seconds = epoch_seconds(recompute_dir, 0)
    timed = seconds[1:] or seconds  # the first epoch warms up the allocator and oneDNN's kernels
    # The fastest epoch: a busy machine only slows epochs down, and the estimate (so the
    # speedup) should err low.
    per_image = min(timed) / (n - tests[0])
    recompute_epochs_s = per_image * train_images
    # The recompute run pays the cached run's fixed costs too (data, model builds, checkpoints,
    # results), but not the feature pass; its epochs cost what fold 0's did, per image.
    recompute_s = cached_s - epochs_s - features_s + recompute_epochs_s
    log(f"frozen, recompute: {min(timed):.2f}s per epoch of {n - tests[0]} images "
        f"-> {recompute_s:.0f}s extrapolated")
    shutil.rmtree(run_root)

    return {
        "cached_s": round(cached_s, 2),
        "recompute_s": round(recompute_s, 1),
        "speedup": round(recompute_s / cached_s, 1),
        "max_abs_diff": max_abs_diff,
        "f1_equal": f1[0] == f1[1],
        "sequences": n, "epochs": args.epochs, "kfold": args.kfold, "image_size": args.image_size,
        "batch_size": args.batch_size, "pretrained": False,
        "cached_breakdown_s": {"features": round(features_s, 2), "epochs": round(epochs_s, 2),
                               "rest": round(cached_s - features_s - epochs_s, 2)},
        "cached_epoch_ms": round(1000 * epochs_s / (args.epochs * args.kfold), 3),
        "recompute_measured": {"fold": 0, "epochs": len(seconds), "epochs_timed": len(timed),
                               "epoch_s": spread(timed), "train_images": n - tests[0]},
        "recompute_epochs_only_s": round(recompute_epochs_s, 1),
        "check": {"epochs": args.check_epochs, "kfold": args.check_kfold, "image_size": args.check_image_size,
                  "sequences": len(preds[0][0]), "reused_cached_run": check_is_cached_run,
                  "recompute_timed_in_check": check_times_recompute},
    }


# ----------------------------------------------------------------------------- fine-tuning


def bench_finetune(data: dataset.CKPlusDataset, args, device: torch.device, work: Path, train_images: int) -> dict:
    """engine.train_one_epoch against the bare training step on the same batches, pre-normalised."""
    config = models.model_config(MODEL)
    inputs = engine.Inputs(labels=data.labels, images=data.images.to(device), mean=config.mean, std=config.std,
                           channels_last=device.type == "cuda")  # as make_inputs builds them, unaugmented
    torch.manual_seed(args.seed)
    model = models.build_model(MODEL, len(data.aus), pretrained=False).to(device)
    if inputs.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    criterion = nn.BCEWithLogitsLoss(reduction="none")
    n = min(len(data), args.finetune_batches * args.batch_size)
    idx = torch.arange(n)
    # The loop shuffles with its generator; the bare steps see the same batches in the same order.
    order = idx[torch.randperm(n, generator=engine.epoch_generator(args.seed, 0, 0))]
    batches = [(inputs.batch(chunk, device, None, train=True)[0], inputs.labels[chunk].to(device))
               for chunk in order.split(args.batch_size) if not (len(chunk) == 1 and n > 1)]

    def loop() -> float:
        sync(device)
        t0 = time.perf_counter()
        with engine.Clock(1, quiet=True).bar(n, "bench") as progress:  # as train_fold passes it, disabled
            engine.train_one_epoch(model, criterion, optimizer, scaler, inputs, idx, device,
                                   engine.epoch_generator(args.seed, 0, 0), progress, batch_size=args.batch_size,
                                   loss="sum")
        sync(device)
        return time.perf_counter() - t0

    def compute() -> float:
        model.train()
        sync(device)
        t0 = time.perf_counter()
        for x, y in batches:
            loss = engine.au_loss(criterion, model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        return time.perf_counter() - t0

    loop(), compute()  # warm-up: allocator, oneDNN kernels, momentum buffers
    loop_s, compute_s = [], []
    for _ in range(args.repeats):  # interleaved, so a burst of load elsewhere hits both alike
        loop_s.append(loop())
        compute_s.append(compute())
    images = sum(len(y) for _, y in batches)
    loop_img_s, compute_img_s = images / min(loop_s), images / min(compute_s)

    ckpt_dir = work / "checkpoint"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # the settings a checkpoint records: the table's defaults, for this benchmark's model and folds
    run_args = argparse.Namespace(**{**settings.defaults(), "model": MODEL, "kfold": args.kfold,
                                     "batch_size": args.batch_size, "loss": "sum"})
    checkpoint_s, size = [], 0
    for epoch in range(args.repeats):
        # what train_fold writes after every epoch of a fine-tuned (unfrozen) fold
        state = checkpoints.fold_checkpoint(model, optimizer, scheduler, scaler, epoch=epoch, fold=0,
                                            settings=settings.run_settings(run_args), aus=data.aus,
                                            test_ids=data.ids[:60], weights={"weights": "none"},
                                            history=[{"epoch": e, "loss": 0.5, "lr": 0.01, "seconds": 1.0}
                                                     for e in range(epoch + 1)])
        t0 = time.perf_counter()
        checkpoints.save_checkpoint(state, ckpt_dir / checkpoints.CHECKPOINT)
        checkpoint_s.append(time.perf_counter() - t0)
        size = (ckpt_dir / checkpoints.CHECKPOINT).stat().st_size
    shutil.rmtree(ckpt_dir)
    epoch_s = train_images / loop_img_s
    result = {
        "loop_img_s": round(loop_img_s, 2), "compute_img_s": round(compute_img_s, 2),
        "overhead_pct": round(100 * (compute_img_s / loop_img_s - 1), 2),
        "overhead_pct_median": round(100 * (statistics.median(loop_s) / statistics.median(compute_s) - 1), 2),
        "statistic": f"best of {args.repeats} interleaved repeats (median also given)",
        "batches": len(batches), "images_per_repeat": images, "image_size": args.image_size,
        "batch_size": args.batch_size, "loop_s": spread(loop_s), "compute_s": spread(compute_s),
        "checkpoint_s": round(statistics.median(checkpoint_s), 3), "checkpoint_spread_s": spread(checkpoint_s),
        "checkpoint_mb": round(size / 2**20, 1),
        "checkpoint_pct_of_epoch": round(100 * statistics.median(checkpoint_s) / epoch_s, 1),
        "epoch_images": train_images,
    }
    log(f"finetune: loop {loop_img_s:.1f} img/s, compute {compute_img_s:.1f} img/s, "
        f"overhead {result['overhead_pct']:+.1f}%, checkpoint {result['checkpoint_s']:.2f}s")
    return result


# ----------------------------------------------------------------------------- report

# (section, key, comparison, limit): the targets for CK+-sized runs on a 2-core CPU.
TARGETS = [
    ("index", "warm_s", "<=", 1.0),
    ("frozen", "cached_s", "<=", 60.0),
    ("frozen", "speedup", ">=", 50.0),
    ("frozen", "max_abs_diff", "<=", 1e-4),
    ("finetune", "overhead_pct", "<=", 5.0),
]
DEFAULT_SCALE = {"sequences": 593, "epochs": 100, "kfold": 10, "image_size": 224, "batch_size": 32}


def check_targets(report: dict, args) -> dict:
    """Each target met or not; the time targets are stated for the default scale only."""
    at_scale = all(getattr(args, k) == v for k, v in DEFAULT_SCALE.items())
    out = {}
    for section, key, op, limit in TARGETS:
        value = report[section][key]
        met = value <= limit if op == "<=" else value >= limit
        applies = at_scale or key == "max_abs_diff"
        out[f"{section}.{key}"] = {"value": value, "target": f"{op} {limit:g}", "met": met if applies else None}
    return out


def format_table(report: dict) -> str:
    s, i, f, t = report["system"], report["index"], report["frozen"], report["finetune"]
    targets = report["targets"]
    rm = f["recompute_measured"]

    def row(name: str, value: str, key: str | None = None, note: str = "") -> str:
        mark = ""
        if key is not None:
            met = targets[key]["met"]
            mark = f"{targets[key]['target']:<8} " + ("ok" if met else "n/a" if met is None else "MISSED")
        return f"  {name:<22} {value:>14}   {mark:<16} {note}"

    lines = [
        f"torch {s['torch']}, {s['threads']} threads, {s['cpu_count']} CPUs ({s['cpu']}), device {s['device']}, "
        f"load average {s['load_average_1m_at_start']} at start / {s['load_average_1m_at_end']} at end",
        "",
        f"index: {i['sequences']} sequences, index_ckplus + CKPlusDataset at {report['args']['image_size']} px, "
        f"-j {i['workers']} crop workers",
        row("cold_s", f"{i['cold_s']:.2f}", note=f"best of {i['cold_spread_s']['n']}, max {i['cold_spread_s']['max']:.2f}"),
        row("warm_s", f"{i['warm_s']:.3f}", "index.warm_s",
            f"best of {i['warm_spread_s']['n']}, max {i['warm_spread_s']['max']:.3f}; index only "
            f"{i['warm_index_only_s']:.3f}"),
        "",
        f"frozen: {MODEL} (--no-pretrained: random weights, no ImageNet weights offline), {f['sequences']} sequences, "
        f"{f['kfold']} folds x {f['epochs']} epochs, {f['image_size']} px, batch {f['batch_size']}",
        row("cached_s", f"{f['cached_s']:.1f}", "frozen.cached_s",
            f"python main.py end to end, warm crop cache: features {f['cached_breakdown_s']['features']:.1f}s, "
            f"epochs {f['cached_breakdown_s']['epochs']:.1f}s, rest {f['cached_breakdown_s']['rest']:.1f}s"),
        row("recompute_s", f"{f['recompute_s']:.0f}", note=(
            f"extrapolated: the fastest of {rm['epochs_timed']} timed epochs (of {rm['epochs']} run; the first warms up) "
            f"of fold 0, {rm['epoch_s']['min']:.2f}s per {rm['train_images']} images (max {rm['epoch_s']['max']:.2f}s), "
            f"x {f['epochs']} epochs x {f['kfold']} folds, plus the cached run's fixed costs")),
        row("speedup", f"{f['speedup']:.0f}x", "frozen.speedup", "recompute_s / cached_s"),
        row("max_abs_diff", f"{f['max_abs_diff']:.2e}", "frozen.max_abs_diff",
            f"pooled predictions, both paths, {f['check']['kfold']} folds x {f['check']['epochs']} epochs at "
            f"{f['check']['image_size']} px on all {f['check']['sequences']} sequences; F1s equal: {f['f1_equal']}"),
        "",
        f"finetune: {MODEL}, not frozen, {t['image_size']} px, batch {t['batch_size']}, {t['batches']} batches "
        f"per repeat, {t['statistic']}",
        row("loop_img_s", f"{t['loop_img_s']:.1f}", note=f"engine.train_one_epoch (median {t['loop_s']['median']:.2f}s, "
            f"spread {t['loop_s']['min']:.2f}-{t['loop_s']['max']:.2f}s)"),
        row("compute_img_s", f"{t['compute_img_s']:.1f}", note=f"forward+backward+SGD on ready tensors (median "
            f"{t['compute_s']['median']:.2f}s, spread {t['compute_s']['min']:.2f}-{t['compute_s']['max']:.2f}s)"),
        row("overhead_pct", f"{t['overhead_pct']:+.2f}", "finetune.overhead_pct",
            f"median-based {t['overhead_pct_median']:+.2f}"),
        row("checkpoint_s", f"{t['checkpoint_s']:.2f}", note=f"one {t['checkpoint_mb']:.0f} MB write, median of "
            f"{t['checkpoint_spread_s']['n']}; {t['checkpoint_pct_of_epoch']:.1f}% of an epoch of {t['epoch_images']} images"),
    ]
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> dict:
    if args.check_image_size is None:
        args.check_image_size = args.image_size
    if args.sequences < 2 * max(args.kfold, args.check_kfold):
        raise SystemExit(f"error: --sequences {args.sequences} is too few for {max(args.kfold, args.check_kfold)} folds")
    device = engine.resolve_device("auto")
    report: dict = {"system": system_info(device), "args": vars(args).copy()}
    with contextlib.ExitStack() as stack:
        work = utils.work_folder(stack, args.workdir, "au-bench-")
        dirs = prepare_tree(work / f"ckplus-{args.sequences}-seed{args.seed}", args.sequences, args.seed)
        scratch = work / f"scratch-{os.getpid()}"
        stack.callback(shutil.rmtree, scratch, True)
        scratch.mkdir()
        crops = scratch / "crops"
        report["index"], data = bench_index(dirs, args, crops)
        report["frozen"] = bench_frozen(dirs, args, scratch, crops / "cold-0")
        train_images = round(len(data) * (args.kfold - 1) / args.kfold)  # one fold's training part
        report["finetune"] = bench_finetune(data, args, device, scratch, train_images)
    report["system"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    report["targets"] = check_targets(report, args)
    print(format_table(report))
    if args.json:
        utils.write_json(args.json, report)
    return report


if __name__ == "__main__":
    run_bench(get_args_parser().parse_args())
