"""The CK+ reader: pairing, junk, errors, AU selection and the crop cache."""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import pytest
from PIL import Image

from ckplus import crop_cache
from ckplus_tree import Tree, face_landmarks, fields
import dataset
import utils
from utils import UserError


@pytest.fixture
def tree(tmp_path):
    t = Tree(tmp_path / "ck")
    t.add("S005", "001", {1: 2, 12: 3}, frames=3)
    t.add("S005", "002", {25: 0}, frames=5, lmk=face_landmarks(300, 240, 90))
    t.add("S010", "001", {4: 1, 17: 4, 9: 2}, frames=4, lmk=face_landmarks(340, 260, 110))
    return t


def index(t, **kw):
    return dataset.index_ckplus(*t.dirs, **kw)


def test_one_line_facs_file_and_peak_frame(tree):
    recs = {r.id: r for r in index(tree)}
    assert list(recs) == ["S005_001", "S005_002", "S010_001"]
    one = recs["S005_002"]
    assert one.aus == {25: 0.0}  # intensity 0 (not coded) still means present
    assert one.frame == 5 and one.image_path.name == "S005_002_00000005.png"
    assert one.landmarks.shape == (68, 2) and one.landmarks.dtype == np.float32
    np.testing.assert_allclose(one.landmarks, face_landmarks(300, 240, 90), atol=1e-4)


def test_au_order_and_multi_hot(tree):
    recs = index(tree)
    aus = dataset.select_aus(recs, aus=[25, 1, 12, 4, 1])
    assert aus == [1, 4, 12, 25]
    labels = dataset.encode_labels(recs, aus)
    assert labels.dtype == np.float32
    np.testing.assert_array_equal(labels, [[1, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0]])
    assert dataset.select_aus(recs) == list(dataset.DEFAULT_AUS)


def test_label_counts_and_min_count(tree):
    recs = index(tree)
    assert dataset.label_counts(recs) == {1: 1, 4: 1, 9: 1, 12: 1, 17: 1, 25: 1}
    tree.add("S011", "001", {1: 1, 25: 2})
    recs = index(tree)
    assert dataset.label_counts(recs)[1] == 2
    assert dataset.select_aus(recs, min_count=1) == [1, 25]  # more than 1 sequence
    with pytest.raises(UserError, match="--min-count 5"):
        dataset.select_aus(recs, min_count=5)
    with pytest.raises(UserError, match="give one of them"):
        dataset.select_aus(recs, aus=[1], min_count=1)


def test_parse_au_list():
    assert dataset.parse_au_list("12,1, AU4") == [1, 4, 12]
    with pytest.raises(UserError, match="--aus"):
        dataset.parse_au_list("1,x")


def test_pairing_does_not_depend_on_listing_order(tree, monkeypatch):
    expected = [(r.id, r.image_path, r.landmarks.tolist(), r.aus) for r in index(tree)]
    real_walk = os.walk

    def shuffled_walk(top, *a, **kw):
        rng = random.Random(7)
        for dirpath, dirnames, filenames in real_walk(top, *a, **kw):
            rng.shuffle(dirnames)
            rng.shuffle(filenames)
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(dataset.os, "walk", shuffled_walk)
    got = [(r.id, r.image_path, r.landmarks.tolist(), r.aus) for r in index(tree)]
    assert got == expected


def test_junk_files_are_ignored(tree):
    before = [(r.id, r.image_path) for r in index(tree)]
    for d in tree.dirs:
        (d / ".DS_Store").write_bytes(b"\x00\x01junk")
    (tree.images / "S005" / "001" / "Thumbs.db").write_bytes(b"junk")
    (tree.images / "S005" / "001" / "._S005_001_00000009.png").write_bytes(b"\x00\x05\x16\x07")
    (tree.facs / "S005" / "001" / "._S005_001_00000003_facs.txt").write_bytes(b"\x00\x05")
    (tree.landmarks / "S005" / "001" / "._S005_001_00000003_landmarks.txt").write_bytes(b"\x00")
    (tree.images / "S005" / "notes.txt").write_text("scanned 2010")
    (tree.images / "S005" / "003").mkdir()  # an empty sequence folder
    (tree.images / "S005" / "001" / "S005_001_00000003.jpg").write_bytes(b"not a png")
    assert [(r.id, r.image_path) for r in index(tree)] == before


def test_emotion_labels(tree):
    emo = tree.root / "Emotion_labels" / "Emotion" / "S005" / "001"
    emo.mkdir(parents=True)
    (emo / "S005_001_00000003_emotion.txt").write_text(fields(5))
    recs = {r.id: r for r in dataset.index_ckplus(*tree.dirs, emotion_dir=tree.root / "Emotion_labels" / "Emotion")}
    assert recs["S005_001"].emotion == 5 and recs["S005_002"].emotion is None


