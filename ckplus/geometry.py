"""The face's shape as numbers: 68 iBUG landmarks, similarity-normalised, for --geometry and --model landmarks.

`normalise` removes where the face is, how it is turned in the image plane and how large it is:
the points are translated to the midpoint of the two eyes (the means of points 36-41 and 42-47),
rotated so that the line between the eyes is level, and scaled so that the eyes are one unit apart,
then flattened to 136 numbers (x0, y0, x1, y1, ...). What is left is the shape: brows raised, lips
apart, eyes narrowed -- what Lucey et al. (2010) fed their CK+ baseline.

`mirror` is what a horizontal flip of the image does to those numbers: x becomes -x, and each point
swaps with its partner on the other side of the face (the left eye's corner becomes the right eye's).
Normalising the landmarks of a flipped image gives exactly `mirror` of the original's vector, so a
flipped batch (--augment, --tta flip) gets its geometry without the image coordinates.
"""
from __future__ import annotations

import numpy as np
import torch

# --model's name for the model that is these numbers alone, with no image (models.LANDMARKS; named here,
# where the light modules that name run settings, training/settings.py and compare.py, can read it)
SHAPE_MODEL = "landmarks"
NUM_POINTS = 68
FEATURES = 2 * NUM_POINTS
EYE_A = slice(36, 42)  # the eye on the image's left in a frontal face (iBUG 36-41)
EYE_B = slice(42, 48)


def _partners() -> list[int]:
    """The iBUG 68-point left/right permutation: index i -> the point that mirrors it."""
    pairs = [(i, 16 - i) for i in range(8)]  # jaw 0-16 (8 is the chin, its own mirror)
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows 17-21 <-> 26-22
    pairs += [(31, 35), (32, 34)]  # nostrils (27-30, the nose's ridge, and 33 are on the midline)
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips (51, 57 on the midline)
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips (62, 66 on the midline)
    order = list(range(NUM_POINTS))
    for a, b in pairs:
        order[a], order[b] = b, a
    return order


MIRROR = tuple(_partners())


def normalise(points: np.ndarray) -> np.ndarray:
    """(..., 68, 2) landmarks in pixels -> (..., 136) float32: translated to the eyes' midpoint,
    rotated so the eyes are level, scaled to an inter-ocular distance of 1."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[-2:] != (NUM_POINTS, 2):
        raise ValueError(f"expected (..., {NUM_POINTS}, 2) landmarks, got shape {pts.shape}")
    a, b = pts[..., EYE_A, :].mean(-2), pts[..., EYE_B, :].mean(-2)
    centre = (a + b) / 2
    axis = b - a
    distance = np.linalg.norm(axis, axis=-1, keepdims=True)
    distance = np.where(distance > 0, distance, 1.0)  # two eyes on one point: shape kept, not scaled
    cos, sin = (axis / distance)[..., :1], (axis / distance)[..., 1:]
    d = pts - centre[..., None, :]
    # rotate by minus the eyes' angle: (x, y) -> (x cos + y sin, -x sin + y cos)
    x = (d[..., 0] * cos + d[..., 1] * sin) / distance
    y = (-d[..., 0] * sin + d[..., 1] * cos) / distance
    return np.stack([x, y], -1).reshape(*pts.shape[:-2], FEATURES).astype(np.float32)


def mirror(vectors: torch.Tensor | np.ndarray):
    """Normalised (..., 136) vectors -> those of the horizontally flipped faces."""
    if isinstance(vectors, np.ndarray):
        return mirror(torch.from_numpy(vectors)).numpy()
    pts = vectors.reshape(*vectors.shape[:-1], NUM_POINTS, 2)[..., list(MIRROR), :]
    pts = pts * torch.tensor([-1.0, 1.0], dtype=vectors.dtype, device=vectors.device)
    return pts.reshape(vectors.shape)


def flip_points(points: np.ndarray, width: float) -> np.ndarray:
    """Landmarks of an image `width` pixels wide -> those of its mirror image (x -> width - 1 - x,
    each point given its partner's number)."""
    pts = np.asarray(points, dtype=np.float64)[..., list(MIRROR), :].copy()
    pts[..., 0] = width - 1 - pts[..., 0]
    return pts
