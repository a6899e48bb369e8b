"""explain.py and predict.py --explain: saliency maps in the face's own frame, and FACS-region lifts
that tell a model reading the right muscles from one reading another AU's."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import ckplus
from ckplus import geometry, synthetic
from conftest import FAST
import explain
from explaining import face_regions, saliency
from faces import detect
import main
import models
import predict


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- the warp


def crop_space(points: np.ndarray, size: int) -> np.ndarray:
    x0, y0 = points.min(0)
    x1, y1 = points.max(0)
    side = max(x1 - x0, y1 - y0) * 1.25
    return (points - [(x0 + x1) / 2, (y0 + y1) / 2]) / side * size + size / 2


@pytest.fixture(scope="module")
def shapes(ck) -> list[np.ndarray]:
    import dataset

    files = sorted(p for p in ck.landmarks.rglob("*_landmarks.txt") if not p.name.startswith("._"))[:5]
    return [crop_space(dataset.read_landmarks(p), 48) for p in files]


def test_a_face_warped_onto_itself_is_unchanged(shapes):
    size = 48
    maps = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    warp = face_regions.Warp(shapes[0], size)
    assert torch.allclose(warp(maps, np.stack([shapes[0], shapes[0]])), maps, atol=1e-5)
    # another face's map does move (the check above is not vacuous)
    assert not torch.allclose(warp(maps[:1], shapes[1][None]), maps[:1], atol=1e-2)


def test_a_flipped_face_gets_the_mirrored_map(shapes):
    size = 48
    target = np.mean(shapes, 0)
    amap = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(1))
    straight = face_regions.Warp(target, size)(amap, shapes[1][None])
    flipped = face_regions.Warp(geometry.flip_points(target, size), size)(
        amap.flip(-1), geometry.flip_points(shapes[1], size)[None])
    assert torch.allclose(flipped.flip(-1), straight, atol=1e-4)


def test_regions_lie_on_the_face_and_a_flat_map_has_lift_one(shapes):
    target = np.mean(shapes, 0)
    masks = face_regions.region_masks(target, [1, 2, 4, 5, 6, 7, 12, 15, 17, 25, 9], 48)
    assert masks.aus == [1, 2, 4, 5, 6, 7, 12, 15, 17, 25]  # AU9 has no region in the table
    assert all(r.any() for r in masks.regions) and not (masks.regions & ~masks.face).any()
    flat = torch.ones(1, 48 * 48) @ masks.matrix()
    lifts = face_regions.lift(flat[0, :-1].numpy(), flat[0, -1].numpy(), masks.area_share)
    assert np.allclose(lifts, 1.0)


# ----------------------------------------------------------------------------- the maps of every backbone


@pytest.mark.parametrize("name,size", [("alexnet", 64), ("vgg11", 64), ("res18", 64), ("squeezenet1_1", 64),
                                       ("mobilenet_v2", 64), ("efficientnet_b0", 64), ("convnext_tiny", 64),
                                       ("inception", 80), ("googlenet", 64)])
def test_every_convolutional_backbone_gets_a_grad_cam_map_of_the_crops_size(name, size):
    model = models.build_model(name, 3, pretrained=False).eval()
    method = saliency.choose_method(model, size)
    assert method.kind == "Grad-CAM" and method.layer.startswith("backbone.")
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    maps = saliency.au_maps(model, method, x, None)
    assert maps.shape == (2, 3, size, size) and (maps >= 0).all()


def test_the_layer_is_the_deepest_with_a_ten_by_ten_map():
    model = models.build_model("res18", 3, pretrained=False)
    assert saliency.choose_method(model, 160) == saliency.Method("Grad-CAM", "backbone.layer3", (10, 10))
    assert saliency.choose_method(model, 64) == saliency.Method("Grad-CAM", "backbone.layer1", (16, 16))
    mnv2 = models.build_model("mobilenet_v2", 3, pretrained=False)
    assert saliency.choose_method(mnv2, 160).grid == (10, 10)


def test_batched_grad_cam_equals_captums_layer_grad_cam():
    from captum.attr import LayerAttribution, LayerGradCam

    model = models.build_model("res18", 3, pretrained=False, geometry=True).eval()
    method = saliency.choose_method(model, 64)
    x, g = torch.randn(3, 3, 64, 64), torch.randn(3, geometry.FEATURES)
    ours = saliency.au_maps(model, method, x, g)
    model.requires_grad_(True)
    cam = LayerGradCam(lambda a, b: model(a, b), model.get_submodule(method.layer))
    theirs = torch.cat([LayerAttribution.interpolate(
        cam.attribute(x, target=j, additional_forward_args=(g,), relu_attributions=True), (64, 64), "bilinear")
        for j in range(3)], 1)
    assert torch.allclose(ours, theirs, atol=1e-6 * float(theirs.detach().abs().max()) + 1e-12)
    assert theirs.abs().max() > 0


def test_a_backbone_without_convolutions_gets_integrated_gradients():
    config = models.model_config("res18")
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8), nn.ReLU())
    model = models.AUNet(backbone, 8, 3, config).eval()
    method = saliency.choose_method(model, 16)
    assert method.kind == "integrated gradients"
    maps = saliency.au_maps(model, method, torch.randn(2, 3, 16, 16), None)
    assert maps.shape == (2, 3, 16, 16) and (maps >= 0).all() and maps.sum() > 0


def test_a_geometry_model_gets_the_attribution_of_each_landmark():
    model = models.build_model("res18", 4, pretrained=False, geometry=True).eval()
    shape = torch.randn(2, geometry.FEATURES)
    attribution = saliency.landmark_attribution(model, torch.randn(2, 3, 32, 32), shape)
    assert attribution.shape == (2, 4, geometry.NUM_POINTS) and (attribution >= 0).all() and attribution.sum() > 0


# ----------------------------------------------------------------------------- explain.py on a run


def test_explain_maps_each_folds_test_faces_with_that_folds_model(fast_run, tmp_path, capsys):
    out = tmp_path / "ex"
    assert explain.cli([str(fast_run), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "lift [95% CI]" in printed and "Grad-CAM at backbone." in printed
    rows = read_csv(out / "faces.csv")
    for k in range(3):
        test_ids = torch.load(fast_run / f"fold{k}" / "checkpoint.pth", weights_only=True)["test_ids"]
        assert sorted(r["id"] for r in rows if r["fold"] == str(k)) == sorted(test_ids)
    assert len({r["id"] for r in rows}) == len(rows)  # each face once, by the one model that never saw it
    record = json.loads((out / "regions.json").read_text())
    assert record["matrix"]["maps"] == record["aus"] and len(record["matrix"]["lift"]) == len(record["aus"])
    assert {"AU1.png", "AU12.png", "saliency.png", "regions.csv"} <= {p.name for p in out.iterdir()}
    header = read_csv(out / "regions.csv")[0]
    assert {"lift", "ci_low", "ci_high", "in_AU12_region"} <= set(header)


def test_explain_one_fold_and_some_aus(fast_run, tmp_path):
    out = tmp_path / "ex"
    assert explain.cli([str(fast_run), "--fold", "1", "--aus", "1,12", "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "regions.json").read_text())
    assert record["folds"] == [1] and record["aus"] == ["AU1", "AU12"]
    assert {r["fold"] for r in read_csv(out / "faces.csv")} == {"1"}


def test_explain_refuses_what_it_cannot_do_in_one_line(fast_run, tmp_path, capsys):
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "seeds.json").write_text("{}")
    for argv, words in (([str(seeds)], "seed0"), ([str(fast_run), "--aus", "9"], "does not recognise AU9"),
                        ([str(fast_run), "--fold", "7"], "--fold 7"), ([str(tmp_path)], "no args.json")):
        capsys.readouterr()
        assert explain.cli(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def test_a_landmarks_run_has_nothing_to_map_and_gets_its_landmark_attribution(ck, tmp_path, caplog):
    run_dir = tmp_path / "lmk"
    assert main.cli([*ck.dirs, *FAST, "--model", "landmarks", "--epochs", "1", "--output-dir", str(run_dir)]) == 0
    assert explain.cli([str(run_dir)]) == 0
    assert "nothing to map" in caplog.text
    out = run_dir / "explain"
    assert (out / "landmarks.png").is_file() and not (out / "saliency.png").exists()
    shares = json.loads((out / "regions.json").read_text())["landmarks"]
    assert all(abs(sum(v["share"]) - 1) < 1e-4 for v in shares.values() if v["faces"])


# ----------------------------------------------------------------------------- lifts that can fail


def passes(matrix: np.ndarray, i: int, floor: float = 1.1) -> bool:
    """AU i's map reads its own region: a lift clearly above 1 there, above every other AU's map."""
    others = np.delete(matrix[:, i], i)
    return matrix[i, i] > floor and matrix[i, i] > others.max()


@pytest.fixture(scope="module")
def learnt_run(tmp_path_factory, imagenet_mobilenet) -> Path:
    """ImageNet mobilenet_v2 fine-tuned on a 30-subject synthetic CK+ for AUs 4, 12 and 25 (brows,
    lip corners, lips): the generator moves known landmarks for each (synthetic.AU_MOVES)."""
    root = tmp_path_factory.mktemp("ck30") / "ck"
    synthetic.generate(root, subjects=30, seed=0, min_frames=2, max_frames=2)
    run_dir = tmp_path_factory.mktemp("learnt") / "run"
    assert main.cli([*map(str, ckplus.training_dirs(root)), "--model", "mobilenet_v2", "--weights", "IMAGENET1K_V1",
                     "--epochs", "6", "--step", "2", "--lr", "0.01", "-b", "16", "--kfold", "2", "--image-size", "64",
                     "--pos-weight", "--aus", "4,12,25", "--bootstrap", "200", "-j", "0", "--quiet",
                     "--output-dir", str(run_dir)]) == 0
    assert explain.cli([str(run_dir), "--quiet"]) == 0
    return run_dir


def test_a_well_learnt_au_looks_at_its_own_region_and_a_wrong_map_fails(learnt_run):
    results = json.loads((learnt_run / "results.json").read_text())
    record = json.loads((learnt_run / "explain" / "regions.json").read_text())
    assert record["matrix"]["maps"] == record["matrix"]["regions"] == ["AU4", "AU12", "AU25"]
    matrix = np.array(record["matrix"]["lift"], dtype=float)
    learnt = [i for i, name in enumerate(record["aus"]) if results["per_au"][name]["auc"] >= 0.85]
    assert learnt, f"no AU learnt well enough to be checked: {results['per_au']}"
    for i in learnt:
        name = record["aus"][i]
        assert passes(matrix, i), f"{name} does not read its region: {matrix.round(2)}"
    # the map of another AU in the learnt AU's place fails the same check
    for shift in (1, 2):
        wrong = np.roll(matrix, shift, axis=0)  # row i now holds another AU's map
        assert not all(passes(wrong, i) for i in learnt)


# ----------------------------------------------------------------------------- predict.py --explain


def test_predict_explain_writes_an_overlay_per_au_that_is_on_for_photos_and_video_frames(fast_run, ck, tmp_path,
                                                                                        monkeypatch, capsys):
    pytest.importorskip("av")
    from test_predict import LandmarksByPixels, peak_frames, write_video

    photos = peak_frames(ck)[:2]
    video = write_video(tmp_path / "clip.mkv", [Image.open(p) for p in photos])
    out = tmp_path / "overlays"
    monkeypatch.setattr(detect, "face_finder", lambda args, **kw: LandmarksByPixels(ck, photos))
    assert predict.cli([str(fast_run), str(photos[0]), str(video), "--landmarks", str(ck.landmarks),
                        "--explain", str(out), "--threshold", "0.01", "--out", str(tmp_path / "p.csv"),
                        "--quiet"]) == 0
    rows = [r for r in read_csv(tmp_path / "p.csv") if r["status"] == "ok"]
    expected = set()
    for r in rows:
        stem = Path(r["file"]).stem + (f"_frame{int(r['frame']):06d}" if r["frame"] else "")
        expected |= {f"{stem}_face{r['face']}_AU{k[5:]}.png" for k, v in r.items()
                     if k.startswith("on_AU") and v == "1"}
    written = {p.name for p in out.iterdir()}
    assert expected and written == expected
    assert any("_frame000001_" in n for n in written) and any(n.startswith(photos[0].stem + "_face") for n in written)
    image = Image.open(next(out.iterdir()))
    assert image.size[0] == 4 * 64 and len(set(np.asarray(image.convert("L")).ravel())) > 10
