"""How long the 95% intervals take: the bootstrap over subjects of a run's pooled predictions.

    python benchmarks/bootstrap.py                       # CK+'s size: 593 sequences x 10 AUs, 123 subjects
    python benchmarks/bootstrap.py --resamples 10000

Synthetic pooled predictions of CK+'s size (the 593 sequences spread over 123 subjects, the 10
AUs of the project, probabilities that follow the labels loosely) are scored as a run scores
them: the point metrics, then --resamples resamples of the subjects for every per-AU and macro
interval. It prints the seconds (best and median of --repeats) beside the target: a few
seconds at most on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from scoring import intervals, metrics  # noqa: E402
import utils  # noqa: E402

AUS = [1, 2, 4, 5, 6, 7, 12, 15, 17, 25]
# CK+'s 593 peak frames: how many code each of the 10 AUs (CKPLUS.md)
POSITIVES = [177, 117, 194, 102, 123, 121, 131, 94, 202, 324]
TARGET_SECONDS = 3.0


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bootstrap.py", description=__doc__.split("\n\n")[0],
                                formatter_class=utils.HelpFormatter)
    p.add_argument("--sequences", type=int, default=593, metavar="N", help="pooled predictions")
    p.add_argument("--subjects", type=int, default=123, metavar="N", help="subjects they come from")
    p.add_argument("--resamples", type=int, default=intervals.DEFAULT_RESAMPLES, metavar="N",
                   help="bootstrap resamples (main.py's --bootstrap)")
    p.add_argument("--repeats", type=int, default=3, metavar="N", help="timed repeats")
    return p


def synthetic_predictions(n: int, subjects: int, seed: int = 0):
    """(subjects per sequence, targets (n, 10), probs (n, 10)) shaped like a CK+ run's pooled file."""
    rng = np.random.default_rng(seed)
    # every subject has a sequence, the rest go to random subjects (CK+: 1 to 12 sequences each)
    owners = np.sort(np.concatenate([np.arange(subjects), rng.integers(0, subjects, n - subjects)]))
    who = [f"S{int(s):03d}" for s in owners]
    share = np.array(POSITIVES) / 593
    targets = (rng.random((n, len(AUS))) < share).astype(int)
    probs = np.clip(0.6 * targets + 0.2 + rng.normal(0, 0.2, targets.shape), 0, 1)
    return who, targets, probs


def time_once(who, targets, probs, resamples: int) -> float:
    """Seconds for the intervals alone: the resamples drawn, every per-AU and macro interval."""
    scores = metrics.compute_metrics(targets, probs, AUS)  # the point metrics a run computes anyway
    start = time.perf_counter()
    intervals.add_intervals(scores, intervals.draw(who, resamples, 0), targets, probs, AUS, 0.5)
    return time.perf_counter() - start


def main(args: argparse.Namespace) -> dict:
    if not 1 <= args.subjects <= args.sequences or args.resamples < 1 or args.repeats < 1:
        raise SystemExit("bootstrap.py: give 1 <= --subjects <= --sequences, and positive --resamples and --repeats")
    who, targets, probs = synthetic_predictions(args.sequences, args.subjects)
    times = [time_once(who, targets, probs, args.resamples) for _ in range(args.repeats)]
    best, median = min(times), statistics.median(times)
    verdict = "meets" if best <= TARGET_SECONDS else "MISSES"
    print(f"bootstrap of {args.sequences} sequences x {len(AUS)} AUs, {len(set(who))} subjects, "
          f"{args.resamples} resamples: best {best:.2f} s of {args.repeats}, median {median:.2f} s "
          f"({verdict} the target of {TARGET_SECONDS:g} s)")
    return {"best_s": best, "median_s": median}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
