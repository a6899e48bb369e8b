"""The run settings, declared once: each one's flag, default, whether it changes what is trained,
and how it reads in a table.

main.py's parser takes its defaults from here; args.json and every checkpoint save the settings
listed here; --resume and -e refuse a typed setting that disagrees with the run's; compare.py names
its rows by them. A setting added to `SETTINGS` is saved, refused and compared with no other code.

    trains   changes what is trained: saved in args.json and in every checkpoint, fixed for the life
             of a run (a typed value that disagrees is refused on --resume and -e)
    scoring  only says how a run is scored: saved in args.json, yet a typed value wins on --resume
             and -e, and an args.json without it means its default
    evaluate_anew  (tta) trained and scored with it, yet -e may ask the run's checkpoints another way
    images   only a model that reads images uses it (the crop, the input size, the backbone's weights):
             --model landmarks, the landmarks alone, keeps its value in args.json but is not named by it
"""
from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ckplus import geometry
import dataset
import preprocess
from scoring import intervals
from utils import UserError


@dataclass(frozen=True)
class Setting:
    """One run setting: its argparse dest, its default, and what kind it is (see the module's docstring)."""

    dest: str
    default: Any
    trains: bool = True
    scoring: bool = False
    evaluate_anew: bool = False
    images: bool = False

    @property
    def flag(self) -> str:
        """The flag a user types: every long flag of a setting is its dest in kebab case."""
        return "--" + self.dest.replace("_", "-")

    def describe(self, value: Any) -> str:
        """The setting in a log line or an error: `--lr 0.01`, `--augment`, `no --augment`."""
        if isinstance(value, bool):
            return self.flag if value else f"no {self.flag}"
        return f"{self.flag} {value}"

    def as_typed(self, value: Any) -> str | None:
        """The setting as typed on main.py's command line (quoted for a shell); None when it was not given."""
        if value is None or value is False:
            return None
        if value is True:
            return self.flag
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        return f"{self.flag} {shlex.quote(str(value))}"


# In args.json order. A default of None is filled in from another flag (main.fill_defaults):
# --image-size from --model; --aus None means the default AU list unless --min-count is given.
# --augment and --tta flip mirror the landmarks too, so they apply to every model; --geometry is what
# --model landmarks is made of (always on there).
SETTINGS = (
    Setting("model", "alexnet"), Setting("aus", None), Setting("min_count", None),
    Setting("crop", "square", images=True), Setting("margin", preprocess.DEFAULT_MARGIN, images=True),
    Setting("image_size", None, images=True), Setting("norm", "weights", images=True),
    Setting("augment", False), Setting("weights", "DEFAULT", images=True),
    Setting("freeze_backbone", False, images=True),
    Setting("epochs", 100), Setting("step", 20), Setting("gamma", 0.5), Setting("start_epoch", 0),
    Setting("batch_size", 32), Setting("lr", 0.01), Setting("backbone_lr", 1.0, images=True), Setting("loss", "auto"),
    Setting("momentum", 0.9), Setting("wd", 1e-4), Setting("pos_weight", False), Setting("threshold", 0.5),
    Setting("kfold", 10), Setting("split", "subject"), Setting("seed", 0), Setting("amp", False),
    Setting("skip_bad", False), Setting("final", False), Setting("frames", 1),
    Setting("tta", "none", evaluate_anew=True), Setting("geometry", False, images=True),
    Setting("crop_fill", preprocess.DEFAULT_FILL, images=True),
    Setting("bootstrap", intervals.DEFAULT_RESAMPLES, trains=False, scoring=True),
)
BY_DEST = {s.dest: s for s in SETTINGS}
RUN_SETTINGS = tuple(s.dest for s in SETTINGS if s.trains)
SCORING_SETTINGS = tuple(s.dest for s in SETTINGS if s.scoring)
# the settings that name a compare.py row when they differ (the model names it already)
ROW_SETTINGS = tuple(k for k in RUN_SETTINGS if k != "model")


def applies(dest: str, model: str | None) -> bool:
    """Whether setting `dest` means anything to a run of `model`: the image settings do not to
    --model landmarks, which reads no image."""
    return not (BY_DEST[dest].images and model == geometry.SHAPE_MODEL)


def default(dest: str) -> Any:
    return BY_DEST[dest].default


def defaults() -> dict:
    """Every setting at its default, by dest."""
    return {s.dest: s.default for s in SETTINGS}


def describe(dest: str, value: Any) -> str:
    return BY_DEST[dest].describe(value)


def run_settings(args: argparse.Namespace) -> dict:
    """What args.json and every checkpoint keep of how a run is trained."""
    return {k: getattr(args, k) for k in RUN_SETTINGS}


