"""The command line end to end on a small synthetic CK+: what a researcher runs and reads."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from conftest import FAST, run_cli
import dataset
import main
from scoring import metrics
from training import checkpoints, engine
import utils

FOLD_FILES = ("checkpoint.pth", "metrics.csv", "predictions.csv")


def read_run(run_dir):
    """(results.json, pooled predictions as {sequence: probabilities})."""
    results = json.loads((run_dir / "results.json").read_text())
    ids, _, _, _, _, probs = metrics.read_predictions(run_dir / "predictions.csv")
    return results, dict(zip(ids, map(tuple, probs)))


@pytest.fixture(scope="session")
def run(fast_run):
    """One complete 3-fold, 2-epoch run (trained once per session), for the tests that only read it."""
    return fast_run


def test_run_folder_holds_everything_a_user_opens(run, ck):
    for name in ("args.json", "results.json", "results.csv", "results.md", "predictions.csv", "f1.png",
                 "confusion.png", "log.txt"):
        assert (run / name).is_file(), name
    for k in range(3):
        for name in FOLD_FILES:
            assert (run / f"fold{k}" / name).is_file(), f"fold{k}/{name}"
        rows = (run / f"fold{k}" / "metrics.csv").read_text().splitlines()
        assert rows[0] == "epoch,loss,lr,seconds" and len(rows) == 3  # one row per epoch
    results = json.loads((run / "results.json").read_text())
    assert results["model"] == "squeezenet1_1" and results["split"] == "subject" and results["kfold"] == 3
    assert results["aus"] == [1, 2, 4, 5, 6, 7, 12, 15, 17, 25]
    assert list(results["per_au"]) == [f"AU{a}" for a in results["aus"]]
    for m in results["per_au"].values():
        assert set(m) >= {"f1", "precision", "recall", "auc", "support"}
    assert 0 <= results["macro"]["f1"] <= 1
    # every sequence is predicted exactly once, out of fold, and the supports count its labels
    ids, _, folds, aus, targets, probs = metrics.read_predictions(run / "predictions.csv")
    assert sorted(ids) == sorted(set(ids)) and len(ids) == ck.summary.sequences
    assert [results["per_au"][f"AU{a}"]["support"] for a in aus] == targets.sum(0).astype(int).tolist()
    assert ((probs >= 0) & (probs <= 1)).all()
    saved = json.loads((run / "args.json").read_text())
    assert saved["model"] == "squeezenet1_1" and saved["epochs"] == 2 and saved["data_dir"] == ck.dirs[0]


def test_checkpoint_holds_what_resume_needs(run):
    ckpt = checkpoints.load_checkpoint(run / "fold1" / "checkpoint.pth")
    assert {"version", "model", "optimizer", "lr_scheduler", "scaler", "epoch", "fold", "args", "aus",
            "test_ids"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and ckpt["fold"] == 1 and ckpt["aus"] == [1, 2, 4, 5, 6, 7, 12, 15, 17, 25]
    fold_ids = metrics.read_predictions(run / "fold1" / "predictions.csv")[0]
    assert ckpt["test_ids"] == fold_ids


def test_subject_split_never_puts_a_subject_on_both_sides(run):
    subjects_of = []
    for k in range(3):
        _, subjects, folds, *_ = metrics.read_predictions(run / f"fold{k}" / "predictions.csv")
        assert set(folds) == {k}
        subjects_of.append(set(subjects))
    for a in range(3):
        for b in range(a + 1, 3):
            assert not subjects_of[a] & subjects_of[b]


def test_make_folds_balances_subjects_and_keeps_the_original_sequence_split():
    subjects = [f"S{i % 7:03d}" for i in range(40)]
    folds = engine.make_folds(subjects, 3, "subject")
    assert sorted(np.concatenate(folds).tolist()) == list(range(40))
    owners = [{subjects[i] for i in f} for f in folds]
    assert all(not owners[a] & owners[b] for a in range(3) for b in range(a + 1, 3))
    assert max(map(len, folds)) - min(map(len, folds)) <= 6  # no subject has more than 6 sequences
    from sklearn.model_selection import KFold

    expected = [t for _, t in KFold(5, shuffle=True, random_state=20).split(np.zeros(40))]
    assert all((a == b).all() for a, b in zip(engine.make_folds(subjects, 5, "sequence"), expected))


def test_evaluate_reproduces_results_json(run, ck):
    proc = run_cli(*ck.dirs, "-e", "--resume", run, "--quiet")
    assert proc.returncode == 0, proc.stderr
    first = json.loads((run / "results.json").read_text())
    again = json.loads((run / "evaluate" / "results.json").read_text())
    assert again["per_au"] == first["per_au"] and again["macro"] == first["macro"]
    # -e draws the same resamples (seeded from the run's --seed): the same 95% intervals
    assert again["bootstrap"] == first["bootstrap"] and first["bootstrap"]["resamples"] == 2000
    assert first["macro"]["ci"]["f1"] is not None and again["macro"]["ci"] == first["macro"]["ci"]
    assert f"macro F1 {first['macro']['f1']:.4f} matches results.json" in proc.stdout
    # the table is printed like the original README's: a row for the model, a column per AU
    assert re.search(r"\| squeezenet1_1 \|( \d\.\d\d \|){11}", proc.stdout)


def test_evaluate_one_checkpoint_needs_no_data_paths(run):
    """-e --resume CHECKPOINT takes the data folders, model and AUs from the run."""
    assert main.cli(["-e", "--resume", str(run / "fold2" / "checkpoint.pth"), "--quiet"]) == 0
    ids, *_, probs = metrics.read_predictions(run / "fold2" / "evaluate" / "fold2" / "predictions.csv")
    ref_ids, *_, ref_probs = metrics.read_predictions(run / "fold2" / "predictions.csv")
    assert ids == ref_ids and np.array_equal(probs, ref_probs)


def test_evaluate_refuses_flags_that_contradict_the_checkpoint(run, capsys):
    assert main.cli(["-e", "--resume", str(run), "--model", "alexnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--model alexnet" in err and "squeezenet1_1" in err


def test_existing_run_folder_is_never_overwritten(run, ck, capsys):
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert main.cli([*ck.dirs, *FAST, "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"--resume {run}" in err
    assert before == {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


def test_resuming_a_finished_run_keeps_its_folds(run, ck, capsys):
    before = (run / "fold0" / "checkpoint.pth").stat().st_mtime_ns
    assert main.cli(["--resume", str(run)]) == 0
    out = capsys.readouterr()
    assert (run / "fold0" / "checkpoint.pth").stat().st_mtime_ns == before
    assert "squeezenet1_1" in out.out


def test_fold_jobs_merge_into_the_full_runs_results(run, ck, tmp_path):
    merged = tmp_path / "merged"
    for k in (2, 0, 1):  # any order, as separate jobs would finish
        assert main.cli([*ck.dirs, *FAST, "--output-dir", str(merged), "--fold", str(k)]) == 0
        assert (merged / "results.json").exists() == (k == 1)
    full, full_probs = read_run(run)
    part, part_probs = read_run(merged)
    assert part["per_au"] == full["per_au"] and part_probs == full_probs


def test_fold_job_with_other_settings_is_refused(run, ck, tmp_path, capsys):
    joined = tmp_path / "joined"
    assert main.cli([*ck.dirs, *FAST, "--output-dir", str(joined), "--fold", "0"]) == 0
    assert main.cli([*ck.dirs, *FAST, "--lr", "0.1", "--output-dir", str(joined), "--fold", "1"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_interrupted_run_resumes_to_the_uninterrupted_result(ck, tmp_path, monkeypatch, capsys):
    """Ctrl-C in epoch 2 of 3 of fold 1, then --resume: bit-for-bit the same predictions."""
    args = [*ck.dirs, *FAST, "--epochs", "3"]
    assert main.cli([*args, "--output-dir", str(tmp_path / "straight")]) == 0
    capsys.readouterr()

    real, calls = engine.train_one_epoch, []

    def interrupt_in_fold1_epoch2(*a, **kw):
        calls.append(1)
        if len(calls) == 5:  # fold 0: 3 epochs, fold 1: epoch 1 done, then Ctrl-C
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(engine, "train_one_epoch", interrupt_in_fold1_epoch2)
    broken = tmp_path / "broken"
    with pytest.raises(SystemExit) as stop:
        main.cli([*args, "--output-dir", str(broken)])
    assert stop.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted in fold 1" in err and f"--resume {broken}" in err
    assert checkpoints.load_checkpoint(broken / "fold1" / "checkpoint.pth")["epoch"] == 0
    assert not (broken / "results.json").exists()

    monkeypatch.setattr(engine, "train_one_epoch", real)
    assert main.cli(["--resume", str(broken), "--quiet"]) == 0
    assert read_run(broken) == read_run(tmp_path / "straight")
    assert [r.split(",")[0] for r in (broken / "fold1" / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]


def test_resume_a_checkpoint_continues_that_fold_only(ck, tmp_path):
    run_dir = tmp_path / "one"
    assert main.cli([*ck.dirs, *FAST, "--output-dir", str(run_dir), "--fold", "1", "--epochs", "1"]) == 0
    ckpt = run_dir / "fold1" / "checkpoint.pth"
    assert checkpoints.load_checkpoint(ckpt)["epoch"] == 0
    # the run's settings say one epoch: the checkpoint is finished, nothing more runs
    assert main.cli(["--resume", str(ckpt), "--quiet"]) == 0
    assert not (run_dir / "fold0").exists() and checkpoints.load_checkpoint(ckpt)["epoch"] == 0


def test_start_epoch_starts_the_schedule_there_too(ck, tmp_path):
    run_dir = tmp_path / "late"
    argv = [*ck.dirs, *FAST, "--epochs", "3", "--start-epoch", "2", "--step", "2", "--fold", "0"]
    assert main.cli([*argv, "--output-dir", str(run_dir)]) == 0
    rows = (run_dir / "fold0" / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["3"]  # only epoch 3 ran
    assert float(rows[0].split(",")[2]) == pytest.approx(0.005)  # 0.01 halved once at epoch 2


def test_each_epoch_is_logged_with_time_left(ck, tmp_path):
    proc = run_cli(*ck.dirs, *[a for a in FAST if a != "--quiet"], "--output-dir", tmp_path / "r", "--fold", "0")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if re.search(r"fold 0 epoch \d/2 +loss", line)]
    assert len(lines) == 2 and all("left)" in line for line in lines)
    assert "Traceback" not in proc.stderr


def test_alexnet_frozen_and_final_model(ck, tmp_path):
    """The original's backbone, frozen as the original trained it, and the deployable model."""
    run_dir = tmp_path / "alex"
    argv = [*ck.dirs, *FAST, "--model", "alexnet", "--freeze-backbone", "--final", "--epochs", "2"]
    assert main.cli([*argv, "--output-dir", str(run_dir)]) == 0
    assert (run_dir / "backbone.pth").is_file() and (run_dir / "final" / "checkpoint.pth").is_file()
    final = checkpoints.load_checkpoint(run_dir / "final" / "checkpoint.pth")
    assert final["test_ids"] == [] and final["epoch"] == 1
    # a frozen checkpoint holds the head only; the backbone is stored once for the run
    assert all(not k.startswith("backbone.") for k in final["model"])
    model, _ = checkpoints.load_trained_model(run_dir / "fold0" / "checkpoint.pth")
    assert main.cli(["-e", "--resume", str(run_dir), "--quiet"]) == 0
    assert json.loads((run_dir / "evaluate" / "results.json").read_text())["per_au"] == \
        json.loads((run_dir / "results.json").read_text())["per_au"]
    assert isinstance(model, torch.nn.Module) and not model.training


