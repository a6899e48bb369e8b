"""Photos and videos streamed through the models the same way: a photo is a clip of one frame.
Each clip's frames are read one at a time, their faces found, numbered and cropped, and the
crops predicted in batches of about --batch-size across frames and clips; a clip keeps only its
results (arrays, one entry per face per predicted frame), never its frames or crops."""
from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from faces import detect, video
import utils

log = logging.getLogger(utils.LOGGER_NAME)


@dataclass
class Clip:
    """One input, a video or a photo, after prediction: per face per predicted frame (in frame
    order) its frame number, time, face number, box and probabilities (about 150 bytes; 700 with
    landmarks for --draw); the frames that gave no face, and what stopped the clip, beside them."""

    path: Path
    aus: int  # how many AUs: the width of `probs` when there are no faces
    is_video: bool
    frame: np.ndarray = None  # (F,) frame number of each face (0 for a photo)
    time: np.ndarray = None  # (F,) seconds from the start of the video (NaN for a photo)
    face: np.ndarray = None  # (F,) the face's number, kept from frame to frame
    boxes: np.ndarray = None  # (F, 4)
    probs: np.ndarray = None  # (F, A)
    landmarks: np.ndarray | None = None  # (F, 68, 2), only when drawing
    smoothed: np.ndarray | None = None  # (F, A), only with --smooth
    empty: list[tuple[int, float, str]] = field(default_factory=list)  # (frame, time, status) without a face
    frame_problems: Counter = field(default_factory=Counter)
    decoded: int = 0  # frames decoded
    predicted: int = 0  # frames looked at: every Nth
    rate: Fraction | None = None  # the video's frames per second, None when it does not say
    problem: str | None = None  # "unreadable image", "unreadable video", "video cut short", "no face detector"
    detail: str = ""
    waiting: int = 0  # faces still in the batch, without probabilities
    chunks: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)

    @property
    def kind(self) -> str:
        return "video" if self.is_video else "image"

    @property
    def status(self) -> str:
        return detect.status(self.problem, self.detail)

    def finish(self) -> None:
        """Join the predicted batches into the per-face arrays (once every face has its probabilities)."""
        def joined(key: str, shape: tuple, dtype) -> np.ndarray:
            parts = [chunk[key] for chunk in self.chunks if chunk[key] is not None]
            return np.concatenate(parts).astype(dtype) if parts else np.zeros((0, *shape), dtype)

        self.frame = joined("frame", (), np.int64)
        self.time = joined("time", (), np.float64)
        self.face = joined("face", (), np.int64)
        self.boxes = joined("boxes", (4,), np.float64)
        self.probs = joined("probs", (self.aus,), np.float64)
        kept = all(chunk["landmarks"] is not None for chunk in self.chunks)
        self.landmarks = joined("landmarks", (68, 2), np.float32) if kept else None
        self.chunks = []


