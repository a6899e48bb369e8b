"""Compare finished runs: the original AU_Recognition README's Experiments table, built from run folders.

    python compare.py runs/res18-a runs/res18-b                 # F1 per AU and its macro average, a row per run
    python compare.py runs/* --metric auc --out comparison-auc  # ROC AUC instead
    python compare.py runs/a runs/b --baseline runs/b           # differences from runs/b

Runs scored on the same sequences (the same ids in their predictions.csv) get their macro F1 and
AUC differences from the baseline (the first run, or --baseline), each with a paired bootstrap
interval: every resample draws the same subjects for both runs. A difference whose interval
excludes 0 is marked *. Runs on other sequences get a warning and no difference.

Each row is named by its model and the flags that differ between the runs, so two runs that differ
only in --lr read `res18 (--lr 0.001)` and `res18 (--lr 0.01)`. A --seeds run is one row, its
ensemble (its seeds' out-of-fold probabilities averaged per sequence), named `res18 --seeds 3
(ensemble)`, with its seed 0's settings. Runs whose protocols differ (folds,
AUs, threshold, number of sequences) are still shown, with a warning per difference: their numbers
are then not comparable. The table is printed and written to --out as compare.md (the best value
per column in bold), compare.csv (full precision) and compare.png (grouped bars).

Reads top to bottom: arguments, naming the rows (by the run settings of training/settings.py), the protocol
checks, the table and its files, and the command-line entry point at the end; scoring/finished_runs.py
reads the run folders.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scoring import intervals, metrics
from scoring.finished_runs import Run, read_run, read_runs
from training import settings
import utils
from utils import UserError

log = logging.getLogger(utils.LOGGER_NAME)

METRIC_LABELS = {"f1": "F1", "auc": "ROC AUC", "precision": "precision", "recall": "recall"}
DIFFERENCE_KEYS = ("f1", "auc")
DEFAULT_OUT = "comparison"


# ----------------------------------------------------------------------------- arguments


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare.py",
        description="Compare finished runs of main.py: one row per run, named by its model and the flags that "
                    "differ between the runs, one column per AU, then the macro average (Avg). Runs whose "
                    "protocols differ are shown too, with a warning.",
        formatter_class=utils.HelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders that main.py wrote (with results.json); a --seeds run is one row, its ensemble")
    p.add_argument("--metric", choices=metrics.METRIC_KEYS, default="f1", metavar="NAME",
                   help=f"the metric in the table: {', '.join(metrics.METRIC_KEYS)}")
    p.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                   help=f"folder to write compare.md, compare.csv and compare.png into, created if needed "
                        f"(default: {DEFAULT_OUT}, in the current directory)")
    p.add_argument("--baseline", metavar="RUN_DIR", default=None,
                   help="the run the others' macro F1 and AUC differences are taken from (default: the first run); "
                        "added to the runs when not among them")
    p.add_argument("--bootstrap", type=int, default=intervals.DEFAULT_RESAMPLES, metavar="N",
                   help="resamples of the subjects for the paired 95%% intervals of the differences; 0: no differences")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the resamples")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return p


# ----------------------------------------------------------------------------- naming the rows


def setting_keys(runs: list[Run]) -> list[str]:
    """The run settings (settings.ROW_SETTINGS) whose values differ between the runs: those every row
    names first (so the rows line up), then the others, each in the table's order."""
    keys = [k for k in settings.ROW_SETTINGS if any(k in run.args for run in runs)]
    differ = [k for k in keys if len({json.dumps(run.args.get(k), sort_keys=True) for run in runs}) > 1]
    return sorted(differ, key=lambda k: not all(flag(k, run.args.get(k)) for run in runs))


def flag(key: str, value: Any) -> str | None:
    """A setting as it is typed on main.py's command line; None for a flag that was not given."""
    return settings.BY_DEST[key].as_typed(value)


def row_names(runs: list[Run]) -> list[str]:
    """`model (--flag value, ...)` with the flags that differ between the runs; runs that still read
    alike (same settings, other data) are told apart by their folder."""
    keys = setting_keys(runs)
    names = []
    for run in runs:
        model = run.args.get("model")  # a shape model is not named by the crop, the image size or the weights
        flags = [f for f in (flag(k, run.args.get(k)) for k in keys if settings.applies(k, model)) if f]
        names.append(run.results["model"] + (f" ({', '.join(flags)})" if flags else "")
                     + (f" --seeds {run.seeds} (ensemble)" if run.seeds else ""))
    return [f"{name} [{run.label}]" if names.count(name) > 1 else name for name, run in zip(names, runs)]


