"""The face's own frame: FACS regions drawn from the 68 landmarks, the face mask, and the warp that
carries a map from one face's crop onto the run's mean landmark shape.

A saliency map is only comparable across faces once every face is put in one frame: each face is
cropped differently (its own box, size and tilt). `Warp` maps a face's crop onto a canvas on which
the mean landmark shape sits: piecewise-affine over the Delaunay triangles of the mean shape's 68
points (each triangle of the face goes to the mean shape's triangle), and, outside the landmarks,
the similarity transform that best maps the face's 68 points onto the mean's (least squares), so
the forehead and the background come along too. A face warped onto itself is left as it is.

The regions (`REGIONS`, one row per AU) and the face mask are polygons on that canvas, so a map's
mass in a region is one masked sum. The lift of a region is the share of the map's face mass that
falls in it divided by the region's share of the face's area (`lift`): 1 is what a map spread
evenly over the face gives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ckplus import geometry

EYE_A, EYE_B = geometry.EYE_A, geometry.EYE_B
BROWS = tuple(range(17, 27))
FOREHEAD = 0.5  # the face mask reaches this many inter-ocular distances above the brows


# ----------------------------------------------------------------------------- the region table

# A hull is the convex hull of some landmarks, each moved by some offsets. Offsets are in
# inter-ocular distances (IOD) of the mean shape, in the face's frame: dx along the line from
# the image-left eye to the other, dy at right angles to it, positive towards the mouth.
Offsets = tuple[tuple[float, float], ...]
Hull = tuple[tuple[tuple[int, ...], Offsets], ...]


def span(points: tuple[int, ...], dy_from: float, dy_to: float) -> tuple[tuple[int, ...], Offsets]:
    """The points moved up or down by `dy_from` and by `dy_to` IOD (negative: up)."""
    return points, ((0.0, dy_from), (0.0, dy_to))


def around(points: tuple[int, ...], r: float) -> tuple[tuple[int, ...], Offsets]:
    """A square of half-side `r` IOD around each point."""
    return points, ((-r, -r), (r, -r), (-r, r), (r, r))


@dataclass(frozen=True)
class Region:
    """Where an AU's muscle shows on the face: the union of `hulls`, each also mirrored onto the
    other half of the face when `both` (the landmarks swap through geometry.MIRROR, dx flips)."""

    what: str
    hulls: tuple[Hull, ...]
    both: bool = False


REGIONS: dict[int, Region] = {
    # AU1 inner brow raiser (frontalis, pars medialis): the inner brow heads and the forehead above them
    1: Region("inner brows and the forehead above them", ((span((20, 21, 22, 23), -0.45, 0.08),),)),
    # AU2 outer brow raiser (frontalis, pars lateralis): the outer half of each brow and the skin above it
    2: Region("outer brows", ((span((17, 18, 19), -0.35, 0.08),),), both=True),
    # AU4 brow lowerer (corrugator, procerus): the glabella between the brow heads, down to the nose's root
    4: Region("glabella between the brows", ((span((21, 22), -0.12, 0.05), ((27,), ((0.0, 0.05),))),)),
    # AU5 upper lid raiser (levator palpebrae): each upper lid, from the eye's corners up to the fold
    5: Region("upper lids", ((span((36, 37, 38, 39), -0.12, 0.0),),), both=True),
    # AU6 cheek raiser (orbicularis oculi, pars orbitalis): the cheek below each lower lid
    6: Region("cheeks under the lower lids", ((span((36, 41, 40, 39), 0.15, 0.5),),), both=True),
    # AU7 lid tightener (orbicularis oculi, pars palpebralis): each lower lid
    7: Region("lower lids", ((span((36, 41, 40, 39), 0.0, 0.12),),), both=True),
    # AU12 lip corner puller (zygomaticus major): the skin around each lip corner
    12: Region("lip corners", ((around((48,), 0.18),),), both=True),
    # AU15 lip corner depressor (depressor anguli oris): the same corners, pulled the other way
    15: Region("lip corners", ((around((48,), 0.18),),), both=True),
    # AU17 chin raiser (mentalis): the chin boss, from under the lower lip to the chin's tip
    17: Region("chin boss under the lower lip", ((span((56, 57, 58), 0.08, 0.08), span((7, 8, 9), -0.05, -0.05)),)),
    # AU25 lips part: the lips and the mouth's opening between them
    25: Region("lips", ((span(tuple(range(48, 60)), 0.0, 0.0),),)),
}


def region_of(au: int) -> Region | None:
    return REGIONS.get(int(au))


# ----------------------------------------------------------------------------- polygons on a canvas


def face_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(unit vector from one eye to the other, unit vector towards the mouth, the IOD) of 68 points."""
    a, b = points[EYE_A].mean(0), points[EYE_B].mean(0)
    iod = float(np.linalg.norm(b - a)) or 1.0
    ex = (b - a) / iod
    ey = np.array([-ex[1], ex[0]])
    return ex, ey, iod


