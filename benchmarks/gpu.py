"""What do --amp and channels_last buy on a CUDA GPU, and do they change the results?

    python benchmarks/gpu.py                                  # every backbone, then two end-to-end runs
    python benchmarks/gpu.py --models res18,res50 --no-runs   # the speed table only
    python benchmarks/gpu.py --json cuda.json                 # also write the figures as JSON

- speed: for each backbone, images per second of engine.train_one_epoch (SGD, the run's loss)
  and of engine.evaluate, in float32 and with autocast float16 + GradScaler (--amp), each with
  the default contiguous layout and with channels_last (what main.py uses on CUDA), on random
  uint8 images at the model's own input size, the whole set on the GPU as main.py holds it.
  Best of --repeats passes, after a warm-up pass; peak GPU memory of each.
- runs: `python main.py` end to end on a synthetic CK+ (random weights, subject folds), once in
  float32 and once with --amp, then the --amp run's checkpoints scored again on the CPU with
  `-e --device cpu`: the macro F1/AUC of each, and the wall time.

Needs a CUDA GPU (it says so and stops on a machine without one).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
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
from training import engine  # noqa: E402
import utils  # noqa: E402

MODELS = ("alexnet", "vgg16", "vgg16_bn", "vgg19", "res18", "res50", "res101", "inception")
# (name, --amp, channels_last, cudnn.benchmark): main.py uses channels_last on CUDA and leaves
# cuDNN's autotuner off (the last row says what turning it on would buy).
MODES = (("float32", False, False, False), ("float32 + channels_last", False, True, False),
         ("amp", True, False, False), ("amp + channels_last", True, True, False),
         ("amp + channels_last + cudnn.benchmark", True, True, True))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), metavar="LIST",
                   help="backbones of the speed table (none: no speed table)")
    p.add_argument("-b", "--batch-size", type=int, default=64, metavar="N", help="mini-batch size")
    p.add_argument("--batches", type=int, default=12, metavar="N", help="batches in one timed pass")
    p.add_argument("--repeats", type=int, default=3, metavar="N", help="timed passes of each mode (best kept)")
    p.add_argument("--no-runs", action="store_true", help="the speed table only, no end-to-end runs")
    p.add_argument("--run-model", default="res18", metavar="NAME", help="backbone of the end-to-end runs")
    p.add_argument("--run-args", default="--kfold 5 --epochs 18 --step 6 --gamma 0.5 -b 16 --lr 0.02 --image-size 64 "
                   "--loss sum", metavar="ARGS", help="main.py settings of the end-to-end runs (the demo's of before it had 2 folds)")
    p.add_argument("--subjects", type=int, default=60, metavar="N", help="subjects in the synthetic CK+ of the runs")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the synthetic CK+, the images and the runs")
    p.add_argument("--workdir", metavar="DIR", default=None, help="keep the synthetic CK+ and the runs here")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the figures to this JSON file")
    return p


def log(message: str) -> None:
    print(f"[gpu {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(device: torch.device, fn) -> float:
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def speed(name: str, args, device: torch.device) -> list[dict]:
    """Train and evaluation images/s of one backbone in each of the four modes."""
    config = models.model_config(name)
    n = args.batches * args.batch_size
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (n, 3, config.input_size, config.input_size), dtype=torch.uint8, generator=g)
    labels = (torch.rand(n, 10, generator=g) < 0.3).float()
    rows = []
    for mode, amp, channels_last, autotune in MODES:
        torch.backends.cudnn.benchmark = autotune
        inputs = engine.Inputs(labels=labels, images=images.to(device), mean=config.mean, std=config.std,
                               channels_last=channels_last)
        torch.manual_seed(args.seed)
        model = models.build_model(name, 10, pretrained=False).to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        criterion = nn.BCEWithLogitsLoss(reduction="none")
        idx = torch.arange(n)

        def train():
            with engine.Clock(1, quiet=True).bar(n, "bench") as progress:
                engine.train_one_epoch(model, criterion, optimizer, scaler, inputs, idx, device,
                                       engine.epoch_generator(args.seed, 0, 0), progress,
                                       batch_size=args.batch_size, loss="mean", amp=amp)

        def evaluate():
            engine.evaluate(model, inputs, idx, device, args.batch_size, amp)

        torch.cuda.reset_peak_memory_stats(device)
        train(), evaluate()  # warm-up: cuDNN's algorithm choice, the allocator, momentum buffers
        train_s = min(timed(device, train) for _ in range(args.repeats))
        eval_s = min(timed(device, evaluate) for _ in range(args.repeats))
        rows.append({"model": name, "mode": mode, "image_size": config.input_size, "batch_size": args.batch_size,
                     "train_img_s": round(n / train_s, 1), "eval_img_s": round(n / eval_s, 1),
                     "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)})
        log(f"{name:9s} {mode:24s} train {n / train_s:8.1f} img/s  eval {n / eval_s:8.1f} img/s  "
            f"peak {rows[-1]['peak_gib']:.2f} GiB")
        model = optimizer = inputs = None  # freed before the next mode
        torch.cuda.empty_cache()
    torch.backends.cudnn.benchmark = False
    return rows


def end_to_end(args, work: Path) -> dict:
    """float32 and --amp runs of main.py on CUDA, and the --amp run scored again on the CPU."""
    tree = work / f"ckplus-{args.subjects}-seed{args.seed}"
    if not (tree / "done.json").is_file():
        t0 = time.perf_counter()
        synthetic.generate(tree, subjects=args.subjects, seed=args.seed, workers=min(8, os.cpu_count() or 1))
        (tree / "done.json").write_text("{}")
        log(f"synthetic CK+ of {args.subjects} subjects written in {time.perf_counter() - t0:.0f}s")
    dirs = [str(d) for d in ckplus.training_dirs(tree)]
    common = [*dirs, "--model", args.run_model, "--no-pretrained", "--seed", str(args.seed), "--quiet",
              "--cache-dir", str(work / "crops"), *args.run_args.split()]
    result = {"model": args.run_model, "settings": args.run_args, "subjects": args.subjects}
    for name, extra in (("float32", []), ("amp", ["--amp"])):
        out = work / f"run-{name}"
        seconds, _ = utils.run_main_py([*common, "--device", "cuda", *extra, "--output-dir", str(out)])
        macro = json.loads((out / "results.json").read_text())["macro"]
        result[name] = {"seconds": round(seconds, 1), "f1": round(macro["f1"], 4), "auc": round(macro["auc"], 4)}
        log(f"main.py on cuda, {name}: macro F1 {macro['f1']:.4f}, AUC {macro['auc']:.4f}, {seconds:.0f}s")
    scored = work / "run-amp-on-cpu"
    seconds, _ = utils.run_main_py(["-e", "--resume", str(work / "run-amp"), "--device", "cpu", "--quiet",
                       "--output-dir", str(scored)])
    macro = json.loads((scored / "results.json").read_text())["macro"]
    result["amp_scored_on_cpu"] = {"seconds": round(seconds, 1), "f1": round(macro["f1"], 4),
                                   "auc": round(macro["auc"], 4)}
    log(f"the amp run's checkpoints scored by -e --device cpu: macro F1 {macro['f1']:.4f}, AUC {macro['auc']:.4f}")
    return result


def format_table(rows: list[dict]) -> str:
    lines = ["| model | px | mode | train img/s | eval img/s | peak GiB |", "| --- | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['image_size']} | {r['mode']} | {r['train_img_s']:.0f} | "
                     f"{r['eval_img_s']:.0f} | {r['peak_gib']:.2f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("error: benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False here)")
    device = torch.device("cuda")
    report = {"system": {"torch": torch.__version__, "python": platform.python_version(),
                         "gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                         "cudnn": torch.backends.cudnn.version()}, "args": vars(args).copy(), "speed": []}
    log(f"{report['system']['gpu']}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    for name in [] if args.models == "none" else args.models.split(","):
        report["speed"].extend(speed(name, args, device))
    if report["speed"]:
        print(format_table(report["speed"]), flush=True)
    if not args.no_runs:
        with contextlib.ExitStack() as stack:
            report["runs"] = end_to_end(args, utils.work_folder(stack, args.workdir, "au-cuda-"))
        print(json.dumps(report["runs"], indent=1), flush=True)
    if args.json:
        utils.write_json(args.json, report)
    return report


if __name__ == "__main__":
    run(get_args_parser().parse_args())