# ----------------------------------------------------------------------------- protocol checks


def describe_folds(run: Run) -> str:
    kfold, split = run.get("kfold"), run.get("split")
    where = {"subject": "subject-independent folds", "sequence": "folds over sequences"}.get(split, f"{split} folds")
    return f"{kfold}-fold {where}"


def difference(runs: list[Run], describe: Callable[[Run], str], verb: tuple[str, str], why: str) -> str | None:
    """One warning line when the runs disagree on what `describe` says, else None:
    "a, c use X, b Y: why" (runs grouped by value, in the order given)."""
    groups: dict[str, list[str]] = {}
    for run in runs:
        groups.setdefault(describe(run), []).append(run.label)
    if len(groups) < 2:
        return None
    parts = []
    for i, (value, labels) in enumerate(groups.items()):
        said = "" if i else (verb[1] if len(labels) > 1 else verb[0]) + " "  # later groups share the verb
        parts.append(f"{', '.join(labels)} {said}{value}")
    return ", ".join(parts) + f": {why}"


def protocol_warnings(runs: list[Run]) -> list[str]:
    """A line for each way the runs' numbers are not comparable: folds, protocol, AUs, threshold, data."""
    folds = difference(runs, describe_folds, ("uses", "use"), "their numbers are not comparable")
    # the protocol text follows from the folds today; a text that differs on its own is another difference
    protocol = None if folds else difference(runs, lambda r: json.dumps(r.get("protocol")), ("uses the protocol",
                                             "use the protocol"), "their numbers are not comparable")
    checks = [
        folds, protocol,
        difference(runs, lambda r: "AUs " + ",".join(str(a) for a in sorted(r.aus)), ("scores", "score"),
                   "an AU a run lacks is n/a, and the Avg column averages different AUs"),
        difference(runs, lambda r: f"{r.get('threshold')}", ("uses the threshold", "use the threshold"),
                   "their F1, precision and recall are not comparable (AUC is)"),
        difference(runs, lambda r: f"{r.get('sequences') or r.get('n')} sequences", ("scores", "score"),
                   "they were not evaluated on the same data, so their numbers are not comparable"),
    ]
    return [line for line in checks if line]


# ----------------------------------------------------------------------------- the table and its files


@dataclass
class Comparison:
    """The table: a row per run (its name and values), a column per AU, then Avg (the macro average)."""

    metric: str
    names: list[str]
    folders: list[str]
    columns: list[str]  # AU names, then "Avg"
    values: list[list[float | None]]
    warnings: list[str]
    # per run: its paired macro differences from the baseline, or None (the baseline, or not paired)
    differences: list[dict[str, intervals.PairedDifference] | None] | None = None
    baseline: int = 0
    pairing: str | None = None  # how the differences' intervals were drawn


def au_columns(runs: list[Run]) -> list[int]:
    """Every AU any run scores, in AU order."""
    return sorted({a for run in runs for a in run.aus})


def compare(runs: list[Run], metric: str) -> Comparison:
    aus = au_columns(runs)
    values = []
    for run in runs:
        per_au = run.results["per_au"]
        row = [per_au[utils.au_name(a)][metric] if a in run.aus else None for a in aus]
        values.append([*row, run.results["macro"][metric]])
    return Comparison(metric=metric, names=row_names(runs), folders=[run.label for run in runs],
                      columns=[*(utils.au_name(a) for a in aus), "Avg"], values=values,
                      warnings=protocol_warnings(runs))


# ----------------------------------------------------------------------------- paired differences


def read_pooled(run: Run) -> metrics.FoldPredictions | None:
    """A run's pooled predictions, or None (with an info line) without them."""
    path = run.path / "predictions.csv"
    if not path.is_file():
        log.info("%s has no predictions.csv: no paired difference for it", run.label)
        return None
    pooled, aus = metrics.FoldPredictions.read(path)
    if list(aus) != list(run.aus):
        raise UserError(f"{path} holds AUs {aus}, but {run.path / 'results.json'} scores {run.aus}: "
                        f"delete the results and resume the run to write them again")
    return pooled


