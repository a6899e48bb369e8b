"""--seeds N: the whole k-fold run N times, with seeds S, S+1, ..., and the spread of its figures.

    RUN/seeds.json        how many seeds, the first one, the command line
    RUN/seed{i}/          a complete run folder with --seed S+i (-e, --resume, compare.py and
                          predict.py work on each as on any run)
    RUN/results.json      per AU and macro, each metric's mean, std, min and max across the seeds,
    RUN/results.csv       beside every seed's pooled value and its 95% interval; then the ensemble
    RUN/results.md        (its figures, 95% intervals and paired difference from seed 0); the printed tables
    RUN/predictions.csv   the ensemble's pooled predictions (with f1.png and confusion.png, as a run's)

What a paper's "mean ± std over N seeds" means: the spread of the whole protocol (weights, batch
order, augmentation), where a seed's interval is the spread of its subjects.

The ensemble is what a user would deploy: the N seeds' models averaged. Scored here on each
sequence's mean probability over the seeds' out-of-fold predictions: every seed splits the same
folds (they depend on the subjects, --kfold and --split only, never on --seed), so each of those probabilities
comes from a model that never saw the sequence's subject, and so does their mean. It is scored once,
pooled, with seed 0's bootstrap (the same resampled subjects), and its difference from seed 0 gets a
paired interval as compare.py's do.
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np

from scoring import intervals, metrics
from scoring.seeds_folder import SEEDS_FILE, is_seeds_run, read_seeds_file, seed_dirs, write_seeds_file
from training import runs, settings
import utils
from utils import UserError

log = logging.getLogger(utils.LOGGER_NAME)

METRIC_KEYS = metrics.METRIC_KEYS
DIFFERENCE_KEYS = ("f1", "auc")  # the ensemble's macro figures whose difference from seed 0 is reported


def check_matches(info: dict, args: argparse.Namespace, typed: set[str], root: Path) -> None:
    """--seeds and --seed typed on a --seeds run must be the run's."""
    for key in ("seeds", "seed"):
        if key in typed and getattr(args, key) != info[key]:
            raise UserError(f"--{key} {getattr(args, key)}: {root} was run with --{key} {info[key]} "
                            f"({root / SEEDS_FILE}); drop --{key}, or start a new run with another --output-dir")


def seed_args(args: argparse.Namespace, i: int, first_seed: int, typed: set[str]) -> argparse.Namespace:
    """One seed's arguments: a plain run (--seeds 1) with --seed S+i."""
    sub = argparse.Namespace(**vars(args))
    sub.seeds, sub.seed = 1, first_seed + i
    sub.typed = set(typed) - {"seed", "seeds", "output_dir", "resume"}
    return sub


def run_seeds(args: argparse.Namespace, typed: set[str], train: Callable[[argparse.Namespace], dict | None],
              evaluate: Callable[[argparse.Namespace], dict]) -> dict | None:
    """Train (or with -e, evaluate) every seed of a --seeds run through `train`/`evaluate` (main.py's
    modes), then write the summary once every seed has its results. A run of one seed, not made
    by --seeds, goes straight to `train`/`evaluate`."""
    resumed = Path(args.resume) if args.resume else None
    if resumed is not None and not is_seeds_run(resumed):
        if "seeds" in typed and args.seeds != 1:
            raise UserError(f"--seeds {args.seeds}: --resume {resumed} is a run of one seed; drop --seeds")
        return evaluate(args) if args.evaluate else train(args)
    if args.evaluate:
        if resumed is None:
            return evaluate(args)  # its own message: -e needs --resume
        return evaluate_seeds(args, resumed, typed, evaluate)
    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    if resumed is None and args.seeds == 1:
        return train(args)
    root = resumed or start_seeds_run(args)
    info = read_seeds_file(root)
    check_matches(info, args, typed, root)
    if resumed is not None and args.output_dir and Path(args.output_dir).resolve() != root.resolve():
        raise UserError(f"--output-dir {args.output_dir}: --resume continues {root} in place; drop --output-dir")
    args.run_dir = root
    results = []
    for i, seed_dir in enumerate(seed_dirs(root, info["seeds"])):
        sub = seed_args(args, i, info["seed"], typed)
        if resumed is not None and (seed_dir / "args.json").is_file():
            sub.resume, sub.output_dir = str(seed_dir), None
        else:
            sub.resume, sub.output_dir = None, str(seed_dir)
            if resumed is not None:  # a seed not begun yet: it takes the settings of one that has
                sibling = next((d for d in seed_dirs(root, info["seeds"]) if (d / "args.json").is_file()), None)
                if sibling is None:
                    raise UserError(f"--resume {root}: no seed of it has begun (no {root}/seed0/args.json), so "
                                    f"its settings are unknown: start it again with --output-dir {root}")
                settings.adopt(sub, settings.read_run_settings(sibling / "args.json"))
                sub.seed = info["seed"] + i
        log.info("seed %d of %d (--seed %d): %s", i + 1, info["seeds"], sub.seed, seed_dir)
        results.append(train(sub))
    return finish(root, root, results, info)


