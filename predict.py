"""Predict facial Action Units on new photos and videos with a run that main.py trained.

    python predict.py RUN_DIR photo.jpg more_photos/                  # faces found by dlib
    python predict.py RUN_DIR frames/ --landmarks Landmarks/          # CK+-style landmark files
    python predict.py RUN_DIR/fold2/checkpoint.pth photo.jpg --draw drawn/ --out aus.csv
    python predict.py RUN_DIR clip.mp4 --every 2 --smooth 5 --draw drawn/   # a row per face per frame

A run folder predicts with its final model (main.py --final) when it has one, otherwise with
the mean probability of its fold models; a checkpoint file predicts with that model alone.
Every face goes through exactly the preprocessing the run trained with: the crop from its 68
landmarks, gray, the run's input size and normalisation, and the run's test-time augmentation
(--tta flip: the mean of each face and its mirror image). The CSV has one row per face, and one
row for each image that gave none, saying why. A video is streamed: each of its (every Nth)
frames gets the rows a photo would get, with the frame's number and time, and its faces keep
their numbers from frame to frame.

Reads top to bottom: arguments, the images, the faces in them, the models, videos, the rows
and drawings, and the command-line entry point at the end.
"""
from __future__ import annotations

import argparse
import functools
import heapq
import importlib.util
import io
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

import ckplus
import dataset
import engine
import geometry
import metrics
import models
import preprocess
import runs
import utils
import video
from utils import UserError

log = logging.getLogger("au")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
INPUT_SUFFIXES = IMAGE_SUFFIXES + video.VIDEO_SUFFIXES
LANDMARK_SUFFIX = "_landmarks.txt"
SHAPE_PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
SHAPE_PREDICTOR_ENV = "AU_SHAPE_PREDICTOR"
INSTALL_HINT = "pip install -r requirements-predict.txt"
# Above this side (pixels) dlib searches the image as it is; below it, upsampled once so that
# faces down to about 40 px are found. Upsampling a phone photo would cost seconds and GBs.
UPSAMPLE_BELOW = 1024
# Settings that decide a model's input: checkpoints averaged together must agree on all of them.
INPUT_SETTINGS = ("crop", "margin", "image_size", "norm")