class FaceBatch:
    """Faces waiting for the model, from any clips: about `batch_size` crops at most (a frame's
    faces go in together), predicted together; then each clip gets its faces' results."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], batch_size: int, keep_landmarks: bool,
                 explain: Callable | None = None):
        self.predict, self.batch_size, self.keep_landmarks = predict, batch_size, keep_landmarks
        self.explain = explain  # predict.py --explain: (crops, landmarks, probs, (file, is_video, frame, face) per crop)
        self.crops: list[np.ndarray] = []
        self.waiting: list[tuple] = []  # (clip, frame, time, number, box, landmarks) of each crop

    def add(self, clip: Clip, index: int, seconds: float, numbers: list[int], found: list[detect.Face],
            crops: list[np.ndarray]) -> None:
        for number, face, crop in sorted(zip(numbers, found, crops), key=lambda t: t[0]):
            self.waiting.append((clip, index, seconds, number, face.box, face.landmarks))
            self.crops.append(crop)
        clip.waiting += len(crops)
        if len(self.crops) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.crops:
            return
        clip_of, frame, seconds, number, box, points = zip(*self.waiting)
        # What the model sees: the crops (N, S, S) uint8, cropped as the run's training cropped
        # them, and beside them each crop's 68 landmarks (N, 68, 2) in image pixels.
        crops = np.stack(self.crops)
        points = np.stack(points).astype(np.float32)
        probs = self.predict(crops, points)
        if self.explain is not None:
            self.explain(crops, points, probs, [(c.path, c.is_video, f, n) for c, f, n in zip(clip_of, frame, number)])
        start = 0
        while start < len(clip_of):  # a clip's faces are neighbours in the batch
            clip = clip_of[start]
            end = start
            while end < len(clip_of) and clip_of[end] is clip:
                end += 1
            part = slice(start, end)
            clip.chunks.append({"frame": np.array(frame[part]), "time": np.array(seconds[part]),
                                "face": np.array(number[part]), "boxes": np.array(box[part]),
                                "probs": probs[part], "landmarks": points[part] if self.keep_landmarks else None})
            clip.waiting -= end - start
            start = end
        self.crops, self.waiting = [], []


def clip_progress(path: Path, total: int | None, quiet: bool):
    """A bar per video with frames per second and the time left (tqdm's rate and remaining)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=path.name, unit="frame", leave=False, dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())


def read_clip(path: Path, finder, batch: FaceBatch, settings: dict, n_aus: int, every: int = 1,
              quiet: bool = False) -> Clip:
    """Stream one photo or video: find, number and crop the faces of every `every`th frame (a
    photo's one frame) and hand them to `batch`; `finder` may be a faces.NoFaces, why there is
    none. Whatever goes wrong with this clip is recorded in it (and warned about) and the others
    go on. The clip is complete once `waiting` is 0 and `finish` has joined its results."""
    clip = Clip(path, n_aus, video.is_video(path))
    started = time.perf_counter()
    if isinstance(finder, detect.NoFaces):
        clip.problem, clip.detail = finder.problem, finder.detail
        report(clip, 0.0)
        return clip
    try:
        with video.open_clip(path) as reader, \
                clip_progress(path, reader.expected_frames, quiet or not clip.is_video) as bar:
            clip.rate = reader.rate
            numbers = detect.FaceNumbers()
            try:
                for index, seconds, image in reader.frames(every):
                    bar.update(reader.decoded - bar.n)
                    clip.predicted += 1
                    try:
                        found, crops = detect.find_faces(path, image, finder, settings)
                    except detect.NoFaces as e:
                        clip.empty.append((index, seconds, str(e)))
                        clip.frame_problems[e.problem] += 1
                        continue
                    batch.add(clip, index, seconds, numbers(found), found, crops)
                bar.update(reader.decoded - bar.n)
                reader.check_complete()
            finally:
                clip.decoded = reader.decoded
    except video.VideoError as e:
        clip.problem = "video cut short" if isinstance(e, video.CutShort) else f"unreadable {clip.kind}"
        clip.detail = str(e)
    report(clip, time.perf_counter() - started)
    return clip


def report(clip: Clip, elapsed: float) -> None:
    """Warn about what went wrong with a clip; say how fast a video went."""
    if clip.is_video and clip.predicted:
        log.info("%s: %d frames decoded, %d predicted, %d faces in %s (%.1f frames/s)", clip.path, clip.decoded,
                 clip.predicted, clip.waiting + sum(len(c["face"]) for c in clip.chunks),
                 utils.format_duration(elapsed), clip.decoded / max(elapsed, 1e-9))
    if clip.problem:
        log.warning("%s: %s", clip.path, clip.status)
    if clip.empty and clip.is_video:
        log.warning("%s: %d of %d predicted frames without a prediction (%s)", clip.path, len(clip.empty),
                    clip.predicted, ", ".join(f"{n} {p}" for p, n in clip.frame_problems.most_common()))
    elif clip.empty:
        log.warning("%s: %s", clip.path, clip.empty[0][2])


def smooth_probs(position: np.ndarray, face: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """--smooth K: each face's probabilities averaged over the predicted frames within K // 2 of
    each (position: a frame's number among the predicted frames). At the ends of the video and
    where the face was not found the window holds fewer frames, never another face's."""
    out = np.empty_like(probs)
    half = k // 2
    for number in np.unique(face):
        rows = np.flatnonzero(face == number)  # in frame order
        where = position[rows]
        sums = np.concatenate([np.zeros((1, probs.shape[1])), np.cumsum(probs[rows], axis=0)])
        low = np.searchsorted(where, where - half, side="left")
        high = np.searchsorted(where, where + half, side="right")
        out[rows] = (sums[high] - sums[low]) / (high - low)[:, None]
    return out