# ----------------------------------------------------------------------------- user errors


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("", "is empty"),
        ("   1.0000000e+00\n", "has 1 numbers, expected 2"),
        ("   1.0000000e+00   2.0000000e+00   3.0000000e+00\n", "has 3 numbers"),
        ("   AU12   3\n", "is not numeric"),
        (fields(12.5, 2), "impossible AU code 12.5"),
        (fields(-4, 2), "impossible AU code -4"),
        (fields(400, 2), "impossible AU code 400"),
        (fields(12, 9), "impossible intensity 9"),
    ],
)
def test_bad_facs_file_names_the_file(tree, content, fragment):
    bad = tree.facs / "S005" / "001" / "S005_001_00000003_facs.txt"
    bad.write_text(content)
    with pytest.raises(dataset.DataError) as err:
        index(tree)
    assert fragment in str(err.value) and str(bad) in str(err.value)
    assert "\n" not in str(err.value)


def test_facs_with_no_frames(tree):
    for p in (tree.images / "S010" / "001").iterdir():
        p.unlink()
    with pytest.raises(UserError, match="S010_001_00000004_facs.txt has no frames"):
        index(tree)


def test_no_landmarks_for_peak(tree):
    (tree.landmarks / "S005" / "002" / "S005_002_00000005_landmarks.txt").unlink()
    with pytest.raises(UserError, match="no landmark file S005_002_00000005_landmarks.txt"):
        index(tree)


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("".join(fields(1, 2) for _ in range(67)), "has 67 points"),
        ("".join(fields(1, 2) for _ in range(67)) + fields(np.nan, 2), "non-finite"),
        ("".join(fields(1, 2) for _ in range(67)) + fields(np.inf, 2), "non-finite"),
        ("".join(fields(1, 2, 3) for _ in range(68)), "has 68 points, expected 68 lines of 'x y'"),
    ],
)
def test_bad_landmark_file(tree, content, fragment):
    bad = tree.landmarks / "S005" / "001" / "S005_001_00000003_landmarks.txt"
    bad.write_text(content)
    with pytest.raises(dataset.DataError) as err:
        index(tree)
    assert fragment in str(err.value) and str(bad) in str(err.value)


def test_missing_and_empty_directories(tree, tmp_path):
    with pytest.raises(UserError, match=r"DATA_DIR .*nowhere does not exist"):
        dataset.index_ckplus(tmp_path / "nowhere", tree.facs, tree.landmarks)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"LANDMARK_DIR .*empty holds no CK\+ files"):
        dataset.index_ckplus(tree.images, tree.facs, empty)
    with pytest.raises(UserError, match="is not a directory"):
        dataset.index_ckplus(tree.images, tree.facs, tree.dirs[0] / "S005" / "001" / "S005_001_00000001.png")


def test_swapped_directories_are_recognised(tree):
    with pytest.raises(UserError) as err:
        dataset.index_ckplus(tree.facs, tree.images, tree.landmarks)
    msg = str(err.value)
    assert msg.startswith(f"DATA_DIR {tree.facs} holds no CK+ files") and "looks like the LABEL_DIR" in msg
    with pytest.raises(UserError, match="it looks like the LANDMARK_DIR: are the three paths in the order"):
        dataset.index_ckplus(tree.images, tree.landmarks, tree.facs)


def test_skip_bad_warns_and_counts(tree, caplog):
    (tree.facs / "S005" / "001" / "S005_001_00000003_facs.txt").write_text("garbage here\n")
    (tree.landmarks / "S010" / "001" / "S010_001_00000004_landmarks.txt").unlink()
    with caplog.at_level(logging.WARNING, logger=utils.LOGGER_NAME):
        recs = index(tree, skip_bad=True)
    assert [r.id for r in recs] == ["S005_002"]
    assert "skipped 2 of 3 sequences (--skip-bad)" in caplog.text
    assert "1 garbled FACS file" in caplog.text and "1 no landmarks" in caplog.text


# ----------------------------------------------------------------------------- crops and cache


def test_undecodable_image_names_the_file(tree, tmp_path):
    bad = tree.images / "S005" / "002" / "S005_002_00000005.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # truncated
    recs = index(tree)
    with pytest.raises(dataset.DataError, match="S005_002_00000005.png will not decode"):
        crop_cache.load_crops(recs, size=32)
    kept, crops = crop_cache.load_crops(recs, size=32, skip_bad=True)
    assert [r.id for r in kept] == ["S005_001", "S010_001"] and crops.shape == (2, 32, 32)


