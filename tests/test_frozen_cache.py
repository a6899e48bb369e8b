"""A frozen backbone's features computed once give the same run as the original's recompute path.

With --freeze-backbone (and no --augment) main.py runs the backbone over every image once and
trains only the AU head on those features; --no-feature-cache runs the frozen backbone on
every batch of every epoch, as the original program did. Both use the run's backbone.pth and
the same batch order, so a user must get the same out-of-fold predictions and the same table
either way, and the cached run must really have skipped the per-epoch backbone passes.
"""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torchvision

import main
from scoring import metrics
EPOCHS, KFOLD, BATCH = 3, 3, 8  # three epochs, so passes per epoch cannot pass for a single one
FEATURE_BATCH = 64  # compute_features' batch: max(--batch-size, 64)
# The original's frozen backbone, small inputs: random AlexNet features train a head in seconds.
FROZEN = ["--model", "alexnet", "--no-pretrained", "--freeze-backbone", "--image-size", "64", "-j", "0", "--quiet",
          "--epochs", str(EPOCHS), "--kfold", str(KFOLD), "-b", str(BATCH)]


@pytest.fixture
def backbone_passes(monkeypatch):
    """Counts AlexNet forward calls on real data and the images they carry, however main.py
    reaches the backbone (shape checks on the meta device compute nothing and are not counted)."""
    seen = Counter()
    forward = torchvision.models.AlexNet.forward

    def counting(self, x):
        if x.device.type != "meta":
            seen["calls"] += 1
            seen["images"] += x.shape[0]
        return forward(self, x)

    monkeypatch.setattr(torchvision.models.AlexNet, "forward", counting)
    return seen


def frozen_run(ck, out, *extra) -> None:
    assert main.cli([*ck.dirs, *FROZEN, "--output-dir", str(out), *extra]) == 0


def test_feature_cache_matches_recompute_and_skips_backbone(ck, tmp_path, backbone_passes):
    frozen_run(ck, tmp_path / "cached")
    cached = dict(backbone_passes)
    backbone_passes.clear()
    frozen_run(ck, tmp_path / "recompute", "--no-feature-cache")
    recompute = dict(backbone_passes)

    ids_c, _, folds_c, aus_c, targets_c, probs_c = metrics.read_predictions(tmp_path / "cached" / "predictions.csv")
    ids_r, _, folds_r, aus_r, targets_r, probs_r = metrics.read_predictions(tmp_path / "recompute" / "predictions.csv")
    n = len(ids_c)
    assert n == ck.summary.sequences
    assert (ids_c, folds_c, aus_c) == (ids_r, folds_r, aus_r)
    np.testing.assert_array_equal(targets_c, targets_r)
    np.testing.assert_allclose(probs_c, probs_r, rtol=0, atol=1e-4)
    assert probs_c.std() > 1e-3, "predictions that are all alike would agree whatever the features were"

    results_c = json.loads((tmp_path / "cached" / "results.json").read_text())
    results_r = json.loads((tmp_path / "recompute" / "results.json").read_text())
    assert results_c["macro"]["f1"] == results_r["macro"]["f1"]
    assert {au: m["f1"] for au, m in results_c["per_au"].items()} == \
           {au: m["f1"] for au, m in results_r["per_au"].items()}

    # Cached: every image through the backbone exactly once, in feature batches, and never again.
    assert cached == {"calls": math.ceil(n / FEATURE_BATCH), "images": n}
    # Recompute: each fold's training images every epoch (less a last batch of one, which the
    # loop skips), then its test images once.
    expected = 0
    for k in range(KFOLD):
        test = folds_r.count(k)
        train = n - test
        expected += EPOCHS * (train - (train % BATCH == 1)) + test
    assert recompute["images"] == expected
    assert recompute["images"] > EPOCHS * cached["images"] * (KFOLD - 1) / KFOLD


def test_geometry_on_a_frozen_backbone_cached_equals_recomputed(ck, tmp_path):
    """--geometry with --freeze-backbone: the landmarks' geometry is cached beside the features,
    and the run predicts what the per-batch backbone predicts."""
    flags = ["--model", "squeezenet1_1", "--no-pretrained", "--freeze-backbone", "--geometry", "--image-size", "64",
             "-j", "0", "--quiet", "--epochs", "2", "--kfold", "2", "-b", str(BATCH), "--tta", "flip"]
    for name, extra in (("cached", []), ("recompute", ["--no-feature-cache"])):
        assert main.cli([*ck.dirs, *flags, "--output-dir", str(tmp_path / name), *extra]) == 0
    _, _, _, _, _, cached = metrics.read_predictions(tmp_path / "cached" / "predictions.csv")
    _, _, _, _, _, recompute = metrics.read_predictions(tmp_path / "recompute" / "predictions.csv")
    np.testing.assert_allclose(cached, recompute, rtol=0, atol=1e-4)
    assert cached.std() > 1e-3
    assert json.loads((tmp_path / "cached" / "results.json").read_text())["geometry"] is True
