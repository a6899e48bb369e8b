"""benchmarks/recipes.py runs every row end to end at a tiny scale and reports what it promises."""
from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import REPO

TINY = ["--subjects", "3", "--epochs", "2", "--shape-epochs", "2", "--kfold", "2", "--image-size", "64", "-b", "8",
        "-j", "0"]


def test_recipes_benchmark_reports_every_row(imagenet_mobilenet, tmp_path):
    out = tmp_path / "recipes.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "recipes.py"), *TINY, "--workdir",
                           str(tmp_path / "work"), "--cache-dir", str(tmp_path / "cache"), "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == ["old", "new", "frames", "frames-tta", "geometry", "bare", "bare-frames-tta", "landmarks",
                          "shape-lr"]
    assert rows["old"]["flags"] == "--loss sum" and rows["frames-tta"]["flags"] == "--frames 3 --tta flip"
    assert rows["geometry"]["flags"] == "--geometry"
    for row in rows.values():
        assert "error" not in row, row
        assert math.isfinite(row["macro_f1"]) and math.isfinite(row["macro_auc"]) and row["wall_s"] > 0
        # two folds, two epochs each, from metrics.csv (scikit-learn's regression has no epochs)
        assert [len(fold) for fold in row["fold_losses"]] == ([] if row["name"] == "shape-lr" else [2, 2])
        assert row["loss_rose"] == [f[1] > f[0] for f in row["fold_losses"]]
        assert f"| {row['what']} |" in proc.stdout
        # every figure with its interval over subjects, around its own value (none where 3 subjects
        # leave an AU without positives in too many resamples: then the bare value)
        for key in ("f1", "auc"):
            assert key in row["macro_ci"]
            if row["macro_ci"][key] is None:
                assert f"| {row[f'macro_{key}']:.3f} |" in proc.stdout
                continue
            low, high = row["macro_ci"][key]
            assert low <= row[f"macro_{key}"] <= high
            assert f"{row[f'macro_{key}']:.3f} [{low:.3f}, {high:.3f}]" in proc.stdout
    assert any(ci is not None for row in rows.values() for ci in row["macro_ci"].values())
    assert report["sequences"] == rows["old"]["sequences"] > 0
    # the same folds, the same peak frames scored: every row predicts every sequence once
    assert len({row["sequences"] for row in rows.values()}) == 1
    # TTA changes only the scoring: that row is the --frames 3 run's checkpoints scored with -e --tta flip
    assert rows["frames-tta"]["scored_from"] == "frames" and "scored_from" not in rows["frames"]
    assert rows["frames-tta"]["fold_losses"] == rows["frames"]["fold_losses"]
    assert not list((tmp_path / "work" / "run-frames-tta").rglob("checkpoint.pth"))  # no second training
    assert "(scoring the frames run)" in proc.stdout
    assert "--weights IMAGENET1K_V1" in proc.stdout and "--pos-weight --augment" in proc.stdout
    # the bare loop: the benchmark's own, on the same sequences; 3 frames train on more images, scored
    # on the peaks with and without TTA; the verdicts against the recipe rows are printed
    assert rows["bare"]["flags"] == "" and "(its own loop)" in proc.stdout
    assert rows["bare"]["training_images"] == rows["bare"]["sequences"] < rows["bare-frames-tta"]["training_images"]
    without = rows["bare-frames-tta"]["without_tta"]
    assert math.isfinite(without["macro_f1"]) and math.isfinite(without["macro_auc"])
    assert f"the bare loop (whole frame) ({rows['bare']['macro_f1']:.3f} / {rows['bare']['macro_auc']:.3f})" \
        in proc.stdout
    assert "the bare loop + 3 frames + flip TTA (" in proc.stdout
    # the recipe against its anchor is a paired difference with its interval, not two numbers
    assert "new defaults (mean loss) minus bare loop (whole frame): macro F1 " in proc.stdout
    assert "(paired, over subjects)" in proc.stdout
    # the shape model against its anchor: scikit-learn's logistic regression per AU on the same points and folds
    assert rows["landmarks"]["flags"] == "--model landmarks --lr 0.1" and rows["shape-lr"]["flags"] == ""
    assert "shape model (--model landmarks) minus logistic regression on the shape: macro F1 " in proc.stdout
