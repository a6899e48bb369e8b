"""The synthetic CK+ generator: layout, formats, determinism, junk, CLI and AU geometry."""
from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ckplus
from ckplus import synthetic
from utils import UserError

RECORD_LINE = re.compile(r"^(   -?\d\.\d{7}e[+-]\d{2})+$")
FRAME = re.compile(r"^(S\d{3})_(\d{3})_(\d{8})\.png$")
LANDMARKS = re.compile(r"^(S\d{3})_(\d{3})_(\d{8})_landmarks\.txt$")
FACS = re.compile(r"^(S\d{3})_(\d{3})_(\d{8})_facs\.txt$")
EMOTION = re.compile(r"^(S\d{3})_(\d{3})_(\d{8})_emotion\.txt$")
JUNK_NAMES = {".DS_Store", "Thumbs.db", "notes.txt"}
REPO = Path(__file__).resolve().parents[1]


def is_junk(path: Path) -> bool:
    return path.name in JUNK_NAMES or path.name.startswith("._")


def tree_files(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_records(path: Path) -> list[list[float]]:
    lines = path.read_text().splitlines()
    for line in lines:
        assert RECORD_LINE.match(line), f"{path.name}: {line!r}"
    return [[float(v) for v in line.split()] for line in lines]


def sequences_on_disk(root: Path) -> dict[tuple[str, str], dict]:
    """What the tree holds per (subject, sequence), found by walking it (junk left out)."""
    seqs: dict[tuple[str, str], dict] = defaultdict(lambda: {"frames": [], "landmarks": [], "facs": [], "emotion": []})
    for kind, key, pattern in (("frame", "frames", FRAME), ("landmarks", "landmarks", LANDMARKS),
                               ("facs", "facs", FACS), ("emotion", "emotion", EMOTION)):
        sub = ckplus.SUBDIRS[kind]
        for p in (root / sub).rglob("*"):
            if p.is_dir() or is_junk(p):
                continue
            m = pattern.match(p.name)
            assert m, f"unexpected file {p}"
            subject, seq, frame = m.groups()
            assert p.parent == root / sub / subject / seq, f"{p} is not in {subject}/{seq}"
            seqs[subject, seq][key].append((int(frame), p))
    return seqs


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, synthetic.SyntheticSummary]:
    root = tmp_path_factory.mktemp("ckplus")
    return root, synthetic.generate(root, subjects=3, seed=0, workers=2)


def test_files_follow_ckplus_names_and_number_formats(tree):
    root, summary = tree
    seqs = sequences_on_disk(root)
    assert len(seqs) == summary.sequences > 0
    assert {s for s, _ in seqs} == {"S005", "S006", "S008"}  # numbered with gaps, as in CK+
    for (subject, seq), files in seqs.items():
        frames = sorted(f for f, _ in files["frames"])
        assert frames == list(range(1, len(frames) + 1)) and 3 <= len(frames) <= 6
        # a landmark file for every frame, one FACS file named after the peak (last) frame
        assert sorted(f for f, _ in files["landmarks"]) == frames
        assert [f for f, _ in files["facs"]] == [frames[-1]]
        for _, p in files["landmarks"]:
            points = np.array(read_records(p))
            assert points.shape == (68, 2)
        aus = read_records(files["facs"][0][1])
        assert aus and all(len(r) == 2 and r[0] == int(r[0]) and 0 <= r[1] <= 5 for r in aus)
        for _, p in files["emotion"]:
            assert p.parent.name == seq
            [[code]] = read_records(p)
            assert code in range(1, 8)
        assert [f for f, _ in files["emotion"]] in ([], [frames[-1]])


