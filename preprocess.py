"""From a CK+ frame and its 68 landmarks to a model input.

Two stages with different costs. `crop_face` runs once per frame (decoded PNG in, small
uint8 square out) and its result is cached by dataset.py. `prepare_batch` runs on every
batch, on the training device: uint8 crops become normalised 3-channel floats, with the
optional augmentation applied there so it costs no extra pass over the data.
"""
from __future__ import annotations

import math
from typing import Sequence as Seq

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CROP_MODES = ("square", "original")
# A square crop that reaches past the frame: `black` pads with zeros (the default: on the team's real
# 48x48 faces it measured 0.844 macro F1 against 0.833 for `image`, a paired difference of +0.011
# [-0.007, +0.031]); `image` moves it inside the frame where it fits and replicates the frame's edge
# for what is still outside.
CROP_FILLS = ("black", "image")
DEFAULT_FILL = "black"
NORM_MODES = ("weights", "half")
DEFAULT_MARGIN = 0.25

# The original's rectangle around the landmark box, in pixels of the 640x490 frame.
ORIGINAL_PAD_SIDES = 50
ORIGINAL_PAD_TOP = 100
ORIGINAL_PAD_BOTTOM = 10


class OutsideFrame(ValueError):
    """The landmarks put the face outside the frame (a bad landmark file)."""


def crop_box(
    landmarks: np.ndarray,
    frame_size: tuple[int, int],
    mode: str = "square",
    margin: float = DEFAULT_MARGIN,
) -> tuple[int, int, int, int]:
    """The face box `(left, top, right, bottom)` in frame pixels, right/bottom exclusive.

    `original` is the original program's rectangle, clipped to the frame. `square` is
    centred on the landmark box with side `max(width, height) * (1 + margin)`; it may
    reach past the frame (`crop_face` decides what fills those parts, `inside_frame` moves it in).
    """
    width, height = frame_size
    pts = np.asarray(landmarks, dtype=np.float64)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    if mode == "original":
        left = max(0, math.floor(x0 - ORIGINAL_PAD_SIDES))
        right = min(width, math.ceil(x1 + ORIGINAL_PAD_SIDES))
        top = max(0, math.floor(y0 - ORIGINAL_PAD_TOP))
        bottom = min(height, math.ceil(y1 + ORIGINAL_PAD_BOTTOM))
        if right - left < 2 or bottom - top < 2:
            raise OutsideFrame("landmarks lie outside the frame")
        return left, top, right, bottom
    if mode == "square":
        side = max(x1 - x0, y1 - y0) * (1.0 + margin)
        side = max(int(round(side)), 2)
        left = int(round((x0 + x1) / 2 - side / 2))
        top = int(round((y0 + y1) / 2 - side / 2))
        return left, top, left + side, top + side
    raise ValueError(f"unknown crop mode {mode!r}; choose one of {', '.join(CROP_MODES)}")


