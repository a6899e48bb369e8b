"""Does fine-tuning keep its pretrained features? The old recipe against the new, end to end.

    python benchmarks/recipes.py                               # a 60-subject synthetic CK+ (kept in the cache)
    python benchmarks/recipes.py --json /tmp/recipes.json      # also write the figures as JSON
    python benchmarks/recipes.py --subjects 4 --epochs 2 --kfold 2 --image-size 64   # a smoke test

Each row is one `python main.py` run of ImageNet mobilenet_v2 (--model mobilenet_v2, --weights
IMAGENET1K_V1: the file that can be had offline) on a synthetic CK+ with subject-independent
folds, the same learning rate, batch, augmentation and positive weights for every row:

- old recipe: `--loss sum`, what this program did before --loss existed (the per-AU losses
  summed, so a shared backbone gets every AU's gradient at --lr);
- new defaults: `--loss auto` (the mean over AUs when the backbone trains);
- new + `--frames 3`: training on the last 3 frames of each training sequence;
- new + `--frames 3 --tta flip`: and scoring each test face with its mirror image. TTA changes
  only how the test faces are scored, so when the `--frames 3` row ran, this row is its
  checkpoints scored again (`python main.py -e --resume RUN --tta flip`), not a second training;
  its wall time is the scoring's, and its losses are that run's.

It prints macro F1 and macro ROC AUC of the pooled out-of-fold predictions, the wall time of
each run, and whether each fold's training loss rose from epoch 1 to epoch 2 (metrics.csv):
a pretrained backbone wrecked by too large steps shows as a loss that rises. Synthetic faces
are not real ones: this shows the mechanics and catches regressions; CKPLUS.md has the
real-face figures.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import ckplus  # noqa: E402
import dataset  # noqa: E402
import synthetic  # noqa: E402
import utils  # noqa: E402

MODEL = "mobilenet_v2"
SUBJECTS = 60  # the synthetic CK+ the README's table was measured on (the demo's tree before it shrank to 2 frames)
# name -> (what the row is, its own flags on top of the common ones)
ROWS = {
    "old": ("old recipe (summed per-AU loss)", ["--loss", "sum"]),
    "new": ("new defaults (mean loss)", []),
    "frames": ("new + 3 frames", ["--frames", "3"]),
    "frames-tta": ("new + 3 frames + flip TTA", ["--frames", "3", "--tta", "flip"]),
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recipes.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--subjects", type=int, default=SUBJECTS, metavar="N",
                   help="synthetic subjects of the tree, generated (with sequences of 3-6 frames, which --frames 3 "
                        "needs) in --cache-dir once")
    p.add_argument("--weights", default="IMAGENET1K_V1", metavar="NAME|FILE", help="main.py --weights")
    p.add_argument("--epochs", type=int, default=6, metavar="N", help="epochs per fold")
    p.add_argument("--step", type=int, default=2, metavar="N", help="main.py --step")
    p.add_argument("--kfold", type=int, default=3, metavar="K", help="subject-independent folds")
    p.add_argument("--image-size", type=int, default=128, metavar="PX", help="model input size")
    p.add_argument("-b", "--batch-size", type=int, default=16, metavar="N", help="mini-batch size")
    p.add_argument("--lr", type=float, default=0.01, metavar="LR", help="main.py --lr, the same for every row")
    p.add_argument("--rows", default=",".join(ROWS), metavar="LIST", help=f"rows to run, of {', '.join(ROWS)}")
    p.add_argument("-j", "--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="main.py -j (crop workers for a cold crop cache)")
    p.add_argument("--cache-dir", metavar="DIR", default=str(dataset.default_cache_dir()),
                   help="main.py --cache-dir: crop caches, and the benchmark's synthetic CK+")
    p.add_argument("--workdir", metavar="DIR", default=None,
                   help="keep the run folders here (default: a temporary folder, removed)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the figures to this JSON file")
    return p


def log(message: str) -> None:
    print(f"[recipes {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prepare_tree(args: argparse.Namespace) -> list[str]:
    """The three CK+ folders main.py takes, of a synthetic CK+ of --subjects subjects (seed 0, the
    generator's 3-6 frames per sequence) kept in --cache-dir: generated on first use, into a
    temporary name renamed when complete."""
    root = Path(args.cache_dir) / f"recipes-ckplus-{args.subjects}"
    if not ckplus.folders(root)["frame"].is_dir():
        tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"generating a synthetic CK+ of {args.subjects} subjects in {root}, once")
        synthetic.generate(tmp, subjects=args.subjects, seed=0)
        os.replace(tmp, root)
    return [str(d) for d in ckplus.training_dirs(root)]


def common_flags(args: argparse.Namespace) -> list[str]:
    return ["--model", MODEL, "--weights", args.weights, "--split", "subject", "--kfold", str(args.kfold),
            "--epochs", str(args.epochs), "--step", str(args.step), "-b", str(args.batch_size), "--lr", str(args.lr),
            "--image-size", str(args.image_size), "--pos-weight", "--augment"]


def fold_losses(run_dir: Path, kfold: int) -> list[list[float]]:
    """Each fold's training loss per epoch, from its metrics.csv."""
    losses = []
    for k in range(kfold):
        with open(run_dir / f"fold{k}" / "metrics.csv", newline="") as f:
            losses.append([float(row["loss"]) for row in csv.DictReader(f)])
    return losses


# A row that is another row's checkpoints scored with other flags: name -> (that row, the -e flags)
SCORED = {"frames-tta": ("frames", ["--tta", "flip"])}


def main_py(argv: list[str]) -> tuple[float, str | None]:
    """`python main.py ARGV` -> (wall seconds, None, or the last line it printed when it failed)."""
    wall, done = utils.run_main_py(argv, check=False)
    if done.returncode == 0:
        return wall, None
    return wall, (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]


def run_row(name: str, dirs: list[str], args: argparse.Namespace, work: Path, done: dict) -> dict:
    """One main.py run -> its figures, or why it failed. `done`: the rows already run (by name)."""
    what, flags = ROWS[name]
    run_dir = work / f"run-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    source, e_flags = SCORED.get(name, (None, None))
    if source and "error" not in done.get(source, {"error": ""}):
        trained = work / f"run-{source}"  # trained alike: only the scoring differs
        log(f"{what}: python main.py -e --resume {trained} {' '.join(e_flags)}")
        wall, error = main_py(["-e", "--resume", str(trained), *e_flags, "--output-dir", str(run_dir), "--quiet"])
    else:
        trained = run_dir
        log(f"{what}: python main.py ... {' '.join(flags)}")
        wall, error = main_py([*dirs, *common_flags(args), *flags, "-j", str(args.workers), "--cache-dir",
                               args.cache_dir, "--output-dir", str(run_dir), "--quiet"])
    row = {"name": name, "what": what, "flags": " ".join(flags), "wall_s": round(wall, 1)}
    if trained != run_dir:
        row["scored_from"] = source
    if error:
        row["error"] = error
        log(f"{what}: main.py failed: {error}")
        return row
    results = json.loads((run_dir / "results.json").read_text())
    losses = fold_losses(trained, args.kfold)
    row.update(macro_f1=results["macro"]["f1"], macro_auc=results["macro"]["auc"], sequences=results["sequences"],
               fold_losses=losses, loss_rose=[len(f) > 1 and f[1] > f[0] for f in losses])
    log(f"{what}: macro F1 {row['macro_f1']:.3f}, AUC {row['macro_auc']:.3f}, {wall:.0f}s")
    return row


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_table(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"{MODEL} --weights {s['weights']}, synthetic CK+ ({s['subjects']} subjects, {report['sequences']} sequences), "
        f"{s['kfold']} subject-independent folds, {s['epochs']} epochs (--step {s['step']}), {s['image_size']} px, "
        f"batch {s['batch_size']}, --lr {s['lr']}, --pos-weight --augment; torch {report['system']['torch']}, "
        f"{report['system']['cpu_count']} CPUs",
        "",
        "| recipe | flags | macro F1 | macro AUC | wall | loss epoch 1 -> 2, per fold |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        flags = f"`{row['flags']}`" if row["flags"] else "(defaults)"
        if "error" in row:
            lines.append(f"| {row['what']} | {flags} | failed: {row['error']} | | {row['wall_s']:.0f} s | |")
            continue
        trend = ", ".join(f"{f[0]:.3f} -> {f[1]:.3f} {'ROSE' if rose else 'fell'}" if len(f) > 1 else "one epoch"
                          for f, rose in zip(row["fold_losses"], row["loss_rose"]))
        wall = f"{row['wall_s']:.0f} s" + (f" (scoring the {row['scored_from']} run)" if "scored_from" in row else "")
        lines.append(f"| {row['what']} | {flags} | {fmt(row['macro_f1'])} | {fmt(row['macro_auc'])} | "
                     f"{wall} | {trend} |")
    return "\n".join(lines)


def run_benchmark(args: argparse.Namespace) -> dict:
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown or not names:
        raise SystemExit(f"error: --rows {args.rows}: choose from {', '.join(ROWS)}")
    report: dict = {"system": {"torch": _torch_version(), "python": platform.python_version(),
                               "cpu_count": os.cpu_count(), "load_average_1m_at_start": round(os.getloadavg()[0], 2)},
                    "settings": {k: v for k, v in vars(args).items() if k not in ("json", "workdir", "cache_dir")},
                    "common_flags": common_flags(args)}
    with contextlib.ExitStack() as stack:
        work = utils.work_folder(stack, args.workdir, "au-recipes-")
        dirs = prepare_tree(args)
        done: dict = {}
        for name in names:
            done[name] = run_row(name, dirs, args, work, done)
        report["rows"] = list(done.values())
    report["sequences"] = next((row["sequences"] for row in report["rows"] if "sequences" in row), None)
    report["system"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(format_table(report))
    if args.json:
        utils.write_json(args.json, report)
    return report


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    report = run_benchmark(get_args_parser().parse_args())
    sys.exit(1 if any("error" in row for row in report["rows"]) else 0)