def test_frames_are_8bit_grey_640x490_with_the_allowed_exceptions(tree, tmp_path):
    root, summary = tree
    for files in sequences_on_disk(root).values():
        kinds = set()
        for _, p in files["frames"]:
            with Image.open(p) as im:
                kinds.add((im.mode, im.size))
        assert len(kinds) == 1  # a sequence keeps one mode and size
        assert kinds.pop() in {(m, s) for m in ("L", "RGB") for s in ((640, 490), (640, 480))}

    # both exceptions appear when asked for, whole sequences at a time, and vanish at 0
    s = synthetic.generate(tmp_path / "odd", subjects=2, seed=3, rgb_fraction=0.5, small_fraction=0.5, junk=False)
    modes = Counter()
    for files in sequences_on_disk(tmp_path / "odd").values():
        with Image.open(files["frames"][0][1]) as im:
            modes[im.mode, im.size] += 1
    assert modes["RGB", (640, 490)] + modes["RGB", (640, 480)] == s.rgb_sequences > 0
    assert modes["L", (640, 480)] + modes["RGB", (640, 480)] == s.small_sequences > 0
    synthetic.generate(tmp_path / "plain", subjects=2, seed=3, rgb_fraction=0, small_fraction=0, junk=False)
    for p in ckplus.folders(tmp_path / "plain")["frame"].rglob("*.png"):
        with Image.open(p) as im:
            assert (im.mode, im.size) == ("L", (640, 490))


def test_summary_matches_what_is_on_disk(tree):
    root, summary = tree
    seqs = sequences_on_disk(root)
    au_counts = Counter(int(au) for files in seqs.values() for au, _ in read_records(files["facs"][0][1]))
    emotions = Counter(int(read_records(p)[0][0]) for files in seqs.values() for _, p in files["emotion"])
    assert summary.subjects == 3
    assert summary.sequences == len(seqs)
    assert summary.frames == sum(len(f["frames"]) for f in seqs.values())
    assert summary.au_counts == dict(sorted(au_counts.items()))
    assert list(summary.au_counts) == sorted(summary.au_counts)
    assert summary.emotion_counts == dict(sorted(emotions.items()))
    assert all(p.exists() for p in summary.junk_files)


def test_junk_is_written_like_a_real_copy_and_only_when_asked(tree, tmp_path):
    root, summary = tree
    for kind in ("frame", "facs", "landmarks"):
        assert ckplus.folders(root)[kind] / ".DS_Store" in summary.junk_files
    names = {p.name for p in summary.junk_files}
    assert "notes.txt" in names
    assert any(n.startswith("._S005_001_") and n.endswith(".png") for n in names)
    assert any(n.startswith("._S005_001_") and n.endswith("_landmarks.txt") for n in names)
    empty = [p for p in summary.junk_files if p.is_dir()]
    assert empty, "expected an empty sequence folder"
    for folder in empty:
        assert not any(folder.iterdir())
        assert not (ckplus.folders(root)["facs"] / folder.parent.name / folder.name).exists()
    seqs = sequences_on_disk(root)  # junk is not a sequence
    assert all((p.parent.name, p.name) not in seqs for p in empty)

    clean = tmp_path / "clean"
    s = synthetic.generate(clean, subjects=3, seed=0, junk=False)
    assert s.junk_files == []
    leftovers = [p for p in clean.rglob("*") if is_junk(p) or (p.is_dir() and not any(p.iterdir()))]
    assert leftovers == []
    # junk draws from its own stream: every real file is the same with or without it
    with_junk = {k: v for k, v in tree_files(root).items() if not is_junk(Path(k))}
    assert tree_files(clean) == with_junk


def test_same_seed_same_bytes_other_seed_other_faces(tree, tmp_path):
    root, _ = tree
    synthetic.generate(tmp_path / "again", subjects=3, seed=0, workers=1)  # the tree was drawn by 2 processes
    assert tree_files(tmp_path / "again") == tree_files(root)
    synthetic.generate(tmp_path / "other", subjects=3, seed=1)
    other = tree_files(tmp_path / "other")
    first = tree_files(root)
    common = [k for k in other if k.endswith(".png") and k in first and not is_junk(Path(k))]
    assert sum(other[k] != first[k] for k in common) == len(common) > 0


