"""What a run keeps on disk, per backbone: the README's table.

    python benchmarks/disk.py                           # the original's backbones, 10 AUs, 10 folds
    python benchmarks/disk.py --models alexnet --measure  # also save real checkpoints and compare

Sizes are computed, not trained: each model is built on the meta device (shapes, no memory) and
its checkpoint's tensors are counted with `checkpoints.state_bytes`, the estimate `main.py` also uses to
say how much space a checkpoint needs. A finished fold's checkpoint holds the weights (model and
buffers) only; a fold still training also holds SGD's momentum, one buffer per trainable weight.
With --freeze-backbone the run keeps the backbone once (backbone.pth) and each fold only its head.
`--measure` builds the models for real, writes the two checkpoints with `checkpoints.save_checkpoint` into
a temporary folder and prints their file sizes beside the estimates.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import models  # noqa: E402
from training import checkpoints  # noqa: E402
import utils  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Disk use of a run per backbone (computed from the models' tensors).",
                                formatter_class=utils.HelpFormatter)
    p.add_argument("--models", metavar="LIST", default=",".join(models.ALIASES),
                   help="comma-separated --model names (default: the original's backbones)")
    p.add_argument("--aus", type=int, default=10, metavar="N", help="AUs in the head")
    p.add_argument("--kfold", type=int, default=10, metavar="K", help="folds in a run")
    p.add_argument("--measure", action="store_true",
                   help="also build each model for real and write its checkpoints, to check the estimate")
    return p


def sizes(name: str, num_aus: int) -> dict:
    """Bytes of a finished fold checkpoint, of one still training, and of a frozen run's parts."""
    with torch.device("meta"):
        model = models.build_model(name, num_aus, pretrained=False)
    state = model.state_dict()
    weights = checkpoints.state_bytes(state)
    momentum = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    head = checkpoints.state_bytes({k: v for k, v in state.items() if not k.startswith("backbone.")})  # checkpoints.model_state
    return {"parameters": sum(p.numel() for p in model.parameters()), "finished": weights,
            "training": weights + momentum, "backbone": weights - head, "head": head}


def measure(name: str, num_aus: int, folder: Path) -> dict:
    """Real file sizes of a finished and an unfinished checkpoint (momentum filled by one SGD step)."""
    torch.manual_seed(0)
    model = models.build_model(name, num_aus, pretrained=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates every momentum buffer, as any trained epoch does
    out = {}
    for key, finished in (("finished", True), ("training", False)):
        optim_state = optimizer.state_dict()
        state = {"model": model.state_dict(),
                 "optimizer": checkpoints.slim_optimizer_state(optim_state) if finished else optim_state}
        out[key] = checkpoints.save_checkpoint(state, folder / f"{name}-{key}.pth").stat().st_size
    return out


def main(args: argparse.Namespace) -> None:
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    k = args.kfold
    header = ["model", "parameters", "finished fold", "fold in training", f"{k}-fold run",
              f"{k}-fold run, --freeze-backbone"]
    rows = []
    measured = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            s = sizes(name, args.aus)
            rows.append([name, f"{s['parameters'] / 1e6:.1f} M", utils.format_bytes(s["finished"]),
                         utils.format_bytes(s["training"]), utils.format_bytes(k * s["finished"]),
                         utils.format_bytes(s["backbone"] + k * s["head"])])
            if args.measure:
                real = measure(name, args.aus, Path(tmp))
                measured.append(f"{name}: finished {real['finished']} bytes (estimate {s['finished']}), "
                                f"training {real['training']} bytes (estimate {s['training']})")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
    for line in measured:
        print(line)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
