"""Draw the README's figures from synthetic data and a finished run.

    python images/make_images.py                              # synthetic CK+ in a temp folder + a --demo run
    python images/make_images.py --data /tmp/ck593 --run runs/demo

Every picture of a face comes from the synthetic CK+ that synthetic.py writes: the CK+
licence forbids publishing its images, so --data must never point at a real copy. Without
--data the default synthetic tree (123 subjects, 593 sequences) is written to a temporary
folder and removed afterwards; without --run `main.py --demo` is run once (about a minute on a CPU)
and its results.json gives the F1 chart.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the project's modules sit one folder up

import ckplus
from ckplus import synthetic
import dataset  # noqa: E402
import preprocess  # noqa: E402
from scoring import metrics
import utils  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent
ORIGINAL_MIN_COUNT = 90  # the original kept the AUs coded in more than 90 sequences
DPI = 100
NAMES = ("au_distribution.png", "landmarks.png", "crop.png", "f1.png", "pipeline.png")


def _save(fig: Figure, path: Path) -> Path:
    # Figure.savefig needs no pyplot and no display; the README shows these at about 800 px wide.
    fig.savefig(path, dpi=DPI, pil_kwargs={"optimize": True})
    return path


def load_records(root: Path) -> list[dataset.Sequence]:
    """The peak frames of a CK+ tree (the official layout, which synthetic.py writes too)."""
    return dataset.index_ckplus(*ckplus.training_dirs(root))


def showcase(records: list[dataset.Sequence]) -> dataset.Sequence:
    """The sequence that codes the most of the project's AUs: an expressive face for the figures."""
    return max(records, key=lambda r: len(set(r.aus) & set(dataset.DEFAULT_AUS)))


def draw_au_distribution(records: list[dataset.Sequence], path: Path) -> Path:
    """Sequences per AU; the AUs the original's rule (more than 90) keeps in blue, the 90 line dashed."""
    counts = dataset.label_counts(records)
    try:
        kept = dataset.select_aus(records, min_count=ORIGINAL_MIN_COUNT)
    except utils.UserError:  # a small tree: no AU reaches the line, and select_aus refuses that
        kept = []
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.bar([utils.au_name(au) for au in counts], list(counts.values()),
           color=["tab:blue" if au in kept else "silver" for au in counts])
    ax.axhline(ORIGINAL_MIN_COUNT, color="tab:red", linestyle="--", linewidth=1,
               label=f"kept: coded in more than {ORIGINAL_MIN_COUNT} sequences ({len(kept)} AUs)")
    ax.tick_params(axis="x", labelrotation=90, labelsize=8)
    ax.set_ylabel("sequences")
    ax.set_title(f"AUs coded in the peak frames of {len(records)} synthetic CK+ sequences")
    ax.legend(loc="upper right", frameon=False)
    return _save(fig, path)


def draw_landmarks(record: dataset.Sequence, path: Path) -> Path:
    """The peak frame around the face with the 68 iBUG landmarks and their 0-based numbers."""
    with Image.open(record.image_path) as img:
        frame = np.asarray(img.convert("L"))
    xy = record.landmarks
    left, top, right, bottom = preprocess.crop_box(xy, (frame.shape[1], frame.shape[0]), "square")
    fig = Figure(figsize=(6, 6), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(frame, cmap="gray", vmin=0, vmax=255)
    ax.plot(xy[:, 0], xy[:, 1], "o", markersize=2.5, color="tab:red")
    for number, (x, y) in enumerate(xy):
        ax.text(x + 1.5, y - 1.5, number, fontsize=6, color="yellow")
    ax.set(xlim=(left, right), ylim=(bottom, top), xticks=[], yticks=[])
    ax.set_title(f"synthetic {record.id}, frame {record.frame}: 68 landmarks (iBUG, 0-based)")
    return _save(fig, path)


def draw_crop(record: dataset.Sequence, path: Path, size: int = 224) -> Path:
    """The frame with both crop boxes, and the two `size` x `size` inputs the model would see."""
    with Image.open(record.image_path) as img:
        frame = img.convert("L")
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[640 / 490, 1, 1])
    axes[0].imshow(frame, cmap="gray", vmin=0, vmax=255)
    colours = {"square": "tab:green", "original": "tab:orange"}
    for mode in preprocess.CROP_MODES:
        x0, y0, x1, y1 = preprocess.crop_box(record.landmarks, frame.size, mode)
        axes[0].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linewidth=1.5,
                                    edgecolor=colours[mode], label=mode))
        ax = axes[1 + preprocess.CROP_MODES.index(mode)]
        ax.imshow(preprocess.crop_face(frame, record.landmarks, size, mode), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"--crop {mode} ({size}x{size})", color=colours[mode])
    axes[0].legend(loc="lower right", fontsize=8)
    axes[0].set_title(f"{frame.size[0]}x{frame.size[1]} frame")
    for ax in axes:
        ax.set_axis_off()
    return _save(fig, path)


