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
from ckplus import synthetic
from conftest import FAST, REPO, run_cli
import main
from scoring import metrics
from training import checkpoints, runs, settings
import utils

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
    ckpt = checkpoints.load_checkpoint(path)
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
    ckpt = checkpoints.load_checkpoint(path)
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
        state = checkpoints.load_checkpoint(ckpt)
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
    import main
    from training import engine
    import torch
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
        assert checkpoints.load_checkpoint(run_dir / "fold1" / "checkpoint.pth")["epoch"] == 0

    assert main.cli(["--resume", str(run_dir), "--quiet"]) == 0  # resumed in this process: the child's import spared
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
    assert main.cli([*shlex.split(command)[2:], "--quiet"]) == 0  # the printed command, run in this process
    assert read_run(run_dir) == straight
    assert math.isfinite(read_run(run_dir)[1]["f1"])


# ----------------------------------------------------------------------------- second pass (issue 13)
# Found by trying it as a new user would: default flags, fresh trees.


def without_workers(flags: list[str]) -> list[str]:
    i = flags.index("-j")
    return flags[:i] + flags[i + 2:]


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_bad_frame_with_crop_workers_is_one_line_and_skip_bad_skips_it(damage, tmp_path, capsys):
    """The default -j decodes in a process pool: a frame that will not decode must come back from
    a worker as the same one-line error (not a BrokenProcessPool traceback), and --skip-bad must
    be able to skip it."""
    dirs, summary = small_tree(tmp_path / "ck")
    _, frame, _ = peak_of(tmp_path / "ck")
    frame.write_bytes(b"") if damage == "empty" else truncate(frame)
    argv = [*dirs, *without_workers(QUICK), "-j", "2"]
    fails(capsys, [*argv, "--output-dir", tmp_path / "run"], frame.name, "will not decode", "--skip-bad")
    assert not (tmp_path / "run").exists()

    assert main.cli([*argv, "--skip-bad", "--output-dir", str(tmp_path / "skip")]) == 0
    assert frame.name in capsys.readouterr().err
    assert len(metrics.read_predictions(tmp_path / "skip" / "predictions.csv")[0]) == summary.sequences - 1


def library_exceptions() -> set[type]:
    """Exception types of the library modules, whose code runs in crop workers (the scripts'
    own types, like faces.NoFaces, never leave their process)."""
    import ckplus
    import dataset
    import models
    import preprocess
    from training import engine

    found = set()
    for module in (utils, ckplus, dataset, engine, models, preprocess, runs, metrics):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found.add(value)
    return found


def test_every_project_exception_survives_a_process_boundary(tmp_path):
    """Crop workers (and any pool) send exceptions back pickled: each must arrive whole."""
    import pickle

    import dataset
    import preprocess
    from training import engine

    examples = [
        utils.UserError("bad flag: fix it"),
        utils.DiskFull(tmp_path / "fold0" / "checkpoint.pth", 123456, 789, "free some space"),
        dataset.DataError("image x.png will not decode: replace it", "image will not decode"),
        engine.Diverged("fold 0 epoch 2: the loss became nan"),
        preprocess.OutsideFrame("landmarks lie outside the frame"),
    ]
    assert {type(e) for e in examples} == library_exceptions(), "a new exception type needs an example here"
    for error in examples:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error)
        assert vars(back) == vars(error)  # DataError.reason, DiskFull's sizes


class FullDisk:
    """A file whose writes fail with ENOSPC after `budget` bytes, as on a full disk."""

    def __init__(self, real, budget: int):
        self.real, self.budget = real, budget

    def write(self, data) -> int:
        import errno

        if len(data) > self.budget:
            self.real.write(bytes(data[: self.budget]))
            self.budget = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget -= len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def fill_disk_at(monkeypatch, name: str, nth: int = 1, budget: int = 1000) -> None:
    """The `nth` atomic write of a file whose name starts with `name` (and every one after it)
    hits a full disk."""
    seen = [0]

    def open_(path, mode="r", *a, **k):
        f = open(path, mode, *a, **k)
        if Path(path).name.startswith(name) and ".tmp-" in Path(path).name and "w" in mode:
            seen[0] += 1
            if seen[0] >= nth:
                return FullDisk(f, budget)
        return f

    monkeypatch.setattr(utils, "open", open_, raising=False)


