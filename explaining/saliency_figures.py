"""explain.py's pictures: each AU's mean map over the mean face (AU<n>.png), the grid of every AU
(saliency.png), and the landmark attribution as dot sizes (landmarks.png)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from explaining import face_regions, saliency
import utils


def _axes_off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def panel(ax, mean_face: np.ndarray, amap: np.ndarray, points: np.ndarray, au: int, title: str) -> None:
    """One map over the mean face, with the 68 mean landmarks, the face's outline and the AU's region."""
    ax.imshow(mean_face, cmap="gray", vmin=0, vmax=255)
    ax.imshow(saliency.colour(amap))  # inferno, more opaque where the map is denser
    ax.scatter(points[:, 0], points[:, 1], s=2, c="cyan", linewidths=0)
    outline = face_regions.face_outline(points)
    ax.plot(outline[:, 0], outline[:, 1], ":", c="white", lw=0.6)
    region = face_regions.region_of(au)
    if region is not None:
        for ring in face_regions.outlines(points, region):
            ax.plot(ring[:, 0], ring[:, 1], "-", c="lime", lw=1.0)
    size = mean_face.shape[0]
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    ax.set_title(title, fontsize=8)
    _axes_off(ax)


def lift_text(entry: dict) -> str:
    if entry.get("lift") is None:
        return "no lift"
    ci = f" [{entry['ci'][0]:.1f}, {entry['ci'][1]:.1f}]" if entry.get("ci") else ""
    return f"lift {entry['lift']:.1f}{ci}"


def draw_all(out: Path, aus: list[int], mean_face: np.ndarray, points: np.ndarray, with_maps: np.ndarray,
             without_maps: np.ndarray, counts: np.ndarray, record: dict) -> None:
    """AU<n>.png for each AU and saliency.png, the grid (top row: faces coding the AU; bottom: not)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = record["faces"]
    for j, au in enumerate(aus):
        name = utils.au_name(au)
        entry = record["per_au"][name]
        fig, axes = plt.subplots(1, 2, figsize=(6, 3.4))
        panel(axes[0], mean_face, with_maps[j], points, au, f"{int(counts[j])} faces coding {name}: {lift_text(entry)}")
        without = "" if entry.get("lift_without") is None else f": lift {entry['lift_without']:.1f}"
        panel(axes[1], mean_face, without_maps[j], points, au, f"{total - int(counts[j])} faces without it{without}")
        region = entry.get("region") or "no region"
        fig.suptitle(f"{name} ({region}); {record['method']['text']}", fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)
    cols = len(aus)
    fig, axes = plt.subplots(2, cols, figsize=(1.6 * cols, 3.6), squeeze=False)
    for j, au in enumerate(aus):
        name = utils.au_name(au)
        panel(axes[0, j], mean_face, with_maps[j], points, au, f"{name}: {lift_text(record['per_au'][name])}")
        panel(axes[1, j], mean_face, without_maps[j], points, au, f"without {name}")
    fig.suptitle(f"mean map over the test faces coding each AU (top) and not coding it (bottom); "
                 f"region outlined; {record['method']['text']}", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "saliency.png", dpi=100)
    plt.close(fig)


def draw_landmarks(path: Path, aus: list[int], points: np.ndarray, mean_face: np.ndarray | None,
                   shares: dict) -> None:
    """Each AU's landmark attribution: the dot of each mean landmark sized by its share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(aus)
    fig, axes = plt.subplots(1, cols, figsize=(1.8 * cols, 2.2), squeeze=False)
    for j, au in enumerate(aus):
        ax = axes[0, j]
        name = utils.au_name(au)
        share = np.asarray(shares[name]["share"])
        if mean_face is not None:
            ax.imshow(mean_face, cmap="gray", vmin=0, vmax=255)
        ax.scatter(points[:, 0], points[:, 1], s=2 + 400 * share, c="tab:red", alpha=0.7, linewidths=0)
        if mean_face is None:
            ax.invert_yaxis()
            ax.set_aspect("equal")
        ax.set_title(f"{name} ({shares[name]['faces']} faces)", fontsize=8)
        _axes_off(ax)
    fig.suptitle("landmark attribution (integrated gradients of the 136 numbers from the training mean shape; "
                 "dot size: a landmark's share)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
