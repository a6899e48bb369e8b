"""The fine-tuning recipe: --loss, --backbone-lr, --weights, --frames and --tta, and the original's
frozen protocol left as it was. Runs are tiny (64 px, one fold, one or two epochs)."""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import ckplus
from ckplus import crop_cache
from conftest import FAST, close, MOBILENET_V1_FILE
import dataset
import main
import models
import predict
import preprocess
from scoring import metrics
from training import checkpoints, engine, start_weights

ONE_FOLD = [*FAST, "--epochs", "1", "--fold", "0"]
# The original's frozen protocol at test size: random AlexNet features, only the head trains.
FROZEN = ["--model", "alexnet", "--no-pretrained", "--freeze-backbone", "--image-size", "64", "-j", "0", "--quiet",
          "--epochs", "3", "--kfold", "3", "-b", "8", "--fold", "0"]


def fold0(run_dir: Path):
    """(ids, probabilities) of a run's fold 0."""
    ids, *_, probs = metrics.read_predictions(run_dir / "fold0" / "predictions.csv")
    return ids, probs


class FirstEpochSpy:
    """Wraps engine.train_one_epoch: what the first epoch of the first fold trained on and started from."""

    def __init__(self):
        self.rows, self.backbone, self.labels = [], None, None
        self.real = engine.train_one_epoch

    def __call__(self, model, criterion, optimizer, scaler, inputs, train_idx, *rest, **kw):
        if self.backbone is None:
            self.backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
            self.head_shape = tuple(model.head.weight.shape)
            self.groups = [(g.get("name"), g["lr"], len(g["params"])) for g in optimizer.param_groups]
        self.rows.append(len(train_idx))
        self.labels = inputs.labels[train_idx]
        return self.real(model, criterion, optimizer, scaler, inputs, train_idx, *rest, **kw)


def train_spied(monkeypatch, argv: list) -> FirstEpochSpy:
    spy = FirstEpochSpy()
    monkeypatch.setattr(engine, "train_one_epoch", spy)
    assert main.cli([str(a) for a in argv]) == 0
    return spy


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def fails(capsys, argv: list, *needles: str) -> str:
    code = main.cli([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- the loss


def test_loss_modes_reduce_as_documented():
    torch.manual_seed(0)
    logits, aux = torch.randn(6, 4), torch.randn(6, 4)
    target = (torch.rand(6, 4) > 0.5).float()
    pos_weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="none")
    per_au = [nn.functional.binary_cross_entropy_with_logits(logits[:, j], target[:, j], pos_weight=pos_weight[j])
              for j in range(4)]
    # sum: each AU's mean over the batch, summed (the original's); mean: torch's own mean over everything
    assert engine.au_loss(criterion, logits, target, "sum").item() == pytest.approx(sum(per_au).item(), rel=1e-6)
    mean = nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
    assert engine.au_loss(criterion, logits, target, "mean").item() == pytest.approx(mean.item(), rel=1e-6)
    # inception's auxiliary loss keeps its 0.4 weight under either reduction
    for mode in ("sum", "mean"):
        both = engine.au_loss(criterion, (logits, aux), target, mode)
        alone = engine.au_loss(criterion, logits, target, mode) + 0.4 * engine.au_loss(criterion, aux, target, mode)
        assert both.item() == pytest.approx(alone.item(), rel=1e-6)


@pytest.mark.parametrize("flags, loss", [([], "mean"), (["--freeze-backbone"], "sum"), (["--loss", "sum"], "sum"),
                                         (["--freeze-backbone", "--loss", "mean"], "mean")])
def test_auto_loss_is_the_sum_only_when_the_head_alone_trains(flags, loss):
    args = main.get_args_parser().parse_args(flags)
    main.fill_defaults(args)
    assert args.loss == loss


def test_frozen_protocol_keeps_the_original_summed_loss(ck, tmp_path):
    """--loss auto with a frozen backbone is the original's loss exactly: the same predictions as
    --loss sum bit for bit (and the mean would have changed them)."""
    runs_ = {}
    for name, flags in (("auto", []), ("sum", ["--loss", "sum"]), ("mean", ["--loss", "mean"])):
        assert main.cli([*ck.dirs, *FROZEN, *flags, "--output-dir", str(tmp_path / name)]) == 0
        runs_[name] = fold0(tmp_path / name)[1]
    assert np.array_equal(runs_["auto"], runs_["sum"])
    assert not np.allclose(runs_["auto"], runs_["mean"], atol=1e-4)
    assert json.loads((tmp_path / "auto" / "args.json").read_text())["loss"] == "sum"


# ----------------------------------------------------------------------------- --backbone-lr


def test_backbone_lr_is_a_parameter_group_and_the_schedule_decays_both():
    model = models.build_model("squeezenet1_1", 3, pretrained=False)
    args = SimpleNamespace(lr=0.1, backbone_lr=0.25, momentum=0.9, wd=1e-4)
    optimizer = engine.make_optimizer(model, args)
    backbone, head = optimizer.param_groups
    assert (backbone["name"], head["name"]) == ("backbone", "head")
    assert backbone["lr"] == pytest.approx(0.025) and head["lr"] == pytest.approx(0.1)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in head["params"]} == {id(p) for p in model.head.parameters()}
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0125, 0.05])
    # a frozen backbone has no group: only the head trains
    frozen = models.build_model("squeezenet1_1", 3, pretrained=False, freeze_backbone=True)
    assert [g["name"] for g in engine.make_optimizer(frozen, args).param_groups] == ["head"]


