"""utils.py: atomic JSON/CSV, logging, durations, and that it imports without torch."""
from __future__ import annotations

import csv
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

import utils


def test_utils_imports_without_torch_or_numpy():
    code = "import sys, utils; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(utils.__file__).parent).stdout
    assert out.split() == ["False", "False"]


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


# ----------------------------------------------------------------------------- logging


@pytest.fixture
def au_logger():
    yield logging.getLogger(utils.LOGGER_NAME)
    logger = logging.getLogger(utils.LOGGER_NAME)
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
    with caplog.at_level(logging.WARNING, logger=utils.LOGGER_NAME):
        log.warning("skipped 2 of 3 sequences")
    assert "skipped 2 of 3 sequences" in caplog.text


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (12.4, "12s"), (59.6, "1m00s"), (185, "3m05s"), (3720, "1h02m"), (90000, "25h00m"),
    (float("nan"), "?"),
])
def test_format_duration(seconds, text):
    assert utils.format_duration(seconds) == text


def test_full_disk_is_one_user_error_naming_the_folder_and_the_size(tmp_path):
    import errno

    path = utils.write_json(tmp_path / "results.json", {"macro": 0.5})

    def full(f):
        f.write(b"{")
        raise OSError(errno.ENOSPC, "No space left on device")

    def torch_like(f):  # torch's zip writer: RuntimeError, the OSError only in its context
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    for write in (full, torch_like):
        with pytest.raises(utils.DiskFull) as e:
            utils.write_atomically(path, write, size=3 * 2**20)
        assert str(e.value).startswith(f"no space left in {tmp_path} to write results.json (about 3.0 MiB needed, ")
        assert str(e.value).endswith("free): free some space and run the command again")
        assert isinstance(e.value, utils.UserError) and "\n" not in str(e.value)
    assert e.value.with_fix("continue with --resume RUN").fix == "continue with --resume RUN"
    assert json.loads(path.read_text()) == {"macro": 0.5} and [p.name for p in tmp_path.iterdir()] == ["results.json"]

    def broken(f):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError) as other:  # any other failure is not called a full disk
        utils.write_atomically(path, broken)
    assert not isinstance(other.value, utils.DiskFull)


def test_format_bytes_and_folder_size(tmp_path):
    assert [utils.format_bytes(n) for n in (0, 1023, 1536, 5 * 2**20 + 2**19, 3 * 2**30)] == \
        ["0 B", "1023 B", "1.5 KiB", "5.5 MiB", "3.00 GiB"]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"1" * 1000)
    (tmp_path / "y").write_bytes(b"1" * 24)
    assert utils.folder_size(tmp_path) == 1024


def test_a_log_file_on_a_full_disk_warns_once_instead_of_a_traceback_per_line(tmp_path, capsys):
    import errno

    utils.setup_logging(quiet=True)
    handler = utils.add_log_file(tmp_path / "log.txt")

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    try:
        handler.stream = Full()
        for i in range(3):
            logging.getLogger(utils.LOGGER_NAME).info("epoch %d", i)
        err = capsys.readouterr().err
        assert err.count("warning: no space left to write") == 1 and str(tmp_path / "log.txt") in err
        assert "Traceback" not in err and "Logging error" not in err
    finally:
        handler.stream = open(tmp_path / "log.txt", "a")
        utils.setup_logging()


def test_first_line_is_what_a_one_line_report_shows():
    assert utils.first_line(ValueError("  bad header\nTraceback-ish detail\n")) == "bad header"
    assert utils.first_line(RuntimeError("")) == "RuntimeError"  # says nothing: its type says what failed
    assert utils.first_line("Invalid data found\nwhen processing input") == "Invalid data found"
    assert utils.first_line("") == ""
