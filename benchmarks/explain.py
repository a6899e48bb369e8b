"""How long `python explain.py RUN_DIR` takes on the demo's run (target: under a minute on a 2-core CPU).

    python benchmarks/explain.py [RUN_DIR] [--repeats 3] [--json explain.json]

RUN_DIR defaults to runs/demo; when it holds no finished run, `python main.py --demo --output-dir
RUN_DIR` trains it first (not timed). Each repeat runs `python explain.py RUN_DIR --quiet --out
TMP` as a user would, in a subprocess, so the time includes Python and torch starting, reading the
crops from the cache, every fold's maps, the lifts with their intervals and the pictures. It prints
the wall time (best and median), the method and the lifts, and whether the target holds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import utils  # noqa: E402

TARGET_SECONDS = 60.0


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="explain.py", description=__doc__.split("\n\n")[0],
                                formatter_class=utils.HelpFormatter)
    p.add_argument("run_dir", nargs="?", default="runs/demo", metavar="RUN_DIR", help="the demo's run folder")
    p.add_argument("--repeats", type=int, default=3, metavar="N", help="timed runs of explain.py")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the figures as JSON")
    return p


def main(args: argparse.Namespace) -> dict:
    run_dir = Path(args.run_dir)
    if not (run_dir / "results.json").is_file():
        print(f"training the demo into {run_dir} first (not timed)", flush=True)
        subprocess.run([sys.executable, str(REPO / "main.py"), "--demo", "--quiet", "--output-dir", str(run_dir)],
                       check=True)
    seconds, record = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            out = Path(tmp) / f"explain{i}"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, str(REPO / "explain.py"), str(run_dir), "--quiet", "--out", str(out)],
                           check=True, stdout=subprocess.DEVNULL)
            seconds.append(time.perf_counter() - t0)
            record = json.loads((out / "regions.json").read_text())
            print(f"run {i + 1}: {seconds[-1]:.1f} s", flush=True)
    summary = {"run": str(run_dir), "seconds": seconds, "best": min(seconds), "median": statistics.median(seconds),
               "target_seconds": TARGET_SECONDS, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
               "method": record["method"]["text"], "faces": record["faces"],
               "lift": {k: v.get("lift") for k, v in record["per_au"].items()}}
    verdict = "holds" if summary["median"] < TARGET_SECONDS else "MISSED"
    print(f"explain.py on {run_dir}: best {summary['best']:.1f} s, median {summary['median']:.1f} s over "
          f"{len(seconds)} runs ({summary['cpus']} CPUs); target under {TARGET_SECONDS:.0f} s: {verdict}")
    print(f"{record['faces']} faces; {record['method']['text']}; lifts: "
          + ", ".join(f"{k} {v:.2f}" for k, v in summary["lift"].items() if v is not None))
    if args.json:
        utils.write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    sys.exit(utils.run_cli(get_args_parser(), main))