# ----------------------------------------------------------------------------- arguments


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predict.py",
        description="Predict facial Action Units on new photos and videos with a run that main.py trained.",
        formatter_class=utils.HelpFormatter,
    )
    p.add_argument("model", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a run folder (its final model, or the mean of its fold models) or one checkpoint.pth")
    p.add_argument("images", nargs="+", metavar="IMAGE_VIDEO_OR_FOLDER",
                   help=f"image and video files, or folders searched recursively for {' '.join(IMAGE_SUFFIXES)} "
                        f"and {' '.join(video.VIDEO_SUFFIXES)}")
    p.add_argument("--out", metavar="CSV", default="predictions.csv",
                   help="the CSV to write, one row per face (per frame of a video)")
    p.add_argument("--landmarks", metavar="DIR", default=None,
                   help=f"CK+-style landmark files (<image stem>{LANDMARK_SUFFIX}) anywhere under DIR, instead of "
                        f"detecting faces with dlib (photos only: videos always need dlib)")
    p.add_argument("--shape-predictor", metavar="PATH", default=None,
                   help=f"dlib's {SHAPE_PREDICTOR_FILE} (default: ${SHAPE_PREDICTOR_ENV}, or the copy the "
                        f"face-recognition-models package installs)")
    p.add_argument("--upsample", type=int, metavar="N", default=None,
                   help=f"times dlib upsamples an image to find small faces (default: 1 for images up to "
                        f"{UPSAMPLE_BELOW} px, else 0)")
    p.add_argument("--draw", metavar="DIR", default=None,
                   help="also write each image with its face boxes, landmarks and the AUs that are on; for each "
                        "video, that as an MP4 and a PNG of each AU's probability over time")
    p.add_argument("--threshold", type=float, metavar="P", default=None,
                   help="an AU is on when its probability is above P (default: the run's --threshold)")
    p.add_argument("--tta", choices=engine.TTA_MODES, default=None,
                   help="test-time augmentation: flip averages the probabilities of each face and its mirror image "
                        "(default: the run's --tta)")
    p.add_argument("-b", "--batch-size", type=int, metavar="N", default=32, help="faces per forward pass")
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


# ----------------------------------------------------------------------------- images


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


def read_image(path: Path) -> Image.Image:
    """Decode a photo as a viewer shows it (EXIF rotation applied); raises one of dataset.DECODE_ERRORS."""
    with Image.open(path) as img:
        img.load()
        return ImageOps.exif_transpose(img)


def to_gray(image: Image.Image) -> Image.Image:
    """8-bit gray, the conversion preprocess.crop_face makes of every CK+ frame in training."""
    return image if image.mode == "L" else image.convert("L")


# ----------------------------------------------------------------------------- faces


@dataclass
class Face:
    """One face in an image: its box (x0, y0, x1, y1) and 68 iBUG landmarks, in image pixels."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray = field(repr=False)


class NoFaces(Exception):
    """Why an image gave no face to predict on: a short `problem` (counted in the summary) and
    the detail; both go into the image's CSV row."""

    def __init__(self, problem: str, detail: str = ""):
        super().__init__(f"{problem}: {detail}" if detail else problem)
        self.problem, self.detail = problem, detail


class LandmarkFiles:
    """One face per image, from the CK+-style landmark file named after the image anywhere
    under a folder (`S005_001_00000011.png` -> `S005_001_00000011_landmarks.txt`)."""

    def __init__(self, root: Path):
        if not root.is_dir():
            raise UserError(f"--landmarks {root} {'is not a folder' if root.exists() else 'does not exist'}: "
                            f"give the folder holding the <image stem>{LANDMARK_SUFFIX} files")
        self.root = root
        self.files: dict[str, list[Path]] = {}
        for path in sorted(ckplus.walk_files(root)):
            if path.name.lower().endswith(LANDMARK_SUFFIX):
                self.files.setdefault(path.name[: -len(LANDMARK_SUFFIX)].lower(), []).append(path)
        if not self.files:
            raise UserError(f"--landmarks {root} holds no *{LANDMARK_SUFFIX} files: give the folder of CK+-style "
                            f"landmark files (in CK+: Landmarks/Landmarks)")

    def __call__(self, image_path: Path, gray: np.ndarray) -> list[Face]:
        name = image_path.stem + LANDMARK_SUFFIX
        found = self.files.get(image_path.stem.lower(), [])
        if not found:
            raise NoFaces("no landmark file", f"no {name} under {self.root}")
        if len(found) > 1:
            raise NoFaces("several landmark files", f"{found[0]} and {found[1]}: keep one")
        try:
            points = dataset.read_landmarks(found[0])
        except dataset.DataError as e:
            raise NoFaces("bad landmark file", f"{found[0]} ({e.reason})") from None
        x0, y0 = points.min(axis=0)
        x1, y1 = points.max(axis=0)
        return [Face((float(x0), float(y0), float(x1), float(y1)), points)]


class DlibFaces:
    """Faces found by dlib's frontal face detector (HOG), each with the 68 landmarks of dlib's
    shape predictor: the iBUG 68-point scheme, the same as CK+'s landmark files."""

    def __init__(self, predictor_path: Path, upsample: int | None):
        import dlib  # optional: face_finder has checked it imports

        try:
            self.predictor = dlib.shape_predictor(str(predictor_path))
        except RuntimeError as e:
            raise UserError(f"{predictor_path} is not a dlib shape predictor ({str(e).strip().splitlines()[0]}): "
                            f"give {SHAPE_PREDICTOR_FILE}") from None
        self.detector = dlib.get_frontal_face_detector()
        self.upsample = upsample

    def __call__(self, image_path: Path, gray: np.ndarray) -> list[Face]:
        upsample = self.upsample if self.upsample is not None else int(max(gray.shape) <= UPSAMPLE_BELOW)
        rects = sorted(self.detector(gray, upsample), key=lambda r: (r.left(), r.top()))
        faces = []
        for r in rects:
            shape = self.predictor(gray, r)
            points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
            faces.append(Face((r.left(), r.top(), r.right(), r.bottom()), points))
        return faces


def shape_predictor_path(given: str | None) -> Path:
    """dlib's 68-point model: --shape-predictor, else $AU_SHAPE_PREDICTOR, else the copy in the
    face-recognition-models package (located without importing it: its import needs pkg_resources)."""
    for value, source in ((given, "--shape-predictor"), (os.environ.get(SHAPE_PREDICTOR_ENV), SHAPE_PREDICTOR_ENV)):
        if value:
            path = Path(value)
            if not path.is_file():
                raise UserError(f"{source} {path} is not a file: give the path of {SHAPE_PREDICTOR_FILE}")
            return path
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None:
        folders = list(spec.submodule_search_locations or [])
        if not folders and spec.origin:
            folders = [str(Path(spec.origin).parent)]
        for folder in folders:
            path = Path(folder) / "models" / SHAPE_PREDICTOR_FILE
            if path.is_file():
                return path
    raise UserError(f"dlib's 68-point model {SHAPE_PREDICTOR_FILE} was not found: {INSTALL_HINT} (the "
                    f"face-recognition-models package ships it), or pass --shape-predictor PATH, or --landmarks DIR")


def face_finder(args: argparse.Namespace):
    """What finds the faces: landmark files (--landmarks) or dlib; a clear error when neither is at hand."""
    if args.landmarks is not None:
        return LandmarkFiles(Path(args.landmarks))
    try:
        import dlib  # noqa: F401  (optional dependency)
    except ImportError:
        raise UserError(f"no face detector: dlib is not installed; {INSTALL_HINT}, or, for photos, pass "
                        f"--landmarks DIR with CK+-style <image stem>{LANDMARK_SUFFIX} files") from None
    return DlibFaces(shape_predictor_path(args.shape_predictor), args.upsample)


def video_face_finder(args: argparse.Namespace, finder):
    """What finds the faces in video frames -> (finder, None), or (None, why there is none).
    Landmark files name still images, so with --landmarks a video's faces are found by dlib;
    without dlib each video gets a row saying so and the photos are still predicted."""
    if args.landmarks is None:
        return finder, None
    try:
        import dlib  # noqa: F401  (optional dependency)
    except ImportError:
        return None, f"videos need dlib, --landmarks files cover photos only: {INSTALL_HINT}"
    try:
        return DlibFaces(shape_predictor_path(args.shape_predictor), args.upsample), None
    except UserError as e:
        return None, f"videos need dlib's landmarks, --landmarks files cover photos only: {e}"


@dataclass
class ImageFaces:
    """One input image: the faces found in it and their model-ready crops, or why there are none."""

    path: Path
    faces: list[Face] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list, repr=False)
    problem: str | None = None  # short: "unreadable image", "no face", "no landmark file", ...
    detail: str = ""

    @property
    def status(self) -> str:
        """The CSV's status column: ok, or what went wrong."""
        if self.problem is None:
            return "ok"
        return f"{self.problem}: {self.detail}" if self.detail else self.problem


