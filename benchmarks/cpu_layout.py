"""Which memory layout trains each backbone faster on a CPU, and where does an epoch's time go?

    python benchmarks/cpu_layout.py                                   # every backbone of models.py's table
    python benchmarks/cpu_layout.py --models mobilenet_v2,res18 --no-epoch
    python benchmarks/cpu_layout.py --json /tmp/layout.json           # also write the figures as JSON

- layout: for each backbone, images per second of engine.train_one_epoch (the recipe's settings:
  batch 16, 160 px, --augment, the mean loss) and of engine.evaluate, with the contiguous layout
  and with channels_last, on random uint8 faces and random weights (the speed does not depend on
  them). The two layouts alternate within each repeat (their order swapped every repeat), so a
  burst of load from elsewhere hits both alike; the best of --repeats passes after a warm-up pass
  is kept, the median beside it. inception trains at 299 px at least (its auxiliary head needs it).
  The ratio column is what models.CPU_CHANNELS_LAST records.
- epoch: one epoch of the recommended recipe (mobilenet_v2, 160 px, batch 16, --augment,
  --pos-weight, --frames 3, --tta flip) on a synthetic CK+, in main.py's layout for this CPU,
  split into what a user waits for: building each batch (gather, uint8 -> float, augmentation,
  normalisation), the model's forward + backward + SGD step, the checkpoint written after the
  epoch, and the fold's scoring with flip TTA.

Everything runs on the CPU with torch's default thread count, whatever else the machine runs:
say what the load was (the report prints the load average) when you quote a figure.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import ckplus  # noqa: E402
from ckplus import synthetic  # noqa: E402
import models  # noqa: E402
from training import checkpoints, engine, settings  # noqa: E402
import utils  # noqa: E402

LAYOUTS = ("contiguous", "channels_last")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpu_layout.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default=",".join(models.CPU_CHANNELS_LAST), metavar="LIST",
                   help="backbones of the layout table (none: no table)")
    p.add_argument("--image-size", type=int, default=160, metavar="PX", help="input size (the recipe's)")
    p.add_argument("-b", "--batch-size", type=int, default=16, metavar="N", help="mini-batch size (the recipe's)")
    p.add_argument("--batches", type=int, default=3, metavar="N", help="batches in one timed pass")
    p.add_argument("--repeats", type=int, default=3, metavar="N", help="timed passes of each layout (best kept)")
    p.add_argument("--no-epoch", action="store_true", help="the layout table only, no epoch breakdown")
    p.add_argument("--subjects", type=int, default=60, metavar="N", help="subjects of the synthetic CK+ of the epoch")
    p.add_argument("--seed", type=int, default=13, metavar="S", help="seed of the synthetic CK+, the images and weights")
    p.add_argument("--workdir", metavar="DIR", default=None,
                   help="keep the synthetic CK+ and its crops here and reuse them (default: a temporary folder)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the figures to this JSON file")
    return p


def log(message: str) -> None:
    print(f"[cpu_layout {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def clocked(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- layout table


def layout_speed(name: str, args: argparse.Namespace) -> dict:
    """Train and evaluation images/s of one backbone in both layouts, interleaved."""
    config = models.model_config(name)
    size = max(args.image_size, models.INCEPTION_AUX_MIN_SIZE) if config.arch == "inception_v3" else args.image_size
    n = args.batches * args.batch_size
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    labels = (torch.rand(n, 10, generator=g) < 0.3).float()
    idx = torch.arange(n)
    criterion = nn.BCEWithLogitsLoss(reduction="none")
    cpu = torch.device("cpu")
    setups = {}
    for layout in LAYOUTS:
        channels_last = layout == "channels_last"
        torch.manual_seed(args.seed)
        model = engine.place(models.build_model(name, 10, pretrained=False), cpu, channels_last)
        inputs = engine.Inputs(labels=labels, images=images, mean=config.mean, std=config.std, augment=True,
                               channels_last=channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
        setups[layout] = (model, inputs, optimizer)

    def train(layout: str) -> float:
        model, inputs, optimizer = setups[layout]
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        with engine.Clock(1, quiet=True).bar(n, "bench") as progress:
            return clocked(lambda: engine.train_one_epoch(
                model, criterion, optimizer, scaler, inputs, idx, cpu, engine.epoch_generator(args.seed, 0, 0),
                progress, batch_size=args.batch_size, loss="mean"))

    def evaluate(layout: str) -> float:
        model, inputs, _ = setups[layout]
        return clocked(lambda: engine.evaluate(model, inputs, idx, cpu, args.batch_size))

    for layout in LAYOUTS:  # warm-up: oneDNN's kernels for each layout, the allocator, momentum buffers
        train(layout), evaluate(layout)
    times = {(layout, what): [] for layout in LAYOUTS for what in ("train", "eval")}
    for r in range(args.repeats):
        for layout in (LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]):
            times[layout, "train"].append(train(layout))
            times[layout, "eval"].append(evaluate(layout))
    row = {"model": name, "image_size": size, "batch_size": args.batch_size, "images_per_pass": n}
    for (layout, what), seconds in times.items():
        row[f"{what}_{layout}_img_s"] = round(n / min(seconds), 2)
        row[f"{what}_{layout}_median_img_s"] = round(n / statistics.median(seconds), 2)
    for what in ("train", "eval"):
        row[f"{what}_ratio"] = round(row[f"{what}_channels_last_img_s"] / row[f"{what}_contiguous_img_s"], 3)
    row["main_py_layout"] = "channels_last" if models.channels_last(name, cpu) else "contiguous"
    log(f"{name:16s} train {row['train_contiguous_img_s']:7.1f} -> {row['train_channels_last_img_s']:7.1f} img/s "
        f"(x{row['train_ratio']:.2f}), eval {row['eval_contiguous_img_s']:7.1f} -> "
        f"{row['eval_channels_last_img_s']:7.1f} img/s (x{row['eval_ratio']:.2f})")
    return row


def format_layout_table(rows: list[dict]) -> str:
    lines = ["| model | px | train img/s contiguous | channels_last | ratio | eval img/s contiguous | channels_last "
             "| ratio | main.py on a CPU |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['image_size']} | {r['train_contiguous_img_s']:.1f} | "
                     f"{r['train_channels_last_img_s']:.1f} | x{r['train_ratio']:.2f} | {r['eval_contiguous_img_s']:.1f} | "
                     f"{r['eval_channels_last_img_s']:.1f} | x{r['eval_ratio']:.2f} | {r['main_py_layout']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- one epoch, broken down


# The recommended command's settings (README); --image-size and -b replace its 160 px and batch 16.
RECIPE = {"model": "mobilenet_v2", "frames": 3, "augment": True, "pos_weight": True, "tta": "flip", "loss": "mean",
          "lr": 0.01, "kfold": 10}


def tree(work: Path, subjects: int, seed: int) -> list[str]:
    """A synthetic CK+ of `subjects` subjects in `work` (generated once) -> main.py's three folders."""
    root = work / f"ckplus-{subjects}-seed{seed}"
    if not (root / "done").is_file():
        synthetic.generate(root, subjects=subjects, seed=seed, workers=max(1, min(4, os.cpu_count() or 1)))
        (root / "done").write_text("")
    return [str(d) for d in ckplus.training_dirs(root)]


