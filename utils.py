"""Small helpers every module shares: the user-error type, atomic files, logging, the CLI wrapper.

Importing it imports neither torch nor numpy, so synthetic.py and other light scripts can raise
`UserError` and write files atomically without paying for torch.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence


class UserError(Exception):
    """An error the user can fix (bad path, bad file, bad flag).

    The scripts print the message as a single line on stderr and exit with code 2; the
    message names the file or flag at fault and says how to fix it.
    """


class DiskFull(UserError):
    """No space left on the device (or over quota) while writing `path`.

    The message names the folder, the space the file needed (when known) and the space free, and
    ends with `fix`; `with_fix` gives the same error with the fix a caller knows better (e.g. the
    --resume command that continues a run).
    """

    def __init__(self, path: str | os.PathLike, needed: int | None, free: int | None,
                 fix: str = "free some space and run the command again"):
        self.path, self.needed, self.free, self.fix = Path(path), needed, free, fix
        size = f"about {format_bytes(needed)} needed" if needed is not None else "size unknown"
        room = f", {format_bytes(free)} free" if free is not None else ""
        self.what = f"no space left in {self.path.parent} to write {self.path.name} ({size}{room})"
        super().__init__(f"{self.what}: {fix}")

    def with_fix(self, fix: str) -> "DiskFull":
        return DiskFull(self.path, self.needed, self.free, fix)

    def __reduce__(self):
        return type(self), (self.path, self.needed, self.free, self.fix)


# What a write raises when the disk is full or the user's quota is spent.
DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)


def disk_full_cause(error: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError behind `error`, if any: torch's zip writer reports a failed write
    as RuntimeError("... unexpected pos ...") with the OSError only in its context chain."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return error
        error = error.__cause__ or error.__context__
    return None


def free_bytes(directory: str | os.PathLike) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def format_bytes(n: int | float) -> str:
    """Binary units, as `du -h` counts: "512 B", "3.4 MiB", "1.20 GiB"."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.2f} {unit}" if unit == "GiB" else f"{value:.1f} {unit}"
    return f"{int(n)} B"


def folder_size(directory: str | os.PathLike) -> int:
    """Bytes in the files under `directory` (links not followed)."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # removed while we walked
    return total


LOGGER_NAME = "au"
_TEMP_RE = re.compile(r"\.tmp-\d+$")


def au_name(au: int) -> str:
    return f"AU{au}"


def first_line(error: BaseException | str, limit: int | None = None, with_type: bool = False) -> str:
    """The first line of an exception's message (or of a text), stripped; the exception's type
    name when it says nothing: what a one-line report of a failure shows. `with_type` puts the
    type's name before the message; `limit` cuts a longer line to that many characters, with "..."."""
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else ""
    if isinstance(error, BaseException) and (with_type or not line):
        line = f"{type(error).__name__}: {line}" if line else type(error).__name__
    if limit is not None and len(line) > limit:
        line = line[:limit - 3] + "..."
    return line


# ----------------------------------------------------------------------------- atomic files