def find_faces(path: Path, gray: Image.Image, finder, settings: dict) -> tuple[list[Face], list[np.ndarray]]:
    """The faces in one gray photo or video frame, each cropped exactly as the run's training
    cropped; raises NoFaces."""
    faces = finder(path, np.asarray(gray))
    if not faces:
        raise NoFaces("no face")
    try:
        crops = [preprocess.crop_face(gray, face.landmarks, settings["image_size"], settings["crop"],
                                      settings["margin"], settings["crop_fill"]) for face in faces]
    except ValueError as e:  # the original crop mode refuses landmarks outside the frame
        raise NoFaces("landmarks outside the image", str(e)) from None
    return faces, crops


def locate_faces(path: Path, finder, settings: dict) -> ImageFaces:
    """Decode one image, find its faces and crop each exactly as the run's training did.
    Whatever goes wrong with this one image is recorded in its result (and warned about),
    so one bad photo never stops a folder."""
    try:
        try:
            gray = to_gray(read_image(path))
        except UnidentifiedImageError:
            raise NoFaces("unreadable image", "not an image file Pillow can decode") from None
        except dataset.DECODE_ERRORS as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
            raise NoFaces("unreadable image", f"{type(e).__name__}: {reason}") from None
        faces, crops = find_faces(path, gray, finder, settings)
    except NoFaces as e:
        log.warning("%s: %s", path, e)
        return ImageFaces(path, problem=e.problem, detail=e.detail)
    return ImageFaces(path, faces, crops)


# ----------------------------------------------------------------------------- models


@dataclass
class Ensemble:
    """The checkpoints whose probabilities are averaged, and the run settings they share."""

    checkpoints: list[Path]
    description: str  # the CSV's `models` column: "final", "mean of 5 folds", "fold2 checkpoint"
    arch: str
    aus: list[int]
    settings: dict  # the run's args: crop, margin, image_size, norm, threshold, ...
    threshold: float
    tta: str = "none"  # test-time augmentation: the run's --tta, or predict.py's

    @property
    def mean_std(self) -> tuple[tuple, tuple]:
        config = models.model_config(self.arch)
        return preprocess.resolve_norm(self.settings["norm"], config.mean, config.std)


def checkpoint_paths(path: Path) -> tuple[list[Path], str | None]:
    """RUN_DIR_OR_CHECKPOINT -> the checkpoints to use, and what they are (None: ask the checkpoint)."""
    if not path.exists():
        raise UserError(f"{path} does not exist: give a run folder main.py wrote, or a checkpoint.pth in one")
    if path.is_file():
        return [path], None
    final = path / "final" / runs.CHECKPOINT
    if final.is_file():
        return [final], "final"
    folds = sorted((p for p in path.glob(f"fold*/{runs.CHECKPOINT}") if p.parent.name[4:].isdigit()),
                   key=lambda p: int(p.parent.name[4:]))
    if not folds:
        raise UserError(f"{path} holds no trained model (no final/{runs.CHECKPOINT}, no "
                        f"fold<k>/{runs.CHECKPOINT}): give a run folder main.py trained, or one of its checkpoints")
    if len(folds) == 1:
        return folds, f"{folds[0].parent.name} checkpoint"
    return folds, f"mean of {len(folds)} folds"


def open_ensemble(path: Path, threshold: float | None, tta: str | None = None) -> Ensemble:
    """Which models predict, with the settings their inputs need; reads the first checkpoint
    (the models themselves are loaded one at a time later, so a 10-fold VGG fits in memory).
    `tta` None: the run's own test-time augmentation."""
    paths, description = checkpoint_paths(path)
    ckpt = runs.load_checkpoint(paths[0])
    settings = ckpt.get("args")
    if not isinstance(settings, dict) or any(k not in settings for k in INPUT_SETTINGS):
        raise UserError(f"{paths[0]} holds no run settings (crop, image size, normalisation): it was not written "
                        f"by this main.py; retrain")
    settings = runs.saved_settings(settings)
    if tta is not None and tta != settings["tta"]:
        log.warning("predicting with --tta %s; the run was trained and scored with --tta %s", tta, settings["tta"])
    tta = tta or settings["tta"]
    if description is None:
        is_final = ckpt.get("fold") is not None and ckpt.get("fold") == ckpt.get("kfold")
        description = "final checkpoint" if is_final else f"fold{ckpt.get('fold')} checkpoint"
    if threshold is None:
        run_args = path / "args.json"
        if path.is_dir() and run_args.is_file():
            threshold = runs.read_args_json(run_args).get("threshold")
        if threshold is None:
            threshold = settings.get("threshold", 0.5)
    kfold = settings.get("kfold")
    if description.startswith("mean of") and kfold and len(paths) < kfold:
        log.warning("%s has %d of its %d fold checkpoints: predicting with the mean of those", path, len(paths), kfold)
    if tta == "flip":
        description += ", flip TTA"
    return Ensemble(paths, description, ckpt["arch"], [int(a) for a in ckpt["aus"]], settings, float(threshold),
                    tta)


