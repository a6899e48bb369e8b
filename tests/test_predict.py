"""predict.py: AU predictions on new photos from a trained run, with exactly the run's preprocessing."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
import main
import predict
import utils
import metrics
from conftest import FAST, REPO

# ----------------------------------------------------------------------------- helpers and fixtures


def run_predict(*args) -> int:
    return predict.cli([str(a) for a in args])


def call(capsys, *args) -> tuple[int, str, str]:
    """predict.cli in this process -> (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = run_predict(*args)
    out, err = capsys.readouterr()
    return rc, out, err


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def probs_of(rows: list[dict], aus: list[int]) -> np.ndarray:
    return np.array([[float(r[f"prob_AU{a}"]) for a in aus] for r in rows])


def by_file(rows: list[dict]) -> dict[str, dict]:
    return {r["file"]: r for r in rows}


def peak_frame(ck, seq_id: str) -> Path:
    subject, seq = seq_id.split("_")
    return max((ck.images / subject / seq).glob(f"{seq_id}_*.png"))


def frames(ck) -> list[Path]:
    """Every frame of the synthetic tree, junk (._* AppleDouble files) left out."""
    return sorted(p for p in ck.images.rglob("*.png") if not p.name.startswith("._"))


def expect_user_error(capsys, *args) -> str:
    """A run that must fail like a user error: exit 2, one line on stderr, no traceback."""
    rc, out, err = call(capsys, *args, "--quiet")
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="session")
def run(fast_run) -> SimpleNamespace:
    """The session's tiny 3-fold run (no final model): its folder, AUs and threshold."""
    run_dir = fast_run
    saved = json.loads((run_dir / "args.json").read_text())
    aus = metrics.read_predictions(run_dir / "predictions.csv")[3]
    return SimpleNamespace(dir=run_dir, aus=aus, threshold=saved["threshold"], kfold=saved["kfold"])


@pytest.fixture(scope="module")
def final_run(ck, tmp_path_factory) -> SimpleNamespace:
    """A frozen-backbone run with a final model: fold checkpoints hold only the head, and the
    backbone lives once in RUN_DIR/backbone.pth."""
    run_dir = tmp_path_factory.mktemp("predict") / "final-run"
    assert main.cli([*ck.dirs, *FAST, "--freeze-backbone", "--final", "--output-dir", str(run_dir)]) == 0
    assert (run_dir / "backbone.pth").is_file() and (run_dir / "final" / "checkpoint.pth").is_file()
    aus = metrics.read_predictions(run_dir / "predictions.csv")[3]
    return SimpleNamespace(dir=run_dir, aus=aus)


def peak_frames(ck) -> list[Path]:
    """The last frame of every sequence (the FACS-coded one)."""
    return sorted(max(d.glob("S*.png")) for d in ck.images.glob("S*/*") if any(d.glob("S*.png")))


@pytest.fixture(scope="module")
def folder_predictions(run, ck, tmp_path_factory) -> dict[str, list[dict]]:
    """Every frame of the tree predicted with the run folder, and every peak frame with each
    fold's checkpoint alone."""
    out = tmp_path_factory.mktemp("predictions")
    results = {}
    assert run_predict(run.dir, ck.images, "--landmarks", ck.landmarks, "--out", out / "run.csv", "--quiet") == 0
    results["run"] = read_rows(out / "run.csv")
    for k in range(run.kfold):
        csv_path = out / f"fold{k}.csv"
        assert run_predict(run.dir / f"fold{k}" / "checkpoint.pth", *peak_frames(ck), "--landmarks", ck.landmarks,
                           "--out", csv_path, "--quiet") == 0
        results[f"fold{k}"] = read_rows(csv_path)
    return results


# ----------------------------------------------------------------------------- predictions


def test_a_folder_with_landmarks_gives_one_row_per_frame(folder_predictions, run, ck):
    rows = folder_predictions["run"]
    assert [r["file"] for r in rows] == [str(p) for p in frames(ck)]  # sorted, junk (._*.png) skipped
    assert all(r["status"] == "ok" and r["face"] == "0" and r["models"] == "mean of 3 folds" for r in rows)
    probs = probs_of(rows, run.aus)
    assert probs.shape == (len(frames(ck)), len(run.aus))
    assert ((probs >= 0) & (probs <= 1)).all()
    on = np.array([[int(r[f"on_AU{a}"]) for a in run.aus] for r in rows])
    assert (on == (probs > run.threshold)).all()
    # the box is the bounding box of the frame's landmark file
    first = frames(ck)[0]
    points = dataset.read_landmarks(next(ck.landmarks.rglob(f"{first.stem}_landmarks.txt")))
    box = [float(rows[0][k]) for k in ("x0", "y0", "x1", "y1")]
    assert box == pytest.approx([*points.min(0), *points.max(0)], abs=0.01)


