"""Where a finished run's models look: per-AU saliency maps on each fold's own test faces, in the
face's own frame, and the lift of each AU's FACS region (explaining/saliency_report.py does the work).

    python explain.py runs/demo                       # every AU, every fold -> runs/demo/explain/
    python explain.py runs/mnv2 --aus 6,12 --fold 3 --out au12-fold3
"""
from __future__ import annotations

import argparse
import sys

from explaining import saliency_report
import utils


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="explain.py",
        description="Per-AU saliency maps of a finished run on each fold's own test faces, warped onto the mean "
                    "landmark shape, with each AU's FACS-region lift and its 95%% interval over subjects.",
        formatter_class=utils.HelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder main.py trained (its fold checkpoints)")
    p.add_argument("--aus", metavar="LIST", default=None,
                   help="the AUs to explain, e.g. 1,2,12 (default: every AU the run recognises)")
    p.add_argument("--fold", type=int, metavar="K", default=None,
                   help="only fold K's model, on fold K's test faces (default: every fold)")
    p.add_argument("--out", metavar="DIR", default=None, help="where to write (default: RUN_DIR/explain)")
    p.add_argument("-b", "--batch-size", type=int, metavar="N", default=32, help="faces per forward pass")
    p.add_argument("--device", default="auto", metavar="DEV", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors; no progress bar")
    return p


def main(args: argparse.Namespace) -> dict:
    utils.setup_logging(args.quiet)
    if args.batch_size < 1:
        raise utils.UserError("--batch-size must be at least 1")
    return saliency_report.explain(args)


def cli(argv: list[str] | None = None) -> int:
    return utils.run_cli(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