def saved_settings(saved: dict) -> dict:
    """A run's args.json (or a checkpoint's "args") with the scoring settings it lacks at their
    defaults (an --bootstrap of today scores an older run safely)."""
    return {**{k: default(k) for k in SCORING_SETTINGS}, **saved}


def check_complete(saved: dict, source: Path, keys: Sequence[str] = RUN_SETTINGS) -> dict:
    """Refuse a run's settings (`saved`, read from `source`) that lack any of `keys`: an older version
    of this program wrote them, and what it trained without a setting is not guessed here."""
    missing = [BY_DEST[k].flag for k in keys if k not in saved and not BY_DEST[k].scoring]
    if missing:
        raise UserError(f"{source} has no {', '.join(missing)}: an older version of this program wrote it; retrain "
                        f"the run with this version, or use the version that wrote it")
    return saved_settings(saved)


def read_args_json(path: Path) -> dict:
    """A run folder's args.json as written, or one line saying what is wrong with it."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable args.json ({e}): restore it from the run")
    if not isinstance(saved, dict):
        raise UserError(f"{path} is not a readable args.json (no JSON object): restore it from the run")
    return saved


def read_run_settings(path: Path) -> dict:
    """A run folder's args.json, complete (`check_complete`), or one line saying what is wrong."""
    return check_complete(read_args_json(path), path)


# ----------------------------------------------------------------------------- what was typed


def typed_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests of the flags (and paths) the user typed: a typed default (`--epochs 100`) counts,
    which comparing values against the defaults could not tell."""
    untouched = object()
    # argparse leaves a value already in the namespace alone unless the flag is typed; a path
    # not given (nargs="?") is set to None
    start = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args([])), untouched))
    parsed = vars(parser.parse_args(argv, namespace=start))
    return {key for key, value in parsed.items() if value is not untouched and value is not None}


# ----------------------------------------------------------------------------- a run keeps its settings


def saved_value(key: str, saved: dict) -> Any:
    """A setting as the run used it: a run saved without --aus (and without --min-count) used the
    default AU list."""
    value = saved.get(key)
    if key == "aus" and value is None and saved.get("min_count") is None:
        return ",".join(map(str, dataset.DEFAULT_AUS))
    return value


def same_value(key: str, given: Any, saved: Any) -> bool:
    """Whether a typed flag says what the run used (`--aus 1,2` is `--aus "1, 2"`)."""
    if key == "aus" and given is not None and saved is not None:
        return dataset.parse_au_list(str(given)) == dataset.parse_au_list(str(saved))
    return given == saved


def changed_settings(args: argparse.Namespace, saved: dict, typed: set[str], allowed: Sequence[str] = ()) -> list[str]:
    """The run settings the user typed that disagree with the run's (`saved`), in table order."""
    return [key for key in RUN_SETTINGS if key in typed and key not in allowed
            and not same_value(key, getattr(args, key), saved_value(key, saved))]


def refuse_changed(args: argparse.Namespace, saved: dict, source: Path, what: str, typed: set[str],
                   evaluating: bool = False) -> None:
    """A run keeps its settings for life: every typed flag that disagrees with its args.json is
    refused, all of them in one line. --epochs may lengthen a run on --resume; -e (`evaluating`) may
    ask with another --tta."""
    allowed = tuple(s.dest for s in SETTINGS if s.evaluate_anew) if evaluating else ("epochs",)
    changed = changed_settings(args, saved, typed, allowed)
    if changed:
        def theirs(key: str) -> str:
            value = saved_value(key, saved)
            return describe(key, value) if isinstance(value, bool) else "not set" if value is None else str(value)

        listed = ", ".join(f"{describe(k, getattr(args, k))} (run: {theirs(k)})" for k in changed)
        raise UserError(f"{what} keeps the settings in {source}; these flags disagree with it: {listed}: "
                        f"drop them, or start a new run with another --output-dir")


def typed_scoring(typed: set[str]) -> tuple[str, ...]:
    """The scoring settings the user typed on --resume or -e: they win over the run's args.json."""
    return tuple(k for k in SCORING_SETTINGS if k in typed)


def adopt(args: argparse.Namespace, saved: dict, keep: Sequence[str] = ()) -> None:
    """Take a run's own settings (`saved`, complete) for resume/evaluate, but those in `keep`, and
    its data folders unless given. Typed flags that disagree are refused before this (`refuse_changed`)."""
    for key in (*RUN_SETTINGS, *SCORING_SETTINGS):
        if key not in keep:
            setattr(args, key, saved[key])
    for role in ("data_dir", "label_dir", "landmark_dir"):
        setattr(args, role, getattr(args, role) or saved.get(role))