def test_rgb_frames_and_mixed_heights(tmp_path):
    t = Tree(tmp_path / "ck")
    t.add("S005", "001", {1: 2}, mode="RGB", value=60)
    t.add("S006", "001", {2: 2}, size=(640, 480), value=200)
    ds = dataset.CKPlusDataset(dataset.index_ckplus(*t.dirs), [1, 2], size=40)
    assert ds.images.shape == (2, 1, 40, 40) and ds.images.dtype.is_floating_point is False
    # the frames are flat gray, so the crop of each keeps its value (inside the frame)
    assert int(ds.images[0, 0, 20, 20]) == 63 and int(ds.images[1, 0, 20, 20]) == 203
    assert ds.labels.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_cache_hit_decodes_no_png(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    recs = index(tree)
    first = dataset.CKPlusDataset(recs, [1, 25], size=24, cache_dir=cache)
    assert len(list(cache.glob("crops-*.npz"))) == 1

    def no_decode(*a, **k):
        raise AssertionError("a PNG was decoded on a warm cache")

    monkeypatch.setattr(crop_cache.Image, "open", no_decode)
    second = dataset.CKPlusDataset(index(tree), [1, 25], size=24, cache_dir=cache)
    assert second.ids == first.ids
    assert (second.images == first.images).all()
    # different settings are a different cache entry, so here decoding is needed
    with pytest.raises(AssertionError, match="decoded"):
        dataset.CKPlusDataset(index(tree), [1, 25], size=24, crop="original", cache_dir=cache)


def test_stale_and_corrupt_cache_is_rebuilt(tree, tmp_path, caplog):
    cache = tmp_path / "cache"
    recs = index(tree)
    crop_cache.load_crops(recs, size=24, cache_dir=cache)
    # a frame replaced on disk: new size/mtime, so the old entry is not used
    frame = tree.images / "S005" / "001" / "S005_001_00000003.png"
    Image.fromarray(np.full((490, 640), 250, np.uint8)).save(frame)
    os.utime(frame, ns=(1, 1))
    _, crops = crop_cache.load_crops(index(tree), size=24, cache_dir=cache)
    assert crops[0, 12, 12] == 250
    # a corrupt cache file is rebuilt with a warning
    for f in cache.glob("crops-*.npz"):
        f.write_bytes(b"not a zip")
    with caplog.at_level(logging.WARNING, logger=utils.LOGGER_NAME):
        _, again = crop_cache.load_crops(index(tree), size=24, cache_dir=cache)
    assert "rebuilding" in caplog.text
    np.testing.assert_array_equal(again, crops)


def test_parallel_workers_give_the_same_crops(tree):
    recs = index(tree)
    _, serial = crop_cache.load_crops(recs, size=24)
    _, parallel = crop_cache.load_crops(recs, size=24, workers=2)
    np.testing.assert_array_equal(serial, parallel)


def test_crop_cache_is_bounded_least_recently_used_first(tree, tmp_path, monkeypatch):
    """Beyond $AU_CACHE_LIMIT_MB the crop files used longest ago go; a cache hit counts as a use;
    the demo's synthetic CK+ and other files in the folder are never touched."""
    cache = tmp_path / "cache"
    demo = cache / "synthetic-ckplus-60" / "cohn-kanade-images" / "S005_001_00000001.png"
    demo.parent.mkdir(parents=True)
    demo.write_bytes(b"\0" * 3_000_000)  # bigger than the limit: not a crop file, not counted, kept
    (cache / "notes.txt").write_text("mine")
    recs = index(tree)
    crop_cache.load_crops(recs, size=224, cache_dir=cache)  # A: 3 crops of 224x224, about 150 KB
    (a,) = cache.glob("crops-*.npz")
    filler = cache / "crops-0000000000000000000f.npz"  # another tree's crops, used after A
    filler.write_bytes(b"\0" * 600_000)
    os.utime(a, ns=(10**18, 10**18))
    os.utime(filler, ns=(11 * 10**17, 11 * 10**17))  # both long ago, the filler later

    crop_cache.load_crops(index(tree), size=224, cache_dir=cache)  # a hit on A: now the most recent
    assert a.stat().st_mtime_ns > filler.stat().st_mtime_ns
    monkeypatch.setenv(crop_cache.CACHE_LIMIT_ENV, "0.8")  # 838 KB: A + filler + B do not fit
    crop_cache.load_crops(index(tree), size=224, crop="original", cache_dir=cache)  # B, written
    assert a.is_file() and not filler.exists()
    assert len(list(cache.glob("crops-*.npz"))) == 2
    assert demo.stat().st_size == 3_000_000 and (cache / "notes.txt").read_text() == "mine"

    monkeypatch.setenv(crop_cache.CACHE_LIMIT_ENV, "0")  # only the file in use stays
    crop_cache.load_crops(index(tree), size=224, cache_dir=cache)
    assert list(cache.glob("crops-*.npz")) == [a]
    monkeypatch.setenv(crop_cache.CACHE_LIMIT_ENV, "lots")
    with pytest.raises(UserError, match="AU_CACHE_LIMIT_MB"):
        crop_cache.load_crops(index(tree), size=224, cache_dir=cache)
    assert crop_cache.DEFAULT_CACHE_LIMIT_MB == 2048