def start_seeds_run(args: argparse.Namespace) -> Path:
    """The folder of a new --seeds run, with its seeds.json (a --fold job may join one that matches)."""
    root = runs.new_run_dir(argparse.Namespace(output_dir=args.output_dir, model=args.model))
    if root.exists() and not root.is_dir():
        raise UserError(f"--output-dir {root} is a file: choose a folder name")
    if root.is_dir() and any(root.iterdir()):
        if args.fold is not None and is_seeds_run(root):
            info = read_seeds_file(root)
            if (info["seeds"], info["seed"]) == (args.seeds, args.seed):
                return root
            raise UserError(f"{root} holds a --seeds run with other seeds: choose another --output-dir")
        raise UserError(f"{root} already holds files (an earlier run?): continue it with --resume {root}, "
                        f"or choose another --output-dir")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run folder {root} ({e.strerror}): choose another --output-dir") from None
    write_seeds_file(root, args.seeds, args.seed, runs.command_line())
    return root


def evaluate_seeds(args: argparse.Namespace, root: Path, typed: set[str],
                   evaluate: Callable[[argparse.Namespace], dict]) -> dict | None:
    """-e --resume RUN of a --seeds run: every seed's checkpoints, each into OUT/seed{i}, then the summary."""
    info = read_seeds_file(root)
    check_matches(info, args, typed, root)
    out_root = Path(args.output_dir) if args.output_dir else root / "evaluate"
    results = []
    for i, seed_dir in enumerate(seed_dirs(root, info["seeds"])):
        if not (seed_dir / "args.json").is_file():
            raise UserError(f"{seed_dir} has not begun: train it first with --resume {root}")
        sub = seed_args(args, i, info["seed"], typed)
        sub.resume, sub.output_dir = str(seed_dir), str(out_root / seed_dir.name)
        results.append(evaluate(sub))
    return finish(root, out_root, results, info)


def finish(root: Path, out_dir: Path, results: list[dict | None], info: dict) -> dict | None:
    done = [r for r in results if r is not None]
    if len(done) < len(results):
        log.info("%d of %d seeds of %s have their results; the summary is written when the last one does",
                 len(done), len(results), root)
        return None
    seeds = [info["seed"] + i for i in range(len(results))]
    summary = summarise(results, seeds)
    names = summary["runs"]
    parts = [runs.read_fold_predictions(out_dir / name, results[0]["aus"]) for name in names]
    summary["ensemble"], pooled = score_ensemble(results, parts, names, seeds, out_dir)
    write_summary(out_dir, summary)
    write_ensemble_files(out_dir, summary["ensemble"], pooled)
    print("\n" + format_summary(summary))
    print(f"\nseeds summary written to {out_dir}")
    return summary


# ----------------------------------------------------------------------------- the summary


def spread(values: list[float | None], intervals: list[list[float] | None]) -> dict:
    """Mean, std (n - 1), min and max across seeds of one figure, beside each seed's value and interval."""
    present = [v for v in values if v is not None]
    n = len(present)
    mean = sum(present) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in present) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "min": min(present) if n else None, "max": max(present) if n else None,
            "n": n, "values": values, "intervals": intervals}


def summarise(results: list[dict], seeds: list[int]) -> dict:
    """Each per-AU and macro metric across the seeds' results (all of the same AUs and protocol)."""
    first = results[0]
    names = list(first["per_au"])

    def figures(pick: Callable[[dict], dict]) -> dict:
        return {k: spread([pick(r)[k] for r in results], [pick(r).get("ci", {}).get(k) for r in results])
                for k in METRIC_KEYS}

    return {
        "model": first["model"], "aus": first["aus"], "seeds": seeds, "runs": [f"seed{i}" for i in range(len(seeds))],
        "split": first.get("split"), "kfold": first.get("kfold"), "protocol": first.get("protocol"),
        "bootstrap": first.get("bootstrap"), "threshold": first.get("threshold"),
        "spread": "mean, std (n - 1), min and max across the seeds of each seed's pooled value",
        "per_au": {name: figures(lambda r, name=name: r["per_au"][name]) for name in names},
        "macro": figures(lambda r: r["macro"]),
    }


