"""Reading a CK+ copy: index its sequences, choose AUs, encode labels, hold the face crops
(which ckplus/crop_cache.py decodes and caches).

Files are paired by the subject, sequence and frame numbers in their names, never by
their position in a directory listing (the original's defect: listing order is
arbitrary on Linux, and one stray Thumbs.db shifted every label onto the wrong image).
"""
from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence as Seq

import numpy as np
import torch

import ckplus
from ckplus import DataError
from ckplus import Frame, Sequence  # the CK+ records, kept with the layout; dataset.Sequence still names them
from ckplus import crop_cache, geometry
import preprocess
import utils
from utils import UserError

log = logging.getLogger(utils.LOGGER_NAME)

DEFAULT_AUS = (1, 2, 4, 5, 6, 7, 12, 15, 17, 25)
NUM_LANDMARKS = 68
MAX_AU = 99  # FACS codes stop below 100; anything else in a label file is garbage
MAX_INTENSITY = 5


# ----------------------------------------------------------------------------- scanning




def _scan(root: Path) -> dict[str, dict[tuple[str, str, int], Path]]:
    """Every CK+ file under `root`, by kind, keyed by (subject, sequence, frame)."""
    found: dict[str, dict[tuple[str, str, int], Path]] = {kind: {} for kind in ckplus.PATTERNS}
    for path in ckplus.walk_files(root):
        for kind in ckplus.PATTERNS:
            key = ckplus.parse_name(kind, path.name)
            if key:
                found[kind][key] = path
                break
    return found


def _check_dir(path: Path, role: str) -> None:
    if not path.exists():
        raise UserError(f"{role} {path} does not exist: check the path")
    if not path.is_dir():
        raise UserError(f"{role} {path} is not a directory: give the folder, not a file")


def _empty_dir_message(path: Path, role: str, found: dict[str, dict]) -> str:
    """Why a directory holds none of what its role needs, with a hint if paths look swapped."""
    expected = {"DATA_DIR": "frame", "LABEL_DIR": "facs", "LANDMARK_DIR": "landmarks"}[role]
    example = {
        "frame": "S005_001_00000011.png",
        "facs": "S005_001_00000011_facs.txt",
        "landmarks": "S005_001_00000011_landmarks.txt",
    }[expected]
    msg = f"{role} {path} holds no CK+ files like {example}"
    present = [kind for kind in ("frame", "facs", "landmarks", "emotion") if found[kind]]
    if present:
        roles = " / ".join(ckplus.ROLES[kind] for kind in present)
        msg += f"; it looks like the {roles}: are the three paths in the order DATA_DIR LABEL_DIR LANDMARK_DIR?"
    else:
        msg += f"; in a CK+ copy it is the folder {ckplus.SUBDIRS[expected]}"
    return msg


# ----------------------------------------------------------------------------- file parsers


def _read_numbers(path: Path, what: str) -> list[list[float]]:
    try:
        text = path.read_text(encoding="ascii", errors="strict")
    except UnicodeDecodeError:
        raise DataError(f"{what} {path} is not a text file: replace it with the original", f"garbled {what}")
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror}", f"unreadable {what}")
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append([float(v) for v in line.split()])
        except ValueError:
            raise DataError(
                f"{what} {path} line {lineno} is not numeric ({line.strip()[:40]!r}): fix or remove the file, or pass --skip-bad",
                f"garbled {what}",
            )
    return rows


def read_facs(path: Path) -> dict[int, float]:
    """A FACS file: one `AU intensity` pair a line -> {AU: intensity}."""
    rows = _read_numbers(path, "FACS file")
    if not rows:
        raise DataError(f"FACS file {path} is empty: restore it from the CK+ archive, or pass --skip-bad", "empty FACS file")
    aus: dict[int, float] = {}
    for lineno, row in enumerate(rows, 1):
        if len(row) != 2:
            raise DataError(
                f"FACS file {path} line {lineno} has {len(row)} numbers, expected 2 (AU, intensity): fix it, or pass --skip-bad",
                "malformed FACS file",
            )
        au, intensity = row
        if not (math.isfinite(au) and au == int(au) and 1 <= au <= MAX_AU):
            raise DataError(
                f"FACS file {path} line {lineno} has an impossible AU code {au:g} (AUs are whole numbers 1-{MAX_AU}): fix it, or pass --skip-bad",
                "impossible AU code",
            )
        if not (math.isfinite(intensity) and 0 <= intensity <= MAX_INTENSITY):
            raise DataError(
                f"FACS file {path} line {lineno} has an impossible intensity {intensity:g} (0-{MAX_INTENSITY}): fix it, or pass --skip-bad",
                "impossible AU intensity",
            )
        aus[int(au)] = max(intensity, aus.get(int(au), 0.0))
    return dict(sorted(aus.items()))