@pytest.mark.parametrize("name, nth", [("checkpoint.pth", 2), ("predictions.csv", 1), ("results.json", 1)])
def test_full_disk_is_one_line_with_the_space_needed_and_the_resume_command(name, nth, trained, tmp_path, capsys,
                                                                            monkeypatch):
    dirs, _ = trained
    run_dir = tmp_path / "run"
    fill_disk_at(monkeypatch, name, nth)
    line = fails(capsys, [*dirs, *QUICK, "--epochs", "2", "--output-dir", run_dir],
                 "no space left in", "to write " + name, "needed", "free", f"--resume {run_dir}")
    folder = run_dir / "fold0" if name != "results.json" else run_dir
    assert f"no space left in {folder} " in line
    if name == "checkpoint.pth":  # the epoch before is intact and loads
        ckpt = checkpoints.load_checkpoint(run_dir / "fold0" / "checkpoint.pth")
        assert ckpt["epoch"] == 0
        # the last epoch's checkpoint failed: the weights without momentum
        assert f"about {utils.format_bytes(checkpoints.state_bytes(ckpt['model']))} needed" in line
    assert not list(run_dir.rglob("*.tmp-*"))
    monkeypatch.undo()
    assert main.cli(["--resume", str(run_dir), "--quiet"]) == 0
    assert (run_dir / "results.json").is_file()