# ----------------------------------------------------------------------------- --weights


@pytest.fixture(scope="module")
def source_run(ck, tmp_path_factory) -> Path:
    """A finished one-fold squeezenet run, whose checkpoint later runs start from."""
    run_dir = tmp_path_factory.mktemp("source") / "run"
    assert main.cli([*ck.dirs, *ONE_FOLD, "--output-dir", str(run_dir)]) == 0
    return run_dir


def test_no_pretrained_is_weights_none_and_is_recorded(source_run):
    assert main.get_args_parser().parse_args(["--no-pretrained"]).weights == "none"
    assert main.get_args_parser().parse_args([]).weights == "DEFAULT"
    ckpt = checkpoints.load_checkpoint(source_run / "fold0" / "checkpoint.pth")
    assert ckpt["version"] == checkpoints.FORMAT_VERSION and ckpt["weights"] == {"weights": "none"}
    assert json.loads((source_run / "args.json").read_text())["weights"] == "none"


def test_weights_offline_name_the_file_of_the_weights_asked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    for name, file in (("IMAGENET1K_V1", "mobilenet_v2-b0353104.pth"), ("IMAGENET1K_V2", "mobilenet_v2-7ebf99e0.pth"),
                       ("DEFAULT", "mobilenet_v2-7ebf99e0.pth")):
        with pytest.raises(main.UserError) as err:
            models.build_model("mobilenet_v2", 3, weights=name)
        message = str(err.value)
        assert file in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message, message
        assert "--weights none" in message and "\n" not in message


def test_a_weights_name_starts_from_those_imagenet_weights(imagenet_mobilenet, ck, tmp_path, monkeypatch):
    """Real ImageNet mobilenet_v2 (IMAGENET1K_V1) fine-tuned for one epoch: it starts from that file's
    weights, trains without trouble, and every record says which weights it started from."""
    imagenet = torch.load(imagenet_mobilenet, weights_only=True)
    run_dir = tmp_path / "v1"
    spy = train_spied(monkeypatch, [*ck.dirs, *ONE_FOLD, "--model", "mobilenet_v2", "--weights", "IMAGENET1K_V1",
                                    "--output-dir", run_dir])
    assert same_state(spy.backbone, {k: v for k, v in imagenet.items() if not k.startswith("classifier.")})
    record = {"weights": "IMAGENET1K_V1", "file": MOBILENET_V1_FILE}
    assert checkpoints.load_checkpoint(run_dir / "fold0" / "checkpoint.pth")["weights"] == record
    rows = (run_dir / "fold0" / "metrics.csv").read_text().splitlines()
    assert np.isfinite(float(rows[1].split(",")[1]))