def check_same_run(ckpt: dict, path: Path, ensemble: Ensemble) -> None:
    """Checkpoints averaged together must see the same input and predict the same AUs."""
    first = ensemble.checkpoints[0]
    if ckpt["arch"] != ensemble.arch or [int(a) for a in ckpt["aus"]] != ensemble.aus:
        raise UserError(f"{path} is a {ckpt['arch']} model of AUs {ckpt['aus']}, but {first} is a {ensemble.arch} "
                        f"model of AUs {ensemble.aus}: they are not one run")
    for key in INPUT_SETTINGS:
        if ckpt.get("args", {}).get(key) != ensemble.settings[key]:
            raise UserError(f"{path} was trained with {key} {ckpt.get('args', {}).get(key)}, {first} with "
                            f"{ensemble.settings[key]}: they are not one run")


@torch.no_grad()
def predict_crops(model: models.AUNet, crops: torch.Tensor, mean, std, device: torch.device,
                  batch_size: int, tta: str = "none", landmarks: np.ndarray | None = None) -> np.ndarray:
    """Sigmoid probabilities (N, A) of uint8 crops (N, 1, S, S), normalised as in training, and
    evaluated as main.py evaluates (engine.evaluate), mirror images included with tta="flip".
    `landmarks`: each face's 68 points in image pixels (N, 68, 2), for a --geometry model."""
    shape = None if landmarks is None else torch.from_numpy(geometry.normalise(landmarks))
    inputs = engine.Inputs(labels=torch.zeros(len(crops), model.num_aus), images=crops, mean=mean, std=std,
                           geometry=shape)
    return engine.evaluate(model, inputs, torch.arange(len(crops)), device, batch_size, tta=tta)


def load_member(ensemble: Ensemble, path: Path) -> models.AUNet:
    """One of the ensemble's models, checked to belong to the run, on the CPU."""
    model, ckpt = runs.load_trained_model(path)
    check_same_run(ckpt, path, ensemble)
    epochs = ckpt.get("args", {}).get("epochs")
    if epochs and ckpt["epoch"] + 1 < epochs:
        log.warning("%s stopped at epoch %d of %d: its training is not finished", path, ckpt["epoch"] + 1, epochs)
    return model


def ensemble_probs(ensemble: Ensemble, crops: np.ndarray, device: torch.device, batch_size: int,
                   landmarks: np.ndarray | None = None) -> np.ndarray:
    """The mean probability of the ensemble's models, loading one model at a time."""
    images = torch.from_numpy(crops).unsqueeze(1)
    mean, std = ensemble.mean_std
    total = np.zeros((len(crops), len(ensemble.aus)), dtype=np.float64)
    for path in ensemble.checkpoints:
        model = load_member(ensemble, path)
        total += predict_crops(model.to(device), images, mean, std, device, batch_size, ensemble.tta, landmarks)
        del model
    return total / len(ensemble.checkpoints)