def test_torch_save_on_a_full_disk_is_recognised(tmp_path, monkeypatch):
    """torch's zip writer turns the failed write into RuntimeError('... unexpected pos ...')."""
    state = {"version": checkpoints.FORMAT_VERSION, "epoch": 0, "aus": [1], "arch": "alexnet"}
    path = checkpoints.save_checkpoint({**state, "model": {"w": torch.zeros(10)}}, tmp_path / "checkpoint.pth")
    fill_disk_at(monkeypatch, "checkpoint.pth")
    with pytest.raises(utils.DiskFull) as e:
        checkpoints.save_checkpoint({**state, "model": {"w": torch.zeros(100_000)}, "epoch": 1}, path)
    assert "about 390.6 KiB needed" in str(e.value) and str(tmp_path) in str(e.value)
    assert isinstance(e.value.__cause__, (RuntimeError, OSError))
    assert checkpoints.load_checkpoint(path)["epoch"] == 0 and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_full_disk_for_the_crop_cache_warns_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    dirs, _ = small_tree(tmp_path / "ck")
    cache = tmp_path / "cache"
    fill_disk_at(monkeypatch, "crops-")  # the crop cache's crops-<key>.npz
    argv = [*dirs, *QUICK, "--cache-dir", cache, "--output-dir", tmp_path / "run"]
    assert main.cli([str(a) for a in argv if a != "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"no space left in {cache}" in err and "continuing without the crop cache" in err
    assert not list(cache.glob("crops-*"))


def try_mount_tmpfs(where: Path, size: int) -> bool:
    where.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return proc.returncode == 0


def test_a_real_full_filesystem(tmp_path):
    """The same on a real full disk: a tmpfs with room for one checkpoint with momentum, not for
    the next one beside it (skipped where tmpfs cannot be mounted)."""
    dirs, _ = small_tree(tmp_path / "ck")
    disk = tmp_path / "disk"
    # squeezenet1_1, 10 AUs: 2.8 MiB of weights, 5.6 MiB with momentum; the second write needs both files
    if not try_mount_tmpfs(disk, 7 * 2**20):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        run_dir = disk / "run"
        proc = run_cli(*dirs, *QUICK, "--epochs", "3", "--output-dir", run_dir)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"error: no space left in {run_dir / 'fold0'} to write checkpoint.pth (about 5.")
        assert f"--resume {run_dir}" in lines[0]
        assert checkpoints.load_checkpoint(run_dir / "fold0" / "checkpoint.pth")["epoch"] == 0
        assert not list(run_dir.rglob("*.tmp-*"))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_evaluate_refuses_a_run_with_a_fold_missing_and_one_fold_says_so(trained, tmp_path, capsys):
    _, run_dir = trained
    run = copy_run(run_dir, tmp_path / "run")
    (run / "fold1" / "checkpoint.pth").unlink()
    fails(capsys, ["-e", "--resume", run, "--quiet"], "fold1", "of its 2 folds", f"--resume {run} --fold 1")
    assert not (run / "evaluate").exists()

    # one fold, asked for by name: the results and the table say they cover that fold only
    assert main.cli(["-e", "--resume", str(run), "--fold", "0", "--quiet"]) == 0
    out = capsys.readouterr().out
    results = json.loads((run / "fold0" / "evaluate" / "results.json").read_text())
    assert results["folds"] == [0] and results["protocol"].startswith("fold 0 only (1 of 2) of a 2-fold")
    assert "squeezenet1_1, 1 of 2 folds (fold0)" in out
    assert json.loads((run / "results.json").read_text())["folds"] == [0, 1]
    # -e honours --output-dir, but never over a run folder's own results
    assert main.cli(["-e", "--resume", str(run), "--fold", "0", "--output-dir", str(tmp_path / "ev"), "--quiet"]) == 0
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["folds"] == [0]
    fails(capsys, ["-e", "--resume", run, "--fold", "0", "--output-dir", run], "is a run folder")
    # a fold short of the run's epochs (an interrupted --epochs extension) is evaluated with a warning
    saved = json.loads((run / "args.json").read_text())
    (run / "args.json").write_text(json.dumps({**saved, "epochs": 2}))
    assert main.cli(["-e", "--resume", str(run), "--fold", "0", "--quiet"]) == 0
    assert "fold0 has trained 1 of the run's 2 epochs" in capsys.readouterr().err


def test_resume_refuses_every_run_setting_typed_differently_in_one_line(trained, tmp_path, capsys):
    """Generic over settings.RUN_SETTINGS: a setting added later is refused without new code."""
    run_dir = copy_run(trained[1], tmp_path / "run")
    saved = json.loads((run_dir / "args.json").read_text())
    flags, expected = [], []
    for action in main.get_args_parser()._actions:
        key = action.dest
        if key not in settings.RUN_SETTINGS or key == "epochs":  # --epochs extends the run (below)
            continue
        flag = [o for o in action.option_strings if o.startswith("--")][0]
        value = saved[key]
        if action.nargs == 0:  # a switch can only be typed on
            if value:
                continue
            flags.append(flag)
        elif action.choices:
            flags += [flag, next(c for c in action.choices if c != value)]
        elif key == "aus":
            flags += [flag, "1,2"]
        elif key == "model":
            flags += [flag, "alexnet"]
        elif action.type in (int, float):
            flags += [flag, str(action.type(value * 2 if value else 1) if key != "threshold" else 0.25)]
        else:
            flags += [flag, "something-else"]
        expected.append(flag)
    assert len(expected) >= len(settings.RUN_SETTINGS) - 2  # all but --epochs and switches already on
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    line = fails(capsys, ["--resume", run_dir, *flags], "disagree", "--output-dir")
    for flag in expected:
        assert f"{flag} " in line or f"{flag}," in line or f"{flag} (" in line, flag
    fails(capsys, ["-e", "--resume", run_dir, "--threshold", "0.25", "--lr", "1"], "--threshold 0.25 (run: 0.5)",
          "--lr 1.0 (run: 0.01)")
    fails(capsys, ["--resume", run_dir, "--output-dir", tmp_path / "elsewhere"], "--output-dir", "in place")
    assert before == {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    # flags that do not change the run stay allowed, and typing a run's own value is no change
    assert main.cli(["--resume", str(run_dir), "--quiet", "-j", "1", "--model", "squeezenet1_1", "--kfold", "2",
                     "--aus", "1, 2, 4,5,6,7,12,15,17,25", "--device", "cpu"]) == 0


def test_resume_with_more_epochs_extends_the_run_like_torchvision(tmp_path, capsys):
    """--resume RUN --epochs N continues every finished fold to N epochs with its schedule; with
    no momentum to lose (--momentum 0) the extended run equals a run trained to N straight away."""
    dirs, _ = small_tree(tmp_path / "ck")
    flags = [*dirs, *QUICK, "--momentum", "0", "--step", "1", "--gamma", "0.5"]
    assert main.cli([*flags, "--epochs", "2", "--output-dir", str(tmp_path / "straight")]) == 0
    run_dir = tmp_path / "run"
    assert main.cli([*flags, "--output-dir", str(run_dir)]) == 0  # one epoch
    one_epoch = json.loads((run_dir / "results.json").read_text())
    assert one_epoch["epochs"] == 1
    capsys.readouterr()

    fails(capsys, ["--resume", run_dir, "--epochs", "0"], "--epochs")
    assert main.cli(["--resume", str(run_dir), "--epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert "extended from 1 to 2 epochs" in err and "fold 0: resuming at epoch 1" in err
    saved = json.loads((run_dir / "args.json").read_text())
    assert saved["epochs"] == 2 and [(e["from"], e["to"]) for e in saved["extended"]] == [(1, 2)]
    assert "extended from 1 to 2 epochs" in (run_dir / "log.txt").read_text()
    for k in range(2):
        rows = [r.split(",") for r in (run_dir / f"fold{k}" / "metrics.csv").read_text().splitlines()[1:]]
        assert [(r[0], float(r[2])) for r in rows] == [("1", 0.01), ("2", 0.005)]  # the schedule went on
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 2
    assert read_run(run_dir) == read_run(tmp_path / "straight")

    # back to fewer epochs than the folds trained: refused, nothing changes
    fails(capsys, ["--resume", run_dir, "--epochs", "1"], "--epochs 1", "already trained 2 epochs")
    assert json.loads((run_dir / "args.json").read_text())["epochs"] == 2


def test_extension_restarts_momentum_and_says_so(trained, tmp_path, capsys):
    _, run_dir = trained
    run = copy_run(run_dir, tmp_path / "run")
    assert main.cli(["--resume", str(run), "--epochs", "2"]) == 0
    assert "momentum restarts from zero" in capsys.readouterr().err
    for k in range(2):
        ckpt = checkpoints.load_checkpoint(run / f"fold{k}" / "checkpoint.pth")
        assert ckpt["epoch"] == 1 and ckpt["optimizer"]["state"] == {}


def test_finished_folds_keep_no_optimizer_state_and_the_run_prints_its_size(trained, tmp_path, capsys):
    """A finished fold's checkpoint is about the size of the model: -e, predict.py and --epochs
    need nothing more (a fold still training keeps its momentum: see the SIGKILL tests)."""
    _, run_dir = trained
    for k in range(2):
        path = run_dir / f"fold{k}" / "checkpoint.pth"
        ckpt = checkpoints.load_checkpoint(path)
        assert ckpt["optimizer"]["state"] == {} and ckpt["optimizer"]["param_groups"][0]["lr"] == 0.01
        assert path.stat().st_size < 1.05 * checkpoints.state_bytes(ckpt["model"])
    run = copy_run(run_dir, tmp_path / "r")
    assert main.cli(["--resume", str(run), "--quiet"]) == 0  # nothing to train: the results, then the size
    out = capsys.readouterr().out
    assert f"run folder: {run} ({utils.format_bytes(utils.folder_size(run))} on disk)" in out
