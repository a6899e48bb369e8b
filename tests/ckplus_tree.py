"""Hand-made CK+ trees for tests that need exact control over every file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import ckplus


def fields(*values: float) -> str:
    """One CK+ record: each value as three spaces then %.7e."""
    return "".join("   %.7e" % v for v in values) + "\n"


def face_landmarks(cx: float = 320, cy: float = 250, half: float = 100) -> np.ndarray:
    """68 points spread over a face-sized box centred on (cx, cy)."""
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    return np.stack([cx + half * np.cos(t), cy + half * np.sin(t)], axis=1).astype(np.float32)


class Tree:
    """A CK+ copy under `root` with the official folder names."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.images, self.facs, self.landmarks = ckplus.training_dirs(self.root)
        for d in (self.images, self.facs, self.landmarks):
            d.mkdir(parents=True, exist_ok=True)

    @property
    def dirs(self) -> tuple[Path, Path, Path]:
        return self.images, self.facs, self.landmarks

    def add(self, subject: str, seq: str, aus: dict[int, float], frames: int = 3,
            size: tuple[int, int] = (640, 490), mode: str = "L", lmk: np.ndarray | None = None,
            value: int = 128) -> dict[str, Path]:
        """Write one sequence: frames 1..`frames`, a landmark file per frame, FACS on the last."""
        lmk = face_landmarks() if lmk is None else lmk
        img_dir = self.images / subject / seq
        lmk_dir = self.landmarks / subject / seq
        facs_dir = self.facs / subject / seq
        for d in (img_dir, lmk_dir, facs_dir):
            d.mkdir(parents=True, exist_ok=True)
        paths = {}
        for f in range(1, frames + 1):
            stem = f"{subject}_{seq}_{f:08d}"
            pixels = np.full((size[1], size[0]), value + f, dtype=np.uint8)
            img = Image.fromarray(pixels)
            if mode != "L":
                img = img.convert(mode)
            paths["image"] = img_dir / f"{stem}.png"
            img.save(paths["image"])
            paths["landmarks"] = lmk_dir / f"{stem}_landmarks.txt"
            paths["landmarks"].write_text("".join(fields(x, y) for x, y in lmk))
        stem = f"{subject}_{seq}_{frames:08d}"
        paths["facs"] = facs_dir / f"{stem}_facs.txt"
        paths["facs"].write_text("".join(fields(au, i) for au, i in aus.items()))
        return paths


SHAPE_AUS = (1, 2, 4, 5, 6, 7, 12, 15, 17, 25)


def shape_tree(root: Path, subjects: int = 40, sequences: int = 4, seed: int = 0, noise: float = 1.5) -> Tree:
    """A CK+ copy for shape models, written in a fraction of a second: each sequence one frame, a tiny
    blank image (a shape model decodes none), and landmarks drawn as synthetic.py draws them: a
    subject's neutral face moved by its coded AUs (each of the ten on with chance 0.3), placed at
    a random size and roll, with `noise` pixels of tracker noise."""
    from ckplus import synthetic

    rng = np.random.default_rng(seed)
    tree = Tree(root)
    for s in range(subjects):
        shape, gain = synthetic.neutral_shape(rng), rng.uniform(0.7, 1.3)
        for q in range(sequences):
            coded = {au: float(rng.integers(1, 6)) for au in SHAPE_AUS if rng.random() < 0.3} or {25: 2.0}
            pts = synthetic.place(synthetic.apply_aus(shape, coded, gain), (320, 240), rng.uniform(90, 130),
                                  rng.normal(0, 3))
            tree.add(f"S{s + 1:03d}", f"{q + 1:03d}", coded, frames=1, size=(8, 8),
                     lmk=pts + rng.normal(0, noise, pts.shape))
    return tree