class HeldEnsemble:
    """The ensemble's models kept in memory, loaded at the first call: a video's crops come in
    batches, and reloading every model for each batch would cost more than predicting. Gives
    exactly what ensemble_probs gives for the same crops."""

    def __init__(self, ensemble: Ensemble, device: torch.device, batch_size: int):
        self.ensemble, self.device, self.batch_size = ensemble, device, batch_size
        self.models: list[models.AUNet] = []

    def __call__(self, crops: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        if not self.models:
            self.models = [load_member(self.ensemble, path).to(self.device) for path in self.ensemble.checkpoints]
        images = torch.from_numpy(crops).unsqueeze(1)
        mean, std = self.ensemble.mean_std
        total = np.zeros((len(crops), len(self.ensemble.aus)), dtype=np.float64)
        for model in self.models:
            total += predict_crops(model, images, mean, std, self.device, self.batch_size, self.ensemble.tta,
                                   landmarks)
        return total / len(self.models)


# ----------------------------------------------------------------------------- videos

# A face in a video keeps its number while its box overlaps its last box by at least this much
# (intersection over union); at 25 frames per second a face moves far less than that between frames.
TRACK_IOU = 0.3


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes a (N, 4) and b (M, 4), as (x0, y0, x1, y1) -> (N, M)."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(high - low, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class FaceNumbers:
    """Numbers a video's faces so that a face keeps its number from frame to frame: a face takes
    the number of the face whose last box it overlaps most (IoU >= TRACK_IOU, each number once
    per frame), else the next new number. Boxes only, no identity: enough for the few, slowly
    moving faces of AU video; faces that cross each other may swap numbers."""

    def __init__(self):
        self.last_box: dict[int, np.ndarray] = {}

    def __call__(self, faces: list[Face]) -> list[int]:
        boxes = np.array([face.box for face in faces], dtype=np.float64).reshape(-1, 4)
        numbers = [-1] * len(faces)
        if self.last_box and len(faces):
            known = list(self.last_box)
            iou = box_iou(boxes, np.stack([self.last_box[k] for k in known]))
            used = set()
            for flat in np.argsort(-iou, axis=None, kind="stable"):  # best overlaps first
                i, j = divmod(int(flat), len(known))
                if iou[i, j] < TRACK_IOU:
                    break
                if numbers[i] == -1 and known[j] not in used:
                    numbers[i] = known[j]
                    used.add(known[j])
        for i, box in enumerate(boxes):
            if numbers[i] == -1:
                numbers[i] = len(self.last_box)
            self.last_box[numbers[i]] = box
        return numbers


@dataclass
class VideoFaces:
    """One input video after prediction. Its faces are kept as arrays, one entry per face per
    predicted frame in frame order (about 150 bytes each, 700 with landmarks for --draw), never
    the frames themselves; frames that gave no face, and what stopped the video, beside them."""

    path: Path
    aus: int  # how many AUs: the width of `probs` when there are no faces
    frame: np.ndarray = None  # (F,) frame number of each face
    time: np.ndarray = None  # (F,) seconds from the start of the video
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
    problem: str | None = None  # "unreadable video", "video cut short", "no face detector"
    detail: str = ""

    def __post_init__(self):
        if self.frame is None:
            self.set_faces([], [], [], [], [], [])

    def set_faces(self, frame, seconds, face, boxes, probs, landmarks) -> None:
        self.frame = np.asarray(frame, dtype=np.int64).reshape(-1)
        self.time = np.asarray(seconds, dtype=np.float64).reshape(-1)
        self.face = np.asarray(face, dtype=np.int64).reshape(-1)
        self.boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        self.probs = np.asarray(probs, dtype=np.float64).reshape(-1, self.aus)
        self.landmarks = None if landmarks is None else np.asarray(landmarks, dtype=np.float32).reshape(-1, 68, 2)

    @property
    def status(self) -> str:
        return f"{self.problem}: {self.detail}" if self.detail else str(self.problem)


class FaceBatch:
    """The faces of a video waiting for the model: about --batch-size crops at most (a frame's
    faces go in together), predicted together; then only their results are kept, as arrays."""

    def __init__(self, predict: HeldEnsemble, batch_size: int, keep_landmarks: bool):
        self.predict, self.batch_size, self.keep_landmarks = predict, batch_size, keep_landmarks
        self.crops: list[np.ndarray] = []
        self.waiting: list[tuple] = []  # (frame, time, number, box, landmarks) of each crop
        self.done: list[dict[str, np.ndarray]] = []

    def add(self, index: int, seconds: float, numbers: list[int], faces: list[Face], crops: list[np.ndarray]) -> None:
        for number, face, crop in sorted(zip(numbers, faces, crops), key=lambda t: t[0]):
            self.waiting.append((index, seconds, number, face.box, face.landmarks))
            self.crops.append(crop)
        if len(self.crops) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.crops:
            return
        frame, seconds, number, box, points = zip(*self.waiting)
        self.done.append({"frame": np.array(frame), "time": np.array(seconds), "face": np.array(number),
                          "boxes": np.array(box), "probs": self.predict(np.stack(self.crops), np.array(points)),
                          "landmarks": np.array(points, dtype=np.float32) if self.keep_landmarks else None})
        self.crops, self.waiting = [], []

    def store(self, result: VideoFaces) -> None:
        self.flush()
        if self.done:
            def joined(key: str) -> np.ndarray:
                return np.concatenate([chunk[key] for chunk in self.done])

            result.set_faces(joined("frame"), joined("time"), joined("face"), joined("boxes"), joined("probs"),
                             joined("landmarks") if self.keep_landmarks else None)


def video_progress(path: Path, total: int | None, quiet: bool):
    """A bar per video with frames per second and the time left (tqdm's rate and remaining)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=path.name, unit="frame", leave=False, dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())


def predict_video(path: Path, finder, no_finder: str | None, predict: HeldEnsemble, settings: dict,
                  args: argparse.Namespace, n_aus: int) -> VideoFaces:
    """Stream one video: find, number and crop the faces of every --every'th frame, predict them
    in batches, and keep only the results. Whatever goes wrong with this video is recorded in its
    result (and warned about) and the others go on."""
    result = VideoFaces(path, n_aus)
    if finder is None:
        result.problem, result.detail = "no face detector", no_finder
        log.warning("%s: %s", path, result.status)
        return result
    try:
        reader = video.VideoReader(path)
    except video.VideoError as e:
        result.problem, result.detail = "unreadable video", str(e)
        log.warning("%s: %s", path, result.status)
        return result
    batch = FaceBatch(predict, args.batch_size, keep_landmarks=args.draw is not None)
    numbers = FaceNumbers()
    started = time.perf_counter()
    with reader, video_progress(path, reader.expected_frames, args.quiet) as bar:
        result.rate = reader.rate
        try:
            for index, seconds, image in reader.frames(args.every):
                bar.update(reader.decoded - bar.n)
                result.predicted += 1
                try:
                    faces, crops = find_faces(path, to_gray(image), finder, settings)
                except NoFaces as e:
                    result.empty.append((index, seconds, f"{e.problem}: {e.detail}" if e.detail else e.problem))
                    result.frame_problems[e.problem] += 1
                    continue
                batch.add(index, seconds, numbers(faces), faces, crops)
            bar.update(reader.decoded - bar.n)
            reader.check_complete()
        except video.VideoError as e:
            result.problem = "video cut short" if isinstance(e, video.CutShort) else "unreadable video"
            result.detail = str(e)
        result.decoded = reader.decoded
    batch.store(result)
    elapsed = time.perf_counter() - started
    log.info("%s: %d frames decoded, %d predicted, %d faces in %s (%.1f frames/s)", path, result.decoded,
             result.predicted, len(result.face), utils.format_duration(elapsed),
             result.decoded / max(elapsed, 1e-9))
    if result.problem:
        log.warning("%s: %s", path, result.status)
    if result.empty:
        log.warning("%s: %d of %d predicted frames without a prediction (%s)", path, len(result.empty),
                    result.predicted, ", ".join(f"{n} {p}" for p, n in result.frame_problems.most_common()))
    return result


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


# ----------------------------------------------------------------------------- rows and drawings


def csv_header(aus: list[int], smoothed: bool = False) -> list[str]:
    """The CSV's columns; `frame` and `time_s` are empty for photos, the smooth_ ones come with --smooth."""
    names = [utils.au_name(a) for a in aus]
    columns = ["file", "frame", "time_s", "face", "status", "x0", "y0", "x1", "y1", "models",
               *(f"prob_{n}" for n in names), *(f"on_{n}" for n in names)]
    if smoothed:
        columns += [*(f"smooth_prob_{n}" for n in names), *(f"smooth_on_{n}" for n in names)]
    return columns


def au_values(probs: np.ndarray, threshold: float) -> list:
    """A face's prob_ and on_ cells: exact floats, then 1 where the AU is on."""
    return [*(repr(float(v)) for v in probs), *(int(v > threshold) for v in probs)]


def csv_rows(image: ImageFaces, probs: np.ndarray, ensemble: Ensemble, smoothed: bool = False) -> list[list]:
    """One row per face of `image` (probs: its faces' rows), or one row saying why it has none."""
    blanks = [""] * (2 * len(ensemble.aus) * (2 if smoothed else 1))
    if not image.faces:
        return [[str(image.path), "", "", "", image.status, "", "", "", "", "", *blanks]]
    rows = []
    for i, (face, p) in enumerate(zip(image.faces, probs)):
        box = [round(float(v), 2) for v in face.box]
        rows.append([str(image.path), "", "", i, image.status, *box, ensemble.description,
                     *au_values(p, ensemble.threshold), *blanks[2 * len(ensemble.aus):]])
    return rows


def video_rows(result: VideoFaces, ensemble: Ensemble, smoothed: bool = False):
    """A video's rows, in frame order: one per face of each predicted frame (faces by number), one
    for each predicted frame without a face, and last one saying what stopped the video, if anything."""
    path, n_blanks = str(result.path), 2 * len(ensemble.aus) * (2 if smoothed else 1)
    blanks = [""] * n_blanks

    def seconds(t: float) -> str | float:
        return "" if t != t else round(float(t), 6)  # NaN: the video gives no times

    faces = ((int(result.frame[i]), i) for i in range(len(result.frame)))
    empty = ((frame, -1, t, status) for frame, t, status in result.empty)
    for frame, i, *rest in heapq.merge(faces, empty, key=lambda row: row[0]):
        if i < 0:
            t, status = rest
            yield [path, frame, seconds(t), "", status, "", "", "", "", "", *blanks]
            continue
        box = [round(float(v), 2) for v in result.boxes[i]]
        row = [path, frame, seconds(result.time[i]), int(result.face[i]), "ok", *box, ensemble.description,
               *au_values(result.probs[i], ensemble.threshold)]
        if smoothed:
            row += au_values(result.smoothed[i], ensemble.threshold)
        yield row
    if result.problem is not None:
        yield [path, "", "", "", result.status, "", "", "", "", "", *blanks]


def drawing_path(folder: Path, image_path: Path, taken: set[Path], ending: str = ".png") -> Path:
    """folder/<stem><ending>, numbered when two inputs share a stem; never one of the inputs themselves."""
    out, n = folder / f"{image_path.stem}{ending}", 1
    while out.resolve() in taken:
        n += 1
        out = folder / f"{image_path.stem}-{n}{ending}"
    taken.add(out.resolve())
    return out


def au_label(probs: np.ndarray, ensemble: Ensemble) -> str:
    on = [utils.au_name(a) for a, v in zip(ensemble.aus, probs) if v > ensemble.threshold]
    return ", ".join(on) or "no AU on"


@functools.lru_cache(maxsize=64)
def label_font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # cached: a video draws the same sizes on every frame


def annotate(canvas: Image.Image, faces: list[Face], labels: list[str], note: str | None = None) -> None:
    """Draw each face's box, its 68 landmarks and its label (the AUs that are on) onto `canvas`,
    and `note` (why there is no face) in the corner; lines, dots and text are sized to each face,
    so small faces in big photos stay readable."""
    draw = ImageDraw.Draw(canvas)
    texts = []
    for face, label in zip(faces, labels):
        x0, y0, x1, y1 = face.box
        size = max(x1 - x0, y1 - y0, 1)
        width, r = max(1, round(size / 150)), max(1.0, size / 100)
        draw.rectangle(face.box, outline=(0, 255, 0), width=width)
        for x, y in face.landmarks:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 0, 0))
        texts.append((x0, y0, size, label))
    if note is not None:
        texts.append((0, 0, max(canvas.size) / 2, note))
    for x, y, size, text in texts:
        font = label_font(max(11, round(size / 12)))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(2, round(size / 100))
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        y = y - h if y >= h else y  # above the box where it fits, else inside it
        draw.rectangle((x, y, x + w, y + h), fill=(0, 0, 0))
        draw.text((x + pad - left, y + pad - top), text, fill=(255, 255, 0), font=font)


