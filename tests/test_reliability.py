"""Reliability: every way a user can get it wrong ends in one line and exit code 2 with nothing
written; messy copies still work; checkpoints are safe to load; crashes lose nothing."""
from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ckplus
import main
import metrics
import runs
import synthetic
import utils
from conftest import FAST, REPO, run_cli

# One epoch, two folds: the smallest complete run (tiny trees have three subjects).
QUICK = ["--model", "squeezenet1_1", "--no-pretrained", "--epochs", "1", "--kfold", "2", "-b", "4",
         "--image-size", "64", "-j", "0", "--quiet"]


_TEMPLATES: dict[str, tuple[Path, synthetic.SyntheticSummary]] = {}


@pytest.fixture(scope="module", autouse=True)
def template_root(tmp_path_factory):
    """Where small_tree keeps the trees it generated, so each kind is generated once and copied."""
    _TEMPLATES.clear()
    _TEMPLATES["root"] = (tmp_path_factory.mktemp("templates"), None)
    yield
    _TEMPLATES.clear()


def small_tree(root: Path, **kw) -> tuple[list[str], synthetic.SyntheticSummary]:
    """A fresh copy of a tiny synthetic CK+ (3 subjects, no junk) at `root`, for a test to damage."""
    settings = {"subjects": 3, "seed": 1, "junk": False, **kw}
    key = json.dumps(settings, sort_keys=True)
    if key not in _TEMPLATES:
        template = _TEMPLATES["root"][0] / f"tree{len(_TEMPLATES)}"
        _TEMPLATES[key] = template, synthetic.generate(template, **settings)
    template, summary = _TEMPLATES[key]
    shutil.copytree(template, root)
    return [str(d) for d in ckplus.training_dirs(root)], summary


def first(root: Path, pattern: str) -> Path:
    return sorted(root.rglob(pattern))[0]


def peak_of(root: Path) -> tuple[Path, Path, Path]:
    """The first sequence's FACS file, peak frame and peak landmark file."""
    folders = ckplus.folders(root)
    facs = first(folders["facs"], "*_facs.txt")
    stem = facs.name[: -len("_facs.txt")]
    return facs, first(folders["frame"], f"{stem}.png"), first(folders["landmarks"], f"{stem}_landmarks.txt")


