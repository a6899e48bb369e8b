"""The CK+ layout, in one place: folder names, file names, the text record format, the junk filter,
and `DataError`, the error a bad file in a copy raises.

dataset.py reads what synthetic.py writes, and both (with main.py's demo, predict.py and the
tests) take every name from here. Importing it costs nothing: no torch, no numpy.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from utils import UserError

if TYPE_CHECKING:  # for the type hints only: importing the layout costs no numpy
    import numpy as np



class DataError(UserError):
    """A bad file in a CK+ copy; `reason` is a short category for the --skip-bad summary."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        # Crop workers send it back across a process boundary: rebuild it with both arguments
        # (the default pickles only `args`, i.e. the message, and the pool's thread dies on it).
        return type(self), (str(self), self.reason)


# The folders of an unpacked CK+ copy, relative to its root, by kind of file.
SUBDIRS = {
    "frame": "cohn-kanade-images",
    "facs": "FACS_labels/FACS",
    "landmarks": "Landmarks/Landmarks",
    "emotion": "Emotion_labels/Emotion",
}
# What main.py calls each of the three folders it takes.
ROLES = {"frame": "DATA_DIR", "facs": "LABEL_DIR", "landmarks": "LANDMARK_DIR", "emotion": "EMOTION_DIR"}

# S005_001_00000011.png, S005_001_00000011_facs.txt, ...: subject, sequence, frame number.
_SUFFIX = {"frame": ".png", "facs": "_facs.txt", "landmarks": "_landmarks.txt", "emotion": "_emotion.txt"}
PATTERNS = {kind: re.compile(r"^(S\d+)_(\d+)_(\d+)" + re.escape(suffix) + "$", re.IGNORECASE)
            for kind, suffix in _SUFFIX.items()}


def folders(root: str | os.PathLike) -> dict[str, Path]:
    """The four folders of a CK+ copy unpacked under `root`, by kind."""
    return {kind: Path(root) / sub for kind, sub in SUBDIRS.items()}


def training_dirs(root: str | os.PathLike) -> tuple[Path, Path, Path]:
    """DATA_DIR, LABEL_DIR, LANDMARK_DIR of a copy unpacked under `root`: what main.py takes."""
    f = folders(root)
    return f["frame"], f["facs"], f["landmarks"]


def file_name(kind: str, subject: str, sequence: str, frame: int) -> str:
    """The file name CK+ gives a frame (kind "frame") or its FACS/landmark/emotion file."""
    return f"{subject}_{sequence}_{frame:08d}{_SUFFIX[kind]}"


def parse_name(kind: str, name: str) -> tuple[str, str, int] | None:
    """(subject, sequence, frame) of a CK+ file name of `kind`, or None."""
    m = PATTERNS[kind].match(name)
    return (m.group(1).upper(), m.group(2), int(m.group(3))) if m else None


def record(*values: float) -> str:
    """One line of a CK+ text file: each value as three spaces then %.7e."""
    return "".join("   %.7e" % v for v in values) + "\n"


def is_junk(name: str) -> bool:
    """.DS_Store, AppleDouble ._* files, Thumbs.db and other hidden/system files real copies carry."""
    return name.startswith(".") or name.lower() in {"thumbs.db", "desktop.ini"}


def walk_files(root: str | os.PathLike) -> Iterator[Path]:
    """Every file under `root` that is not junk, in no particular order (junk folders are not entered)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not is_junk(d)]
        for name in filenames:
            if not is_junk(name):
                yield Path(dirpath) / name


# ----------------------------------------------------------------------------- the records

@dataclass
class Frame:
    """A frame of a sequence before its peak, with its own landmarks (for --frames N)."""

    subject: str
    sequence: str
    frame: int
    image_path: Path
    landmarks: np.ndarray = field(repr=False)

    @property
    def id(self) -> str:
        return f"{self.subject}_{self.sequence}_{self.frame:08d}"  # the frame's file stem


@dataclass
class Sequence:
    """One CK+ sequence: its FACS-coded peak frame, and (index_ckplus(frames=N)) the N-1 frames
    just before it, which carry the peak's labels in training."""

    subject: str
    sequence: str
    frame: int
    image_path: Path
    landmarks: np.ndarray = field(repr=False)
    aus: dict[int, float]
    emotion: int | None = None
    earlier: list[Frame] = field(default_factory=list, repr=False)

    @property
    def id(self) -> str:
        return f"{self.subject}_{self.sequence}"