def draw_faces(image: ImageFaces, probs: np.ndarray, ensemble: Ensemble, out: Path) -> None:
    """The image with each face's box, its 68 landmarks and the names of the AUs that are on, as a PNG."""
    canvas = read_image(image.path).convert("RGB")
    annotate(canvas, image.faces, [au_label(p, ensemble) for p in probs], None if image.faces else image.status)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    utils.atomic_write_bytes(out, buffer.getvalue())


def draw_all(located: list[ImageFaces], per_image: list[np.ndarray], ensemble: Ensemble, folder: Path,
             taken: set[Path]) -> None:
    """--draw: every image that could be read, as folder/<stem>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    for image, probs in zip(located, per_image):
        if image.problem != "unreadable image":
            draw_faces(image, probs, ensemble, drawing_path(folder, image.path, taken))


def draw_video(result: VideoFaces, ensemble: Ensemble, folder: Path, taken: set[Path],
               args: argparse.Namespace) -> list[Path]:
    """--draw for a video: folder/<stem>.mp4, its predicted frames annotated like photos (each face
    labelled with its number; with --smooth, the smoothed AUs) at the video's rate / --every, so it
    plays in real time; and folder/<stem>_aus.png, each AU's probability over time. The video is
    decoded a second time, so the frames are never held."""
    if result.predicted == 0:  # nothing was decoded: nothing to draw
        return []
    folder.mkdir(parents=True, exist_ok=True)
    probs = result.smoothed if result.smoothed is not None else result.probs
    empty = {frame: status for frame, _, status in result.empty}
    rate = result.rate / args.every if result.rate else None
    last = max([*result.frame[-1:].tolist(), *(frame for frame, _, _ in result.empty[-1:])])

    def write(file) -> None:
        writer = None
        with video.VideoReader(result.path) as reader, \
                video_progress(Path(f"{result.path.name} (drawing)"), result.decoded, args.quiet) as bar:
            try:
                for index, _, image in reader.frames(args.every):
                    bar.update(reader.decoded - bar.n)
                    if index > last:
                        break  # the first decoding stopped before this frame
                    low, high = np.searchsorted(result.frame, [index, index + 1])
                    faces = [Face(tuple(result.boxes[i]), result.landmarks[i]) for i in range(low, high)]
                    labels = [f"{result.face[i]}: {au_label(probs[i], ensemble)}" for i in range(low, high)]
                    annotate(image, faces, labels, empty.get(index))
                    writer = writer or video.VideoWriter(file, rate, image.size)
                    writer.write(image)
            except video.VideoError:
                pass  # the rows already say where decoding stopped; what was drawn is kept
        if writer is not None:
            writer.close()

    out = drawing_path(folder, result.path, taken, ".mp4")
    utils.write_atomically(out, write)
    written = [out]
    if len(result.face):
        written.append(plot_video(result, ensemble, args, drawing_path(folder, result.path, taken, "_aus.png")))
    return written


def with_gaps(position: np.ndarray, *series: np.ndarray) -> list[np.ndarray]:
    """NaN between predicted frames that are not neighbours, so a plotted line breaks where a face was missing."""
    cuts = np.flatnonzero(np.diff(position) > 1) + 1
    return [np.insert(np.asarray(s, dtype=np.float64), cuts, np.nan) for s in series]


def plot_video(result: VideoFaces, ensemble: Ensemble, args: argparse.Namespace, out: Path,
               most_faces: int = 10) -> Path:
    """Each AU's probability over the video, one panel per AU, a line per face (the `most_faces`
    seen longest); with --smooth the raw values thin and the smoothed ones bold."""
    aus, threshold = ensemble.aus, ensemble.threshold
    timed = bool(np.isfinite(result.time).all())
    x_all = result.time if timed else result.frame.astype(np.float64)
    shown = sorted(n for n, _ in Counter(result.face.tolist()).most_common(most_faces))
    fig = metrics.new_figure(10, 0.75 * len(aus) + 1.3)
    axes = fig.subplots(len(aus), 1, sharex=True, squeeze=False)[:, 0]
    colors = [f"C{i % 10}" for i in range(len(shown))]
    for j, (ax, au) in enumerate(zip(axes, aus)):
        for number, color in zip(shown, colors):
            rows = np.flatnonzero(result.face == number)
            position = result.frame[rows] // args.every
            x, raw = with_gaps(position, x_all[rows], result.probs[rows, j])
            label = f"face {number}" if len(shown) > 1 else None
            if result.smoothed is not None:
                (smooth,) = with_gaps(position, result.smoothed[rows, j])
                ax.plot(x, raw, color=color, linewidth=0.7, alpha=0.35)
                ax.plot(x, smooth, color=color, linewidth=1.5, label=label)
            else:
                ax.plot(x, raw, color=color, linewidth=1.2, label=label)
        ax.axhline(threshold, color="gray", linestyle="--", linewidth=0.8)
        ax.set_ylim(-0.03, 1.03)
        ax.set_yticks([0, 1])
        ax.set_ylabel(utils.au_name(au), rotation=0, ha="right", va="center")
        ax.grid(axis="x", alpha=0.3)
    if len(shown) > 1:
        axes[0].legend(loc="upper right", fontsize=7, ncol=min(len(shown), 5))
    axes[-1].set_xlabel("time (s)" if timed else "frame")
    how = f"; bold: mean over {args.smooth} frames" if result.smoothed is not None else ""
    every = f", 1 frame in {args.every}" if args.every > 1 else ""
    fig.suptitle(f"{result.path.name}: probability of each AU ({ensemble.description}{every}; "
                 f"dashed: on above {threshold:g}{how})", fontsize=10)
    fig.tight_layout()
    return metrics.save_png(fig, out)


# ----------------------------------------------------------------------------- entry point


def progress(items: list, quiet: bool):
    from tqdm import tqdm

    return tqdm(items, desc="images", unit="img", leave=False, disable=quiet or not sys.stderr.isatty())


def main(args: argparse.Namespace) -> dict:
    """Predict every face in the images and videos named by `args`; write the CSV (and drawings);
    return a summary."""
    utils.setup_logging(args.quiet)
    check_args(args)
    device = engine.resolve_device(args.device)
    inputs = find_images(args.images)
    images = [p for p in inputs if not video.is_video(p)]
    videos = [p for p in inputs if video.is_video(p)]
    ensemble = open_ensemble(Path(args.model), args.threshold, args.tta)
    finder = face_finder(args)
    smoothed = args.smooth is not None
    if not videos and (args.every != 1 or smoothed):
        log.warning("--every and --smooth apply to videos, and none was given: each photo is predicted as it is")

    located = [locate_faces(path, finder, ensemble.settings) for path in progress(images, args.quiet)]
    crops = [c for image in located for c in image.crops]
    points = np.array([face.landmarks for image in located for face in image.faces])
    probs = (ensemble_probs(ensemble, np.stack(crops), device, args.batch_size, points) if crops
             else np.zeros((0, len(ensemble.aus))))
    per_image = np.split(probs, np.cumsum([len(image.faces) for image in located])[:-1])

    clips = []
    if videos:
        video_finder, no_finder = video_face_finder(args, finder)
        held = HeldEnsemble(ensemble, device, args.batch_size)
        for path in videos:
            clip = predict_video(path, video_finder, no_finder, held, ensemble.settings, args, len(ensemble.aus))
            if smoothed:
                clip.smoothed = smooth_probs(clip.frame // args.every, clip.face, clip.probs, args.smooth)
            clips.append(clip)
        del held  # the models

    out = Path(args.out)
    results = {image.path: csv_rows(image, p, ensemble, smoothed) for image, p in zip(located, per_image)}
    results.update({clip.path: video_rows(clip, ensemble, smoothed) for clip in clips})
    rows = (row for path in inputs for row in results[path])  # in the order given
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        utils.write_csv(out, csv_header(ensemble.aus, smoothed), rows)
        if args.draw is not None:
            taken = {p.resolve() for p in inputs}
            draw_all(located, per_image, ensemble, Path(args.draw), taken)
            for clip in clips:
                draw_video(clip, ensemble, Path(args.draw), taken, args)
    except OSError as e:  # a read-only folder, a full disk
        raise UserError(f"cannot write {e.filename or out}: {e.strerror or e}") from None

    summary = {"images": len(located), "faces": len(crops) + sum(len(c.face) for c in clips),
               "videos": len(clips), "frames": sum(c.predicted for c in clips),
               "models": ensemble.description, "threshold": ensemble.threshold, "csv": str(out),
               "drawings": args.draw,
               "problems": dict(Counter(i.problem for i in located if i.problem is not None).most_common()),
               "video_problems": dict(Counter(c.problem for c in clips if c.problem is not None).most_common()),
               "frame_problems": dict(sum((c.frame_problems for c in clips), Counter()).most_common())}
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
    for key, what in (("problems", "image"), ("frame_problems", "video frame")):
        problems = summary[key]
        if problems:
            lines.append(f"{plural(sum(problems.values()), what)} without a prediction: "
                         + ", ".join(f"{n} {problem}" for problem, n in problems.items()))
    if summary["video_problems"]:
        lines.append(f"{plural(sum(summary['video_problems'].values()), 'video')} with a problem: "
                     + ", ".join(f"{n} {problem}" for problem, n in summary["video_problems"].items()))
    lines.append(f"predictions: {summary['csv']}")
    if summary["drawings"]:
        lines.append(f"drawings: {summary['drawings']}")
    return "\n".join(lines)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def cli(argv: list[str] | None = None) -> int:
    return utils.run_cli(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
