"""A finished run folder as compare.py reads it: its args.json and results.json, checked, or one
line saying why the folder cannot be compared (unfinished, a malformed file). A --seeds run reads
as its ensemble: the "ensemble" of its results.json, the settings of its seed0/args.json."""
from __future__ import annotations

import json
import logging
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoring import metrics, seeds_folder
import utils
from utils import UserError

log = logging.getLogger(utils.LOGGER_NAME)


@dataclass
class Run:
    """One finished run: the folder as the user typed it, its settings (args.json) and its results.json."""

    label: str
    path: Path
    args: dict
    results: dict
    seeds: int | None = None  # a --seeds run: how many seeds its ensemble averages

    @property
    def aus(self) -> list[int]:
        return self.results["aus"]

    def get(self, key: str) -> Any:
        """A protocol field from results.json, else from args.json (older files may lack it)."""
        return self.results.get(key, self.args.get(key))


def read_json_object(path: Path, fix: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path} cannot be read as JSON ({e}): {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object: {fix}")
    return data


def is_value(value: Any) -> bool:
    """A metric value as results.json holds it: a finite number, or null where the metric does not exist."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))


def check_results(results: dict, path: Path, fix: str) -> None:
    """Refuse a results.json that lacks what the table needs, naming the first thing missing."""
    def bad(what: str) -> UserError:
        return UserError(f"{path} is malformed ({what}): {fix}")

    if not isinstance(results.get("model"), str):
        raise bad("no model name")
    aus = results.get("aus")
    if not isinstance(aus, list) or not aus or not all(isinstance(a, int) and not isinstance(a, bool) for a in aus):
        raise bad("aus is not a list of AU numbers")
    per_au, macro = results.get("per_au"), results.get("macro")
    if not isinstance(per_au, dict) or not isinstance(macro, dict):
        raise bad("no per_au or macro metrics")
    for name, scores in [*((utils.au_name(a), per_au.get(utils.au_name(a))) for a in aus), ("macro", macro)]:
        if not isinstance(scores, dict) or not all(k in scores and is_value(scores[k]) for k in metrics.METRIC_KEYS):
            raise bad(f"{name} lacks a number or null for one of {', '.join(metrics.METRIC_KEYS)}")


def fold_progress(path: Path, settings: dict) -> str:
    """How far an unfinished run got: "3 of 10 folds" (foldK/predictions.csv written)."""
    kfold = settings.get("kfold")
    if isinstance(kfold, int) and not isinstance(kfold, bool) and kfold > 0:
        done = sum((path / f"fold{k}" / "predictions.csv").is_file() for k in range(kfold))
        return f"{done} of {kfold} folds"
    return f"{len(list(path.glob('fold*/predictions.csv')))} folds"


def read_run(label: str) -> Run:
    """Read one run folder (a results.json or args.json names its folder too); a UserError says what is wrong."""
    path = Path(label)
    if path.is_file() and path.name in ("results.json", "args.json"):
        path = path.parent
        label = str(path)
    if not path.exists():
        raise UserError(f"{label} does not exist: give a run folder main.py created")
    if not path.is_dir():
        raise UserError(f"{label} is not a folder: give a run folder main.py created")
    has_args, has_results = (path / "args.json").is_file(), (path / "results.json").is_file()
    if seeds_folder.is_seeds_run(path):
        return read_seeds_run(label, path)
    if not has_args and not has_results:
        raise UserError(f"{label} is not a run folder (no results.json or args.json): give a folder main.py created")
    if not has_results:
        settings = read_json_object(path / "args.json", "restore it from the run")
        raise UserError(f"{label} is unfinished: {fold_progress(path, settings)} have predictions "
                        f"(foldK/predictions.csv) and there is no results.json yet: finish it with "
                        f"python main.py --resume {shlex.quote(label)}")
    if not has_args:
        raise UserError(f"{label} has results.json but no args.json, so its settings are unknown: "
                        f"give the run folder main.py created")
    fix = f"delete it and resume the run (python main.py --resume {shlex.quote(label)}) to write it again"
    results = read_json_object(path / "results.json", fix)
    check_results(results, path / "results.json", fix)
    settings = read_json_object(path / "args.json", "restore it from the run")
    return Run(label=label, path=path, args=settings, results=results)


def read_seeds_run(label: str, path: Path) -> Run:
    """A --seeds run as its ensemble (the seeds' models averaged), with seed 0's settings."""
    info = seeds_folder.read_seeds_file(path)
    resume = f"python main.py --resume {shlex.quote(label)}"
    if not (path / "results.json").is_file():
        raise UserError(f"{label} is an unfinished --seeds run (no results.json yet): finish it with {resume}")
    fix = f"delete it and resume the run ({resume}) to write it again"
    summary = read_json_object(path / "results.json", fix)
    ensemble = summary.get("ensemble")
    if not isinstance(ensemble, dict):
        raise UserError(f"{path / 'results.json'} has no ensemble (an older version wrote it): {resume} scores it "
                        f"without training again")
    check_results(ensemble, path / "results.json", fix)
    first = seeds_folder.seed_dirs(path, info["seeds"])[0] / "args.json"
    settings = read_json_object(first, "restore it from the run")
    return Run(label=label, path=path, args=settings, results=ensemble, seeds=info["seeds"])


def read_runs(labels: list[str]) -> list[Run]:
    """The usable runs among `labels`. Each one that is not is a warning line, or, when none is usable,
    the one-line error."""
    runs, problems, seen = [], [], set()
    for label in labels:
        try:
            run = read_run(label)
        except UserError as e:
            problems.append(str(e))
            continue
        if run.path.resolve() in seen:
            log.warning("%s is given twice: shown once", label)
            continue
        seen.add(run.path.resolve())
        runs.append(run)
    if not runs:
        if len(problems) == 1:
            raise UserError(problems[0])
        raise UserError(f"none of the {len(problems)} folders is a finished run: " + "; ".join(problems))
    for problem in problems:
        log.warning("skipped: %s", problem)
    return runs
