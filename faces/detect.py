"""The faces in a photo or a video frame: found from CK+-style landmark files or by dlib, each
with its 68 iBUG landmarks, cropped exactly as the run's training cropped, and numbered so that a
face in a video keeps its number from frame to frame.

dlib (optional, requirements-predict.txt) is imported only when faces are to be detected.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

import ckplus
import dataset
from faces import video
import preprocess
import utils
from utils import UserError

LANDMARK_SUFFIX = "_landmarks.txt"
SHAPE_PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
SHAPE_PREDICTOR_ENV = "AU_SHAPE_PREDICTOR"
INSTALL_HINT = "pip install -r requirements-predict.txt"
# Above this side (pixels) dlib searches the image as it is; below it, upsampled once so that
# faces down to about 40 px are found. Upsampling a phone photo would cost seconds and GBs.
UPSAMPLE_BELOW = 1024
# A face in a video keeps its number while its box overlaps its last box by at least this much
# (intersection over union); at 25 frames per second a face moves far less than that between frames.
TRACK_IOU = 0.3


def status(problem: str | None, detail: str = "") -> str:
    """The CSV's status cell: ok, or the problem and its detail."""
    if problem is None:
        return "ok"
    return f"{problem}: {detail}" if detail else problem


@dataclass
class Face:
    """One face in an image: its box (x0, y0, x1, y1) and 68 iBUG landmarks, in image pixels."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray = field(repr=False)


class NoFaces(Exception):
    """Why an image (a photo, a video frame, a whole video) gave no face to predict on: a short
    `problem` (counted in the summary) and the detail; both go into the CSV row."""

    def __init__(self, problem: str, detail: str = ""):
        super().__init__(status(problem, detail))
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
            raise UserError(f"{predictor_path} is not a dlib shape predictor ({utils.first_line(e)}): "
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


def face_finder(args: argparse.Namespace, for_video: bool = False):
    """What finds the faces: landmark files (--landmarks) or dlib, as a callable (image path, gray
    array) -> faces; a clear error when neither is at hand. Landmark files name still images, so
    `for_video` asks for dlib even under --landmarks (the error then says so)."""
    if args.landmarks is not None and not for_video:
        return LandmarkFiles(Path(args.landmarks))
    why = "videos need dlib, --landmarks files cover photos only" if args.landmarks is not None else ""
    try:
        import dlib  # noqa: F401  (optional dependency)
    except ImportError:
        if why:
            raise UserError(f"{why}: {INSTALL_HINT}") from None
        raise UserError(f"no face detector: dlib is not installed; {INSTALL_HINT}, or, for photos, pass "
                        f"--landmarks DIR with CK+-style <image stem>{LANDMARK_SUFFIX} files") from None
    try:
        return DlibFaces(shape_predictor_path(args.shape_predictor), args.upsample)
    except UserError as e:
        if why:
            raise UserError(f"{why}: {e}") from None
        raise


def face_finders(args: argparse.Namespace, inputs: list[Path]) -> tuple:
    """What finds the faces in photos, and in video frames: the same, except that landmark files
    name still images, so with --landmarks a video's faces come from dlib; without dlib each video
    gets a row saying so (a NoFaces in place of its finder) and the photos are still predicted."""
    finder = face_finder(args)
    if args.landmarks is None or not any(video.is_video(p) for p in inputs):
        return finder, finder
    try:
        return finder, face_finder(args, for_video=True)
    except UserError as e:
        return finder, NoFaces("no face detector", str(e))


def to_gray(image: Image.Image) -> Image.Image:
    """8-bit gray, the conversion preprocess.crop_face makes of every CK+ frame in training."""
    return image if image.mode == "L" else image.convert("L")


def find_faces(path: Path, image: Image.Image, finder, settings: dict) -> tuple[list[Face], list[np.ndarray]]:
    """The faces in one photo or video frame, each cropped from its gray image exactly as the
    run's training cropped (settings: the run's crop, margin and image_size); raises NoFaces."""
    gray = to_gray(image)
    faces = finder(path, np.asarray(gray))
    if not faces:
        raise NoFaces("no face")
    try:
        crops = [preprocess.crop_face(gray, face.landmarks, settings["image_size"], settings["crop"],
                                      settings["margin"], settings["crop_fill"]) for face in faces]
    except ValueError as e:  # the original crop mode refuses landmarks outside the frame
        raise NoFaces("landmarks outside the image", str(e)) from None
    return faces, crops


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
    """Numbers a clip's faces so that a face keeps its number from frame to frame: a face takes
    the number of the face whose last box it overlaps most (IoU >= TRACK_IOU, each number once
    per frame), else the next new number. In a clip's first frame (a photo's only one) the faces
    are numbered 0, 1, ... in the order found. Boxes only, no identity: enough for the few,
    slowly moving faces of AU video; faces that cross each other may swap numbers."""

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