def test_an_au_no_sequence_codes_is_refused_before_training(ck, tmp_path, capsys):
    """Issue 18: --aus 3,99 used to train a whole run on all-negative labels with a warning. An AU that
    no sequence of the copy codes is now one line naming it, before any run folder is made (an AU
    that exists but reports null is covered in test_metrics: AU43's empty row)."""
    run_dir = tmp_path / "au99"
    assert main.cli([*ck.dirs, *FAST, "--aus", "1,2,43", "--output-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "AU43" in err and "AU1," not in err and "--aus 1,2" in err
    assert not run_dir.exists()
    assert main.cli([*ck.dirs, *FAST, "--aus", "3,99", "--output-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "AU3, AU99" in err and not run_dir.exists()


def test_demo_generates_its_tree_once_and_prints_the_table(tmp_path, monkeypatch, capsys):
    """--demo with its sizes shrunk: the real path, from generation to the printed run folder."""
    monkeypatch.setattr(dataset, "DEMO_SUBJECTS", 6)
    monkeypatch.setattr(main, "DEMO", {**main.DEMO, "epochs": 1, "kfold": 2, "model": "squeezenet1_1"})
    for name in ("one", "two"):
        assert main.cli(["--demo", "--quiet", "--cache-dir", str(tmp_path / "cache"),
                         "--output-dir", str(tmp_path / name)]) == 0
        out = capsys.readouterr().out
        assert "| squeezenet1_1 |" in out and f"run folder: {tmp_path / name}" in out
        # it ends with what to run next: the user's own copy, -e on this run, predict.py on this run
        after = out.split("next:")[1]
        assert "python main.py CK+/cohn-kanade-images" in after
        assert f"-e --resume {tmp_path / name}" in after and f"predict.py {tmp_path / name}" in after
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith("synthetic")] == \
        ["synthetic-ckplus-6"]


def test_help_lists_every_original_flag_with_its_default():
    text = main.get_args_parser().format_help()
    options = text[text.index("\noptions:") if "\noptions:" in text else text.index("\n\n"):]  # past the usage lines

    def help_of(flag: str) -> str:
        """The flag's entry in the option list: its line and the indented lines under it."""
        match = re.search(rf"^ {{2,}}(?:-\w \S+, )?{re.escape(flag)}\b[^\n]*(?:\n {{10,}}\S[^\n]*)*", options, re.M)
        return " ".join(match.group(0).split()) if match else ""

    for flag, default in [("--model", "alexnet"), ("--epochs", "100"), ("--step", "20"), ("--start-epoch", "0"),
                          ("--batch-size", "32"), ("--lr", "0.01"), ("--kfold", "10")]:
        assert re.search(rf"\(default:? {re.escape(default)}\)", help_of(flag)), (flag, help_of(flag))
    for flag in ("--resume", "--evaluate", "--split", "--fold", "--gamma", "--pos-weight", "--amp", "--demo"):
        assert flag in text


def test_positive_weights_come_from_the_training_labels_only():
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.float32)
    assert engine.positive_weights(labels).tolist() == pytest.approx([1 / 3, 3.0, 1.0])


def test_augment_and_seed_change_training_and_are_repeatable(ck, tmp_path):
    def fold0(name, *flags):
        run_dir = tmp_path / name
        assert main.cli([*ck.dirs, *FAST, "--epochs", "1", "--fold", "0", "--output-dir", str(run_dir), *flags]) == 0
        return metrics.read_predictions(run_dir / "fold0" / "predictions.csv")[-1]

    plain, augmented, again = fold0("plain"), fold0("aug", "--augment"), fold0("aug2", "--augment")
    assert np.array_equal(augmented, again)
    assert not np.array_equal(plain, augmented)
    assert not np.array_equal(plain, fold0("seed1", "--seed", "1"))


def test_demo_honours_the_flags_typed_with_it(tmp_path, monkeypatch, capsys, caplog):
    """--demo's settings are defaults: `--demo --model X --epochs 1` trains X for 1 epoch, and the
    log says what the demo used."""
    monkeypatch.setattr(dataset, "DEMO_SUBJECTS", 6)
    used = {}
    monkeypatch.setattr(main, "train", lambda args: used.update(vars(args)))
    cache = str(tmp_path / "cache")
    with caplog.at_level("INFO", logger=utils.LOGGER_NAME):
        assert main.cli(["--demo", "--model", "alexnet", "--epochs", "1", "--cache-dir", cache]) == 0
    assert (used["model"], used["epochs"]) == ("alexnet", 1)
    assert (used["kfold"], used["lr"], used["image_size"]) == (main.DEMO["kfold"], main.DEMO["lr"], 64)
    assert "--model alexnet (typed)" in caplog.text and "--epochs 1 (typed)" in caplog.text
    assert f"--lr {main.DEMO['lr']} " in caplog.text
    assert main.cli(["--demo", "--cache-dir", cache]) == 0
    assert (used["model"], used["epochs"]) == (main.DEMO["model"], main.DEMO["epochs"])
    # the demo brings its own data: paths typed with it are refused, not dropped
    assert main.cli(["--demo", "a", "b", "c", "--cache-dir", cache]) == 2
    assert "drop DATA_DIR LABEL_DIR LANDMARK_DIR" in capsys.readouterr().err