def test_a_state_dict_file_starts_the_backbone(ck, tmp_path, monkeypatch):
    torch.manual_seed(7)
    state = torchvision.models.squeezenet1_1().state_dict()  # with its 1000-way classifier: dropped
    path = tmp_path / "squeezenet.pth"
    torch.save(state, path)
    run_dir = tmp_path / "from-file"
    spy = train_spied(monkeypatch, [*ck.dirs, *ONE_FOLD, "--weights", path, "--output-dir", run_dir])
    assert same_state(spy.backbone, {k: v for k, v in state.items() if not k.startswith("classifier.1.")})
    record = checkpoints.load_checkpoint(run_dir / "fold0" / "checkpoint.pth")["weights"]
    assert record == {"weights": "file", "file": str(path), "kind": "state dict",
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert json.loads((run_dir / "args.json").read_text())["weights"] == str(path)


def test_a_run_checkpoint_gives_its_backbone_and_a_fresh_head_for_other_aus(source_run, ck, tmp_path, monkeypatch):
    source = checkpoints.load_checkpoint(source_run / "fold0" / "checkpoint.pth")
    spy = train_spied(monkeypatch, [*ck.dirs, *ONE_FOLD, "--aus", "1,2,4", "--weights", source_run / "fold0" /
                                    "checkpoint.pth", "--output-dir", tmp_path / "from-run"])
    expected = {k[len("backbone."):]: v for k, v in source["model"].items() if k.startswith("backbone.")}
    assert same_state(spy.backbone, expected)
    assert spy.head_shape[0] == 3  # three AUs, not the source's ten
    assert checkpoints.load_checkpoint(tmp_path / "from-run" / "fold0" / "checkpoint.pth")["weights"]["kind"] == \
        "run checkpoint"


def test_a_frozen_runs_checkpoint_gives_the_backbone_of_its_run_folder(ck, tmp_path):
    run_dir = tmp_path / "frozen"
    assert main.cli([*ck.dirs, *FROZEN, "--epochs", "1", "--output-dir", str(run_dir)]) == 0
    state, kind = start_weights.read_weights_file(run_dir / "fold0" / "checkpoint.pth", "alexnet")
    assert kind == "run checkpoint"
    assert same_state(state, checkpoints.load_checkpoint(run_dir / "backbone.pth", required=("backbone",))["backbone"])


def test_bad_weights_are_one_line_and_write_nothing(source_run, ck, tmp_path, capsys):
    other_arch = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), other_arch)
    text = tmp_path / "notes.pth"
    text.write_text("not weights\n")
    out = tmp_path / "never"
    cases = [
        (["--weights", "IMAGENET1K_V9"], ("--weights IMAGENET1K_V9 is not a weights name of squeezenet1_1",
                                          "DEFAULT, IMAGENET1K_V1, none")),
        (["--weights", other_arch], (str(other_arch), "not a state dict of squeezenet1_1")),
        (["--weights", source_run / "fold0" / "checkpoint.pth", "--model", "alexnet"],
         ("a checkpoint of a squeezenet1_1 run, not of alexnet",)),
        (["--weights", tmp_path / "missing.pth"], ("missing.pth does not exist",)),
        (["--weights", text], (str(text), "not a readable PyTorch weights file")),
    ]
    for flags, needles in cases:
        fails(capsys, [*ck.dirs, *ONE_FOLD, *flags, "--output-dir", out], *needles)
        assert not out.exists()


# ----------------------------------------------------------------------------- --frames


def frame_counts(ck) -> dict[str, int]:
    """Frames of every sequence of the tree, by sequence ID."""
    counts: dict[str, int] = {}
    for path in ckplus.walk_files(ck.images):
        key = ckplus.parse_name("frame", path.name)
        if key:
            counts[f"{key[0]}_{key[1]}"] = counts.get(f"{key[0]}_{key[1]}", 0) + 1
    return counts


@pytest.fixture(scope="module")
def frames_run(ck, tmp_path_factory):
    """Fold 0 trained on the last 4 frames of each training sequence, with the backbone at half the rate."""
    run_dir = tmp_path_factory.mktemp("frames") / "run"
    with pytest.MonkeyPatch.context() as mp:
        spy = train_spied(mp, [*ck.dirs, *ONE_FOLD, "--frames", "4", "--backbone-lr", "0.5",
                               "--output-dir", run_dir])
    return SimpleNamespace(dir=run_dir, spy=spy)