def test_fewer_subjects_give_a_prefix_of_the_tree(tree, tmp_path):
    root, _ = tree
    synthetic.generate(tmp_path / "two", subjects=2, seed=0)
    two = tree_files(tmp_path / "two")
    three = tree_files(root)
    assert two and all(three.get(k) == v for k, v in two.items())


def test_existing_tree_is_refused_unless_overwrite(tmp_path):
    synthetic.generate(tmp_path, subjects=1, seed=0, junk=False)
    with pytest.raises(UserError, match="already holds a CK\\+ tree"):
        synthetic.generate(tmp_path, subjects=1, seed=1)
    (tmp_path / "keep.txt").write_text("mine")
    s = synthetic.generate(tmp_path, subjects=1, seed=1, junk=False, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert len(sequences_on_disk(tmp_path)) == s.sequences


def test_junk_goes_into_the_first_sequence_whatever_its_number(tmp_path):
    # with seed 13 the first subject's numbering skips at once: its first sequence is 002
    s = synthetic.generate(tmp_path, subjects=1, seed=13)
    names = {p.relative_to(tmp_path).as_posix() for p in s.junk_files}
    assert f"{ckplus.SUBDIRS['frame']}/S005/002/notes.txt" in names
    assert f"{ckplus.SUBDIRS['landmarks']}/S005/002/._S005_002_00000001_landmarks.txt" in names


def test_bad_arguments_are_refused(tmp_path):
    for kwargs in ({"subjects": 0}, {"subjects": synthetic.MAX_SUBJECTS + 1}, {"min_frames": 1},
                   {"min_frames": 5, "max_frames": 4}, {"rgb_fraction": 1.5}, {"small_fraction": -0.1}):
        with pytest.raises(UserError):
            synthetic.generate(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_cli_writes_the_tree_and_prints_the_summary(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, str(REPO / "synthetic.py"), str(out), "--subjects", "2", "--seed", "4",
                          "--max-frames", "3"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    seqs = sequences_on_disk(out)
    frames = sum(len(f["frames"]) for f in seqs.values())
    assert f"2 subjects, {len(seqs)} sequences, {frames} frames" in run.stdout
    au_counts = Counter(int(au) for f in seqs.values() for au, _ in read_records(f["facs"][0][1]))
    for au, n in au_counts.items():
        assert f"AU{au}: {n}" in run.stdout
    assert "emotion files:" in run.stdout and "junk:" in run.stdout
    assert sorted(p.name for p in out.iterdir()) == ["Emotion_labels", "FACS_labels", "Landmarks", "cohn-kanade-images"]

    bad = subprocess.run([sys.executable, str(REPO / "synthetic.py"), str(tmp_path / "bad"), "--subjects", "0"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--subjects" in bad.stderr


def test_default_tree_has_ckplus_label_statistics():
    """123 subjects hold 593 sequences, 327 with an emotion, and exactly CK+'s ten AUs
    are coded more than 90 times, for any seed (checked on the plan; nothing is drawn)."""
    for seed in (0, 1):
        plan = synthetic.subject_plan(seed, 123)
        recipes = [r for _, rs in plan for r in rs]
        assert len(recipes) == 593
        assert sum(r.emotion is not None for r in recipes) == 327
        counts = Counter(au for r in recipes for au in r.aus)
        assert sorted(au for au, n in counts.items() if n > 90) == [1, 2, 4, 5, 6, 7, 12, 15, 17, 25]
        assert all(abs(counts[au] - n) <= 12 for au, n in
                   {1: 177, 2: 117, 4: 194, 5: 102, 6: 123, 7: 121, 12: 131, 15: 94, 17: 202, 25: 324}.items())
        numbers = [n for n, _ in plan]
        assert numbers == sorted(set(numbers)) and numbers[0] == 5 and numbers[-1] <= 999
        sizes = [len(rs) for _, rs in plan]
        assert min(sizes) == 1 and max(sizes) == 10
    # a slot's options are exclusive: their fractions can never need more than all sequences
    for name, _, n, labelled, slots in synthetic.RECIPES:
        assert labelled <= n and all(sum(f for f, _ in slot) <= 1.0 for slot in slots), name


def _peak_and_neutral(root: Path, files: dict) -> tuple[np.ndarray, np.ndarray]:
    frames = sorted(files["landmarks"])
    return np.array(read_records(frames[-1][1])), np.array(read_records(frames[0][1]))


def test_landmarks_move_as_the_coded_aus_move_a_face(tmp_path):
    root = tmp_path / "t"
    synthetic.generate(root, subjects=4, seed=0, junk=False)
    smiles = brows = 0
    for files in sequences_on_disk(root).values():
        aus = {int(au) for au, _ in read_records(files["facs"][0][1])}
        peak, neutral = _peak_and_neutral(root, files)

        def corner_lift(p):  # mouth centre minus lip corners, in y (image y grows downwards)
            return p[[51, 57], 1].mean() - p[[48, 54], 1].mean()

        def inner_brow_height(p):  # inner eye corners minus inner brows
            return p[[39, 42], 1].mean() - p[[21, 22], 1].mean()

        if 12 in aus and not aus & {15, 17, 20}:
            smiles += 1
            assert corner_lift(peak) > corner_lift(neutral) + 1.0
        if 1 in aus and not aus & {4, 9}:
            brows += 1
            assert inner_brow_height(peak) > inner_brow_height(neutral) + 1.0
    assert smiles and brows  # the check above ran


def test_au_geometry_and_pixels():
    rng = np.random.default_rng(5)
    shape = synthetic.neutral_shape(rng)
    # AU4 lowers the brows and draws them together; AU5 widens the eyes; AU7 narrows them
    d4 = synthetic.apply_aus(shape, {4: 3}) - shape
    assert (d4[17:27, 1] > 0).all() and d4[21, 0] > 0 > d4[22, 0]
    eye_open = lambda s: s[[40, 41], 1].mean() - s[[37, 38], 1].mean()  # noqa: E731
    assert eye_open(synthetic.apply_aus(shape, {5: 3})) > eye_open(shape) > eye_open(synthetic.apply_aus(shape, {7: 3}))
    # a stronger intensity moves further
    lift = lambda s: -s[[48, 54], 1].mean()  # noqa: E731
    assert lift(synthetic.apply_aus(shape, {12: 5})) > lift(synthetic.apply_aus(shape, {12: 2})) > lift(shape)
    # contempt: a unilateral AU12 lifts the corner on its own side only
    d12 = synthetic.apply_aus(shape, {12: 3}, side=-1) - shape
    assert d12[48, 1] < 0 and d12[54, 1] == 0

    # pixels: parting the lips darkens the mouth; without rng the drawing is deterministic
    ap = synthetic.Appearance.random(rng)
    neutral = synthetic.place(shape, (320, 190), 115, 3.0)
    open_mouth = synthetic.place(synthetic.apply_aus(shape, {25: 4, 26: 4}), (320, 190), 115, 3.0)
    a = synthetic.render_face(neutral, (640, 490), ap)
    b = synthetic.render_face(open_mouth, (640, 490), ap)
    assert a.dtype == np.uint8 and a.shape == (490, 640)
    assert np.array_equal(a, synthetic.render_face(neutral, (640, 490), ap))
    x0, y0 = open_mouth[60:68].min(0).astype(int)
    x1, y1 = open_mouth[60:68].max(0).astype(int)
    assert b[y0:y1, x0:x1].mean() < a[y0:y1, x0:x1].mean() - 20
    noisy = synthetic.render_face(neutral, (640, 480), ap, rng=np.random.default_rng(0))
    assert noisy.shape == (480, 640) and 0 < np.abs(noisy[:480].astype(int) - a[:480]).mean() < 10


def test_written_pngs_read_back_exactly(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (7, 5), dtype=np.uint8)
    rgb = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    for name, pixels, mode in (("g.png", grey, "L"), ("c.png", rgb, "RGB")):
        synthetic.write_png(tmp_path / name, pixels)
        with Image.open(tmp_path / name) as im:
            assert im.mode == mode and np.array_equal(np.asarray(im), pixels)
