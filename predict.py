"""Predict facial Action Units on new photos with a run that main.py trained.

    python predict.py RUN_DIR photo.jpg more_photos/                  # faces found by dlib
    python predict.py RUN_DIR frames/ --landmarks Landmarks/          # CK+-style landmark files
    python predict.py RUN_DIR/fold2/checkpoint.pth photo.jpg --draw drawn/ --out aus.csv

A run folder predicts with its final model (main.py --final) when it has one, otherwise with
the mean probability of its fold models; a checkpoint file predicts with that model alone.
Every face goes through exactly the preprocessing the run trained with: the crop from its 68
landmarks, gray, the run's input size and normalisation, and the run's test-time augmentation
(--tta flip: the mean of each face and its mirror image). The CSV has one row per face, and one
row for each image that gave none, saying why.

Reads top to bottom: arguments, the images, the faces in them, the models, the rows and
drawings, and the command-line entry point at the end.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

import ckplus
import dataset
import engine
import models
import preprocess
import runs
import utils
from utils import UserError

log = logging.getLogger("au")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
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
        description="Predict facial Action Units on new photos with a run that main.py trained.",
        formatter_class=utils.HelpFormatter,
    )
    p.add_argument("model", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a run folder (its final model, or the mean of its fold models) or one checkpoint.pth")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help=f"image files, or folders searched recursively for {' '.join(IMAGE_SUFFIXES)}")
    p.add_argument("--out", metavar="CSV", default="predictions.csv", help="the CSV to write, one row per face")
    p.add_argument("--landmarks", metavar="DIR", default=None,
                   help=f"CK+-style landmark files (<image stem>{LANDMARK_SUFFIX}) anywhere under DIR, instead of "
                        f"detecting faces with dlib")
    p.add_argument("--shape-predictor", metavar="PATH", default=None,
                   help=f"dlib's {SHAPE_PREDICTOR_FILE} (default: ${SHAPE_PREDICTOR_ENV}, or the copy the "
                        f"face-recognition-models package installs)")
    p.add_argument("--upsample", type=int, metavar="N", default=None,
                   help=f"times dlib upsamples an image to find small faces (default: 1 for images up to "
                        f"{UPSAMPLE_BELOW} px, else 0)")
    p.add_argument("--draw", metavar="DIR", default=None,
                   help="also write each image with its face boxes, landmarks and the AUs that are on")
    p.add_argument("--threshold", type=float, metavar="P", default=None,
                   help="an AU is on when its probability is above P (default: the run's --threshold)")
    p.add_argument("--tta", choices=engine.TTA_MODES, default=None,
                   help="test-time augmentation: flip averages the probabilities of each face and its mirror image "
                        "(default: the run's --tta)")
    p.add_argument("-b", "--batch-size", type=int, metavar="N", default=32, help="faces per forward pass")
    p.add_argument("--device", default="auto", metavar="DEV", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors; no progress bar")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Reject values that cannot work, naming the flag and the fix."""
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise UserError("--threshold must be between 0 and 1 (exclusive)")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.upsample is not None and not 0 <= args.upsample <= 4:
        raise UserError("--upsample must be between 0 and 4")
    if args.landmarks is not None and not Path(args.landmarks).is_dir():
        raise UserError(f"--landmarks {args.landmarks} is not a folder: give the folder holding the landmark files")


# ----------------------------------------------------------------------------- images


def images_under(folder: Path) -> list[Path]:
    """Every image file under `folder`, recursively, in a stable (sorted) order, junk left out."""
    return sorted(p for p in ckplus.walk_files(folder) if p.name.lower().endswith(IMAGE_SUFFIXES))


def find_images(paths: list[str]) -> list[Path]:
    """The IMAGE_OR_FOLDER arguments -> image files, each once. A file named directly is always
    tried (a bad one gets its own CSV row); folders contribute only files that look like images."""
    found: dict[Path, Path] = {}
    for arg in paths:
        path = Path(arg)
        if not path.exists():
            raise UserError(f"{path} does not exist: give image files or folders of images")
        if path.is_dir():
            inside = images_under(path)
            if not inside:
                log.warning("%s holds no %s files", path, "/".join(IMAGE_SUFFIXES))
            for p in inside:
                found.setdefault(p.resolve(), p)
        else:
            found.setdefault(path.resolve(), path)
    if not found:
        raise UserError(f"no images in {' '.join(paths)}: give {'/'.join(IMAGE_SUFFIXES)} files or folders "
                        f"holding them")
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
        raise UserError(f"no face detector: dlib is not installed; {INSTALL_HINT}, or pass --landmarks DIR "
                        f"with CK+-style <image stem>{LANDMARK_SUFFIX} files") from None
    return DlibFaces(shape_predictor_path(args.shape_predictor), args.upsample)


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
        faces = finder(path, np.asarray(gray))
        if not faces:
            raise NoFaces("no face")
        try:
            crops = [preprocess.crop_face(gray, face.landmarks, settings["image_size"], settings["crop"],
                                          settings["margin"]) for face in faces]
        except ValueError as e:  # the original crop mode refuses landmarks outside the frame
            raise NoFaces("landmarks outside the image", str(e)) from None
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
                  batch_size: int, tta: str = "none") -> np.ndarray:
    """Sigmoid probabilities (N, A) of uint8 crops (N, 1, S, S), normalised as in training, and
    evaluated as main.py evaluates (engine.evaluate), mirror images included with tta="flip"."""
    inputs = engine.Inputs(labels=torch.zeros(len(crops), model.num_aus), images=crops, mean=mean, std=std)
    return engine.evaluate(model, inputs, torch.arange(len(crops)), device, batch_size, tta=tta)