def draw_f1(run_dir: Path, path: Path) -> Path:
    """The run's per-AU F1 chart, drawn by the same function main.py uses for its run folders."""
    results = json.loads((run_dir / "results.json").read_text())
    return metrics.plot_f1(results, path)


PIPELINE = [
    ("CK+ folders", "cohn-kanade-images\nFACS_labels\nLandmarks"),
    ("index by IDs", "S005_001_00000011:\nsubject, sequence,\nframe (never the\norder of a listing)"),
    ("peak frame", "the FACS-coded frame\n+ its 68 landmarks"),
    ("face crop", "from the landmarks\nsquare | original\ngray, 224 x 224"),
    ("backbone", "alexnet, res18, vgg16,\ninception, ...\nImageNet or scratch"),
    ("AU head", "10 logits -> sigmoid\nAU1 2 4 5 6 7\n12 15 17 25"),
    ("per-AU F1", "pooled out-of-fold\npredictions of\nsubject-independent\nfolds"),
]


def draw_pipeline(path: Path) -> Path:
    """The pipeline as a row of boxes joined by arrows."""
    width, gap = 1.0, 0.32
    fig = Figure(figsize=(13, 2.4))
    ax = fig.add_axes((0, 0, 1, 1))
    span = len(PIPELINE) * width + (len(PIPELINE) - 1) * gap
    ax.set(xlim=(-0.05, span + 0.05), ylim=(0, 1))
    ax.set_axis_off()
    for i, (title, detail) in enumerate(PIPELINE):
        x = i * (width + gap)
        colour = "#dbe9f6" if i < 4 else "#fde2c8" if i < 6 else "#d9f0d3"  # data / model / evaluation
        ax.add_patch(FancyBboxPatch((x, 0.1), width, 0.8, boxstyle="round,pad=0,rounding_size=0.06",
                                    facecolor=colour, edgecolor="0.35"))
        ax.text(x + width / 2, 0.76, title, ha="center", va="center", fontsize=11, weight="bold")
        ax.text(x + width / 2, 0.42, detail, ha="center", va="center", fontsize=8, linespacing=1.4)
        if i:
            ax.add_patch(FancyArrowPatch((x - gap + 0.03, 0.5), (x - 0.03, 0.5), arrowstyle="-|>",
                                         mutation_scale=14, color="0.3"))
    return _save(fig, path)


def make_images(data_root: Path, run_dir: Path, out_dir: Path = OUT_DIR) -> list[Path]:
    """Every figure, from a synthetic CK+ tree and a finished run folder, into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(data_root)
    face = showcase(records)
    return [
        draw_au_distribution(records, out_dir / "au_distribution.png"),
        draw_landmarks(face, out_dir / "landmarks.png"),
        draw_crop(face, out_dir / "crop.png"),
        draw_f1(run_dir, out_dir / "f1.png"),
        draw_pipeline(out_dir / "pipeline.png"),
    ]


def run_demo(run_dir: Path) -> Path:
    """`main.py --demo` into `run_dir` (about a minute on a CPU; its synthetic tree is cached)."""
    subprocess.run([sys.executable, str(REPO / "main.py"), "--demo", "--quiet", "--output-dir", str(run_dir)],
                   check=True)
    return run_dir


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Draw the README's figures (images/*.png) from synthetic data.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", metavar="CK_ROOT", type=Path, default=None,
                   help="a synthetic CK+ tree (python synthetic.py CK_ROOT), never a real copy; "
                        "default: the 593-sequence tree, written to a temporary folder")
    p.add_argument("--run", metavar="RUN_DIR", type=Path, default=None,
                   help="a finished run folder holding results.json; default: run main.py --demo")
    p.add_argument("--out", metavar="DIR", type=Path, default=OUT_DIR, help="where the PNGs go")
    return p


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="au-images-") as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "ckplus"
            print(f"writing the default synthetic CK+ to {data} (about a minute)", file=sys.stderr)
            synthetic.generate(data, workers=max(1, min(4, os.cpu_count() or 1)))
        run = args.run
        if run is None:
            print("running main.py --demo for the F1 chart (about a minute on a CPU)", file=sys.stderr)
            run = run_demo(Path(tmp) / "demo")
        if not (run / "results.json").is_file():
            print(f"make_images.py: error: {run / 'results.json'} does not exist: give a finished run folder",
                  file=sys.stderr)
            return 2
        try:
            paths = make_images(data, run, args.out)
        except utils.UserError as e:  # a bad --data tree: one line, as main.py reports it
            print(f"make_images.py: error: {e}", file=sys.stderr)
            return 2
        for path in paths:
            print(f"{path}  {math.ceil(path.stat().st_size / 1024)} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