def _temp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; not every platform or filesystem allows it, hence best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. directories cannot be fsynced on this filesystem: the file itself is already synced
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None],
                     size: int | None = None) -> Path:
    """Run `write` on a temp file beside `path`, sync it, then rename it over `path`.

    A reader sees the old file or the new one, never half of one. If `write` raises, the temp file
    is removed and the old file is untouched; a hard crash can leave `<name>.tmp-<pid>` behind, which
    `clean_temp_files` removes. A full disk (however the writer reports it) becomes `DiskFull`,
    which names the folder and `size`, the bytes the file needs when the caller knows them.
    """
    path = Path(path)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if disk_full_cause(e) is not None:
            raise DiskFull(path, size, free_bytes(path.parent)) from e
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace `path` with `data` atomically."""
    return write_atomically(path, lambda f: f.write(data), size=len(data))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, without importing numpy here
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON, indented, keys in insertion order; NaN is refused so the file stays valid JSON."""
    text = json.dumps(obj, indent=2, allow_nan=False, default=_json_default) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Atomic CSV; floats are written by str(), which is exact (it is repr) for Python floats."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def work_folder(stack: contextlib.ExitStack, path: str | os.PathLike | None, prefix: str) -> Path:
    """Where a benchmark keeps its runs: `path`, created and kept, or else a temporary folder that
    `stack` removes when it closes."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        return Path(path)
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))


def run_main_py(argv: Sequence[str], check: bool = True, cwd: str | os.PathLike | None = None
                ) -> tuple[float, subprocess.CompletedProcess]:
    """`python main.py ARGV` in a subprocess, as a user runs it, its output captured (for the
    benchmarks) -> (wall seconds, the finished process). `check`: a failure stops the caller
    (SystemExit) with main.py's output."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "main.py"), *map(str, argv)],
                          capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - t0
    if check and done.returncode != 0:
        raise SystemExit(f"main.py {' '.join(map(str, argv))} failed (exit {done.returncode}):\n"
                         f"{done.stdout}{done.stderr}")
    return wall, done


def clean_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove `*.tmp-<pid>` files a crashed write left under `directory` (recursively)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.rglob("*.tmp-*")):
        if _TEMP_RE.search(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------- command lines


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" where a flag has a value default and its help does not state one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default:" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def run_cli(parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], Any],
            argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run `main`: a UserError becomes one line on stderr and exit code 2."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------- logging


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time, so a test's captured stderr sees the log too."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


class _Formatter(logging.Formatter):
    """`HH:MM:SS message`, with the level named only when it is a warning or worse."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            stamp, _, message = text.partition(" ")
            text = f"{stamp} {record.levelname.lower()}: {message}"
        return text


def _drop_handlers(logger: logging.Logger, role: str) -> None:
    for handler in [h for h in logger.handlers if getattr(h, "_au_role", None) == role]:
        logger.removeHandler(handler)
        handler.close()


def setup_logging(quiet: bool = False, log_file: str | os.PathLike | None = None) -> logging.Logger:
    """Configure the "au" logger: INFO to stderr (WARNING only when quiet), optionally INFO to a file.

    Calling it again replaces the handlers it installed before, so a process that runs main()
    several times (the tests) does not print every line twice. Records still propagate to the root
    logger, so pytest's caplog sees them.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)  # the file keeps INFO even when stderr is quiet
    _drop_handlers(logger, "stderr")
    _drop_handlers(logger, "file")
    handler = _StderrHandler()
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    handler.setFormatter(_Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    handler._au_role = "stderr"  # type: ignore[attr-defined]
    logger.addHandler(handler)
    if log_file is not None:
        add_log_file(log_file)
    return logger


class _FileHandler(logging.FileHandler):
    """A log file that a full disk cannot turn into a traceback per line: the first line that
    cannot be written says so once on stderr; the run's next save then stops it with one line."""

    disk_full = False

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if error is None or disk_full_cause(error) is None:
            return super().handleError(record)
        if not self.disk_full:
            self.disk_full = True
            print(f"warning: no space left to write {self.baseFilename}; log lines are missing from it from "
                  f"here on", file=sys.stderr)


def add_log_file(path: str | os.PathLike) -> logging.Handler:
    """Also append INFO and up to `path` (e.g. run_dir/log.txt), replacing a log file set earlier."""
    logger = logging.getLogger(LOGGER_NAME)
    _drop_handlers(logger, "file")
    handler = _FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
    handler._au_role = "file"  # type: ignore[attr-defined]
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def format_duration(seconds: float) -> str:
    """A short human duration: "12s", "3m05s", "1h02m" (timedelta does the arithmetic)."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    hours, rest = divmod(timedelta(seconds=max(0, round(seconds))).total_seconds(), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{int(hours)}h{int(minutes):02d}m"
    return f"{int(minutes)}m{int(secs):02d}s" if minutes else f"{int(secs)}s"