def ensemble_probs(ensemble: Ensemble, crops: np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
    """The mean probability of the ensemble's models, loading one model at a time."""
    images = torch.from_numpy(crops).unsqueeze(1)
    mean, std = ensemble.mean_std
    total = np.zeros((len(crops), len(ensemble.aus)), dtype=np.float64)
    for path in ensemble.checkpoints:
        model, ckpt = runs.load_trained_model(path)
        check_same_run(ckpt, path, ensemble)
        epochs = ckpt.get("args", {}).get("epochs")
        if epochs and ckpt["epoch"] + 1 < epochs:
            log.warning("%s stopped at epoch %d of %d: its training is not finished", path, ckpt["epoch"] + 1, epochs)
        total += predict_crops(model.to(device), images, mean, std, device, batch_size, ensemble.tta)
        del model
    return total / len(ensemble.checkpoints)


# ----------------------------------------------------------------------------- rows and drawings


def csv_header(aus: list[int]) -> list[str]:
    return ["file", "face", "status", "x0", "y0", "x1", "y1", "models",
            *(f"prob_{utils.au_name(a)}" for a in aus), *(f"on_{utils.au_name(a)}" for a in aus)]


def csv_rows(image: ImageFaces, probs: np.ndarray, ensemble: Ensemble) -> list[list]:
    """One row per face of `image` (probs: its faces' rows), or one row saying why it has none."""
    blanks = [""] * (2 * len(ensemble.aus))
    if not image.faces:
        return [[str(image.path), "", image.status, "", "", "", "", "", *blanks]]
    rows = []
    for i, (face, p) in enumerate(zip(image.faces, probs)):
        box = [round(float(v), 2) for v in face.box]
        rows.append([str(image.path), i, image.status, *box, ensemble.description,
                     *(repr(float(v)) for v in p), *(int(v > ensemble.threshold) for v in p)])
    return rows


def drawing_path(folder: Path, image_path: Path, taken: set[Path]) -> Path:
    """folder/<stem>.png, numbered when two inputs share a stem; never one of the inputs themselves."""
    out, n = folder / f"{image_path.stem}.png", 1
    while out.resolve() in taken:
        n += 1
        out = folder / f"{image_path.stem}-{n}.png"
    taken.add(out.resolve())
    return out


def draw_faces(image: ImageFaces, probs: np.ndarray, ensemble: Ensemble, out: Path) -> None:
    """The image with each face's box, its 68 landmarks and the names of the AUs that are on;
    lines, dots and text are sized to each face, so small faces in big photos stay readable."""
    canvas = read_image(image.path).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    labels = []
    for face, p in zip(image.faces, probs):
        x0, y0, x1, y1 = face.box
        size = max(x1 - x0, y1 - y0, 1)
        width, r = max(1, round(size / 150)), max(1.0, size / 100)
        draw.rectangle(face.box, outline=(0, 255, 0), width=width)
        for x, y in face.landmarks:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 0, 0))
        on = [utils.au_name(a) for a, v in zip(ensemble.aus, p) if v > ensemble.threshold]
        labels.append((x0, y0, size, ", ".join(on) or "no AU on"))
    if not image.faces:
        labels.append((0, 0, max(canvas.size) / 2, image.status))
    for x, y, size, text in labels:
        font = ImageFont.load_default(size=max(11, round(size / 12)))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(2, round(size / 100))
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        y = y - h if y >= h else y  # above the box where it fits, else inside it
        draw.rectangle((x, y, x + w, y + h), fill=(0, 0, 0))
        draw.text((x + pad - left, y + pad - top), text, fill=(255, 255, 0), font=font)
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


# ----------------------------------------------------------------------------- entry point


def progress(items: list, quiet: bool):
    from tqdm import tqdm

    return tqdm(items, desc="images", unit="img", leave=False, disable=quiet or not sys.stderr.isatty())


def main(args: argparse.Namespace) -> dict:
    """Predict every face in the images named by `args`; write the CSV (and drawings); return a summary."""
    utils.setup_logging(args.quiet)
    check_args(args)
    device = engine.resolve_device(args.device)
    images = find_images(args.images)
    ensemble = open_ensemble(Path(args.model), args.threshold, args.tta)
    finder = face_finder(args)

    located = [locate_faces(path, finder, ensemble.settings) for path in progress(images, args.quiet)]
    crops = [c for image in located for c in image.crops]
    probs = (ensemble_probs(ensemble, np.stack(crops), device, args.batch_size) if crops
             else np.zeros((0, len(ensemble.aus))))
    per_image = np.split(probs, np.cumsum([len(image.faces) for image in located])[:-1])

    out = Path(args.out)
    rows = [row for image, p in zip(located, per_image) for row in csv_rows(image, p, ensemble)]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        utils.write_csv(out, csv_header(ensemble.aus), rows)
        if args.draw is not None:
            draw_all(located, per_image, ensemble, Path(args.draw), taken={p.resolve() for p in images})
    except OSError as e:  # a read-only folder, a full disk
        raise UserError(f"cannot write {e.filename or out}: {e.strerror or e}") from None

    summary = {"images": len(located), "faces": len(crops), "models": ensemble.description,
               "threshold": ensemble.threshold, "csv": str(out), "drawings": args.draw,
               "problems": dict(Counter(i.problem for i in located if i.problem is not None).most_common())}
    print(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    """A few lines for the terminal: how many images and faces, what predicted, where it went."""
    lines = [f"{plural(summary['images'], 'image')}, {plural(summary['faces'], 'face')}; "
             f"models: {summary['models']}; an AU is on above {summary['threshold']:g}"]
    problems = summary["problems"]
    if problems:
        lines.append(f"{plural(sum(problems.values()), 'image')} without a prediction: "
                     + ", ".join(f"{n} {problem}" for problem, n in problems.items()))
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
