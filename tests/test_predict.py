"""predict.py: AU predictions on new photos and videos from a trained run, with exactly the run's preprocessing."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST, close, REPO
import dataset
from faces import detect, ensemble
import main
import predict
from scoring import metrics
import utils

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
    np.testing.assert_allclose(mean, np.mean(each, axis=0), rtol=0, atol=close(1e-7))


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
        np.testing.assert_allclose(got, expected, rtol=0, atol=close(1e-5))


def test_frozen_backbone_run_matches_training_and_prefers_its_final_model(final_run, ck, tmp_path, capsys):
    ids, _, _, aus, _, expected = metrics.read_predictions(final_run.dir / "fold1" / "predictions.csv")
    peaks = [peak_frame(ck, seq_id) for seq_id in ids]
    rc, _, _ = call(capsys, final_run.dir / "fold1" / "checkpoint.pth", *peaks, "--landmarks", ck.landmarks,
                    "--out", tmp_path / "fold1.csv")
    assert rc == 0
    np.testing.assert_allclose(probs_of(read_rows(tmp_path / "fold1.csv"), aus), expected, rtol=0, atol=close(1e-5))

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
                               rtol=0, atol=close(1e-7))


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
    monkeypatch.setattr(detect, "face_finder", lambda args: (lambda path, gray: []))
    rc, out, _ = call(capsys, final_run.dir, good, "--out", tmp_path / "q.csv")
    [row] = read_rows(tmp_path / "q.csv")
    assert rc == 0 and row["status"] == "no face" and row["face"] == "" and "1 no face" in out


def test_photos_are_batched_across_files_and_each_files_rows_written_as_they_come(final_run, ck, tmp_path,
                                                                                   monkeypatch):
    """Photos stream like videos: faces are predicted -b at a time across photos, and a photo's
    rows reach the CSV (flushed) once its faces are predicted, so a run that dies keeps them."""
    photos = frames(ck)[:5]
    lmk = ("--landmarks", ck.landmarks)
    assert run_predict(final_run.dir, *photos, *lmk, "--out", tmp_path / "all.csv", "--quiet") == 0
    whole = read_rows(tmp_path / "all.csv")

    sizes = []
    real = ensemble.Ensemble.__call__

    def dies_at_the_third_batch(self, crops, *more):
        sizes.append(len(crops))
        if len(sizes) == 3:
            raise RuntimeError("killed")
        return real(self, crops, *more)

    monkeypatch.setattr(ensemble.Ensemble, "__call__", dies_at_the_third_batch)
    args = predict.get_args_parser().parse_args([str(a) for a in (final_run.dir, *photos, *lmk, "-b", "2",
                                                                  "--out", tmp_path / "died.csv", "--quiet")])
    with pytest.raises(RuntimeError, match="killed"):
        predict.main(args)
    assert sizes == [2, 2, 1]  # two photos per forward pass, the fifth alone
    kept = read_rows(tmp_path / "died.csv")
    assert [r["file"] for r in kept] == [str(p) for p in photos[:4]]  # the batches that were predicted
    for got, want in zip(kept, whole):
        assert {k: v for k, v in got.items() if not k.startswith("prob_")} == \
               {k: v for k, v in want.items() if not k.startswith("prob_")}
    np.testing.assert_allclose(probs_of(kept, final_run.aus), probs_of(whole[:4], final_run.aus), rtol=0,
                               atol=close(1e-6))


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
        return detect.face_finder(args)
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
    monkeypatch.setenv(detect.SHAPE_PREDICTOR_ENV, str(tmp_path / "missing.dat"))
    line = expect_user_error(capsys, final_run.dir, astronaut)
    assert detect.SHAPE_PREDICTOR_ENV in line and str(tmp_path / "missing.dat") in line


# ----------------------------------------------------------------------------- videos

AV_MISSING = "PyAV is not installed: pip install -r requirements-predict.txt"
RATE = 25  # frames per second of the test videos: frame i is at i / 25 s


def write_video(path: Path, images: list[Image.Image], rate: int = RATE, rotation: int | None = None) -> Path:
    """A lossless video (FFV1, RGB, in Matroska) of `images`, written with PyAV itself: every frame
    decodes to exactly the pixels it was made from. `rotation`: the display rotation to store."""
    av = pytest.importorskip("av", reason=AV_MISSING)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=rate)
        stream.width, stream.height = images[0].size
        stream.pix_fmt = "bgr0"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_image(image.convert("RGB"))))
        container.mux(stream.encode())
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    av = pytest.importorskip("av", reason=AV_MISSING)
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


class LandmarksByPixels:
    """A face finder for video frames made from CK+ frames: it recognises a frame by its pixels
    and gives that frame's landmark file, as --landmarks gives it to the photo (no dlib needed);
    any other frame has no face."""

    def __init__(self, ck, paths: list[Path]):
        self.known = {}
        for path in paths:
            gray = np.asarray(Image.open(path).convert("L"))
            points = dataset.read_landmarks(next(ck.landmarks.rglob(f"{path.stem}_landmarks.txt")))
            self.known[gray.tobytes()] = points

    def __call__(self, path: Path, gray: np.ndarray) -> list:
        points = self.known.get(np.ascontiguousarray(gray).tobytes())
        if points is None:
            return []
        return [detect.Face((*map(float, points.min(0)), *map(float, points.max(0))), points)]


@pytest.fixture(scope="module")
def clip(ck, tmp_path_factory) -> SimpleNamespace:
    """A CK+ sequence as a 25 fps video: neutral to peak, a blank frame (no face), back two frames."""
    pytest.importorskip("av", reason=AV_MISSING)
    sequence = max((d for d in ck.images.glob("S*/*")), key=lambda d: (len(list(d.glob("S*.png"))), d.name))
    photos = sorted(sequence.glob("S*.png"))
    blank = Image.new("L", Image.open(photos[0]).size, 128)
    order = [*photos, None, photos[-1], photos[-2]]  # None: the blank frame
    folder = tmp_path_factory.mktemp("clip")
    path = write_video(folder / "clip.mkv", [blank if p is None else Image.open(p) for p in order])
    return SimpleNamespace(path=path, photos=photos, order=order, blank=len(photos))


@pytest.fixture
def pixels_finder(ck, clip, monkeypatch):
    monkeypatch.setattr(detect, "face_finder", lambda args: LandmarksByPixels(ck, clip.photos))


def test_a_video_gives_a_row_per_frame_with_its_number_and_time(final_run, clip, ck, pixels_finder, tmp_path,
                                                                  capsys):
    # the test video is lossless: each frame decodes to the very pixels of its CK+ photo
    for frame, photo in zip(decoded_frames(clip.path), clip.order):
        if photo is not None:
            assert (frame == np.asarray(Image.open(photo).convert("RGB"))).all()
    rc, out, err = call(capsys, final_run.dir, clip.path, "--out", tmp_path / "v.csv")
    rows = read_rows(tmp_path / "v.csv")
    assert rc == 0
    assert [r["file"] for r in rows] == [str(clip.path)] * len(clip.order)
    assert [int(r["frame"]) for r in rows] == list(range(len(clip.order)))
    assert [float(r["time_s"]) for r in rows] == pytest.approx([i / RATE for i in range(len(clip.order))], abs=1e-6)
    blank = rows.pop(clip.blank)
    assert blank["status"] == "no face" and blank["face"] == "" and blank["prob_AU1"] == ""
    assert all(r["status"] == "ok" and r["face"] == "0" and r["models"] == "final" for r in rows)
    assert f"1 video ({len(clip.order)} frames predicted), {len(rows)} faces" in out
    assert "1 video frame without a prediction: 1 no face" in out
    assert "frames/s" in err  # the speed of each video is reported (not under --quiet)

    # each frame gets exactly the probabilities of its photo, predicted as a photo
    assert run_predict(final_run.dir, *clip.photos, "--landmarks", ck.landmarks, "--out", tmp_path / "p.csv",
                       "--quiet") == 0
    as_photo = by_file(read_rows(tmp_path / "p.csv"))
    expected = [as_photo[str(p)] for p in clip.order if p is not None]
    np.testing.assert_allclose(probs_of(rows, final_run.aus), probs_of(expected, final_run.aus), rtol=0, atol=close(1e-6))
    assert [[r[k] for k in ("x0", "y0", "x1", "y1")] for r in rows] == \
           [[r[k] for k in ("x0", "y0", "x1", "y1")] for r in expected]
    assert all(e["frame"] == e["time_s"] == "" for e in expected)  # photos have no frame or time


def test_every_nth_frame_and_batches_give_the_same_rows(final_run, clip, pixels_finder, tmp_path, capsys,
                                                        monkeypatch):
    assert run_predict(final_run.dir, clip.path, "--out", tmp_path / "all.csv", "--quiet") == 0
    every = {r["frame"]: r for r in read_rows(tmp_path / "all.csv")}
    sizes = []
    real = ensemble.Ensemble.__call__
    monkeypatch.setattr(ensemble.Ensemble, "__call__",
                        lambda self, crops, *more: sizes.append(len(crops)) or real(self, crops, *more))
    rc, out, _ = call(capsys, final_run.dir, clip.path, "--every", "3", "-b", "2", "--out", tmp_path / "3.csv")
    rows = read_rows(tmp_path / "3.csv")
    kept = list(range(0, len(clip.order), 3))
    assert rc == 0 and f"({len(kept)} frames predicted)" in out
    assert [int(r["frame"]) for r in rows] == kept
    assert [float(r["time_s"]) for r in rows] == pytest.approx([i / RATE for i in kept], abs=1e-6)
    same = [every[r["frame"]] for r in rows]
    assert [{k: v for k, v in r.items() if not k.startswith("prob_")} for r in rows] == \
           [{k: v for k, v in r.items() if not k.startswith("prob_")} for r in same]
    faces = [r for r in rows if r["status"] == "ok"]
    np.testing.assert_allclose(probs_of(faces, final_run.aus), probs_of([every[r["frame"]] for r in faces],
                                                                        final_run.aus), rtol=0, atol=close(1e-6))
    assert max(sizes) == 2 and sum(sizes) == sum(r["status"] == "ok" for r in rows)  # -b bounds the faces held


def moving_average(values: np.ndarray, position: list[int], k: int) -> np.ndarray:
    """The documented --smooth: the mean over the face's predicted frames within k // 2 of each."""
    position = np.array(position)
    return np.array([values[np.abs(position - p) <= k // 2].mean(axis=0) for p in position])


def test_smooth_adds_centred_moving_averages_and_keeps_the_raw_values(final_run, clip, pixels_finder, tmp_path,
                                                                      capsys):
    assert run_predict(final_run.dir, clip.path, "--out", tmp_path / "raw.csv", "--quiet") == 0
    raw_rows = read_rows(tmp_path / "raw.csv")
    for k, every in ((3, 1), (5, 1), (3, 2)):
        out = tmp_path / f"s{k}-{every}.csv"
        assert run_predict(final_run.dir, clip.path, "--smooth", k, "--every", every, "--out", out, "--quiet") == 0
        rows = read_rows(out)
        header = list(rows[0])
        names = [f"AU{a}" for a in final_run.aus]
        assert header[-4 * len(names):] == [*(f"prob_{n}" for n in names), *(f"on_{n}" for n in names),
                                            *(f"smooth_prob_{n}" for n in names), *(f"smooth_on_{n}" for n in names)]
        blank = [r for r in rows if r["status"] == "no face"]
        assert all(r["smooth_prob_AU1"] == "" for r in blank)
        faces = [r for r in rows if r["status"] == "ok"]
        raw = probs_of(faces, final_run.aus)
        # the same frames, batched differently under --every: equal up to float rounding (3e-8 seen)
        np.testing.assert_allclose(raw, probs_of([raw_rows[int(r["frame"])] for r in faces], final_run.aus),
                                   rtol=0, atol=close(1e-6))
        smoothed = np.array([[float(r[f"smooth_prob_{n}"]) for n in names] for r in faces])
        position = [int(r["frame"]) // every for r in faces]
        expected = moving_average(raw, position, k)
        np.testing.assert_allclose(smoothed, expected, rtol=0, atol=1e-12)
        on = np.array([[int(r[f"smooth_on_{n}"]) for n in names] for r in faces])
        assert (on == (smoothed > 0.5)).all()
        # at the first frame only the frames after it count; beside the blank frame only one side
        assert smoothed[0] == pytest.approx(raw[: k // 2 + 1].mean(0), abs=1e-12)
        assert np.abs(smoothed - raw).max() > 1e-4  # it did smooth something


def test_a_broken_video_gets_a_row_and_the_rest_go_on(final_run, clip, ck, pixels_finder, tmp_path, capsys):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    data = clip.path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 2 // 5])  # a copy that stopped part way
    photo = clip.photos[0]
    rc, out, err = call(capsys, final_run.dir, garbage, cut, clip.path, photo, "--out", tmp_path / "p.csv")
    rows = read_rows(tmp_path / "p.csv")
    assert rc == 0
    [bad] = [r for r in rows if r["file"] == str(garbage)]
    assert bad["status"].startswith("unreadable video: not a video file") and bad["frame"] == "" and bad["prob_AU1"] == ""
    partial = [r for r in rows if r["file"] == str(cut)]
    assert 0 < len(partial) - 1 < len(clip.order)
    assert [int(r["frame"]) for r in partial[:-1]] == list(range(len(partial) - 1))  # the frames it has
    assert partial[-1]["status"].startswith("video cut short: only") and partial[-1]["frame"] == ""
    assert sum(r["file"] == str(clip.path) for r in rows) == len(clip.order)  # the next video, whole
    assert [r["file"] for r in rows][-1] == str(photo) and rows[-1]["status"] == "ok"  # rows in the order given
    assert "garbage.mp4" in err and "cut.mkv" in err
    assert "2 videos with a problem: 1 unreadable video, 1 video cut short" in out


def test_a_rotated_video_is_turned_upright(final_run, clip, pixels_finder, tmp_path, capsys):
    """Phones store portrait video sideways with a display rotation: frames are turned as a player turns them."""
    photos = clip.photos[:2]
    sideways = [Image.open(p).transpose(Image.Transpose.ROTATE_270) for p in photos]  # stored turned clockwise
    rotated = write_video(tmp_path / "phone.mkv", sideways, rotation=90)  # shown turned back, counterclockwise
    upright = write_video(tmp_path / "upright.mkv", [Image.open(p) for p in photos])
    rc, _, _ = call(capsys, final_run.dir, rotated, upright, "--out", tmp_path / "p.csv")
    rows = read_rows(tmp_path / "p.csv")
    assert rc == 0 and [r["status"] for r in rows] == ["ok"] * 4
    np.testing.assert_allclose(probs_of(rows[:2], final_run.aus), probs_of(rows[2:], final_run.aus), atol=close(1e-6))


def test_draw_writes_an_annotated_video_and_a_plot_per_video(final_run, clip, pixels_finder, tmp_path, capsys):
    drawn = tmp_path / "drawn"
    rc, out, _ = call(capsys, final_run.dir, clip.path, "--every", "2", "--smooth", "3", "--out",
                      tmp_path / "p.csv", "--draw", drawn)
    assert rc == 0 and f"drawings: {drawn}" in out
    frames_out = decoded_frames(drawn / "clip.mp4")
    kept = list(range(0, len(clip.order), 2))
    assert len(frames_out) == len(kept)  # the predicted frames, at 25 / 2 frames per second
    av = pytest.importorskip("av", reason=AV_MISSING)
    with av.open(str(drawn / "clip.mp4")) as container:
        assert container.streams.video[0].average_rate == RATE / 2
    source = decoded_frames(clip.path)
    for index, drawn_frame in zip(kept, frames_out):
        assert drawn_frame.shape == source[index].shape
        green = (drawn_frame[..., 1].astype(int) - drawn_frame[..., 0] > 100).sum()
        assert green > 200 if index != clip.blank else green < 50  # the face box, on frames with a face
    with Image.open(drawn / "clip_aus.png") as plot:
        assert plot.format == "PNG" and plot.height > plot.width / 2  # a panel per AU, stacked


def test_videos_need_dlib_even_with_landmark_files(final_run, clip, ck, tmp_path, capsys, monkeypatch):
    """--landmarks covers photos (files are named after images); a video's faces come from dlib,
    and without dlib each video gets a row saying so while the photos are still predicted."""
    monkeypatch.setitem(sys.modules, "dlib", None)
    rc, out, err = call(capsys, final_run.dir, clip.path, clip.photos[0], "--landmarks", ck.landmarks,
                        "--out", tmp_path / "p.csv")
    video_row, photo_row = read_rows(tmp_path / "p.csv")
    assert rc == 0 and photo_row["status"] == "ok"
    assert video_row["status"].startswith("no face detector: videos need dlib")
    assert "pip install -r requirements-predict.txt" in video_row["status"] and "clip.mkv" in err


def test_without_pyav_a_video_gets_a_row_saying_what_to_install(final_run, ck, tmp_path, capsys, monkeypatch):
    (tmp_path / "clip.mp4").write_bytes(b"not decoded")
    monkeypatch.setitem(sys.modules, "av", None)
    monkeypatch.setattr(detect, "face_finder", lambda args: (lambda path, gray: []))
    rc, out, _ = call(capsys, final_run.dir, tmp_path, "--out", tmp_path / "p.csv")  # found in a folder too
    [row] = read_rows(tmp_path / "p.csv")
    assert rc == 0 and row["status"] == f"unreadable video: {AV_MISSING}"


def test_video_flags_are_checked(final_run, ck, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"checked before any file is read")
    assert "--every" in expect_user_error(capsys, final_run.dir, clip, "--every", "0")
    for k in ("1", "4"):
        assert "--smooth K must be an odd number" in expect_user_error(capsys, final_run.dir, clip, "--smooth", k)
    # on photos alone they would do nothing: said, not silently ignored
    rc, _, err = call(capsys, final_run.dir, frames(ck)[0], "--landmarks", ck.landmarks, "--every", "2",
                      "--out", tmp_path / "p.csv")
    assert rc == 0 and "--every and --smooth apply to videos" in err


def test_faces_keep_their_numbers_by_overlap():
    def at(*xs):
        return [detect.Face((x, 0.0, x + 10.0, 10.0), np.zeros((68, 2))) for x in xs]

    numbers = detect.FaceNumbers()
    assert numbers(at(0, 50)) == [0, 1]
    assert numbers(at(100, 52, 2)) == [2, 1, 0]  # any order in, the same faces out; a new face far away
    assert numbers(at(53)) == [1]  # faces 0 and 2 missing in this frame
    assert numbers(at(3, 54)) == [0, 1]  # face 0 back near where it was last seen
    assert numbers(at(30)) == [3]  # overlapping nobody's last box by 30%: a new face


def astronaut_frames(photo: Path, canvas: tuple[int, int], where: list[list[tuple[int, int]]]) -> list[Image.Image]:
    """Frames of a gray canvas with the astronaut's head pasted at each frame's positions."""
    head = Image.open(photo).convert("RGB").crop((96, 0, 352, 256)).resize((160, 160))
    frames = []
    for spots in where:
        frame = Image.new("RGB", canvas, (120, 120, 120))
        for xy in spots:
            frame.paste(head, xy)
        frames.append(frame)
    return frames


def test_dlib_follows_faces_across_frames_as_it_finds_them_in_photos(astronaut, final_run, tmp_path, capsys):
    """Two faces moving right; the left one is missing in frame 2 and back in frame 3 near where
    it was. Each keeps its number, and every face gets the probabilities its frame gets as a photo."""
    detector()  # skips when the shape predictor is missing
    where = [[(10, 40), (250, 40)], [(30, 40), (270, 40)], [(290, 40)], [(50, 40), (310, 40)]]
    images = astronaut_frames(astronaut, (480, 240), where)
    path = write_video(tmp_path / "two.mkv", images)
    photos = []
    for i, image in enumerate(images):
        photos.append(tmp_path / f"frame{i}.png")
        image.save(photos[-1])
    rc, out, _ = call(capsys, final_run.dir, path, *photos, "--out", tmp_path / "p.csv")
    rows = read_rows(tmp_path / "p.csv")
    video_rows = [r for r in rows if r["file"] == str(path)]
    assert rc == 0 and all(r["status"] == "ok" for r in rows)
    assert [(int(r["frame"]), int(r["face"])) for r in video_rows] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1),
                                                                       (3, 0), (3, 1)]
    right = [float(r["x0"]) for r in video_rows if r["face"] == "1"]
    assert (np.diff(right) > 0).all() and right[-1] - right[0] == pytest.approx(60, abs=10)  # it follows the face
    # photo rows: faces numbered left to right within the frame, as always for photos
    photo_rows = [r for r in rows if r["file"] != str(path)]
    assert [r["face"] for r in photo_rows] == ["0", "1", "0", "1", "0", "0", "1"]
    key = lambda r: (r["x0"], r["y0"])  # noqa: E731  (the same face: the same box)
    assert sorted(map(key, video_rows)) == sorted(map(key, photo_rows))
    for frame, photo in enumerate(photos):
        got = sorted((key(r), r) for r in video_rows if int(r["frame"]) == frame)
        want = sorted((key(r), r) for r in photo_rows if r["file"] == str(photo))
        np.testing.assert_allclose(probs_of([r for _, r in got], final_run.aus),
                                   probs_of([r for _, r in want], final_run.aus), rtol=0, atol=close(1e-6))


# ----------------------------------------------------------------------------- layout


def test_predict_is_a_script_over_modules_of_one_job_each():
    """predict.py (the command line, rows, summary) stands on faces, ensemble, clips, drawing and
    video, each under 500 lines, and no library module imports it back."""
    for name in ("predict", "faces/detect", "faces/ensemble", "faces/clips", "faces/drawing", "faces/video"):
        assert len((REPO / f"{name}.py").read_text().splitlines()) < 500, name
    importers = [p.name for p in REPO.glob("*.py")
                 if re.search(r"^\s*(import predict\b|from predict import)", p.read_text(), re.M)]
    assert importers == []