def test_mean_of_folds_is_the_mean_of_each_fold_checkpoint(folder_predictions, run, ck):
    rows = by_file(folder_predictions["run"])
    mean = probs_of([rows[str(p)] for p in peak_frames(ck)], run.aus)
    each = [probs_of(folder_predictions[f"fold{k}"], run.aus) for k in range(run.kfold)]
    assert all([r["file"] for r in folder_predictions[f"fold{k}"]] == [str(p) for p in peak_frames(ck)]
               for k in range(run.kfold))
    np.testing.assert_allclose(mean, np.mean(each, axis=0), rtol=0, atol=1e-7)


def test_a_checkpoint_file_uses_that_model_only(folder_predictions, run):
    for k in range(run.kfold):
        rows = folder_predictions[f"fold{k}"]
        assert {r["models"] for r in rows} == {f"fold{k} checkpoint"}
    fold0, fold1 = (probs_of(folder_predictions[f"fold{k}"], run.aus) for k in (0, 1))
    assert np.abs(fold0 - fold1).max() > 1e-4  # different models: the test above can tell them apart


def test_probabilities_match_what_training_evaluated(folder_predictions, run, ck):
    """A fold's checkpoint on the peak frames of its own test set gives the probabilities
    main.py wrote for them: the same crop, gray conversion and normalisation."""
    for k in range(run.kfold):
        ids, _, _, aus, _, expected = metrics.read_predictions(run.dir / f"fold{k}" / "predictions.csv")
        rows = by_file(folder_predictions[f"fold{k}"])
        got = probs_of([rows[str(peak_frame(ck, seq_id))] for seq_id in ids], aus)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_frozen_backbone_run_matches_training_and_prefers_its_final_model(final_run, ck, tmp_path, capsys):
    ids, _, _, aus, _, expected = metrics.read_predictions(final_run.dir / "fold1" / "predictions.csv")
    peaks = [peak_frame(ck, seq_id) for seq_id in ids]
    rc, _, _ = call(capsys, final_run.dir / "fold1" / "checkpoint.pth", *peaks, "--landmarks", ck.landmarks,
                    "--out", tmp_path / "fold1.csv")
    assert rc == 0
    np.testing.assert_allclose(probs_of(read_rows(tmp_path / "fold1.csv"), aus), expected, rtol=0, atol=1e-5)

    rc, out, _ = call(capsys, final_run.dir, *peaks[:3], "--landmarks", ck.landmarks, "--out", tmp_path / "run.csv")
    assert rc == 0 and "models: final" in out
    rc, _, _ = call(capsys, final_run.dir / "final" / "checkpoint.pth", *peaks[:3], "--landmarks", ck.landmarks,
                    "--out", tmp_path / "final.csv")
    assert rc == 0
    run_rows, final_rows = read_rows(tmp_path / "run.csv"), read_rows(tmp_path / "final.csv")
    assert {r["models"] for r in run_rows} == {"final"}
    assert {r["models"] for r in final_rows} == {"final checkpoint"}
    np.testing.assert_array_equal(probs_of(run_rows, aus), probs_of(final_rows, aus))
    fold1 = probs_of(read_rows(tmp_path / "fold1.csv"), aus)[:3]
    assert np.abs(probs_of(run_rows, aus) - fold1).max() > 1e-6  # the final model is another model