def inside_frame(box: tuple[int, int, int, int], frame_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box moved (not resized) to lie inside the frame along each axis where its side fits;
    along an axis where it does not fit it stays centred where it was."""
    left, top, right, bottom = box

    def shift(low: int, high: int, limit: int) -> int:
        if high - low > limit:
            return 0
        return -low if low < 0 else limit - high if high > limit else 0

    dx, dy = shift(left, right, frame_size[0]), shift(top, bottom, frame_size[1])
    return left + dx, top + dy, right + dx, bottom + dy


def _edge_crop(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """`box` of `image`, the part outside the frame filled by replicating the frame's edge pixels."""
    left, top, right, bottom = box
    width, height = image.size
    pad = (max(0, -top), max(0, bottom - height)), (max(0, -left), max(0, right - width))
    if not any(p for pair in pad for p in pair):
        return image.crop(box)
    array = np.pad(np.asarray(image), pad, mode="edge")
    x0, y0 = left + pad[1][0], top + pad[0][0]
    return Image.fromarray(array[y0:y0 + bottom - top, x0:x0 + right - left])


def crop_face(
    image: Image.Image | np.ndarray,
    landmarks: np.ndarray,
    size: int,
    mode: str = "square",
    margin: float = DEFAULT_MARGIN,
    fill: str = DEFAULT_FILL,
) -> np.ndarray:
    """Crop the face and resize it to a `size` x `size` grayscale uint8 array.

    A square box that reaches past the frame is, with fill="black", padded black; with
    fill="image" it is moved inside the frame where it fits, and what still lies outside (a face
    larger than the frame) repeats the frame's edge. The resize is Pillow's
    antialiased bilinear, so shrinking a 250 px face to 64 px does not alias.
    """
    if fill not in CROP_FILLS:
        raise ValueError(f"unknown crop fill {fill!r}; choose one of {', '.join(CROP_FILLS)}")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.mode != "L":
        image = image.convert("L")
    box = face_box(landmarks, image.size, mode, margin, fill)
    if fill == "black":
        face = image.crop(box)  # Pillow fills the area outside the frame with 0
    else:
        face = _edge_crop(image, box)
    face = face.resize((size, size), Image.BILINEAR)
    return np.asarray(face, dtype=np.uint8)


def face_box(landmarks: np.ndarray, frame_size: tuple[int, int], mode: str, margin: float, fill: str):
    """The box `crop_face` cuts: `crop_box`, moved inside the frame unless the fill is black."""
    box = crop_box(landmarks, frame_size, mode, margin)
    return box if fill == "black" else inside_frame(box, frame_size)


def crop_points(landmarks: np.ndarray, frame_size: tuple[int, int], size: int, mode: str = "square",
                margin: float = DEFAULT_MARGIN, fill: str = DEFAULT_FILL) -> np.ndarray:
    """The landmarks (68, 2, frame pixels) where `crop_face` puts them in its `size` x `size` crop:
    the same box (`face_box`), and the resize's pixel-centre mapping."""
    left, top, right, bottom = face_box(landmarks, frame_size, mode, margin, fill)
    scale = np.array([size / (right - left), size / (bottom - top)])
    return (np.asarray(landmarks, dtype=np.float64) - (left, top) + 0.5) * scale - 0.5


def resolve_norm(norm: str, weights_mean: Seq[float], weights_std: Seq[float]) -> tuple[tuple, tuple]:
    """Mean and std for `--norm`: the backbone weights' own, or the original's 0.5/0.5."""
    if norm == "weights":
        return tuple(map(float, weights_mean)), tuple(map(float, weights_std))
    if norm == "half":
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    raise ValueError(f"unknown normalisation {norm!r}; choose one of {', '.join(NORM_MODES)}")


def augment_draws(b: int, generator: torch.Generator) -> torch.Tensor:
    """The random numbers of one batch's augmentation, (B, 5): column 0 < 0.5 flips the image
    (`flipped`), the rest are its jitter. Drawn once, so the landmarks' geometry can be mirrored
    exactly where the image is."""
    return torch.rand(b, 5, generator=generator)


def flipped(draws: torch.Tensor) -> torch.Tensor:
    """Which images of a batch `augment_batch` mirrors, from its draws: (B,) bool."""
    return draws[:, 0] < 0.5


def augment_batch(images: torch.Tensor, generator: torch.Generator | None = None,
                  draws: torch.Tensor | None = None) -> torch.Tensor:
    """Random horizontal flip and a small affine jitter, drawn per image (or given: `draws`).

    Works on float images in [0, 255] of shape (B, C, H, W) on any device. The random
    numbers come from a CPU generator so a seed gives the same batch on CPU and CUDA.
    Flipping keeps the labels: the 10 AUs are coded without a side.
    """
    b = images.shape[0]
    rand = augment_draws(b, generator) if draws is None else draws
    flip = torch.where(flipped(rand), -1.0, 1.0)
    angle = (rand[:, 1] - 0.5) * math.radians(16)  # +-8 degrees
    scale = 1.0 + (rand[:, 2] - 0.5) * 0.10  # +-5 %
    shift = (rand[:, 3:5] - 0.5) * 0.08  # +-4 % of the side, in [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    theta[:, :, 2] = shift
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def prepare_batch(
    images: torch.Tensor,
    mean: Seq[float],
    std: Seq[float],
    *,
    augment: bool = False,
    generator: torch.Generator | None = None,
    draws: torch.Tensor | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 crops (B, 1 or 3, H, W) -> normalised float (B, 3, H, W) on the same device.

    Gray becomes three channels by broadcasting against the per-channel mean/std, which
    folds the copy, the /255 and the normalisation into one fused multiply-add. `draws`: the
    augmentation's random numbers, drawn already (`augment_draws`), instead of from `generator`.
    """
    x = images.float()
    if augment:
        if generator is None and draws is None:
            raise ValueError("augment=True needs a generator")
        x = augment_batch(x, generator, draws)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    scale = 1.0 / (255.0 * std_t)
    x = torch.addcmul(-mean_t / std_t, x, scale)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