def test_frames_train_on_the_last_n_frames_and_score_the_peak_only(frames_run, source_run, ck):
    counts = frame_counts(ck)
    test_ids, probs = fold0(frames_run.dir)
    assert len(test_ids) == len(set(test_ids)) == len(probs)  # one row per test sequence
    assert test_ids == fold0(source_run)[0]  # the same folds as a peak-only run: sequences, not images
    train = [s for s in counts if s not in test_ids]
    assert frames_run.spy.rows == [sum(min(4, counts[s]) for s in train)]
    # the tree has sequences with fewer frames than 4 (they give what they have) and with more
    assert min(counts[s] for s in train) < 4 < max(counts[s] for s in train)
    backbone = len(list(models.build_model("squeezenet1_1", 10, pretrained=False).backbone.parameters()))
    assert frames_run.spy.groups == [("backbone", pytest.approx(0.005), backbone), ("head", 0.01, 2)]
    assert json.loads((frames_run.dir / "args.json").read_text())["frames"] == 4


def test_evaluating_a_frames_run_scores_the_peaks_as_training_did(frames_run):
    ckpt = frames_run.dir / "fold0" / "checkpoint.pth"
    assert main.cli(["-e", "--resume", str(ckpt), "--quiet"]) == 0
    again = metrics.read_predictions(ckpt.parent / "evaluate" / "fold0" / "predictions.csv")
    assert again[0] == fold0(frames_run.dir)[0] and np.array_equal(again[-1], fold0(frames_run.dir)[1])


def test_index_lists_the_frames_before_each_peak_with_their_labels(ck, tmp_path):
    records = dataset.index_ckplus(*ck.dirs, frames=3)
    counts = frame_counts(ck)
    for r in records:
        assert [f.frame for f in r.earlier] == list(range(r.frame - min(2, counts[r.id] - 1), r.frame))
        assert all(f.landmarks.shape == (68, 2) for f in r.earlier)
    data = dataset.CKPlusDataset(records, [1, 2, 4], size=32, cache_dir=tmp_path / "cache")
    assert len(data) == len(records) and len(data.labels) == len(records) + sum(len(r.earlier) for r in records)
    assert torch.equal(data.labels, data.labels[torch.from_numpy(data.row_sequence)])  # each frame: its sequence's
    assert dataset.index_ckplus(*ck.dirs)[0].earlier == []  # the default lists peaks only


