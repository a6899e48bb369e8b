"""images/make_images.py draws every README figure from a synthetic tree and a run's results.json."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scoring import metrics

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def make_images():
    # images/ is a folder of pictures, not a package: load the script by its path
    spec = importlib.util.spec_from_file_location("make_images", REPO / "images" / "make_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A finished run's results.json, as main.py writes it, from made-up predictions."""
    aus = [1, 2, 4, 5, 6, 7, 12, 15, 17, 25]
    rng = np.random.default_rng(0)
    targets = (rng.random((30, len(aus))) < 0.4).astype(np.float32)
    probs = np.clip(0.6 * targets + 0.5 * rng.random(targets.shape), 0, 1)
    results = {"model": "res18", "aus": aus, "split": "subject", "kfold": 3,
               **metrics.compute_metrics(targets, probs, aus)}
    run = tmp_path / "run"
    run.mkdir()
    metrics.write_results(run, results)
    return run


def test_every_figure_is_a_png(make_images, ck, run_dir, tmp_path):
    out = tmp_path / "images"
    paths = make_images.make_images(ck.root, run_dir, out)
    assert sorted(p.name for p in paths) == sorted(make_images.NAMES)
    for path in paths:
        with Image.open(path) as img:
            assert img.format == "PNG"
            assert min(img.size) >= 200, (path.name, img.size)
            # a drawn figure, not a blank canvas
            assert np.asarray(img.convert("L")).std() > 5, path.name
        assert path.stat().st_size < 300_000, path.name


def test_missing_results_is_one_line_error(make_images, ck, tmp_path, capsys):
    args = make_images.get_args_parser().parse_args(
        ["--data", str(ck.root), "--run", str(tmp_path), "--out", str(tmp_path / "images")])
    assert make_images.main(args) == 2
    assert "results.json does not exist" in capsys.readouterr().err
    assert not (tmp_path / "images").exists()


def test_committed_images_are_modest(make_images):
    for name in make_images.NAMES:
        path = REPO / "images" / name
        assert path.is_file(), f"{path} is missing: python images/make_images.py"
        assert path.stat().st_size < 300_000, name