def spread_cell(figure: dict) -> str:
    if figure["mean"] is None:
        return "n/a"
    std = "" if figure["std"] is None else f" ± {figure['std']:.3f}"
    return f"{figure['mean']:.3f}{std} [{figure['min']:.3f}, {figure['max']:.3f}]"


def seed_cell(figure: dict, i: int) -> str:
    value, ci = figure["values"][i], figure["intervals"][i]
    if value is None:
        return "n/a"
    return f"{value:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def format_summary(summary: dict) -> str:
    """The spread table (mean ± std [min, max] of each metric), then each seed's F1 and AUC with
    its 95% interval."""
    rows = [*summary["per_au"].items(), ("macro", summary["macro"])]
    n = len(summary["seeds"])
    spread_rows = [["AU", *(f"{k} mean ± std [min, max]" for k in METRIC_KEYS)]]
    spread_rows += [[name, *(spread_cell(fig[k]) for k in METRIC_KEYS)] for name, fig in rows]
    seed_rows = [["AU", *(f"seed {s} {k}" for k in ("f1", "auc") for s in summary["seeds"])]]
    seed_rows += [[name, *(seed_cell(fig[k], i) for k in ("f1", "auc") for i in range(n))] for name, fig in rows]
    boot = summary.get("bootstrap")
    note = f"; each seed's {boot['text']}" if boot else ""
    text = (f"{summary['model']} over {n} seeds ({', '.join(map(str, summary['seeds']))}): {summary['spread']}{note}"
            f"\n\n{metrics.markdown_table(spread_rows)}\n\n{metrics.markdown_table(seed_rows)}")
    ensemble = summary.get("ensemble")
    if ensemble:
        text += (f"\n\nThe ensemble: {ensemble['members']}, scored once\n\n"
                 f"{metrics.format_table(ensemble, ensemble_name(summary))}\n\n{format_difference(ensemble)}")
    return text