def epoch_breakdown(args: argparse.Namespace, work: Path) -> dict:
    """One epoch of fold 0 of the recipe, timed by part, as train_fold runs it."""
    cpu = torch.device("cpu")
    dirs = tree(work, args.subjects, args.seed)
    run_args = argparse.Namespace(**{**settings.defaults(), **RECIPE, "data_dir": dirs[0], "label_dir": dirs[1],
                                     "landmark_dir": dirs[2], "cache_dir": str(work / "crops"), "workers": 0,
                                     "seed": args.seed, "weights": "none", "image_size": args.image_size,
                                     "batch_size": args.batch_size, "kfold": min(RECIPE["kfold"], args.subjects),
                                     "no_cache": False, "skip_bad": False, "no_feature_cache": False})
    t0 = time.perf_counter()
    data, aus = engine.load_data(run_args)
    load_s = time.perf_counter() - t0
    inputs = engine.make_inputs(data, run_args, cpu)
    folds = engine.make_folds(data.subjects, run_args.kfold, "subject")
    test_idx = torch.as_tensor(folds[0])
    train_idx = torch.as_tensor(data.rows_of([i for i in range(len(data)) if i not in set(folds[0].tolist())]))
    torch.manual_seed(args.seed)
    model = engine.place(models.build_model(RECIPE["model"], len(aus), pretrained=False), cpu, inputs.channels_last)
    optimizer = engine.make_optimizer(model, run_args)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    criterion = nn.BCEWithLogitsLoss(pos_weight=engine.positive_weights(data.labels[train_idx]), reduction="none")
    generator = engine.epoch_generator(args.seed, 0, 0)
    order = train_idx[torch.randperm(len(train_idx), generator=generator)]
    batches = [idx for idx in order.split(args.batch_size) if len(idx) > 1]

    # the batches alone (what train_one_epoch builds before each step), then the steps on them
    model.train()
    t0 = time.perf_counter()
    ready = [(inputs.batch(idx, cpu, generator, train=True), inputs.labels[idx]) for idx in batches]
    batch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for batch, y in ready:
        loss = engine.au_loss(criterion, inputs.forward(model, batch), y, RECIPE["loss"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    step_s = time.perf_counter() - t0
    # the whole epoch as train_one_epoch runs it (its own batches, a fresh generator)
    with engine.Clock(1, quiet=True).bar(len(train_idx), "bench") as progress:
        epoch_s = clocked(lambda: engine.train_one_epoch(
            model, criterion, optimizer, scaler, inputs, train_idx, cpu, engine.epoch_generator(args.seed, 0, 1),
            progress, batch_size=args.batch_size, loss=RECIPE["loss"]))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    ckpt = work / "checkpoint.pth"
    checkpoint_s = clocked(lambda: checkpoints.save_checkpoint(checkpoints.fold_checkpoint(
        model, optimizer, scheduler, scaler, epoch=0, fold=0, settings=settings.run_settings(run_args), aus=aus,
        test_ids=[data.ids[i] for i in folds[0]], history=[], weights={"weights": "none"}, finished=False), ckpt))
    ckpt.unlink()
    eval_s = clocked(lambda: engine.evaluate(model, inputs, test_idx, cpu, args.batch_size, tta=RECIPE["tta"]))
    images = sum(len(idx) for idx in batches)
    result = {"images": images, "test_sequences": len(test_idx), "kfold": run_args.kfold,
              "image_size": args.image_size, "batch_size": args.batch_size, "layout": "channels_last" if inputs.channels_last
              else "contiguous", "load_s": round(load_s, 3), "batches_s": round(batch_s, 4), "steps_s": round(step_s, 4),
              "epoch_s": round(epoch_s, 4), "loop_rest_s": round(epoch_s - batch_s - step_s, 4),
              "checkpoint_s": round(checkpoint_s, 4), "eval_tta_s": round(eval_s, 4),
              "step_img_s": round(images / step_s, 1), "epoch_img_s": round(images / epoch_s, 1)}
    log(f"epoch of {images} images ({result['layout']}): {epoch_s:.1f}s = batches {batch_s:.1f}s + steps {step_s:.1f}s "
        f"+ rest {result['loop_rest_s']:.1f}s; checkpoint {checkpoint_s:.2f}s; scoring {len(test_idx)} faces with "
        f"flip TTA {eval_s:.1f}s")
    return result


def format_epoch(e: dict) -> str:
    return "\n".join([
        f"one epoch of fold 0 of the recipe (mobilenet_v2, random weights, {e['image_size']} px, batch "
        f"{e['batch_size']}, --augment --pos-weight --frames 3, {e['kfold']} folds), {e['images']} images, {e['layout']}:",
        f"  train_one_epoch        {e['epoch_s']:8.2f} s   {e['epoch_img_s']:.1f} img/s",
        f"    building the batches {e['batches_s']:8.2f} s   gather, float, augmentation, normalisation",
        f"    forward+backward+SGD {e['steps_s']:8.2f} s   {e['step_img_s']:.1f} img/s on ready batches",
        f"    the rest             {e['loop_rest_s']:8.2f} s   the loop's own bookkeeping (and timing noise)",
        f"  checkpoint             {e['checkpoint_s']:8.2f} s   written after every epoch",
        f"  scoring, --tta flip    {e['eval_tta_s']:8.2f} s   {e['test_sequences']} test faces, once per fold",
        f"  loading the data       {e['load_s']:8.2f} s   index + crops (warm cache after the first run), once per run",
    ])


def run(args: argparse.Namespace) -> dict:
    report: dict = {"system": {"torch": torch.__version__, "python": platform.python_version(),
                               "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                               "load_average_1m_at_start": round(os.getloadavg()[0], 2)},
                    "args": vars(args).copy(), "layout": []}
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    for name in [] if args.models == "none" else args.models.split(","):
        report["layout"].append(layout_speed(name, args))
    if report["layout"]:
        print(format_layout_table(report["layout"]), flush=True)
    if not args.no_epoch:
        with contextlib.ExitStack() as stack:
            report["epoch"] = epoch_breakdown(args, utils.work_folder(stack, args.workdir, "au-layout-"))
        print(format_epoch(report["epoch"]), flush=True)
    report["system"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(f"load average {report['system']['load_average_1m_at_start']} at start, "
          f"{report['system']['load_average_1m_at_end']} at end, {report['system']['cpu_count']} CPUs", flush=True)
    if args.json:
        utils.write_json(args.json, report)
    return report


if __name__ == "__main__":
    run(get_args_parser().parse_args())