def pair_runs(runs: list[Run], baseline: int, n_resamples: int, seed: int
              ) -> tuple[list[dict[str, intervals.PairedDifference] | None] | None, str | None, list[str]]:
    """Each run's macro F1 and AUC minus the baseline's, with a paired bootstrap interval over the
    baseline's subjects (its sequences under --split sequence), for the runs scored on the baseline's
    sequences -> (differences per run or None, how they were drawn, warning lines)."""
    if n_resamples == 0 or len(runs) < 2:
        return None, None, []
    base = read_pooled(runs[baseline])
    if base is None:
        return None, None, []
    ids, subjects, targets, probs = base.ids, base.subjects, base.targets, base.probs
    by_sequence = runs[baseline].get("split") == "sequence"
    resampling = intervals.draw(ids if by_sequence else subjects, n_resamples, seed,
                                "sequence" if by_sequence else "subject")
    position = {s: i for i, s in enumerate(ids)}
    differences, warnings = [], []
    for r, run in enumerate(runs):
        pooled = None if r == baseline else read_pooled(run)
        if pooled is None:
            differences.append(None)
            continue
        if sorted(pooled.ids) != sorted(ids):
            warnings.append(f"{run.label} was scored on other sequences than {runs[baseline].label} "
                            f"({len(pooled)} against {len(ids)}, {len(set(pooled.ids) & set(ids))} shared): "
                            f"not paired, no difference")
            differences.append(None)
            continue
        order = np.array([position[s] for s in pooled.ids]).argsort()  # the other run's rows in the baseline's order
        other = (pooled.targets[order], pooled.probs[order])
        point = {k: (runs[baseline].results["macro"][k], run.results["macro"][k]) for k in DIFFERENCE_KEYS}
        differences.append(intervals.paired_differences(
            resampling, (targets, probs), other, runs[baseline].get("threshold") or 0.5,
            run.get("threshold") or 0.5, point, DIFFERENCE_KEYS))
    if all(d is None for d in differences):
        return None, None, warnings
    unit = resampling.unit
    how = (f"Δ: macro difference from {runs[baseline].label}, with a {intervals.CONFIDENCE:.0%} paired percentile "
           f"bootstrap interval over {unit}s ({resampling.resamples} resamples of {len(resampling.units)} {unit}s, "
           f"seed {resampling.seed}, the same {unit}s for both runs); * where the interval excludes 0.")
    return differences, how, warnings


def baseline_index(runs: list[Run], baseline: str | None) -> tuple[list[Run], int]:
    """The runs with --baseline among them (added first when it was not given as a run), and its row."""
    if baseline is None:
        return runs, 0
    run = read_run(baseline)
    for i, other in enumerate(runs):
        if other.path.resolve() == run.path.resolve():
            return runs, i
    return [run, *runs], 0


def caption(comparison: Comparison, runs: list[Run]) -> str:
    """The line above the table: the metric, and the threshold where the metric depends on one."""
    thresholds = sorted({f"{run.get('threshold')}" for run in runs})
    on = f"an AU is on when p > {thresholds[0]}" if len(thresholds) == 1 else "thresholds differ"
    extra = "" if comparison.metric == "auc" else f" ({on})"
    return (f"Per-AU {METRIC_LABELS[comparison.metric]} on the pooled out-of-fold predictions{extra}; "
            f"Avg is the macro average.")


def best_cells(comparison: Comparison) -> list[list[bool]]:
    """Which cells hold their column's best value, as shown (2 decimals, so shown ties are all bold);
    a column with fewer than two values has no best."""
    shown = [[None if v is None else round(v, 2) for v in row] for row in comparison.values]
    marks = [[False] * len(comparison.columns) for _ in shown]
    for c in range(len(comparison.columns)):
        column = [row[c] for row in shown if row[c] is not None]
        if len(column) > 1:
            for r, row in enumerate(shown):
                marks[r][c] = row[c] is not None and row[c] == max(column)
    return marks


def format_difference(diff: intervals.PairedDifference | None, is_baseline: bool) -> str:
    """`+0.012 [-0.008, +0.019]`, with * where the interval excludes 0."""
    if is_baseline:
        return "baseline"
    if diff is None:
        return "not paired"
    return diff.text()


