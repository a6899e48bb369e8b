"""benchmarks/predict_memory.py runs predict.py on made-up photos and reports memory and speed."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

from conftest import REPO


def test_predict_memory_benchmark_reports_each_size(fast_run, ck, tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "predict_memory.py"), "--sizes", "20", "5",
                           "--photo-size", "48", "--checkpoint", str(fast_run / "fold0" / "checkpoint.pth"),
                           "--tree", str(ck.root), "--workdir", str(tmp_path / "work"), "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert [r["photos"] for r in report["results"]] == [20, 5] and report["photo_size"] == 48
    for row in report["results"]:
        assert row["faces"] == row["photos"] and row["peak_mib"] > 50 and row["faces_per_s"] > 0
        assert f"{row['photos']:>7,} photos  peak RSS {row['peak_mib']:7.1f} MiB" in proc.stdout
    assert "peak RSS from 20 to 5 photos:" in proc.stdout
    # the photos it made are real inputs: one face each, found from its landmark file
    with open(tmp_path / "work" / "predictions-20.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and {r["status"] for r in rows} == {"ok"}
    assert sorted(p.name for p in (tmp_path / "work" / "photos-5" / "photos").iterdir()) == \
           [f"photo{i:06d}.png" for i in range(5)]