def test_the_crop_cache_covers_the_extra_frames(ck, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = dataset.CKPlusDataset(dataset.index_ckplus(*ck.dirs, frames=2), [1, 2], size=24, cache_dir=cache)

    def no_decode(*a, **k):
        raise AssertionError("a PNG was decoded although every crop is cached")

    monkeypatch.setattr(crop_cache, "_decode_and_crop", no_decode)
    second = dataset.CKPlusDataset(dataset.index_ckplus(*ck.dirs, frames=2), [1, 2], size=24, cache_dir=cache)
    assert torch.equal(first.images, second.images) and len(first.images) > len(first)


def test_a_bad_frame_before_the_peak_stops_the_run_or_is_skipped_alone(ck, tmp_path, caplog):
    import shutil

    root = tmp_path / "ck"
    shutil.copytree(ck.root, root)
    dirs = ckplus.training_dirs(root)
    record = dataset.index_ckplus(*dirs, frames=3)[0]
    before = record.earlier[-1]
    landmark = root / ckplus.SUBDIRS["landmarks"] / record.subject / record.sequence / \
        ckplus.file_name("landmarks", record.subject, record.sequence, before.frame)
    landmark.unlink()
    with pytest.raises(dataset.DataError) as err:
        dataset.index_ckplus(*dirs, frames=3)
    assert landmark.name in str(err.value) and "--skip-bad" in str(err.value) and "\n" not in str(err.value)
    assert dataset.index_ckplus(*dirs)[0].id == record.id  # the peak-only default never reads that file
    kept = dataset.index_ckplus(*dirs, frames=3, skip_bad=True)
    assert kept[0].id == record.id and [f.frame for f in kept[0].earlier] == [f.frame for f in record.earlier[:-1]]
    assert f"frame {before.frame} of {record.id}" in caplog.text
    # an image that will not decode: that frame alone is left out of training
    earlier_image = kept[0].earlier[0].image_path
    earlier_image.write_bytes(b"not a png")
    with pytest.raises(main.UserError, match=earlier_image.name):
        dataset.CKPlusDataset(kept, [1, 2], size=24)
    data = dataset.CKPlusDataset(kept, [1, 2], size=24, skip_bad=True)
    assert len(data) == len(kept)
    assert len(data.labels) == len(kept) + sum(len(r.earlier) for r in kept) - 1


# ----------------------------------------------------------------------------- --tta


def test_flip_tta_is_the_mean_of_the_face_and_its_mirror():
    torch.manual_seed(3)
    model = models.build_model("squeezenet1_1", 4, pretrained=False).eval()
    images = torch.randint(0, 256, (5, 1, 64, 64), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    inputs = engine.Inputs(labels=torch.zeros(5, 4), images=images, mean=mean, std=std)
    got = engine.evaluate(model, inputs, torch.arange(5), torch.device("cpu"), batch_size=2, tta="flip")
    with torch.no_grad():
        plain = torch.sigmoid(model(preprocess.prepare_batch(images, mean, std)))
        mirrored = torch.sigmoid(model(preprocess.prepare_batch(torch.flip(images, dims=[3]), mean, std)))
    np.testing.assert_allclose(got, ((plain + mirrored) / 2).numpy(), rtol=0, atol=1e-6)
    assert not np.allclose(got, plain.numpy(), atol=1e-4)  # the mirror image changed something
    np.testing.assert_allclose(engine.evaluate(model, inputs, torch.arange(5), torch.device("cpu"), 2), plain.numpy(),
                               rtol=0, atol=1e-6)


def test_flip_tta_on_cached_frozen_features_equals_the_image_path(ck):
    args = argparse.Namespace(model="squeezenet1_1", norm="weights", augment=False, no_feature_cache=False,
                              batch_size=8, amp=False, tta="flip")
    data = dataset.CKPlusDataset(dataset.index_ckplus(*ck.dirs)[:10], [1, 2], size=64)
    torch.manual_seed(0)
    model = models.build_model("squeezenet1_1", 2, pretrained=False, freeze_backbone=True).eval()
    cached = engine.make_inputs(data, args, torch.device("cpu"), model.backbone.state_dict())
    images = engine.make_inputs(data, args, torch.device("cpu"))
    assert cached.flipped_features is not None and images.features is None
    idx = torch.arange(len(data))
    np.testing.assert_allclose(engine.evaluate(model, cached, idx, torch.device("cpu"), 4, tta="flip"),
                               engine.evaluate(model, images, idx, torch.device("cpu"), 4, tta="flip"),
                               rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def tta_run(ck, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("tta") / "run"
    assert main.cli([*ck.dirs, *ONE_FOLD, "--tta", "flip", "--output-dir", str(run_dir)]) == 0
    return run_dir


def peak_crops(ck, ids: list[str]) -> torch.Tensor:
    records = {r.id: r for r in dataset.index_ckplus(*ck.dirs)}
    _, crops = crop_cache.load_crops([records[i] for i in ids], size=64)
    return torch.from_numpy(crops).unsqueeze(1)


def test_a_tta_run_scores_its_test_fold_with_mirror_images(tta_run, ck):
    ids, probs = fold0(tta_run)
    model, _ = checkpoints.load_trained_model(tta_run / "fold0" / "checkpoint.pth")
    config = models.model_config("squeezenet1_1")
    crops = peak_crops(ck, ids)
    with torch.no_grad():
        plain = torch.sigmoid(model(preprocess.prepare_batch(crops, config.mean, config.std)))
        mirrored = torch.sigmoid(model(preprocess.prepare_batch(crops.flip(-1), config.mean, config.std)))
    np.testing.assert_allclose(probs, ((plain + mirrored) / 2).numpy(), rtol=0, atol=close(1e-6))
    assert json.loads((tta_run / "args.json").read_text())["tta"] == "flip"


def test_evaluate_uses_the_runs_tta_unless_told(tta_run, ck, caplog):
    ckpt = tta_run / "fold0" / "checkpoint.pth"
    evaluated = ckpt.parent / "evaluate" / "fold0" / "predictions.csv"
    assert main.cli(["-e", "--resume", str(ckpt), "--quiet"]) == 0
    assert np.array_equal(metrics.read_predictions(evaluated)[-1], fold0(tta_run)[1])
    assert main.cli(["-e", "--resume", str(ckpt), "--tta", "none"]) == 0
    assert "evaluating with --tta none; the run was trained and scored with --tta flip" in caplog.text
    model, _ = checkpoints.load_trained_model(ckpt)
    config = models.model_config("squeezenet1_1")
    with torch.no_grad():
        plain = torch.sigmoid(model(preprocess.prepare_batch(peak_crops(ck, fold0(tta_run)[0]), config.mean,
                                                             config.std)))
    np.testing.assert_allclose(metrics.read_predictions(evaluated)[-1], plain.numpy(), rtol=0, atol=close(1e-6))


def test_training_resume_refuses_another_tta(tta_run, capsys):
    fails(capsys, ["--resume", tta_run, "--tta", "none"], "--tta none (run: flip)", "disagree")


def test_predict_uses_the_runs_tta(tta_run, ck, tmp_path):
    ids, expected = fold0(tta_run)
    peaks = [max((ck.images / i.split("_")[0] / i.split("_")[1]).glob(f"{i}_*.png")) for i in ids]
    out = tmp_path / "p.csv"
    assert predict.cli([str(tta_run / "fold0" / "checkpoint.pth"), *map(str, peaks), "--landmarks", str(ck.landmarks),
                        "--out", str(out), "--quiet"]) == 0
    with open(out, newline="") as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    aus = metrics.read_predictions(tta_run / "fold0" / "predictions.csv")[3]
    got = np.array([[float(rows[str(p)][f"prob_AU{a}"]) for a in aus] for p in peaks])
    np.testing.assert_allclose(got, expected, rtol=0, atol=close(1e-5))
    assert {r["models"] for r in rows.values()} == {"fold0 checkpoint, flip TTA"}


# ----------------------------------------------------------------------------- runs of an older checkpoint format


def test_a_run_of_an_older_checkpoint_format_is_refused_in_one_line(fast_run, tmp_path, capsys):
    """A fold checkpoint of format 3 (before --geometry and --crop-fill were kept in it) is not
    guessed at: --resume, -e and predict.py each refuse it in one line naming the file and the fix."""
    run_dir = tmp_path / "old"
    shutil.copytree(fast_run, run_dir)
    path = run_dir / "fold0" / "checkpoint.pth"
    ckpt = checkpoints.load_checkpoint(path)
    ckpt["version"] = 3
    del ckpt["args"]["geometry"], ckpt["args"]["crop_fill"]
    torch.save(ckpt, path)
    Image.new("L", (32, 32)).save(tmp_path / "face.png")
    capsys.readouterr()
    for argv, cli in [(["-e", "--resume", str(path)], main.cli), (["--resume", str(run_dir), "--epochs", "3"], main.cli),
                      ([str(path), str(tmp_path / "face.png")], predict.cli)]:
        assert cli([*argv, "--quiet"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert str(path) in err and "format version 3" in err and "retrain the run" in err, err
        assert "\n" not in err and "Traceback" not in err


def test_a_run_from_before_a_setting_is_refused_in_one_line(fast_run, ck, tmp_path, capsys):
    """An args.json without a setting of today's table: --resume and -e refuse it in one line naming
    the file and the fix (what the run trained without it is not guessed); one without a scoring
    setting (--bootstrap) is scored with its default."""
    old = tmp_path / "old"
    shutil.copytree(fast_run, old)
    saved = json.loads((old / "args.json").read_text())
    (old / "args.json").write_text(json.dumps({k: v for k, v in saved.items() if k not in ("loss", "crop_fill")}))
    for argv in (["--resume", old], ["-e", "--resume", old]):
        line = fails(capsys, argv, str(old / "args.json"), "--loss, --crop-fill", "retrain", "the version that wrote it")
        assert "older version" in line
    (old / "args.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "bootstrap"}))
    assert main.cli(["-e", "--resume", str(old), "--bootstrap", "0", "--quiet"]) == 0
    assert json.loads((old / "evaluate" / "results.json").read_text())["bootstrap"] is None
    # predict.py reads a checkpoint's own settings: one without --geometry is refused alike
    checkpoint = old / "fold0" / "checkpoint.pth"
    ckpt = checkpoints.load_checkpoint(checkpoint)
    torch.save({**ckpt, "args": {k: v for k, v in ckpt["args"].items() if k != "geometry"}}, checkpoint)
    photo = next(p for p in ck.images.rglob("*.png") if not p.name.startswith("._"))
    code = predict.cli([str(checkpoint), str(photo), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"{checkpoint} has no --geometry" in err and "retrain" in err