def read_landmarks(path: Path) -> np.ndarray:
    """A landmark file: 68 lines of `x y` pixels -> (68, 2) float32."""
    rows = _read_numbers(path, "landmark file")
    if len(rows) != NUM_LANDMARKS or any(len(r) != 2 for r in rows):
        raise DataError(
            f"landmark file {path} has {len(rows)} points, expected {NUM_LANDMARKS} lines of 'x y': restore it, or pass --skip-bad",
            "bad landmark file",
        )
    pts = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(pts).all():
        raise DataError(f"landmark file {path} holds non-finite values (nan/inf): restore it, or pass --skip-bad", "bad landmark file")
    return pts.astype(np.float32)


def read_emotion(path: Path) -> int:
    rows = _read_numbers(path, "emotion file")
    if len(rows) != 1 or len(rows[0]) != 1 or rows[0][0] not in range(1, 8):
        raise DataError(f"emotion file {path} should hold one code 1-7: fix it, or pass --skip-bad", "bad emotion file")
    return int(rows[0][0])


# ----------------------------------------------------------------------------- index


def index_ckplus(
    data_dir: str | os.PathLike,
    label_dir: str | os.PathLike,
    landmark_dir: str | os.PathLike,
    *,
    emotion_dir: str | os.PathLike | None = None,
    skip_bad: bool = False,
    frames: int = 1,
) -> list[Sequence]:
    """One record per sequence that has a FACS file, sorted by subject and sequence.

    A bad sequence raises DataError naming the file; with `skip_bad` it is logged as a
    warning and left out, and a summary says how many were skipped and why. `frames` > 1 also
    lists the frames-1 frames before each peak (`Sequence.earlier`, fewer where a sequence is
    shorter), each with its landmark file; a bad one is an error too, and with `skip_bad` only
    that frame is left out.
    """
    dirs = {"DATA_DIR": Path(data_dir), "LABEL_DIR": Path(label_dir), "LANDMARK_DIR": Path(landmark_dir)}
    for role, path in dirs.items():
        _check_dir(path, role)
    scans = {role: _scan(path) for role, path in dirs.items()}
    for role, kind in (("DATA_DIR", "frame"), ("LABEL_DIR", "facs"), ("LANDMARK_DIR", "landmarks")):
        if not scans[role][kind]:
            raise UserError(_empty_dir_message(dirs[role], role, scans[role]))
    emotions: dict[tuple[str, str, int], Path] = {}
    if emotion_dir is not None:
        _check_dir(Path(emotion_dir), "EMOTION_DIR")
        emotions = _scan(Path(emotion_dir))["emotion"]

    frame_paths: dict[tuple[str, str], dict[int, Path]] = defaultdict(dict)
    for (subject, seq, frame), path in scans["DATA_DIR"]["frame"].items():
        frame_paths[subject, seq][frame] = path
    landmarks = scans["LANDMARK_DIR"]["landmarks"]
    emotion_by_seq = {(s, q): p for (s, q, _), p in emotions.items()}

    records: list[Sequence] = []
    skipped: list[DataError] = []
    skipped_frames: list[DataError] = []
    for (subject, seq, facs_frame), facs_path in sorted(scans["LABEL_DIR"]["facs"].items()):
        seq_frames = frame_paths.get((subject, seq), {})
        try:
            record = _make_record(subject, seq, facs_frame, facs_path, seq_frames, landmarks,
                                  emotion_by_seq.get((subject, seq)), dirs)
        except DataError as e:
            if not skip_bad:
                raise
            log.warning("skipping %s_%s: %s", subject, seq, e)
            skipped.append(e)
            continue
        for number in _earlier_frames(seq_frames, record.frame, frames) if frames > 1 else ():
            try:
                record.earlier.append(_make_frame(subject, seq, number, seq_frames[number], landmarks, dirs))
            except DataError as e:
                if not skip_bad:
                    raise
                log.warning("skipping frame %d of %s_%s: %s", number, subject, seq, e)
                skipped_frames.append(e)
        records.append(record)
    if skipped:
        reasons = Counter(e.reason for e in skipped)
        detail = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        log.warning("skipped %d of %d sequences (--skip-bad): %s", len(skipped), len(skipped) + len(records), detail)
    if skipped_frames:
        log.warning("skipped %d frames before the peaks (--skip-bad); their sequences train on the rest",
                    len(skipped_frames))
    if not records:
        raise UserError(f"no usable CK+ sequences in {dirs['LABEL_DIR']}: every FACS file was skipped (see the warnings above)")
    return records