def format_table(comparison: Comparison, bold: bool) -> str:
    marks = best_cells(comparison)
    paired = comparison.differences is not None
    rows = [["Run", *comparison.columns, *(f"Δ {METRIC_LABELS[k]}" for k in DIFFERENCE_KEYS if paired)]]
    for r, (name, values, row_marks) in enumerate(zip(comparison.names, comparison.values, marks)):
        cells = [metrics.format_value(v, 2) for v in values]
        if bold:
            cells = [f"**{cell}**" if mark else cell for cell, mark in zip(cells, row_marks)]
        if paired:
            diffs = comparison.differences[r]
            cells += [format_difference(None if diffs is None else diffs[k], r == comparison.baseline)
                      for k in DIFFERENCE_KEYS]
        rows.append([name.replace("|", "\\|"), *cells])
    return metrics.markdown_table(rows)


def write_csv(comparison: Comparison, path: Path) -> Path:
    """A row per run, full precision; a value that does not exist is an empty field."""
    header = ["run", "folder", "metric", *comparison.columns]
    if comparison.differences is not None:
        header += [f"diff_{k}{end}" for k in DIFFERENCE_KEYS for end in ("", "_low", "_high")]
    rows = []
    for r, (name, folder, values) in enumerate(zip(comparison.names, comparison.folders, comparison.values)):
        row = [name, folder, comparison.metric, *("" if v is None else v for v in values)]
        if comparison.differences is not None:
            diffs = comparison.differences[r] or {}
            for k in DIFFERENCE_KEYS:
                d = diffs.get(k)
                low, high = d.interval if d is not None and d.interval is not None else ("", "")
                row += ["" if d is None or d.difference is None else d.difference, low, high]
        rows.append(row)
    return utils.write_csv(path, header, rows)


def plot_comparison(comparison: Comparison, path: Path) -> Path:
    """The metric per AU and Avg as grouped bars, one bar per run; a missing value is marked n/a.
    Run names can be long, so the legend sits below the bars, one run a line."""
    n_runs, n_cols = len(comparison.names), len(comparison.columns)
    fig = metrics.new_figure(min(max(7.0, n_cols * (0.25 * n_runs + 0.45) + 1.5), 30.0), 4.0 + 0.22 * n_runs)
    fig.set_layout_engine("constrained")  # makes room for the legend outside the axes
    ax = fig.add_subplot()
    x = np.arange(n_cols)
    width = 0.8 / n_runs
    for i, (name, values) in enumerate(zip(comparison.names, comparison.values)):
        at = x - 0.4 + width * (i + 0.5)
        ax.bar(at, [0.0 if v is None else v for v in values], width, label=name)
        for position in at[[v is None for v in values]]:
            ax.text(position, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.axvline(n_cols - 1.5, color="gray", linestyle=":", linewidth=1)  # Avg is not one more AU
    fig.legend(loc="outside lower center", fontsize=8, ncol=1, frameon=False)
    ax.set_xticks(x, comparison.columns)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(METRIC_LABELS[comparison.metric])
    ax.set_title(f"per-AU {METRIC_LABELS[comparison.metric]}, pooled out-of-fold predictions")
    return metrics.save_png(fig, path)


def make_out_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out} ({e.strerror}): choose another folder") from None
    return out


def write_files(comparison: Comparison, text: str, out: Path) -> list[Path]:
    return [utils.atomic_write_bytes(out / "compare.md", text.encode("utf-8")),
            write_csv(comparison, out / "compare.csv"),
            plot_comparison(comparison, out / "compare.png")]


# ----------------------------------------------------------------------------- command line


def main(args: argparse.Namespace) -> Comparison:
    """Read the runs, warn where their protocols differ, print the table and write its files."""
    utils.setup_logging(args.quiet)
    if args.bootstrap < 0:
        raise UserError("--bootstrap must be zero (no differences) or a number of resamples")
    runs, baseline = baseline_index(read_runs(args.runs), args.baseline)
    comparison = compare(runs, args.metric)
    out = make_out_dir(Path(args.out))  # before anything is printed, so a bad --out is the only line
    differences, how, pairing_warnings = pair_runs(runs, baseline, args.bootstrap, args.seed)
    comparison.differences, comparison.baseline, comparison.pairing = differences, baseline, how
    comparison.warnings += pairing_warnings
    for line in comparison.warnings:
        log.warning(line)
    title = caption(comparison, runs) + (f"\n{how}" if how else "")
    print(f"{title}\n\n{format_table(comparison, bold=False)}")
    paths = write_files(comparison, f"{title}\n\n{format_table(comparison, bold=True)}\n", out)
    log.info("written: %s", ", ".join(str(p) for p in paths))
    return comparison


def cli(argv: list[str] | None = None) -> int:
    return utils.run_cli(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
