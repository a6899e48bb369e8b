"""utils.py: metrics against hand-counted examples, tables, atomic files, checkpoints, predictions, plots, logging."""
from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import utils
from utils import UserError


# ----------------------------------------------------------------------------- metrics


def hand_example():
    """6 sequences, 2 AUs (called AU4 and AU12 to show the labels come from the AU list).

    AU4:  true  1    1    1    0    0    0
          prob  .9   .8   .3   .7   .2   .1   -> on: 1 1 0 1 0 0
          TP 2 (rows 1, 2), FN 1 (row 3), FP 1 (row 4), TN 2
          precision 2/3, recall 2/3, F1 2*2/(2*2+1+1) = 2/3
          AUC: 3 positives x 3 negatives = 9 pairs; .9 and .8 beat all 3 negatives, .3 beats .2 and .1
               but not .7 -> 8/9
    AU12: true  1    0    0    0    1    0
          prob  .6   .55  .4   .1   .45  .05  -> on: 1 1 0 0 0 0
          TP 1 (row 1), FP 1 (row 2), FN 1 (row 5), TN 3
          precision 1/2, recall 1/2, F1 1/2
          AUC: 2 x 4 = 8 pairs; .6 beats all 4, .45 beats .4 .1 .05 but not .55 -> 7/8
    """
    targets = np.array([[1, 1], [1, 0], [1, 0], [0, 0], [0, 1], [0, 0]], dtype=np.float32)
    probs = np.array([[.9, .6], [.8, .55], [.3, .4], [.7, .1], [.2, .45], [.1, .05]])
    return targets, probs, [4, 12]


def test_metrics_match_hand_counts():
    targets, probs, aus = hand_example()
    m = utils.compute_metrics(targets, probs, aus)

    assert list(m["per_au"]) == ["AU4", "AU12"]
    assert m["threshold"] == 0.5 and m["n"] == 6
    # F1/precision/recall are exact ratios of counts; scikit-learn's AUC (trapezoids) may differ in the last bit
    assert m["per_au"]["AU4"] == {"f1": 2 / 3, "precision": 2 / 3, "recall": 2 / 3, "auc": pytest.approx(8 / 9),
                                  "support": 3, "predicted": 3}
    assert m["per_au"]["AU12"] == {"f1": 1 / 2, "precision": 1 / 2, "recall": 1 / 2, "auc": pytest.approx(7 / 8),
                                   "support": 2, "predicted": 2}
    # macro: plain mean over the two AUs
    assert m["macro"]["n_aus"] == 2
    assert m["macro"]["f1"] == pytest.approx((2 / 3 + 1 / 2) / 2, abs=1e-12)
    assert m["macro"]["precision"] == pytest.approx(7 / 12, abs=1e-12)
    assert m["macro"]["recall"] == pytest.approx(7 / 12, abs=1e-12)
    assert m["macro"]["auc"] == pytest.approx((8 / 9 + 7 / 8) / 2, abs=1e-12)
    # plain Python types: the dict goes straight to results.json
    json.dumps(m, allow_nan=False)
    assert type(m["per_au"]["AU4"]["support"]) is int and type(m["macro"]["f1"]) is float


def test_single_au_is_scored_as_that_au():
    # 3 sequences, 1 AU: true 1 0 1, on 1 0 0 -> TP 1, FN 1, FP 0: precision 1, recall 1/2, F1 2/3
    m = utils.compute_metrics(np.array([[1], [0], [1]]), np.array([[.9], [.2], [.4]]), [25])
    assert m["per_au"]["AU25"]["precision"] == 1.0
    assert m["per_au"]["AU25"]["recall"] == 0.5
    assert m["per_au"]["AU25"]["f1"] == 2 / 3


def test_threshold_is_strict():
    # p == threshold is "off", as in the original's p > 0.5
    targets = np.array([[1], [0], [1]])
    probs = np.array([[0.5], [0.5], [0.5]])
    m = utils.compute_metrics(targets, probs, [1])
    # nothing on: TP 0, FP 0, FN 2 -> precision 0 (not NaN), recall 0, F1 0; every score tied -> AUC 1/2
    assert m["per_au"]["AU1"] == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "auc": 0.5,
                                  "support": 2, "predicted": 0}
    # just below it, all three are on: TP 2, FP 1 -> precision 2/3, recall 1, F1 4/5
    m = utils.compute_metrics(targets, probs, [1], threshold=0.4999)
    assert m["threshold"] == 0.4999
    au1 = m["per_au"]["AU1"]
    assert (au1["predicted"], au1["precision"], au1["recall"], au1["f1"]) == (3, 2 / 3, 1.0, 0.8)