def test_colour_photos_are_turned_gray_as_in_training(final_run, ck, tmp_path, capsys):
    """A colour photo is predicted on Pillow's ITU-R 601 gray of it, the conversion training
    applied to CK+'s RGB frames (preprocess.crop_face), not on one of its channels."""
    frame = frames(ck)[-1]
    gray = np.asarray(Image.open(frame).convert("L"))
    colour = Image.fromarray(np.stack([gray, 255 - gray, gray // 2], axis=-1))
    for folder, image in (("colour", colour), ("gray", colour.convert("L"))):
        (tmp_path / folder).mkdir()
        image.save(tmp_path / folder / frame.name)  # same stem: same landmark file
    rc, _, _ = call(capsys, final_run.dir, tmp_path / "colour", tmp_path / "gray", "--landmarks", ck.landmarks,
                    "--out", tmp_path / "p.csv")
    from_colour, from_gray = read_rows(tmp_path / "p.csv")
    assert rc == 0 and from_colour["status"] == from_gray["status"] == "ok"
    np.testing.assert_allclose(probs_of([from_colour], final_run.aus), probs_of([from_gray], final_run.aus),
                               rtol=0, atol=1e-7)


def test_threshold_comes_from_the_run(final_run, ck, tmp_path, capsys):
    """on_AU columns use the run's args.json threshold, not a built-in 0.5."""
    edited = tmp_path / "edited-run"
    edited.mkdir()
    for name in ("final", "backbone.pth"):
        (edited / name).symlink_to(final_run.dir / name)
    some = frames(ck)[:8]
    rc, _, _ = call(capsys, edited / "final" / "checkpoint.pth", *some, "--landmarks", ck.landmarks,
                    "--out", tmp_path / "a.csv")
    assert rc == 0
    probs = probs_of(read_rows(tmp_path / "a.csv"), final_run.aus)
    threshold = float(np.median(probs))
    assert ((probs > threshold) != (probs > 0.5)).any()  # a threshold this test can tell from 0.5
    settings = json.loads((final_run.dir / "args.json").read_text())
    (edited / "args.json").write_text(json.dumps({**settings, "threshold": threshold}))
    rc, out, _ = call(capsys, edited, *some, "--landmarks", ck.landmarks, "--out", tmp_path / "b.csv")
    rows = read_rows(tmp_path / "b.csv")
    on = np.array([[int(r[f"on_AU{a}"]) for a in final_run.aus] for r in rows])
    assert rc == 0 and f"above {threshold:g}" in out
    assert (on == (probs_of(rows, final_run.aus) > threshold)).all()


def test_draw_writes_annotated_pngs_and_never_overwrites_inputs(final_run, ck, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    originals = {}
    for frame in frames(ck)[:2]:
        (photos / frame.name).write_bytes(frame.read_bytes())
        originals[frame.name] = frame.read_bytes()
    rc, out, _ = call(capsys, final_run.dir, photos, "--landmarks", ck.landmarks, "--out", tmp_path / "p.csv",
                      "--draw", photos)
    assert rc == 0 and f"drawings: {photos}" in out
    assert {p.name: p.read_bytes() for p in photos.glob("*.png") if "-" not in p.name} == originals  # untouched
    for name in originals:
        drawn = photos / name.replace(".png", "-2.png")
        with Image.open(drawn) as img, Image.open(photos / name) as src:
            assert img.format == "PNG" and img.size == src.size
            assert np.abs(np.asarray(img.convert("RGB"), dtype=int)
                          - np.asarray(src.convert("RGB"), dtype=int)).max() > 100  # coloured marks on gray


def test_bad_and_faceless_images_get_a_row_and_the_run_goes_on(final_run, ck, tmp_path, capsys, monkeypatch):
    good = frames(ck)[0]
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / good.name).write_bytes(good.read_bytes())
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # unreadable image
    Image.open(good).save(photos / "stranger.png")  # readable, but no landmark file of that name
    (photos / "._broken.png").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble junk: skipped, no row
    (photos / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    rc, out, err = call(capsys, final_run.dir, photos, "--landmarks", ck.landmarks, "--out", tmp_path / "p.csv")
    assert rc == 0
    rows = by_file(read_rows(tmp_path / "p.csv"))
    assert set(rows) == {str(photos / n) for n in (good.name, "broken.png", "stranger.png")}
    assert rows[str(photos / good.name)]["status"] == "ok"
    broken, stranger = rows[str(photos / "broken.png")], rows[str(photos / "stranger.png")]
    assert broken["status"].startswith("unreadable image") and broken["prob_AU1"] == ""
    assert stranger["status"].startswith("no landmark file") and "stranger_landmarks.txt" in stranger["status"]
    assert "broken.png" in err and "stranger.png" in err  # warned on stderr too
    assert "3 images, 1 face" in out and "1 unreadable image" in out

    # a face finder that finds nothing (as dlib on a photo without a face) gives a "no face" row
    monkeypatch.setattr(predict, "face_finder", lambda args: (lambda path, gray: []))
    rc, out, _ = call(capsys, final_run.dir, good, "--out", tmp_path / "q.csv")
    [row] = read_rows(tmp_path / "q.csv")
    assert rc == 0 and row["status"] == "no face" and row["face"] == "" and "1 no face" in out


# ----------------------------------------------------------------------------- user errors


def test_user_errors_are_one_line_and_exit_2(run, final_run, ck, tmp_path, capsys):
    frame = frames(ck)[0]
    lmk = ("--landmarks", ck.landmarks)
    missing = tmp_path / "nowhere.png"
    assert str(missing) in expect_user_error(capsys, run.dir, missing, *lmk)
    assert str(tmp_path / "no-run") in expect_user_error(capsys, tmp_path / "no-run", frame, *lmk)

    not_ours = tmp_path / "other.pth"
    torch.save({"state_dict": {}}, not_ours)
    assert str(not_ours) in expect_user_error(capsys, not_ours, frame, *lmk)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    assert str(text) in expect_user_error(capsys, text, frame, *lmk)

    empty_run = tmp_path / "empty-run"
    empty_run.mkdir()
    (empty_run / "args.json").write_text("{}")
    line = expect_user_error(capsys, empty_run, frame, *lmk)
    assert str(empty_run) in line and "no trained model" in line

    assert "--landmarks" in expect_user_error(capsys, final_run.dir, frame, "--landmarks", tmp_path / "no-landmarks")

    # a frozen-backbone checkpoint moved out of its run folder has no backbone to load
    moved = tmp_path / "moved" / "fold0"
    moved.mkdir(parents=True)
    (moved / "checkpoint.pth").symlink_to(final_run.dir / "fold0" / "checkpoint.pth")
    assert "backbone.pth" in expect_user_error(capsys, moved / "checkpoint.pth", frame, *lmk)


def test_without_dlib_or_landmarks_it_says_what_to_install(final_run, ck, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now raises ImportError
    line = expect_user_error(capsys, final_run.dir, frames(ck)[0])
    assert "pip install -r requirements-predict.txt" in line and "--landmarks" in line


def test_the_command_line_prints_no_traceback(tmp_path):
    Image.new("L", (64, 48)).save(tmp_path / "photo.png")
    result = subprocess.run([sys.executable, str(REPO / "predict.py"), str(tmp_path / "no-run"), "photo.png"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'no-run'} does not exist: give a run folder "
                                                  f"main.py wrote, or a checkpoint.pth in one"]
    assert not (tmp_path / "predictions.csv").exists()


# ----------------------------------------------------------------------------- face detection (optional deps)


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    pytest.importorskip("dlib", reason="dlib is not installed: pip install -r requirements-predict.txt")
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is not installed: "
                                                              "pip install -r requirements-predict.txt")
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(path)
    return path


def detector():
    args = predict.get_args_parser().parse_args(["run", "image"])
    try:
        return predict.face_finder(args)
    except utils.UserError as e:
        pytest.skip(f"dlib's shape predictor is not at hand ({e})")


def test_dlib_finds_one_face_with_plausible_landmarks_on_the_astronaut(astronaut):
    gray = np.asarray(Image.open(astronaut).convert("L"))
    [face] = detector()(astronaut, gray)
    pts = face.landmarks
    assert pts.shape == (68, 2)
    eyes, nose_tip, mouth = pts[36:48], pts[30], pts[48:68]
    assert eyes[:, 1].max() < nose_tip[1] < mouth[:, 1].min()
    x0, y0, x1, y1 = face.box
    slack = 0.2 * max(x1 - x0, y1 - y0)  # dlib's box is tight: the chin and jaw may poke out
    assert (pts[:, 0] > x0 - slack).all() and (pts[:, 0] < x1 + slack).all()
    assert (pts[:, 1] > y0 - slack).all() and (pts[:, 1] < y1 + slack).all()
    assert 150 < (x0 + x1) / 2 < 300 and 60 < (y0 + y1) / 2 < 200  # her face, top centre of the photo


def test_cli_detects_faces_end_to_end(astronaut, final_run, tmp_path, capsys):
    blank = tmp_path / "wall.png"
    Image.new("L", (320, 240), 128).save(blank)
    detector()  # skips when the shape predictor is missing
    rc, out, _ = call(capsys, final_run.dir, astronaut, blank, "--out", tmp_path / "p.csv", "--draw", tmp_path / "d")
    rows = by_file(read_rows(tmp_path / "p.csv"))
    face, wall = rows[str(astronaut)], rows[str(blank)]
    assert rc == 0 and "2 images, 1 face" in out
    assert face["status"] == "ok" and face["face"] == "0" and face["models"] == "final"
    assert 0 <= float(face["prob_AU12"]) <= 1
    assert wall["status"] == "no face"
    assert (tmp_path / "d" / "astronaut.png").is_file() and (tmp_path / "d" / "wall.png").is_file()


def test_a_missing_shape_predictor_is_a_user_error(astronaut, final_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(predict.SHAPE_PREDICTOR_ENV, str(tmp_path / "missing.dat"))
    line = expect_user_error(capsys, final_run.dir, astronaut)
    assert predict.SHAPE_PREDICTOR_ENV in line and str(tmp_path / "missing.dat") in line