def _make_record(subject, seq, facs_frame, facs_path, seq_frames, landmarks, emotion_path, dirs) -> Sequence:
    if not seq_frames:
        raise DataError(
            f"FACS file {facs_path} has no frames: expected {subject}_{seq}_*.png under "
            f"{dirs['DATA_DIR'] / subject / seq}; restore them, or pass --skip-bad",
            "no frames",
        )
    peak = max(seq_frames)
    if facs_frame != peak:
        # The labels describe the frame they are named after; trust that over the folder.
        if facs_frame not in seq_frames:
            raise DataError(
                f"FACS file {facs_path} codes frame {facs_frame}, which is not among the frames of "
                f"{dirs['DATA_DIR'] / subject / seq}: restore it, or pass --skip-bad",
                "no frames",
            )
        log.warning("%s_%s: FACS file codes frame %d but the last frame is %d; using frame %d",
                    subject, seq, facs_frame, peak, facs_frame)
        peak = facs_frame
    return Sequence(
        subject=subject,
        sequence=seq,
        frame=peak,
        image_path=seq_frames[peak],
        landmarks=_frame_landmarks(subject, seq, peak, f"the peak frame {seq_frames[peak]}", landmarks, dirs,
                                   "restore it, or pass --skip-bad"),
        aus=read_facs(facs_path),
        emotion=read_emotion(emotion_path) if emotion_path is not None else None,
    )


def _earlier_frames(numbers: Iterable[int], peak: int, frames: int) -> list[int]:
    """The frames-1 frame numbers just before the peak (all there are in a shorter sequence)."""
    before = sorted(n for n in numbers if n < peak)
    return before[max(0, len(before) - (frames - 1)):]


def _make_frame(subject, seq, number, image_path, landmarks, dirs) -> Frame:
    return Frame(subject, seq, number, image_path,
                 _frame_landmarks(subject, seq, number, f"the frame {image_path}", landmarks, dirs,
                                  "restore it, lower --frames, or pass --skip-bad"))


def _frame_landmarks(subject, seq, number, which: str, landmarks, dirs, fix: str) -> np.ndarray:
    """The landmarks of one frame, or a DataError naming the landmark file that is missing."""
    lmk_path = landmarks.get((subject, seq, number))
    if lmk_path is None:
        raise DataError(f"no landmark file {ckplus.file_name('landmarks', subject, seq, number)} for {which} "
                        f"under {dirs['LANDMARK_DIR']}: {fix}", "no landmarks")
    return read_landmarks(lmk_path)


# ----------------------------------------------------------------------------- labels


def label_counts(records: Iterable[Sequence]) -> dict[int, int]:
    """Every AU coded in `records` and the number of sequences coding it, by AU."""
    counts = Counter(au for r in records for au in r.aus)
    return dict(sorted(counts.items()))


def parse_au_list(text: str) -> list[int]:
    """'1,2,4' or 'AU1 AU2' -> [1, 2, 4] (for --aus)."""
    items = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    try:
        aus = sorted({int(t.upper().removeprefix("AU")) for t in items})
    except ValueError:
        raise UserError(f"--aus {text!r} is not a list of AU numbers: write it like --aus 1,2,4,12")
    if not aus or any(not 1 <= a <= MAX_AU for a in aus):
        raise UserError(f"--aus {text!r}: AU numbers run from 1 to {MAX_AU}")
    return aus


def select_aus(records: Seq[Sequence], aus: Iterable[int] | None = None, min_count: int | None = None) -> list[int]:
    """The AUs to recognise, sorted: a fixed list, or those coded in more than `min_count` sequences."""
    if aus is not None and min_count is not None:
        raise UserError("--aus and --min-count both choose the AUs: give one of them")
    if min_count is not None:
        chosen = [au for au, n in label_counts(records).items() if n > min_count]
        if not chosen:
            raise UserError(f"--min-count {min_count}: no AU is coded in more than {min_count} sequences; lower it")
        return chosen
    return sorted(set(DEFAULT_AUS if aus is None else aus))


def encode_labels(records: Seq[Sequence], aus: Seq[int]) -> np.ndarray:
    """Multi-hot (N, len(aus)) float32: 1 where the sequence codes the AU, at any intensity."""
    labels = np.zeros((len(records), len(aus)), dtype=np.float32)
    column = {au: j for j, au in enumerate(aus)}
    for i, r in enumerate(records):
        for au in r.aus:
            if au in column:
                labels[i, column[au]] = 1.0
    return labels