def test_au_without_positives_is_not_available_and_left_out_of_macro():
    targets, probs, _ = hand_example()
    targets = np.hstack([targets, np.zeros((6, 1)), np.ones((6, 1))])  # AU43 never coded, AU45 always
    probs = np.hstack([probs, np.array([[.9], [.1], [.1], [.1], [.1], [.1]]), np.full((6, 1), .8)])
    m = utils.compute_metrics(targets, probs, [4, 12, 43, 45])

    assert m["per_au"]["AU43"] == {"f1": None, "precision": None, "recall": None, "auc": None,
                                   "support": 0, "predicted": 1}
    # all six positive and all predicted on: F1 1, but no negatives, so no AUC
    assert m["per_au"]["AU45"] == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "auc": None,
                                   "support": 6, "predicted": 6}
    assert m["macro"]["n_aus"] == 3
    assert m["macro"]["f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3, abs=1e-12)
    assert m["macro"]["auc"] == pytest.approx((8 / 9 + 7 / 8) / 2, abs=1e-12)  # AUs with an AUC only
    assert "NaN" not in json.dumps(m)

    nothing = utils.compute_metrics(np.zeros((4, 2)), np.full((4, 2), .9), [1, 2])
    assert nothing["macro"] == {"f1": None, "precision": None, "recall": None, "auc": None, "n_aus": 0}


@pytest.mark.parametrize("targets, probs, aus", [
    (np.zeros((4, 2)), np.zeros((4, 3)), [1, 2]),       # shapes differ
    (np.zeros((4, 2)), np.zeros((4, 2)), [1, 2, 4]),    # AU list does not match the columns
    (np.zeros(4), np.zeros(4), [1]),                     # not 2-D
    (np.zeros((0, 2)), np.zeros((0, 2)), [1, 2]),       # nothing to score
    (np.full((4, 1), 2), np.zeros((4, 1)), [1]),        # labels not 0/1
    (np.zeros((4, 1)), np.full((4, 1), np.nan), [1]),   # a diverged model's NaN
])
def test_metrics_reject_bad_arrays(targets, probs, aus):
    with pytest.raises(ValueError):
        utils.compute_metrics(targets, probs, aus)


# ----------------------------------------------------------------------------- tables


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_table_is_labelled_from_the_results():
    targets, probs, _ = hand_example()
    targets = np.hstack([targets, np.zeros((6, 1))])
    probs = np.hstack([probs, np.full((6, 1), .1)])
    results = utils.compute_metrics(targets, probs, [6, 25, 43])
    lines = utils.format_table(results, "alexnet").splitlines()

    assert cells(lines[0]) == ["Model", "AU6", "AU25", "AU43", "Avg"]
    assert set(lines[1]) <= set("|-")
    # F1 2/3, 1/2, n/a (no positives); Avg over the two AUs that have an F1
    assert cells(lines[2]) == ["alexnet", "0.67", "0.50", "n/a", "0.58"]
    assert lines[3] == ""
    assert cells(lines[4]) == ["AU", "F1", "Precision", "Recall", "AUC", "Support"]
    assert cells(lines[6]) == ["AU6", "0.6667", "0.6667", "0.6667", "0.8889", "3"]
    assert cells(lines[8]) == ["AU43", "n/a", "n/a", "n/a", "n/a", "0"]
    assert cells(lines[9])[:2] == ["macro (2 AUs)", "0.5833"]
    assert len(lines) == 10


# ----------------------------------------------------------------------------- atomic files


def test_write_json_and_csv(tmp_path):
    path = utils.write_json(tmp_path / "args.json", {"lr": 0.01, "data_dir": Path("/d"), "aus": [1, 2]})
    assert path.read_text() == '{\n  "lr": 0.01,\n  "data_dir": "/d",\n  "aus": [\n    1,\n    2\n  ]\n}\n'
    with pytest.raises(ValueError):
        utils.write_json(tmp_path / "args.json", {"loss": float("nan")})
    assert json.loads(path.read_text())["lr"] == 0.01  # the failed write left the old file

    utils.write_csv(tmp_path / "m.csv", ["epoch", "loss"], [[1, 0.1 + 0.2], [2, 1e-300]])
    rows = list(csv.reader((tmp_path / "m.csv").open()))
    assert rows == [["epoch", "loss"], ["1", "0.30000000000000004"], ["2", "1e-300"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["args.json", "m.csv"]  # no temp files left


def checkpoint_state(epoch: int) -> dict:
    torch.manual_seed(epoch)
    model = nn.Linear(4, 3)
    return {"model": model.state_dict(), "epoch": epoch, "aus": [1, 2, 4], "arch": "alexnet"}


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    utils.save_checkpoint(checkpoint_state(1), path)

    def half_save(obj, f):
        f.write(b"PK\x03\x04 half a zip archive")
        raise RuntimeError("disk full")

    monkeypatch.setattr(utils.torch, "save", half_save)
    with pytest.raises(RuntimeError, match="disk full"):
        utils.save_checkpoint(checkpoint_state(2), path)
    monkeypatch.undo()

    assert utils.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to crash a real process")
def test_crash_mid_save_keeps_the_old_checkpoint_and_the_leftover_is_cleaned(tmp_path):
    path = tmp_path / "fold0" / "checkpoint.pth"
    path.parent.mkdir()
    utils.save_checkpoint(checkpoint_state(1), path)

    pid = os.fork()
    if pid == 0:  # the child dies half-way through writing, as a killed job would: no cleanup runs
        try:
            def die_mid_write(obj, f):
                f.write(b"PK\x03\x04 half a zip archive")
                f.flush()
                os._exit(1)

            utils.torch.save = die_mid_write
            utils.save_checkpoint(checkpoint_state(2), path)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 1

    leftover = path.with_name(f"checkpoint.pth.tmp-{pid}")
    assert leftover.read_bytes().startswith(b"PK")
    assert utils.load_checkpoint(path)["epoch"] == 1

    (tmp_path / "notes.tmp-old").write_text("not ours")  # only <name>.tmp-<pid> files are removed
    assert utils.clean_temp_files(tmp_path) == [leftover]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoint.pth", "fold0", "notes.tmp-old"]
    assert utils.clean_temp_files(tmp_path / "missing") == []


# ----------------------------------------------------------------------------- checkpoints and RNG


def test_checkpoint_round_trip_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()  # momentum buffers now exist and must survive
    utils.seed_everything(7)
    path = utils.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 4,
                                  "aus": [1, 2, 4], "arch": "res18", "rng": utils.rng_state(),
                                  "history": [{"epoch": 0, "loss": 0.5}]}, tmp_path / "checkpoint.pth")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()  # the run goes on, then dies

    ckpt = utils.load_checkpoint(path)
    model2 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model2.load_state_dict(ckpt["model"])
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    optimizer2.load_state_dict(ckpt["optimizer"])
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    for p, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.equal(optimizer.state[p]["momentum_buffer"], optimizer2.state[p2]["momentum_buffer"])
    assert (ckpt["epoch"], ckpt["aus"], ckpt["arch"], ckpt["history"]) == (4, [1, 2, 4], "res18",
                                                                          [{"epoch": 0, "loss": 0.5}])

    utils.set_rng_state(ckpt["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_seed_everything_repeats_all_generators():
    def draw():
        return torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random()

    utils.seed_everything(3)
    first = draw()
    utils.seed_everything(3)
    assert draw() == first
    utils.seed_everything(4)
    assert draw() != first


def _leave_marker(path: str) -> None:
    Path(path).write_text("code in the checkpoint ran")


class _RunsFunction:
    """Unpickling this calls _leave_marker: a stand-in for a checkpoint crafted to run code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return _leave_marker, (str(self.marker),)


class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.parametrize("payload", [_RunsFunction, _RunsShell])
def test_checkpoint_that_would_run_code_is_refused_unexecuted(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pth"
    torch.save({**checkpoint_state(0), "extra": payload(marker)}, path)

    with pytest.raises(UserError) as e:
        utils.load_checkpoint(path)
    message = str(e.value)
    assert str(path) in message and "refused" in message and "nothing in it was executed" in message
    assert "\n" not in message
    assert not marker.exists()

    # the file really is dangerous: a plain unpickle runs its code
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_checkpoint_errors_name_the_file_and_the_fix(tmp_path):
    good = utils.save_checkpoint(checkpoint_state(1), tmp_path / "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("hello, not a checkpoint\n")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    a_list = tmp_path / "list.pth"
    torch.save([1, 2, 3], a_list)
    partial = tmp_path / "partial.pth"
    torch.save({"model": {}, "epoch": 3}, partial)

    cases = [
        (tmp_path / "nope.pth", "does not exist: check the path"),
        (tmp_path, "is a directory"),
        (truncated, "is truncated or damaged"),
        (text, "is not a PyTorch file, so not a checkpoint"),
        (empty, "is empty, so not a checkpoint"),
        (a_list, "is not an AU checkpoint (it holds a list"),
        (partial, "is not an AU checkpoint (missing keys aus, arch)"),
    ]
    for path, expected in cases:
        with pytest.raises(UserError) as e:
            utils.load_checkpoint(path)
        assert str(path) in str(e.value) and expected in str(e.value), str(e.value)
        assert "\n" not in str(e.value)

    # the keys asked for are the ones checked
    assert utils.load_checkpoint(partial, required=("model", "epoch"))["epoch"] == 3


# ----------------------------------------------------------------------------- predictions and results


def test_predictions_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"S{100 + i:03d}_00{i % 3 + 1}" for i in range(7)]
    subjects = [s[:4] for s in ids]
    targets = rng.integers(0, 2, (7, 3)).astype(np.float32)
    probs = rng.random((7, 3))
    probs[0] = [0.0, 1.0, 1e-300]
    probs[1] = [0.1, 1 - 2 ** -53, 5e-324]
    probs[2] = np.float32(1 / 3)  # a float32 model output goes through float64 unchanged
    utils.write_predictions(tmp_path / "p.csv", ids, subjects, [1, 2, 25], targets, probs, fold=[0, 0, 1, 1, 2, 2, 2])

    r_ids, r_subjects, r_folds, r_aus, r_targets, r_probs = utils.read_predictions(tmp_path / "p.csv")
    assert (r_ids, r_subjects, r_folds, r_aus) == (ids, subjects, [0, 0, 1, 1, 2, 2, 2], [1, 2, 25])
    assert np.array_equal(r_targets, targets)
    assert r_probs.dtype == np.float64 and r_probs.view(np.int64).tolist() == probs.view(np.int64).tolist()
    assert utils.compute_metrics(r_targets, r_probs, r_aus) == utils.compute_metrics(targets, probs, [1, 2, 25])
    header = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert header == "sequence,subject,fold,true_AU1,true_AU2,true_AU25,prob_AU1,prob_AU2,prob_AU25"

    utils.write_predictions(tmp_path / "q.csv", ids[:2], subjects[:2], [1, 2, 25], targets[:2], probs[:2], fold=4)
    assert utils.read_predictions(tmp_path / "q.csv")[2] == [4, 4]
    utils.write_predictions(tmp_path / "r.csv", ids[:2], subjects[:2], [1, 2, 25], targets[:2], probs[:2])
    assert utils.read_predictions(tmp_path / "r.csv")[2] == [None, None]


@pytest.mark.parametrize("content, what", [
    ("", "empty"),
    ("id,subject,fold,true_AU1,prob_AU1\nS005_001,S005,0,1,0.5\n", "line 1"),
    ("sequence,subject,fold,true_AU1,prob_AU2\nS005_001,S005,0,1,0.5\n", "line 1"),
    ("sequence,subject,fold,true_AU1,prob_AU1\nS005_001,S005,0,1\n", "line 2 has 4 fields"),
    ("sequence,subject,fold,true_AU1,prob_AU1\nS005_001,S005,0,1,0.5\nS005_002,S005,0,1,high\n", "line 3"),
    ("sequence,subject,fold,true_AU1,prob_AU1\nS005_001,S005,0,1,1.5\n", "line 2"),
])
def test_malformed_predictions_are_user_errors(tmp_path, content, what):
    path = tmp_path / "predictions.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=re.escape(what)) as e:
        utils.read_predictions(path)
    assert str(path) in str(e.value) and "delete it" in str(e.value)


def test_missing_predictions_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        utils.read_predictions(tmp_path / "predictions.csv")


def run_results() -> tuple[dict, np.ndarray, np.ndarray]:
    targets, probs, _ = hand_example()
    targets = np.hstack([targets, np.zeros((6, 1))])
    probs = np.hstack([probs, np.full((6, 1), .7)])
    metrics = utils.compute_metrics(targets, probs, [1, 2, 43])
    return {"model": "res18", "aus": [1, 2, 43], "split": "subject", "kfold": 10, **metrics}, targets, probs


def test_write_results(tmp_path):
    results, _, _ = run_results()
    paths = utils.write_results(tmp_path, results)

    assert json.loads(paths["json"].read_text()) == results
    rows = list(csv.reader(paths["csv"].open()))
    assert rows[0] == ["AU", "f1", "precision", "recall", "auc", "support", "predicted"]
    auc = results["per_au"]["AU1"]["auc"]
    assert rows[1] == ["AU1", repr(2 / 3), repr(2 / 3), repr(2 / 3), repr(auc), "3", "3"]  # full precision
    assert rows[3] == ["AU43", "", "", "", "", "0", "6"]  # not available: empty fields
    assert rows[4][0] == "macro" and float(rows[4][1]) == results["macro"]["f1"]
    assert len(rows) == 5
    assert paths["md"].read_text() == utils.format_table(results, "res18") + "\n"


# ----------------------------------------------------------------------------- plots


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plots_write_png_files(tmp_path):
    results, targets, probs = run_results()
    f1 = utils.plot_f1(results, tmp_path / "f1.png")
    confusion = utils.plot_confusion(targets, probs, [1, 2, 43], 0.5, tmp_path / "confusion.png")
    assert f1.stat().st_size > 5000 and confusion.stat().st_size > 5000
    assert png_size(f1)[0] > png_size(f1)[1]
    # 12 AUs: a grid of 5 columns and 3 rows, taller than the 3-AU row
    wide = np.tile(targets, 4), np.tile(probs, 4)
    grid = utils.plot_confusion(*wide, list(range(1, 13)), 0.5, tmp_path / "grid.png")
    assert png_size(grid)[1] > 2 * png_size(confusion)[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "f1.png", "grid.png"]


# ----------------------------------------------------------------------------- logging


@pytest.fixture
def au_logger():
    yield logging.getLogger("au")
    logger = logging.getLogger("au")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.NOTSET)


def test_logging_levels_and_file(au_logger, tmp_path, capsys):
    log = utils.setup_logging()
    utils.setup_logging()  # set up twice (main() called twice in one process): still one line per message
    log.info("fold 0 epoch 1/2")
    err = capsys.readouterr().err
    assert re.fullmatch(r"\d\d:\d\d:\d\d fold 0 epoch 1/2\n", err), err

    utils.setup_logging(quiet=True, log_file=tmp_path / "log.txt")
    log.info("progress")
    log.warning("--amp needs CUDA")
    err = capsys.readouterr().err
    assert "progress" not in err and re.fullmatch(r"\d\d:\d\d:\d\d warning: --amp needs CUDA\n", err), err
    text = (tmp_path / "log.txt").read_text()
    assert "INFO progress" in text and "WARNING --amp needs CUDA" in text

    utils.add_log_file(tmp_path / "other.txt")  # a second run in the same process logs to its own folder
    log.info("second run")
    assert "second run" not in (tmp_path / "log.txt").read_text()
    assert "second run" in (tmp_path / "other.txt").read_text()


def test_logging_still_reaches_caplog(au_logger, caplog):
    log = utils.setup_logging(quiet=True)
    with caplog.at_level(logging.WARNING, logger="au"):
        log.warning("skipped 2 of 3 sequences")
    assert "skipped 2 of 3 sequences" in caplog.text


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (12.4, "12s"), (59.6, "1m00s"), (185, "3m05s"), (3720, "1h02m"), (90000, "25h00m"),
    (float("nan"), "?"),
])
def test_format_duration(seconds, text):
    assert utils.format_duration(seconds) == text
