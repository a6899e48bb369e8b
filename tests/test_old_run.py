"""A run folder trained before the library moved into packages (issue 25) still resumes, evaluates
and predicts: a checkpoint holds tensors and plain settings, never a module path.

tests/data/run_before_packages was trained at the last commit before the move, on the `ck` tree
(synthetic.generate(root, subjects=8, seed=0)):
    python main.py IMG FACS LMK --model squeezenet1_1 --no-pretrained --epochs 1 --kfold 2 -b 8 \
        --image-size 32 -j 0 --quiet --geometry --bootstrap 200 --output-dir run
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import torch

from faces import detect
import main
import predict

OLD_RUN = Path(__file__).resolve().parent / "data" / "run_before_packages"


def test_a_run_trained_before_the_packages_resumes_evaluates_and_predicts(ck, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    for k in (0, 1):  # the plain loader opens it: nothing in it names a module
        saved = torch.load(run / f"fold{k}" / "checkpoint.pth", map_location="cpu", weights_only=True)
        assert saved["epoch"] == 0  # the last epoch done, counted from 0
    before = json.loads((run / "results.json").read_text())

    # resumed: trained on to a second epoch in each fold
    assert main.cli([*ck.dirs, "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    for k in (0, 1):
        epochs = [r.split(",")[0] for r in (run / f"fold{k}" / "metrics.csv").read_text().splitlines()[1:]]
        assert epochs == ["1", "2"]
    after = json.loads((run / "results.json").read_text())
    assert after["macro"] != before["macro"]  # the results are the two-epoch models'

    # evaluated: each fold's checkpoint on its own test sequences gives the run's figures again
    assert main.cli([*ck.dirs, "-e", "--resume", str(run), "--quiet"]) == 0
    scored = json.loads((run / "evaluate" / "results.json").read_text())
    assert abs(scored["macro"]["f1"] - after["macro"]["f1"]) < 1e-6

    # predicted: a peak frame and its landmark file, through the run's fold models (a --geometry run)
    peak = max(p for p in (ck.images / "S005").rglob("*.png") if not p.name.startswith("._"))
    landmarks = tmp_path / "landmarks"
    landmarks.mkdir()
    name = peak.stem + detect.LANDMARK_SUFFIX
    shutil.copy(next(ck.landmarks.rglob(name)), landmarks / name)
    out = tmp_path / "p.csv"
    assert predict.cli([str(run), str(peak), "--landmarks", str(landmarks), "--out", str(out), "--quiet"]) == 0
    with open(out, newline="") as f:
        [row] = list(csv.DictReader(f))
    assert row["status"] == "ok"
    probs = [float(v) for k, v in row.items() if k.startswith("prob_AU")]
    assert len(probs) == len(after["aus"]) and all(0.0 < p < 1.0 for p in probs)
