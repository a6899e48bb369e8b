"""training/checkpoints.py: atomic checkpoints, safe loading, the format version."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from training import checkpoints
import utils
from utils import UserError


def checkpoint_state(epoch: int) -> dict:
    torch.manual_seed(epoch)
    model = nn.Linear(4, 3)
    return {"version": checkpoints.FORMAT_VERSION, "model": model.state_dict(), "epoch": epoch, "aus": [1, 2, 4],
            "arch": "alexnet"}


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    checkpoints.save_checkpoint(checkpoint_state(1), path)

    def half_save(obj, f):
        f.write(b"PK\x03\x04 half a zip archive")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", half_save)
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoints.save_checkpoint(checkpoint_state(2), path)
    monkeypatch.undo()

    assert checkpoints.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to crash a real process")
def test_crash_mid_save_keeps_the_old_checkpoint_and_the_leftover_is_cleaned(tmp_path):
    path = tmp_path / "fold0" / "checkpoint.pth"
    path.parent.mkdir()
    checkpoints.save_checkpoint(checkpoint_state(1), path)

    pid = os.fork()
    if pid == 0:  # the child dies half-way through writing, as a killed job would: no cleanup runs
        try:
            def die_mid_write(obj, f):
                f.write(b"PK\x03\x04 half a zip archive")
                f.flush()
                os._exit(1)

            checkpoints.torch.save = die_mid_write
            checkpoints.save_checkpoint(checkpoint_state(2), path)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 1

    leftover = path.with_name(f"checkpoint.pth.tmp-{pid}")
    assert leftover.read_bytes().startswith(b"PK")
    assert checkpoints.load_checkpoint(path)["epoch"] == 1

    (tmp_path / "notes.tmp-old").write_text("not ours")  # only <name>.tmp-<pid> files are removed
    assert utils.clean_temp_files(tmp_path) == [leftover]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoint.pth", "fold0", "notes.tmp-old"]
    assert utils.clean_temp_files(tmp_path / "missing") == []


# ----------------------------------------------------------------------------- round trips


def test_checkpoint_round_trip_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()  # momentum buffers now exist and must survive
    path = checkpoints.save_checkpoint({"version": checkpoints.FORMAT_VERSION, "model": model.state_dict(),
                                        "optimizer": optimizer.state_dict(), "epoch": 4, "aus": [1, 2, 4],
                                        "arch": "res18", "history": [{"epoch": 0, "loss": 0.5}]},
                                       tmp_path / "checkpoint.pth")

    ckpt = checkpoints.load_checkpoint(path)
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
        checkpoints.load_checkpoint(path)
    message = str(e.value)
    assert str(path) in message and "refused" in message and "nothing in it was executed" in message
    assert "\n" not in message
    assert not marker.exists()

    # the file really is dangerous: a plain unpickle runs its code
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_checkpoint_errors_name_the_file_and_the_fix(tmp_path):
    good = checkpoints.save_checkpoint(checkpoint_state(1), tmp_path / "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("hello, not a checkpoint\n")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    a_list = tmp_path / "list.pth"
    torch.save([1, 2, 3], a_list)
    partial = tmp_path / "partial.pth"
    torch.save({"version": checkpoints.FORMAT_VERSION, "model": {}, "epoch": 3}, partial)

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
            checkpoints.load_checkpoint(path)
        assert str(path) in str(e.value) and expected in str(e.value), str(e.value)
        assert "\n" not in str(e.value)

    # the keys asked for are the ones checked
    assert checkpoints.load_checkpoint(partial, required=("model", "epoch"))["epoch"] == 3


def test_checkpoint_of_another_format_is_refused_by_name(tmp_path):
    """Only FORMAT_VERSION is read: a newer file, an older one, and one from before the key
    existed (format 1) are each refused in one line naming the file, its version and the fix."""
    current = checkpoints.save_checkpoint(checkpoint_state(2), tmp_path / "current.pth")
    assert checkpoints.load_checkpoint(current)["epoch"] == 2
    unversioned = {k: v for k, v in checkpoint_state(1).items() if k != "version"}
    for name, state, version in [
        ("new.pth", {**checkpoint_state(1), "version": checkpoints.FORMAT_VERSION + 1}, checkpoints.FORMAT_VERSION + 1),
        ("old.pth", {**checkpoint_state(1), "version": checkpoints.FORMAT_VERSION - 1}, checkpoints.FORMAT_VERSION - 1),
        ("unversioned.pth", unversioned, 1),
    ]:
        path = checkpoints.save_checkpoint(state, tmp_path / name)
        with pytest.raises(UserError) as e:
            checkpoints.load_checkpoint(path)
        message = str(e.value)
        assert str(path) in message and f"format version {version}" in message, message
        assert "retrain the run, or use the version of this program that wrote it" in message
        assert "\n" not in message


def test_the_parser_states_every_run_setting_at_the_tables_default():
    """One table: main.py's defaults are settings.SETTINGS', constant ones already in the parser (no
    None filled in later), and each setting is a flag a user can type."""
    import main
    from training import settings

    parser = main.get_args_parser()
    parsed = parser.parse_args([])
    flags = {o for action in parser._actions for o in action.option_strings}
    for setting in settings.SETTINGS:
        assert getattr(parsed, setting.dest) == setting.default, setting.dest
        assert setting.flag in flags, setting.flag
    assert (parsed.model, parsed.crop, parsed.norm, parsed.tta) == ("alexnet", "square", "weights", "none")
    assert settings.describe("augment", False) == "no --augment" and settings.BY_DEST["aus"].as_typed("1, 2") == \
        "--aus '1, 2'"
