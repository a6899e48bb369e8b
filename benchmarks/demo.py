"""How long a newcomer's first run takes: `python main.py --demo` from an empty cache.

    python benchmarks/demo.py [--repeats 3] [--json demo.json]

Each repeat runs `python main.py --demo` as a user would, in a subprocess, with a fresh
temporary --cache-dir, so the time includes Python and torch starting, generating the
synthetic CK+, cropping its faces, every fold's training and the results. It prints the
wall time (best and median of the repeats), the macro F1 and AUC of the demo's
subject-independent folds, and whether the targets hold (under 60 s, macro F1 >= 0.70).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import utils  # noqa: E402

TARGET_SECONDS = 60.0
TARGET_F1 = 0.70


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo.py", description=__doc__.split("\n\n")[0],
                                formatter_class=utils.HelpFormatter)
    p.add_argument("--repeats", type=int, default=3, metavar="N", help="demo runs, each from an empty cache")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the figures as JSON")
    p.add_argument("extra", nargs="*", metavar="FLAG",
                   help="flags passed on to main.py --demo after --, e.g. -- --epochs 1 (for a quick check)")
    return p


def one_demo(extra: list[str]) -> dict:
    """One `python main.py --demo` from an empty cache -> wall seconds and its results."""
    with tempfile.TemporaryDirectory(prefix="demo-bench-") as work:
        run_dir = Path(work) / "run"
        seconds, done = utils.run_main_py(["--demo", "--cache-dir", Path(work) / "cache", "--output-dir", run_dir,
                                           *extra], cwd=work)
        results = json.loads((run_dir / "results.json").read_text())
        generated = next((line for line in done.stderr.splitlines() if "generating a synthetic CK+" in line), None)
        return {"seconds": round(seconds, 2), "macro_f1": results["macro"]["f1"], "macro_auc": results["macro"]["auc"],
                "model": results["model"], "kfold": results["kfold"], "sequences": results["sequences"],
                "generated_tree": generated is not None}


def main(args: argparse.Namespace) -> dict:
    if args.repeats < 1:
        raise utils.UserError("--repeats must be at least 1")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    runs = []
    for i in range(args.repeats):
        runs.append(one_demo(args.extra))
        print(f"[demo {i + 1}/{args.repeats}] {runs[-1]['seconds']:.1f} s, macro F1 {runs[-1]['macro_f1']:.4f}",
              file=sys.stderr, flush=True)
    seconds = [r["seconds"] for r in runs]
    best, median = min(seconds), statistics.median(seconds)
    f1, auc = runs[0]["macro_f1"], runs[0]["macro_auc"]
    report = {
        "machine": f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
                   f"load average {load:.2f} at start",
        "command": "python main.py --demo" + (" " + " ".join(args.extra) if args.extra else ""),
        "runs": runs, "best_s": best, "median_s": median, "macro_f1": f1, "macro_auc": auc,
        "f1_repeatable": len({r["macro_f1"] for r in runs}) == 1,
    }
    print(f"{report['command']}, from an empty cache (tree generation included), {report['machine']}")
    print(f"  wall_s      {best:7.1f}   <= {TARGET_SECONDS:g}   {'ok' if best <= TARGET_SECONDS else 'MISSED'}"
          f"   best of {len(runs)} (median {median:.1f}, all {', '.join(f'{s:.1f}' for s in seconds)})")
    print(f"  macro_f1    {f1:7.4f}   >= {TARGET_F1:g}  {'ok' if f1 >= TARGET_F1 else 'MISSED'}"
          f"   {runs[0]['model']}, {runs[0]['kfold']} subject-independent folds, {runs[0]['sequences']} sequences"
          f"{'' if report['f1_repeatable'] else ' (NOT the same in every repeat)'}")
    print(f"  macro_auc   {auc:7.4f}")
    if args.json:
        utils.write_json(args.json, report)
    return report


if __name__ == "__main__":
    sys.exit(utils.run_cli(get_args_parser(), main))
