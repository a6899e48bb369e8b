"""Does fine-tuning keep its pretrained features? The old recipe against the new, end to end.

    python benchmarks/recipes.py                               # a 60-subject synthetic CK+ (kept in the cache)
    python benchmarks/recipes.py --json /tmp/recipes.json      # also write the figures as JSON
    python benchmarks/recipes.py --subjects 4 --epochs 2 --kfold 2 --image-size 64   # a smoke test
    python benchmarks/recipes.py --rows landmarks,shape-lr --kfold 5 --tree-seed 13  # the shape model, seconds

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
  its wall time is the scoring's, and its losses are that run's;
- new + `--geometry`: the landmarks' normalised shape beside the pixels (on synthetic faces,
  drawn from those landmarks, geometry is the generator's own signal: this proves mechanics only);
- bare loop: an anchor that holds none of this program's machinery -- `bare_loop` below, in this
  file: torchvision's mobilenet_v2 with its last Linear replaced by one output per AU, the whole
  frame resized bilinearly to the input size (no landmark crop), ImageNet mean/std, the mean
  BCEWithLogitsLoss with pos_weight from the training fold, SGD at --lr for every parameter
  (momentum 0.9, weight decay 1e-4), StepLR(--step, --gamma), one horizontal-flip decision per
  batch; the same tree, the same folds (engine.make_folds on the same subjects), the same weights;
- bare loop + 3 frames + flip TTA: the same loop on the last 3 frames of each training sequence,
  each test face scored with its mirror image (its figures without TTA are in the JSON);
- shape model: `python main.py --model landmarks --lr 0.1`, docs/usage.md's command, its other
  settings main.py's defaults (no image: one logistic regression per AU on the peak's 68 normalised,
  standardised points, trained by main.py's loop), on the same folds; only --kfold, --split and
  --shape-epochs are the benchmark's;
- logistic regression on the shape: its anchor, `shape_lr` below -- scikit-learn's
  LogisticRegression (C 0.1, class_weight balanced), one per AU, on the same 136 numbers
  (geometry.normalise of the peak's landmarks, standardised on the training fold), the same folds:
  the classic CK+ shape baseline, which --model landmarks must not trail.

It prints macro F1 and macro ROC AUC of the pooled out-of-fold predictions with their 95%
intervals over subjects (main.py's bootstrap: 2000 resamples, seed 0), the wall time of each run,
the paired difference of each recipe from its anchor (the same resampled subjects for both rows;
a recipe is WORSE only when that interval lies below zero), and whether each fold's training loss rose from epoch 1 to epoch 2 (metrics.csv):
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
from ckplus import synthetic  # noqa: E402
import dataset  # noqa: E402
from scoring import intervals, metrics  # noqa: E402
from training import engine  # noqa: E402
import utils  # noqa: E402

MODEL = "mobilenet_v2"
SUBJECTS = 60  # the synthetic CK+ the README's table was measured on (the demo's tree before it shrank to 2 frames)
# name -> (what the row is, its own flags on top of the common ones)
ROWS = {
    "old": ("old recipe (summed per-AU loss)", ["--loss", "sum"]),
    "new": ("new defaults (mean loss)", []),
    "frames": ("new + 3 frames", ["--frames", "3"]),
    "frames-tta": ("new + 3 frames + flip TTA", ["--frames", "3", "--tta", "flip"]),
    "geometry": ("new + landmark geometry", ["--geometry"]),
    "bare": ("bare loop (whole frame)", []),
    "bare-frames-tta": ("bare loop + 3 frames + flip TTA", []),
    "landmarks": ("shape model (--model landmarks)", ["--model", "landmarks", "--lr", "0.1"]),
    "shape-lr": ("logistic regression on the shape", []),
}
# The rows run by `bare_loop` (not main.py): name -> (frames per training sequence, TTA)
BARE = {"bare": (1, "none"), "bare-frames-tta": (3, "flip")}
# The rows that read no image: main.py with their own defaults (not the CNN's common flags)
SHAPE = {"landmarks"}
# recipe row -> the anchor row it must not trail (paired, over subjects)
VERDICTS = (("new", "bare"), ("frames-tta", "bare-frames-tta"), ("geometry", "new"), ("landmarks", "shape-lr"))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recipes.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--subjects", type=int, default=SUBJECTS, metavar="N",
                   help="synthetic subjects of the tree, generated (with sequences of 3-6 frames, which --frames 3 "
                        "needs) in --cache-dir once")
    p.add_argument("--weights", default="IMAGENET1K_V1", metavar="NAME|FILE", help="main.py --weights")
    p.add_argument("--epochs", type=int, default=6, metavar="N", help="epochs per fold")
    p.add_argument("--step", type=int, default=2, metavar="N", help="main.py --step")
    p.add_argument("--gamma", type=float, default=0.5, metavar="F", help="main.py --gamma (its default)")
    p.add_argument("--kfold", type=int, default=3, metavar="K", help="subject-independent folds")
    p.add_argument("--image-size", type=int, default=128, metavar="PX", help="model input size")
    p.add_argument("-b", "--batch-size", type=int, default=16, metavar="N", help="mini-batch size")
    p.add_argument("--lr", type=float, default=0.01, metavar="LR", help="main.py --lr, the same for every row")
    p.add_argument("--shape-epochs", type=int, default=None, metavar="N",
                   help="main.py --epochs of the shape-model row (default: main.py's own)")
    p.add_argument("--tree-seed", type=int, default=0, metavar="S",
                   help="synthetic.py --seed of the tree (another seed: another tree, kept beside the first)")
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
    """The three CK+ folders main.py takes, of a synthetic CK+ of --subjects subjects (--tree-seed, the
    generator's 3-6 frames per sequence) kept in --cache-dir: generated on first use, into a
    temporary name renamed when complete."""
    root = Path(args.cache_dir) / (f"recipes-ckplus-{args.subjects}" + (f"-seed{args.tree_seed}" if args.tree_seed else ""))
    if not ckplus.folders(root)["frame"].is_dir():
        tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"generating a synthetic CK+ of {args.subjects} subjects (seed {args.tree_seed}) in {root}, once")
        synthetic.generate(tmp, subjects=args.subjects, seed=args.tree_seed)
        os.replace(tmp, root)
    return [str(d) for d in ckplus.training_dirs(root)]


def common_flags(args: argparse.Namespace) -> list[str]:
    return ["--model", MODEL, "--weights", args.weights, "--split", "subject", "--kfold", str(args.kfold),
            "--epochs", str(args.epochs), "--step", str(args.step), "--gamma", str(args.gamma), "-b", str(args.batch_size), "--lr", str(args.lr),
            "--image-size", str(args.image_size), "--pos-weight", "--augment"]


def row_flags(name: str, args: argparse.Namespace) -> list[str]:
    """main.py's flags of a row: the common ones and its own; a shape row, its own defaults on the same folds."""
    flags = ROWS[name][1]
    if name in SHAPE:
        epochs = ["--epochs", str(args.shape_epochs)] if args.shape_epochs else []
        return [*flags, "--split", "subject", "--kfold", str(args.kfold), *epochs]
    return [*common_flags(args), *flags]


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
    """One main.py run (or the bare loop) -> its figures, or why it failed. `done`: the rows already run."""
    what, flags = ROWS[name]
    if name in BARE or name == "shape-lr":
        log(f"{what}: the benchmark's own loop")
        figures = bare_loop(dirs, args, *BARE[name]) if name in BARE else shape_lr(dirs, args)
        row = {"name": name, "what": what, "flags": "", **figures}
        log(f"{what}: macro F1 {row['macro_f1']:.3f}, AUC {row['macro_auc']:.3f}, {row['wall_s']:.0f}s")
        return row
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
        wall, error = main_py([*dirs, *row_flags(name, args), "-j", str(args.workers), "--cache-dir",
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
    ids, subjects, _, _, targets, probs = metrics.read_predictions(run_dir / "predictions.csv")
    row.update(macro_f1=results["macro"]["f1"], macro_auc=results["macro"]["auc"], sequences=results["sequences"],
               macro_ci=results["macro"].get("ci"), fold_losses=losses,
               loss_rose=[len(f) > 1 and f[1] > f[0] for f in losses],
               predictions={"ids": ids, "subjects": subjects, "targets": targets, "probs": probs})
    log(f"{what}: macro F1 {row['macro_f1']:.3f}, AUC {row['macro_auc']:.3f}, {wall:.0f}s")
    return row


# ----------------------------------------------------------------------------- the bare loop


def _whole_frame(path: Path, size: int):
    """A frame, gray, the whole of it resized (Pillow's bilinear) to size x size -> uint8 array."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def bare_loop(dirs: list[str], args: argparse.Namespace, frames: int, tta: str) -> dict:
    """The anchor: a minimal fine-tuning loop on the same sequences and folds as main.py's rows,
    with none of main.py's data pipeline -> the row's figures (pooled out-of-fold, scoring/metrics.py)."""
    import numpy as np
    import torch
    import torchvision
    from torch import nn

    t0 = time.perf_counter()
    records = dataset.index_ckplus(*dirs, frames=frames)
    aus = dataset.select_aus(records)
    labels = torch.from_numpy(dataset.encode_labels(records, aus))
    folds = engine.make_folds([r.subject for r in records], args.kfold, "subject")  # main.py's folds
    rows = [(i, r.image_path) for i, r in enumerate(records)] + [(i, f.image_path) for i, r in enumerate(records)
                                                                 for f in r.earlier]
    owner = torch.tensor([i for i, _ in rows])
    pixels = torch.from_numpy(np.stack([_whole_frame(p, args.image_size) for _, p in rows])).unsqueeze(1)
    weights = torchvision.models.get_model_weights("mobilenet_v2")[args.weights]
    mean = torch.tensor(weights.transforms().mean).view(1, 3, 1, 1)
    std = torch.tensor(weights.transforms().std).view(1, 3, 1, 1)

    def inputs(idx: torch.Tensor) -> torch.Tensor:
        return (pixels[idx].float().div(255).expand(-1, 3, -1, -1) - mean) / std

    probs = np.zeros(labels.shape, dtype=np.float64)
    plain = probs.copy()  # without TTA
    losses = []
    for k, test in enumerate(folds):
        test_set = set(test.tolist())
        train_rows = torch.tensor([j for j, (i, _) in enumerate(rows) if i not in test_set])
        torch.manual_seed(k)
        model = torchvision.models.mobilenet_v2(weights=weights)
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, len(aus))
        y_train = labels[owner[train_rows]]
        pos = y_train.sum(0)
        pos_weight = torch.where(pos > 0, (len(y_train) - pos) / pos.clamp(min=1), torch.ones_like(pos))
        criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.step, gamma=args.gamma)
        generator = torch.Generator().manual_seed(k)
        fold_losses = []
        for _ in range(args.epochs):
            model.train()
            total, count = 0.0, 0
            order = train_rows[torch.randperm(len(train_rows), generator=generator)]
            for idx in order.split(args.batch_size):
                if len(idx) == 1:
                    continue  # BatchNorm cannot train on one image
                x = inputs(idx)
                if torch.rand(1, generator=generator).item() < 0.5:  # one flip decision per batch
                    x = x.flip(-1)
                loss = criterion(model(x), labels[owner[idx]])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, count = total + loss.item() * len(idx), count + len(idx)
            scheduler.step()
            fold_losses.append(total / max(count, 1))
        losses.append(fold_losses)
        model.eval()
        with torch.no_grad():
            for part in torch.as_tensor(test).split(64):
                x = inputs(part)
                p = torch.sigmoid(model(x))
                plain[part.numpy()] = p.numpy()
                if tta == "flip":
                    p = (p + torch.sigmoid(model(x.flip(-1)))) / 2
                probs[part.numpy()] = p.numpy()
    row = {**scored(records, aus, probs, t0, losses), "training_images": len(rows)}
    if tta != "none":
        without = metrics.compute_metrics(labels.numpy(), plain, aus, 0.5)["macro"]
        row["without_tta"] = {"macro_f1": without["f1"], "macro_auc": without["auc"]}
    return row


def scored(records: list, aus: list[int], probs, start: float, losses: list | None = None) -> dict:
    """An anchor's row: its pooled out-of-fold figures, with intervals over subjects (main.py's bootstrap)."""
    targets = dataset.encode_labels(records, aus)
    scores = metrics.compute_metrics(targets, probs, aus, 0.5)
    subjects = [r.subject for r in records]
    resampling = intervals.draw(subjects, intervals.DEFAULT_RESAMPLES, 0)  # main.py's: over subjects, --seed 0
    intervals.add_intervals(scores, resampling, targets, probs, aus, 0.5)
    return {"wall_s": round(time.perf_counter() - start, 1), "macro_f1": scores["macro"]["f1"],
            "macro_auc": scores["macro"]["auc"], "macro_ci": scores["macro"]["ci"], "sequences": len(records),
            "predictions": {"ids": [r.id for r in records], "subjects": subjects, "targets": targets, "probs": probs},
            "fold_losses": losses or [], "loss_rose": [len(f) > 1 and f[1] > f[0] for f in losses or []],
            "per_au_f1": {f"AU{au}": scores["per_au"][f"AU{au}"]["f1"] for au in aus}}


def shape_lr(dirs: list[str], args: argparse.Namespace) -> dict:
    """The shape model's anchor: one scikit-learn logistic regression per AU (C 0.1, balanced classes)
    on the peak's 136 normalised landmark numbers, standardised on the training fold; main.py's folds."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ckplus import geometry

    t0 = time.perf_counter()
    records = dataset.index_ckplus(*dirs)
    aus = dataset.select_aus(records)
    labels = dataset.encode_labels(records, aus)
    shapes = geometry.normalise(np.stack([r.landmarks for r in records]))
    probs = np.zeros(labels.shape, dtype=np.float64)
    for test in engine.make_folds([r.subject for r in records], args.kfold, "subject"):
        train = np.setdiff1d(np.arange(len(records)), test)
        scaler = StandardScaler().fit(shapes[train])
        x_train, x_test = scaler.transform(shapes[train]), scaler.transform(shapes[test])
        for a in range(len(aus)):
            y = labels[train, a]
            if y.min() == y.max():  # one class in this training fold: nothing to fit, its rate is the answer
                probs[test, a] = y[0]
                continue
            fit = LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000).fit(x_train, y)
            probs[test, a] = fit.predict_proba(x_test)[:, 1]
    return scored(records, aus, probs, t0)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def with_interval(row: dict, key: str) -> str:
    """`0.812 [0.790, 0.833]`: a row's macro figure and its 95% interval over subjects."""
    ci = (row.get("macro_ci") or {}).get(key)
    return fmt(row[f"macro_{key}"]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def paired(a: dict, b: dict) -> dict[str, intervals.PairedDifference]:
    """Row `a`'s macro F1 and AUC minus row `b`'s, with paired 95% intervals over subjects (the same
    resampled subjects for both; rows are lined up by sequence)."""
    pa, pb = a["predictions"], b["predictions"]
    order = {seq: i for i, seq in enumerate(pa["ids"])}
    at = [order[seq] for seq in pb["ids"]]
    resampling = intervals.draw(pb["subjects"], intervals.DEFAULT_RESAMPLES, 0)
    point = {"f1": (b["macro_f1"], a["macro_f1"]), "auc": (b["macro_auc"], a["macro_auc"])}
    return intervals.paired_differences(resampling, (pb["targets"], pb["probs"]),
                                        (pa["targets"][at], pa["probs"][at]), 0.5, 0.5, point)


def verdict(a: dict, b: dict) -> str:
    """Is recipe row `a` no worse than anchor row `b`? Worse only when the paired interval of the
    macro F1 difference lies below zero: one number from one run is not a result."""
    diff = paired(a, b)
    f1, auc = diff["f1"], diff["auc"]

    def show(d: intervals.PairedDifference) -> str:
        if d.difference is None:
            return "n/a"
        return f"{d.difference:+.3f}" + (f" [{d.interval[0]:+.3f}, {d.interval[1]:+.3f}]" if d.interval else "")

    worse = f1.interval is not None and f1.interval[1] < 0
    better = f1.interval is not None and f1.interval[0] > 0
    word = "WORSE than" if worse else "better than" if better else "no worse than (the interval holds 0)"
    return (f"{a['what']} minus {b['what']}: macro F1 {show(f1)}, AUC {show(auc)} (paired, over subjects): "
            f"{word} the {b['what']} ({fmt(b['macro_f1'])} / {fmt(b['macro_auc'])})")


def format_table(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"{MODEL} --weights {s['weights']}, synthetic CK+ ({s['subjects']} subjects, {report['sequences']} sequences), "
        f"{s['kfold']} subject-independent folds, {s['epochs']} epochs (--step {s['step']}), {s['image_size']} px, "
        f"batch {s['batch_size']}, --lr {s['lr']}, --pos-weight --augment; torch {report['system']['torch']}, "
        f"{report['system']['cpu_count']} CPUs",
        "",
        "| recipe | flags | macro F1 [95% CI] | macro AUC [95% CI] | wall | loss epoch 1 -> 2, per fold |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        own = row["name"] in BARE or row["name"] == "shape-lr"
        flags = f"`{row['flags']}`" if row["flags"] else "(its own loop)" if own else "(defaults)"
        if "error" in row:
            lines.append(f"| {row['what']} | {flags} | failed: {row['error']} | | {row['wall_s']:.0f} s | |")
            continue
        trend = ", ".join(f"{f[0]:.3f} -> {f[1]:.3f} {'ROSE' if rose else 'fell'}" if len(f) > 1 else "one epoch"
                          for f, rose in zip(row["fold_losses"], row["loss_rose"]))
        wall = f"{row['wall_s']:.0f} s" + (f" (scoring the {row['scored_from']} run)" if "scored_from" in row else "")
        lines.append(f"| {row['what']} | {flags} | {with_interval(row, 'f1')} | {with_interval(row, 'auc')} | "
                     f"{wall} | {trend} |")
    by_name = {row["name"]: row for row in report["rows"] if "error" not in row}
    lines.append("")
    for recipe, anchor in VERDICTS:
        if recipe in by_name and anchor in by_name:
            lines.append(verdict(by_name[recipe], by_name[anchor]))
    if "without_tta" in by_name.get("bare-frames-tta", {}):
        w = by_name["bare-frames-tta"]["without_tta"]
        lines.append(f"bare loop + 3 frames without TTA: macro F1 {fmt(w['macro_f1'])} / AUC {fmt(w['macro_auc'])}")
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
    for row in report["rows"]:
        row.pop("predictions", None)  # arrays, for the paired verdicts only
    if args.json:
        utils.write_json(args.json, report)
    return report


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    report = run_benchmark(get_args_parser().parse_args())
    sys.exit(1 if any("error" in row for row in report["rows"]) else 0)