def fails(capsys, argv: list, *needles: str) -> str:
    """main.cli(argv) must exit 2 with exactly one line on stderr naming every needle."""
    code = main.cli([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- bad CK+ copies


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BAD_COPIES = {
    "FACS file empty": ("facs", lambda p: p.write_text("")),
    "FACS file garbled": ("facs", lambda p: p.write_text("AU one, intensity two\n")),
    "FACS file with an impossible AU": ("facs", lambda p: p.write_text("   1.5000000e+02   2.0000000e+00\n")),
    "landmarks with 60 points": ("landmarks", lambda p: p.write_text("".join(p.read_text().splitlines(True)[:60]))),
    "landmarks not finite": ("landmarks", lambda p: p.write_text(p.read_text().replace(
        p.read_text().split()[0], "nan", 1))),
    "frame empty": ("frame", lambda p: p.write_bytes(b"")),
    "frame truncated": ("frame", truncate),
    "frame not an image": ("frame", lambda p: p.write_text("not a png")),
    "landmark file missing": ("landmarks", lambda p: p.unlink()),
}


@pytest.mark.parametrize("case", sorted(BAD_COPIES))
def test_bad_file_is_named_in_one_line_and_nothing_is_written(case, tmp_path, capsys):
    dirs, _ = small_tree(tmp_path / "ck")
    facs, frame, landmarks = peak_of(tmp_path / "ck")
    which, damage = BAD_COPIES[case]
    target = {"facs": facs, "frame": frame, "landmarks": landmarks}[which]
    damage(target)
    out = tmp_path / "run"
    fails(capsys, [*dirs, *QUICK, "--output-dir", out], target.name)
    assert not out.exists()


def test_skip_bad_trains_on_the_rest_and_says_what_it_skipped(tmp_path, capsys):
    dirs, summary = small_tree(tmp_path / "ck")
    facs, frame, _ = peak_of(tmp_path / "ck")
    frame.write_bytes(b"")
    assert main.cli([*dirs, *QUICK, "--skip-bad", "--output-dir", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert frame.name in err and "skipped 1" in err
    ids = metrics.read_predictions(tmp_path / "run" / "predictions.csv")[0]
    assert len(ids) == summary.sequences - 1


def test_sequence_with_labels_but_no_frames(tmp_path, capsys):
    dirs, _ = small_tree(tmp_path / "ck")
    facs, frame, _ = peak_of(tmp_path / "ck")
    for png in frame.parent.glob("*.png"):
        png.unlink()
    fails(capsys, [*dirs, *QUICK, "--output-dir", tmp_path / "run"], facs.name)
    assert not (tmp_path / "run").exists()


def test_directories_missing_empty_or_swapped(tmp_path, capsys):
    dirs, _ = small_tree(tmp_path / "ck")
    (tmp_path / "empty").mkdir()
    fails(capsys, [tmp_path / "nope", *dirs[1:], *QUICK], "DATA_DIR", tmp_path / "nope")
    fails(capsys, [tmp_path / "empty", *dirs[1:], *QUICK], "DATA_DIR", "cohn-kanade-images")
    fails(capsys, [dirs[1], dirs[0], dirs[2], *QUICK], "LABEL_DIR", "order")
    fails(capsys, [dirs[0], dirs[2], dirs[1], *QUICK], "order")
    fails(capsys, QUICK, "DATA_DIR LABEL_DIR LANDMARK_DIR", "--demo")


# ----------------------------------------------------------------------------- bad flags


@pytest.mark.parametrize("flags, needle", [
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "-0.1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--threshold", "1.5"], "--threshold"),
    (["--threshold", "0"], "--threshold"),
    (["--kfold", "1"], "--kfold"),
    (["--kfold", "9"], "--kfold 9 is more than the 3 subjects"),
    (["--kfold", "900", "--split", "sequence"], "--kfold 900 is more than the"),
    (["--fold", "2"], "--fold"),
    (["--model", "resnet9000"], "resnet9000"),
    (["--image-size", "16"], "--image-size"),
    (["--model", "inception"], "--image-size 299"),
    (["--aus", "1,two"], "--aus"),
    (["--aus", "0"], "--aus"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
])
def test_flag_out_of_range_is_one_line(flags, needle, tmp_path, capsys):
    dirs, _ = small_tree(tmp_path / "ck")
    fails(capsys, [*dirs, *QUICK, *flags, "--output-dir", tmp_path / "run"], needle)
    assert not (tmp_path / "run").exists()


def test_output_folder_that_is_a_file(tmp_path, capsys):
    dirs, _ = small_tree(tmp_path / "ck")
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    fails(capsys, [*dirs, *QUICK, "--output-dir", target], "--output-dir", "is a file")
    assert target.read_text() == "keep me"


# ----------------------------------------------------------------------------- messy copies that must work


def test_rgb_frames_mixed_sizes_odd_paths_and_landmarks_off_the_frame(tmp_path, capsys):
    root = tmp_path / "CK+ copie réelle ü" / "ck"
    dirs, summary = small_tree(root, subjects=4, rgb_fraction=0.3, small_fraction=0.3)
    assert summary.rgb_sequences > 0 and summary.small_sequences > 0
    sizes = {Image.open(p).size for p in root.rglob("*.png")}
    modes = {Image.open(p).mode for p in root.rglob("*.png")}
    assert sizes == {(640, 490), (640, 480)} and {"L", "RGB"} <= modes
    _, _, landmarks = peak_of(root)
    points = np.loadtxt(landmarks)
    points[:, 0] -= points[:, 0].min() + 40  # the left of the face leaves the frame
    landmarks.write_text("".join("   %.7e   %.7e\n" % tuple(p) for p in points))
    run_dir = tmp_path / "runs ü" / "r 1"
    assert main.cli([*dirs, *QUICK, "--output-dir", str(run_dir)]) == 0, capsys.readouterr().err
    assert len(metrics.read_predictions(run_dir / "predictions.csv")[0]) == summary.sequences
    assert main.cli(["-e", "--resume", str(run_dir), "--quiet"]) == 0


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-fold run on a tiny tree: (data dirs, run folder)."""
    base = tmp_path_factory.mktemp("trained")
    dirs, _ = small_tree(base / "ck")
    assert main.cli([*dirs, *QUICK, "--output-dir", str(base / "run")]) == 0
    return dirs, base / "run"


def copy_run(run_dir: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, dest)
    return dest


def test_missing_truncated_or_foreign_checkpoints_are_one_line(trained, tmp_path, capsys):
    dirs, run_dir = trained
    fails(capsys, [*dirs, "-e", "--resume", tmp_path / "none.pth"], "none.pth", "does not exist")
    not_ckpt = tmp_path / "notes.pth"
    not_ckpt.write_text("these are my notes")
    fails(capsys, ["-e", "--resume", not_ckpt], "notes.pth", "not a PyTorch file")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    fails(capsys, ["-e", "--resume", tmp_path / "list.pth"], "list.pth", "not an AU checkpoint")

    run = copy_run(run_dir, tmp_path / "cut")
    truncate(run / "fold1" / "checkpoint.pth")
    fails(capsys, ["-e", "--resume", run, "--quiet"], "fold1", "checkpoint.pth", "truncated")


@pytest.mark.parametrize("field, value, needle", [
    ("arch", "alexnet", "alexnet"),
    ("aus", [1, 2], "AUs"),
])
def test_checkpoint_from_another_model_or_au_list_is_refused(trained, tmp_path, capsys, field, value, needle):
    dirs, run_dir = trained
    run = copy_run(run_dir, tmp_path / "run")
    (run / "results.json").unlink()
    path = run / "fold0" / "checkpoint.pth"
    ckpt = runs.load_checkpoint(path)
    ckpt[field] = value
    torch.save(ckpt, path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    fails(capsys, ["--resume", path, "--quiet"], needle, "checkpoint.pth")  # continue the fold
    fails(capsys, ["-e", "--resume", run, "--quiet"], needle, "checkpoint.pth")  # evaluate the run
    assert not (run / "results.json").exists()
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "evaluate" not in p.parts}


class RunsCode:
    """Unpickling this would create a folder: the proof that a checkpoint's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_checkpoint_crafted_to_run_code_is_refused_and_runs_nothing(trained, tmp_path, capsys):
    dirs, run_dir = trained
    marker = tmp_path / "pwned"
    run = copy_run(run_dir, tmp_path / "run")
    path = run / "fold0" / "checkpoint.pth"
    ckpt = runs.load_checkpoint(path)
    ckpt["model"] = RunsCode(marker)
    torch.save(ckpt, path)
    fails(capsys, ["-e", "--resume", path], "refused", "checkpoint.pth")
    fails(capsys, ["--resume", run, "--quiet"], "refused")
    # a full unpickler would indeed run it: the file is a real exploit
    torch.load(path, weights_only=False)
    assert marker.is_dir()
    marker.rmdir()
    proc = run_cli("-e", "--resume", path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and not marker.exists()


# ----------------------------------------------------------------------------- divergence, Ctrl-C, kill -9


def test_nan_loss_stops_the_fold_naming_epoch_and_learning_rate(tmp_path, capsys):
    dirs, _ = small_tree(tmp_path / "ck")
    run_dir = tmp_path / "run"
    argv = [*dirs, *QUICK, "--epochs", "4", "--lr", "1e6", "--output-dir", run_dir]
    line = fails(capsys, argv, "fold 0 epoch", "--lr", "1e+06")
    assert "nan" in line or "inf" in line
    epoch = int(line.split("fold 0 epoch ")[1].split(":")[0])
    ckpt = run_dir / "fold0" / "checkpoint.pth"
    if epoch > 1:  # the last good epoch is kept
        state = runs.load_checkpoint(ckpt)
        assert state["epoch"] == epoch - 2
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    else:
        assert not ckpt.exists()
    assert not (run_dir / "results.json").exists()


KILL_ARGS = ["--epochs", "3"]

# Runs main.cli in a child that SIGKILLs itself at a chosen point: at the N-th batch
# (inside an epoch), in the middle of the N-th checkpoint write (half the bytes are on disk),
# or when fold N is about to start (between folds).
DRIVER = textwrap.dedent("""
    import io, os, signal, sys
    import engine, main, torch
    point, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    calls = [0]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "batch":
        real_batch = engine.Inputs.batch
        def batch(self, *a, **k):
            calls[0] += 1
            if calls[0] == n:
                die()
            return real_batch(self, *a, **k)
        engine.Inputs.batch = batch
    elif point == "checkpoint":
        real_save = torch.save
        def save(obj, f, *a, **k):
            calls[0] += 1
            if calls[0] == n:
                buffer = io.BytesIO()
                real_save(obj, buffer)
                f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                die()
            return real_save(obj, f, *a, **k)
        torch.save = save
    elif point == "fold":
        real_fold = engine.train_fold
        def train_fold(fold, *a, **k):
            if fold == n:
                die()
            return real_fold(fold, *a, **k)
        engine.train_fold = train_fold
    sys.exit(main.cli(argv))
""")


def drive(point: str, n: int, argv: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, point, str(n), *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def read_run(run_dir: Path):
    results = json.loads((run_dir / "results.json").read_text())
    ids, _, _, _, _, probs = metrics.read_predictions(run_dir / "predictions.csv")
    return results["per_au"], results["macro"], dict(zip(ids, map(tuple, probs)))


@pytest.fixture(scope="module")
def straight(ck, tmp_path_factory):
    """The uninterrupted run every killed-and-resumed run must equal (in a child process too)."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    proc = drive("none", 0, [*ck.dirs, *FAST, *KILL_ARGS, "--output-dir", run_dir])
    assert proc.returncode == 0, proc.stderr
    return read_run(run_dir)


@pytest.mark.parametrize("point, n", [
    ("batch", 10),  # fold 0, epoch 3, after two checkpoints
    ("checkpoint", 5),  # half of fold 1's second checkpoint is on disk
    ("fold", 2),  # folds 0 and 1 finished, fold 2 not started
])
def test_sigkill_then_resume_equals_an_uninterrupted_run(point, n, ck, straight, tmp_path):
    run_dir = tmp_path / "run"
    proc = drive(point, n, [*ck.dirs, *FAST, *KILL_ARGS, "--output-dir", run_dir])
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (run_dir / "results.json").exists()
    leftovers = list(run_dir.rglob("*.tmp-*"))
    assert bool(leftovers) == (point == "checkpoint")
    if point == "checkpoint":  # the good checkpoint of the epoch before is intact
        assert runs.load_checkpoint(run_dir / "fold1" / "checkpoint.pth")["epoch"] == 0

    resumed = run_cli("--resume", run_dir, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert read_run(run_dir) == straight
    assert not list(run_dir.rglob("*.tmp-*"))
    for k in range(3):
        epochs = [r.split(",")[0] for r in (run_dir / f"fold{k}" / "metrics.csv").read_text().splitlines()[1:]]
        assert epochs == ["1", "2", "3"]


def test_ctrl_c_saves_and_prints_the_command_that_resumes(ck, straight, tmp_path):
    run_dir = tmp_path / "run"
    argv = [sys.executable, str(REPO / "main.py"), *ck.dirs, *[a for a in FAST if a != "--quiet"], *KILL_ARGS,
            "--output-dir", str(run_dir)]
    child = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen = []
    for line in child.stderr:
        seen.append(line)
        if "fold 1 epoch 1/3" in line:
            child.send_signal(signal.SIGINT)
            break
    err = "".join(seen) + child.stderr.read()
    assert child.wait(timeout=120) == 130, err
    assert "Traceback" not in err and "interrupted in fold 1" in err
    command = err.strip().splitlines()[-1].strip()
    assert command.startswith("python main.py") and "--resume" in command
    resumed = subprocess.run([sys.executable, *shlex.split(command)[1:], "--quiet"], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert read_run(run_dir) == straight
    assert math.isfinite(read_run(run_dir)[1]["f1"])