def hull_points(points: np.ndarray, hull: Hull, mirrored: bool = False) -> np.ndarray:
    """The landmarks of `hull` with their offsets, in canvas pixels (before taking the hull)."""
    ex, ey, iod = face_axes(points)
    out = []
    for indices, offsets in hull:
        for i in indices:
            p = points[geometry.MIRROR[i] if mirrored else i]
            for dx, dy in offsets:
                out.append(p + iod * ((-dx if mirrored else dx) * ex + dy * ey))
    return np.array(out)


def polygon_mask(vertices: np.ndarray, size: int) -> np.ndarray:
    """(size, size) bool: the pixel centres inside the convex hull of `vertices`."""
    from matplotlib.path import Path as Polygon
    from scipy.spatial import ConvexHull

    outline = vertices[ConvexHull(vertices).vertices]
    ys, xs = np.mgrid[0:size, 0:size]
    centres = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    return Polygon(outline).contains_points(centres).reshape(size, size)


def outlines(points: np.ndarray, region: Region) -> list[np.ndarray]:
    """The closed outlines of a region's polygons, for drawing."""
    from scipy.spatial import ConvexHull

    out = []
    for hull in region.hulls:
        for mirrored in ((False, True) if region.both else (False,)):
            v = hull_points(points, hull, mirrored)
            ring = v[ConvexHull(v).vertices]
            out.append(np.vstack([ring, ring[:1]]))
    return out


