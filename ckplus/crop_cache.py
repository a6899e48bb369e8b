"""The face crops of a CK+ copy: decoded and cropped once, then kept in an on-disk cache.

`load_crops` decodes and crops every frame (in worker processes with `workers`), and keeps the
result in CACHE_DIR/crops-<key>.npz, whose key covers the crop settings and every frame's path,
size, mtime and landmarks. The least recently used files go once the cache passes
`cache_limit()` ($AU_CACHE_LIMIT_MB).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence as Seq

import numpy as np
from PIL import Image, UnidentifiedImageError

from ckplus import DataError, Frame, Sequence
import preprocess
import utils
from utils import UserError


log = logging.getLogger(utils.LOGGER_NAME)

CACHE_VERSION = 1
# The cache's size bound: $AU_CACHE_LIMIT_MB MiB, least recently used files first out.
CACHE_LIMIT_ENV = "AU_CACHE_LIMIT_MB"
DEFAULT_CACHE_LIMIT_MB = 2048

# What decoding a damaged or non-image file raises (Pillow's errors and what it lets through).
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _decode_and_crop(image_path: Path, landmarks: np.ndarray, size: int, crop: str, margin: float,
                     fill: str = preprocess.DEFAULT_FILL) -> np.ndarray:
    try:
        with Image.open(image_path) as img:
            img.load()
            return preprocess.crop_face(img, landmarks, size, crop, margin, fill)
    except preprocess.OutsideFrame:
        raise DataError(f"the landmarks of {image_path} lie outside the frame: check its landmark file, or pass --skip-bad",
                        "landmarks outside frame")
    except DECODE_ERRORS as e:
        raise DataError(f"image {image_path} will not decode ({type(e).__name__}: {e}): replace it, or pass --skip-bad",
                        "image will not decode")


def _crop_one(args) -> np.ndarray | DataError:
    try:
        return _decode_and_crop(*args)
    except DataError as e:
        return e


def _cache_key(records: Seq[Sequence], size: int, crop: str, margin: float, fill: str = "black") -> str:
    h = hashlib.sha256()
    # the fill is in the key only when it is not black, so crops cached before --crop-fill keep their key
    key = {"v": CACHE_VERSION, "size": size, "crop": crop, "margin": margin if crop == "square" else None}
    if crop == "square" and fill != "black":
        key["fill"] = fill
    h.update(json.dumps(key).encode())
    for r in records:
        try:
            st = os.stat(r.image_path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{r.id}|{r.frame}|{os.path.abspath(r.image_path)}|{stamp}|".encode())
        h.update(np.ascontiguousarray(r.landmarks, dtype=np.float32).tobytes())
    return h.hexdigest()[:20]


def _load_cache(path: Path, records: Seq[Sequence], size: int):
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, images, skipped_ids, skipped_msgs = z["ids"], z["images"], z["skipped_ids"], z["skipped_msgs"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        log.warning("crop cache %s is unreadable (%s); rebuilding it", path, e)
        return None
    expected = {r.id for r in records}
    if images.shape[1:] != (size, size) or images.dtype != np.uint8 or len(ids) != len(images) \
            or set(ids.tolist()) | set(skipped_ids.tolist()) != expected:
        log.warning("crop cache %s does not match the data; rebuilding it", path)
        return None
    return ids.tolist(), images, list(zip(skipped_ids.tolist(), skipped_msgs.tolist()))


def load_crops(
    records: Seq[Sequence] | Seq[Frame],
    *,
    size: int,
    crop: str = "square",
    margin: float = preprocess.DEFAULT_MARGIN,
    fill: str = preprocess.DEFAULT_FILL,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 0,
    skip_bad: bool = False,
    what: str = "sequences",
) -> tuple[list[Sequence] | list[Frame], np.ndarray]:
    """Decode, crop and resize every peak frame once -> (kept records, uint8 (N, size, size)).

    The result is cached in `cache_dir` (None: no disk cache) under a key made of the crop
    settings and every frame's path, size and mtime plus its landmarks, so a second run
    reads one file and decodes no PNG, and a changed frame or setting misses the cache.
    `records` may also be the `Frame`s before the peaks (`what="frames"`): their own cache
    file, and a bad one leaves out only itself (none at all is no error).
    """
    if not records and what == "frames":
        return [], np.zeros((0, size, size), dtype=np.uint8)
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"crops-{_cache_key(records, size, crop, margin, fill)}.npz"
        cached = _load_cache(cache_path, records, size)
        if cached is not None:
            ids, images, skipped = cached
            if skipped and not skip_bad:
                raise UserError(skipped[0][1])
            for seq_id, msg in skipped:
                log.warning("skipping %s: %s", seq_id, msg)
            by_id = {r.id: r for r in records}
            log.debug("crop cache hit: %s", cache_path)
            _touch(cache_path)
            evict_crops(cache_path.parent, keep=cache_path)
            return [by_id[i] for i in ids], images

    jobs = [(r.image_path, r.landmarks, size, crop, margin, fill) for r in records]
    if workers > 0 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_crop_one, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        results = [_crop_one(job) for job in jobs]

    kept, images, skipped = [], [], []
    for r, res in zip(records, results):
        if isinstance(res, DataError):
            if not skip_bad:
                raise res
            log.warning("skipping %s: %s", r.id, res)
            skipped.append((r.id, str(res)))
        else:
            kept.append(r)
            images.append(res)
    if skipped:
        whose = "whose frames" if what == "sequences" else "before the peaks that"
        log.warning("skipped %d of %d %s %s could not be used (--skip-bad)", len(skipped), len(records), what, whose)
    if not kept and what != "frames":
        raise UserError("no usable frames: every peak frame failed to decode (see the warnings above)")
    array = np.stack(images) if images else np.zeros((0, size, size), dtype=np.uint8)
    if cache_path is not None and _save_cache(cache_path, kept, array, skipped):
        evict_crops(cache_path.parent, keep=cache_path)
    return kept, array


def _save_cache(path: Path, records: Seq[Sequence], images: np.ndarray, skipped: list[tuple[str, str]]) -> bool:
    def write(f) -> None:
        np.savez(f, ids=np.array([r.id for r in records]), images=images,
                 skipped_ids=np.array([s[0] for s in skipped], dtype=str),
                 skipped_msgs=np.array([s[1] for s in skipped], dtype=str))

    # A cache is an optimisation: failing to write one must not stop a run.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        utils.write_atomically(path, write, size=images.nbytes)
    except utils.DiskFull as e:
        log.warning("%s; continuing without the crop cache (the next run decodes the frames again)", e.what)
        return False
    except OSError as e:
        log.warning("could not write the crop cache %s (%s); continuing without it", path, e.strerror or e)
        return False
    return True


def _touch(path: Path) -> None:
    """Mark a cache file as just used (its mtime is the cache's clock: atime is often not kept)."""
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only cache still works; it just cannot keep its order


def cache_limit() -> int:
    """The crop cache's size bound in bytes: $AU_CACHE_LIMIT_MB MiB, 2048 unless set."""
    text = os.environ.get(CACHE_LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_CACHE_LIMIT_MB * 2**20
    try:
        limit = float(text)
    except ValueError:
        limit = -1.0
    if not math.isfinite(limit) or limit < 0:
        raise UserError(f"${CACHE_LIMIT_ENV}={text!r} is not a size in MiB: set it to a number like 2048 "
                        f"(0 keeps only the crops in use)")
    return int(limit * 2**20)


def evict_crops(cache_dir: Path, keep: Path) -> list[Path]:
    """Delete the least recently used crop files until those left fit in `cache_limit()`.

    Only `crops-*.npz` files are candidates: the demo's synthetic CK+ and anything else in the
    folder are never touched, and neither is `keep`, the file this run uses. Another process's
    file vanishing under it only costs that process a rebuild (it then misses the cache)."""
    limit = cache_limit()
    files = []
    for path in cache_dir.glob("crops-*.npz"):
        try:
            st = path.stat()
        except OSError:
            continue
        files.append((st.st_mtime_ns, st.st_size, path))
    total = sum(size for _, size, _ in files)
    removed = []
    for _, size, path in sorted(files):  # oldest use first
        if total <= limit:
            break
        if path == keep:
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove the old crop cache %s (%s)", path, e.strerror or e)
            continue
        total -= size
        removed.append(path)
    if removed:
        log.info("crop cache %s: removed %d least recently used file(s) to stay under %s ($%s)", cache_dir,
                 len(removed), utils.format_bytes(limit), CACHE_LIMIT_ENV)
    return removed
