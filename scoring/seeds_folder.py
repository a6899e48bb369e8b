"""A --seeds run folder's layout, read in one place: its seeds.json (how many seeds, the first one,
the command line) and its seed folders RUN/seed0/, RUN/seed1/, ... Light (no torch), so that
compare.py's reader of finished runs can tell a --seeds run without loading the training code."""
from __future__ import annotations

import json
from pathlib import Path

import utils
from utils import UserError

SEEDS_FILE = "seeds.json"


def is_seeds_run(path: Path) -> bool:
    """Whether `path` is the folder of a --seeds run (it has a seeds.json), not one of its seeds."""
    return path.is_dir() and (path / SEEDS_FILE).is_file()


def write_seeds_file(root: Path, seeds: int, seed: int, command: str) -> Path:
    return utils.write_json(root / SEEDS_FILE, {"seeds": seeds, "seed": seed, "command": command})


def read_seeds_file(root: Path) -> dict:
    """{"seeds": N, "seed": S, "command": ...}, checked, or one line saying the file is broken."""
    path = root / SEEDS_FILE
    try:
        info = json.loads(path.read_text())
        if not (isinstance(info.get("seeds"), int) and isinstance(info.get("seed"), int) and info["seeds"] >= 1):
            raise ValueError("no seeds and seed numbers")
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{path} is not a readable {SEEDS_FILE} ({e}): restore it from the run") from None
    return info


def seed_dirs(root: Path, n: int) -> list[Path]:
    """RUN/seed0, ..., RUN/seed{n-1}: each a complete run folder."""
    return [root / f"seed{i}" for i in range(n)]