def write_summary(out_dir: Path, summary: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(summary["seeds"])
    ensemble = summary.get("ensemble")
    header = ["AU", "metric", "mean", "std", "min", "max",
              *(f"seed{i}{end}" for i in range(n) for end in ("", "_low", "_high"))]
    if ensemble:
        header += ["ensemble", "ensemble_low", "ensemble_high", "ensemble_minus_seed0", "ensemble_minus_seed0_low",
                   "ensemble_minus_seed0_high"]

    def blank(v):
        return "" if v is None else v

    rows = []
    for name, figs in [*summary["per_au"].items(), ("macro", summary["macro"])]:
        for k in METRIC_KEYS:
            f = figs[k]
            per_seed = [blank(x) for i in range(n)
                        for x in (f["values"][i], *(f["intervals"][i] or (None, None)))]
            row = [name, k, *(blank(f[s]) for s in ("mean", "std", "min", "max")), *per_seed]
            if ensemble:
                scores = ensemble["macro"] if name == "macro" else ensemble["per_au"][name]
                ci = (scores.get("ci") or {}).get(k) or (None, None)
                diff = ensemble["difference"].get(k) if name == "macro" else None
                diff_ci = (diff or {}).get("interval") or (None, None)
                row += [blank(x) for x in (scores[k], *ci, (diff or {}).get("difference"), *diff_ci)]
            rows.append(row)
    utils.write_json(out_dir / "results.json", summary)
    utils.write_csv(out_dir / "results.csv", header, rows)
    utils.atomic_write_bytes(out_dir / "results.md", (format_summary(summary) + "\n").encode("utf-8"))


# ----------------------------------------------------------------------------- the ensemble


def mean_predictions(parts: list[metrics.FoldPredictions], names: list[str], out_dir: Path) -> metrics.FoldPredictions:
    """Each sequence's mean probability over the seeds' pooled predictions, rows in seed 0's order.
    The seeds must have scored the same sequences with the same labels; a sequence's fold is kept
    where every seed tested it in the same fold (always, today), else left empty."""
    first = parts[0]
    position = {s: i for i, s in enumerate(first.ids)}
    total = np.zeros(first.probs.shape, dtype=np.float64)
    same_fold = np.ones(len(first), dtype=bool)
    for part, name in zip(parts, names):
        where = out_dir / name / "predictions.csv"
        if len(part) != len(first) or set(part.ids) != set(position):
            raise UserError(f"{where} holds {len(part)} sequences and {out_dir / names[0] / 'predictions.csv'} "
                            f"{len(first)}, {len(set(part.ids) & set(position))} shared: the seeds were not scored "
                            f"on the same data, so their predictions cannot be averaged; evaluate every seed on one "
                            f"copy (python main.py -e --resume RUN)")
        order = np.array([position[s] for s in part.ids]).argsort()  # this seed's rows in seed 0's order
        if [part.subjects[i] for i in order] != first.subjects or not np.array_equal(part.targets[order], first.targets):
            raise UserError(f"{where} gives other subjects or labels than {out_dir / names[0] / 'predictions.csv'} "
                            f"for the same sequences: the seeds read different copies of the data; evaluate every "
                            f"seed on one copy (python main.py -e --resume RUN)")
        same_fold &= np.array([part.folds[i] == k for i, k in zip(order, first.folds)])
        total += part.probs[order]
    folds = [k if same else None for k, same in zip(first.folds, same_fold)]
    return metrics.FoldPredictions(ids=list(first.ids), subjects=list(first.subjects), folds=folds,
                                   targets=first.targets, probs=total / len(parts))


def seed0_resampling(first: dict, pooled: metrics.FoldPredictions) -> intervals.Resampling | None:
    """Seed 0's bootstrap drawn again (the same units, resamples and seed, so the same subjects in
    every resample), or None when it ran with --bootstrap 0."""
    boot = first.get("bootstrap")
    if not boot:
        return None
    units = pooled.ids if boot["unit"] == "sequence" else pooled.subjects
    return intervals.draw(units, boot["resamples"], boot["seed"], boot["unit"])


def score_ensemble(results: list[dict], parts: list[metrics.FoldPredictions], names: list[str], seeds: list[int],
                   out_dir: Path) -> tuple[dict, metrics.FoldPredictions]:
    """The ensemble's results (a run's results.json, plus its paired difference from seed 0) and
    its pooled predictions."""
    first = results[0]
    pooled = mean_predictions(parts, names, out_dir)
    aus, threshold = first["aus"], first["threshold"]
    scores = metrics.compute_metrics(pooled.targets, pooled.probs, aus, threshold)
    resampling = seed0_resampling(first, pooled)
    if resampling is not None:
        intervals.add_intervals(scores, resampling, pooled.targets, pooled.probs, aus, threshold)
    described = {k: v for k, v in first.items() if k not in ("per_au", "macro", "bootstrap", "n")}
    ensemble = {**described, "seeds": seeds, "runs": names,
                "members": f"each sequence's mean probability over the {len(seeds)} seeds' out-of-fold predictions",
                "bootstrap": None if resampling is None else resampling.record(), **scores}
    point = {k: (first["macro"][k], ensemble["macro"][k]) for k in DIFFERENCE_KEYS}
    if resampling is None:
        diffs = {k: intervals.PairedDifference(k, None if None in point[k] else point[k][1] - point[k][0], None,
                                               "no --bootstrap") for k in DIFFERENCE_KEYS}
        how = "no interval (--bootstrap 0)"
    else:
        # seed 0's rows are in the pooled order already: the mean was taken in its order
        diffs = intervals.paired_differences(resampling, (pooled.targets, parts[0].probs),
                                             (pooled.targets, pooled.probs), threshold, threshold, point,
                                             DIFFERENCE_KEYS)
        how = (f"{intervals.CONFIDENCE:.0%} paired percentile bootstrap over {resampling.unit}s (seed 0's "
               f"{resampling.resamples} resamples of {len(resampling.units)} {resampling.unit}s, the same for both)")
    ensemble["difference"] = {"from": names[0], "seed": seeds[0], "text": how,
                              **{k: d.record() for k, d in diffs.items()}}
    return ensemble, pooled


def write_ensemble_files(out_dir: Path, ensemble: dict, pooled: metrics.FoldPredictions) -> None:
    """The ensemble's predictions.csv, f1.png and confusion.png, where a run keeps its own."""
    pooled.write(out_dir / "predictions.csv", ensemble["aus"])
    metrics.plot_f1(ensemble, out_dir / "f1.png")
    metrics.plot_confusion(pooled.targets, pooled.probs, ensemble["aus"], ensemble["threshold"],
                           out_dir / "confusion.png")


def ensemble_name(summary: dict) -> str:
    return f"{summary['model']} ensemble of {len(summary['seeds'])} seeds"


def format_difference(ensemble: dict) -> str:
    """The line under the ensemble's table: its macro F1 and AUC minus seed 0's, with paired intervals."""
    diff = ensemble["difference"]
    cells = [f"macro {k.upper() if k == 'auc' else k.capitalize()} "
             f"{intervals.PairedDifference(k, **{f: diff[k][f] for f in ('difference', 'interval', 'reason')}).text()}"
             for k in DIFFERENCE_KEYS]
    return (f"ensemble minus {diff['from']} (--seed {diff['seed']}): {', '.join(cells)}; {diff['text']}; "
            f"* where the interval excludes 0")