def region_mask(points: np.ndarray, region: Region, size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    for hull in region.hulls:
        for mirrored in ((False, True) if region.both else (False,)):
            mask |= polygon_mask(hull_points(points, hull, mirrored), size)
    return mask


def face_mask(points: np.ndarray, size: int) -> np.ndarray:
    """The face on the canvas: the convex hull of the 68 points and of the brows moved FOREHEAD IOD
    up, so the forehead (AU1's and AU2's regions) counts as face."""
    _, ey, iod = face_axes(points)
    forehead = points[list(BROWS)] - FOREHEAD * iod * ey
    return polygon_mask(np.vstack([points, forehead]), size)


def face_outline(points: np.ndarray) -> np.ndarray:
    from scipy.spatial import ConvexHull

    _, ey, iod = face_axes(points)
    v = np.vstack([points, points[list(BROWS)] - FOREHEAD * iod * ey])
    ring = v[ConvexHull(v).vertices]
    return np.vstack([ring, ring[:1]])


@dataclass
class RegionMasks:
    """The face mask and each AU's region (within the face) on the canvas, and their areas."""

    aus: list[int]  # the AUs with a region in REGIONS, in the run's order
    face: np.ndarray  # (S, S) bool
    regions: np.ndarray  # (R, S, S) bool, each within the face

    @property
    def area_share(self) -> np.ndarray:
        """(R,) each region's share of the face's area: a flat map's share of the mass."""
        return self.regions.reshape(len(self.aus), -1).sum(1) / max(int(self.face.sum()), 1)

    def matrix(self) -> torch.Tensor:
        """(S*S, R + 1) float32: the regions' columns, then the face's, for masses as one product."""
        cols = np.concatenate([self.regions.reshape(len(self.aus), -1), self.face.reshape(1, -1)]).T
        return torch.from_numpy(cols.astype(np.float32))


def region_masks(points: np.ndarray, aus: list[int], size: int) -> RegionMasks:
    face = face_mask(points, size)
    kept = [a for a in aus if region_of(a) is not None]
    regions = np.stack([region_mask(points, region_of(a), size) & face for a in kept]) if kept \
        else np.zeros((0, size, size), dtype=bool)
    return RegionMasks(kept, face, regions)


def lift(mass_in_region: np.ndarray, face_mass: np.ndarray, area_share: np.ndarray | float) -> np.ndarray:
    """(mass in the region / mass on the face) / (region's area / face's area); NaN where the map
    has no mass on the face."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(face_mass > 0, mass_in_region / face_mass, np.nan) / area_share


# ----------------------------------------------------------------------------- the warp


def similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, shift; no reflection) that best maps the
    (K, 2) `source` points onto `target` in least squares (Umeyama's solution)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    cov = t.T @ s / len(s)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    var = (s ** 2).sum() / len(s)
    scale = float(np.trace(np.diag(d) @ sign) / var) if var > 0 else 1.0
    shift = mu_t - scale * rot @ mu_s
    return np.hstack([scale * rot, shift[:, None]])


def apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ transform[:, :2].T + transform[:, 2]


class Warp:
    """Carry maps from faces' crops (size x size, each face with its 68 landmarks in crop pixels)
    onto the canvas where `target` (the mean shape, 68 points in the same pixels) sits.

    The canvas is triangulated once: Delaunay over the 68 target points and a ring of points just
    outside the canvas, so every canvas pixel lies in a triangle. For each face, the ring's points
    go where the similarity from the target to that face sends them; the 68 go to the face's own
    landmarks. Each canvas pixel then reads the face's map at the same barycentric place in the
    face's triangle (bilinear)."""

    def __init__(self, target: np.ndarray, size: int):
        from scipy.spatial import Delaunay

        self.target = np.asarray(target, dtype=np.float64)
        self.size = size
        lo, hi = -1.0, size  # just outside the pixel centres 0 .. size-1
        steps = np.linspace(lo, hi, 5)
        ring = [(x, lo) for x in steps] + [(x, hi) for x in steps] + [(lo, y) for y in steps[1:-1]] \
            + [(hi, y) for y in steps[1:-1]]
        self.ring = np.array(ring)
        anchors = np.vstack([self.target, self.ring])
        tri = Delaunay(anchors)
        ys, xs = np.mgrid[0:size, 0:size]
        centres = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
        simplex = tri.find_simplex(centres)
        if (simplex < 0).any():  # cannot happen: the ring encloses the canvas
            raise AssertionError("a canvas pixel lies outside the warp's triangles")
        self.vertices = torch.from_numpy(tri.simplices[simplex])  # (P, 3) anchor indices
        affine = tri.transform[simplex]  # (P, 3, 2): barycentric coordinates of each centre
        b = np.einsum("pij,pj->pi", affine[:, :2], centres - affine[:, 2])
        self.weights = torch.from_numpy(np.column_stack([b, 1 - b.sum(1)]))  # (P, 3)

    def anchors_of(self, points: np.ndarray) -> np.ndarray:
        """A face's 68 points and where the ring goes for it: (68 + ring, 2)."""
        to_face = similarity(self.target, points)
        return np.vstack([points, apply(to_face, self.ring)])

    def __call__(self, maps: torch.Tensor, points: np.ndarray) -> torch.Tensor:
        """(N, C, size, size) maps on the faces' crops, (N, 68, 2) their landmarks -> the maps on the
        canvas (N, C, size, size), zero where a canvas pixel falls outside the face's crop."""
        anchors = torch.from_numpy(np.stack([self.anchors_of(p) for p in np.asarray(points, np.float64)]))
        corners = anchors[:, self.vertices]  # (N, P, 3, 2)
        where = (corners * self.weights[None, :, :, None]).sum(2)  # (N, P, 2) in crop pixels
        grid = (where + 0.5) / self.size * 2 - 1  # grid_sample's [-1, 1] (align_corners=False)
        grid = grid.reshape(len(points), self.size, self.size, 2).to(maps.dtype)
        return F.grid_sample(maps, grid.to(maps.device), mode="bilinear", padding_mode="zeros", align_corners=False)