# ----------------------------------------------------------------------------- crops


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "au-recognition"


DEMO_SUBJECTS = 120
DEMO_FRAMES = 2  # frames per demo sequence (neutral and peak): the demo trains on peaks, and frames cost time


def demo_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where main.py --demo keeps its synthetic CK+ (the notebook reads it too)."""
    return Path(cache_dir or default_cache_dir()) / f"synthetic-ckplus-{DEMO_SUBJECTS}"


def ensure_demo_tree(cache_dir: str | os.PathLike | None = None) -> Path:
    """The demo's synthetic CK+ root, generated on first use (into a temporary folder that is
    renamed when complete, so an interrupted generation is never mistaken for a tree)."""
    import shutil

    from ckplus import synthetic

    root = demo_root(cache_dir)
    if not ckplus.folders(root)["frame"].is_dir():
        log.info("generating a synthetic CK+ (%d subjects) in %s, once", DEMO_SUBJECTS, root)
        tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        synthetic.generate(tmp, subjects=DEMO_SUBJECTS, seed=0, min_frames=DEMO_FRAMES, max_frames=DEMO_FRAMES)
        os.replace(tmp, root)
    return root


class CKPlusDataset:
    """Face crops (uint8, held in memory) with multi-hot AU labels, one row per image.

    The first N rows are the N sequences' peak frames, in the order of `records`, `ids` and
    `subjects` (so row i is sequence i, and `len(data)` is N); after them come the frames
    before the peaks that `index_ckplus(frames=...)` listed, each labelled with its sequence's
    AUs, and `row_sequence` says which sequence each row belongs to. `images` is
    (rows, 1, size, size) uint8 and `labels` (rows, A) float32, both tensors, so a training loop
    indexes whole batches directly (no DataLoader: nothing is decoded per epoch). Normalisation
    happens later, per batch, on the training device (preprocess.prepare_batch). `geometry` is
    (rows, 136) float32: each row's own landmarks, normalised (geometry.normalise), for --geometry.
    `images=False` (--model landmarks, which sees no image) decodes and crops nothing: `images` is
    then one black pixel per row, and a frame that would not decode is not noticed.
    """

    def __init__(
        self,
        records: Seq[Sequence],
        aus: Seq[int],
        *,
        size: int,
        crop: str = "square",
        margin: float = preprocess.DEFAULT_MARGIN,
        fill: str = preprocess.DEFAULT_FILL,
        cache_dir: str | os.PathLike | None = None,
        workers: int = 0,
        skip_bad: bool = False,
        images: bool = True,
    ):
        self.aus = list(aus)

        def crops_of(items, what: str):
            if not images:
                return list(items), np.zeros((len(items), 1, 1), dtype=np.uint8)
            return crop_cache.load_crops(items, size=size, crop=crop, margin=margin, fill=fill, cache_dir=cache_dir,
                                         workers=workers, skip_bad=skip_bad, what=what)

        self.records, crops = crops_of(records, "sequences")
        labels = encode_labels(self.records, self.aus)
        self.row_sequence = np.arange(len(self.records))
        points = [r.landmarks for r in self.records]
        earlier = [(i, f) for i, r in enumerate(self.records) for f in r.earlier]
        if earlier:
            kept, extra = crops_of([f for _, f in earlier], "frames")
            owner = {id(f): i for i, f in earlier}
            extra_rows = np.array([owner[id(f)] for f in kept], dtype=np.int64)
            crops = np.concatenate([crops, extra])
            labels = np.concatenate([labels, labels[extra_rows]])
            self.row_sequence = np.concatenate([self.row_sequence, extra_rows])
            points += [f.landmarks for f in kept]
        self.images = torch.from_numpy(crops).unsqueeze(1)
        self.labels = torch.from_numpy(labels)
        self.geometry = torch.from_numpy(geometry.normalise(np.stack(points)))
        self.ids = [r.id for r in self.records]
        self.subjects = [r.subject for r in self.records]

    def __len__(self) -> int:
        """The number of sequences (rows beyond it are frames before the peaks)."""
        return len(self.records)

    def rows_of(self, sequences: np.ndarray) -> np.ndarray:
        """The rows (peak frames, then earlier frames) of the sequences `sequences`, for training."""
        if len(self.row_sequence) == len(self.records):
            return np.asarray(sequences, dtype=np.int64)  # peaks only: row i is sequence i
        return np.flatnonzero(np.isin(self.row_sequence, sequences))
