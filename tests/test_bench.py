"""benchmarks/bench.py runs end to end at a tiny scale and reports every figure it promises."""
from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import REPO

TINY = ["--sequences", "20", "--epochs", "2", "--kfold", "2", "--image-size", "64", "--recompute-epochs", "2",
        "--check-kfold", "2", "--finetune-batches", "1", "--repeats", "1", "-j", "0"]
FIGURES = {
    "index": ("cold_s", "warm_s"),
    "frozen": ("cached_s", "recompute_s", "speedup"),
    "finetune": ("loop_img_s", "compute_img_s", "checkpoint_s"),
}


def test_bench_reports_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), *TINY, "--workdir", str(tmp_path),
                           "--json", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())

    assert report["index"]["sequences"] == report["frozen"]["sequences"] == 20  # the last subject was trimmed
    assert report["index"]["workers"] == 0
    for section, keys in FIGURES.items():
        for key in keys:
            value = report[section][key]
            assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (section, key, value)
            assert key in proc.stdout, f"{key} is not in the printed table"
    # The two frozen paths agree, and the loop's overhead is a number (its sign is noise at this scale).
    assert 0 <= report["frozen"]["max_abs_diff"] <= 1e-4
    assert report["frozen"]["f1_equal"] is True
    assert math.isfinite(report["finetune"]["overhead_pct"])
    assert report["frozen"]["recompute_measured"]["epochs"] == 2
    # At this scale the check's settings are the protocol's: its runs are the measured ones, not re-run.
    assert report["frozen"]["check"]["reused_cached_run"] is True
    assert report["frozen"]["check"]["recompute_timed_in_check"] is True
    for key in ("torch", "threads", "cpu_count", "device"):
        assert report["system"][key]
    # Targets are judged only at CK+ scale; the predictions check is judged at any scale.
    assert report["targets"]["frozen.cached_s"]["met"] is None
    assert report["targets"]["frozen.max_abs_diff"]["met"] is True
    # Nothing but the reused synthetic tree and the report stays behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "ckplus-20-seed0"]


def test_disk_table_estimates_match_real_checkpoints():
    """benchmarks/disk.py (the README's disk table) computes sizes from the models' tensors; the
    files checkpoints.save_checkpoint writes are within 1% of them."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "disk.py"), "--models", "squeezenet1_1",
                           "--kfold", "3", "--measure"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split("|")[1:-1] == [" model         ", " parameters ", " finished fold ", " fold in training ",
                                         " 3-fold run ", " 3-fold run, --freeze-backbone "]
    assert lines[2].startswith("| squeezenet1_1 | 0.7 M ")
    numbers = [int(word) for word in lines[3].replace(")", " ").replace(",", " ").split() if word.isdigit()]
    finished, finished_estimate, training, training_estimate = numbers
    assert abs(finished - finished_estimate) < 0.01 * finished and abs(training - training_estimate) < 0.01 * training
    assert 1.95 < training / finished < 2.05  # momentum doubles a checkpoint while a fold trains


def test_gpu_benchmark_times_every_mode_or_says_it_needs_cuda(tmp_path, monkeypatch, capsys):
    """benchmarks/gpu.py: on a machine without CUDA it stops with one line saying so; with CUDA, a
    tiny table has a row per mode."""
    import pytest
    import torch

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu

    out = tmp_path / "gpu.json"
    args = gpu.get_args_parser().parse_args(["--models", "res18", "--batches", "1", "-b", "4", "--repeats", "1",
                                             "--no-runs", "--json", str(out)])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as stop:
            gpu.run(args)
        assert str(stop.value) == "error: benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False here)"
        assert not out.exists()
        return
    gpu.run(args)
    rows = json.loads(out.read_text())["speed"]
    assert [r["mode"] for r in rows] == ["float32", "float32 + channels_last", "amp", "amp + channels_last",
                                         "amp + channels_last + cudnn.benchmark"]
    assert all(r["train_img_s"] > 0 and r["eval_img_s"] > 0 for r in rows)
    assert "| res18 | 224 | amp + channels_last |" in capsys.readouterr().out


def test_cpu_layout_benchmark_times_both_layouts_and_an_epoch(tmp_path):
    """benchmarks/cpu_layout.py at a tiny scale: a row per backbone with both layouts' speeds and the
    layout main.py picks, and one epoch of the recipe split into its parts."""
    out = tmp_path / "layout.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu_layout.py"), "--models", "mobilenet_v2",
                           "--image-size", "32", "-b", "4", "--batches", "1", "--repeats", "1", "--subjects", "3",
                           "--workdir", str(tmp_path / "work"), "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    (row,) = report["layout"]
    for key in ("train_contiguous_img_s", "train_channels_last_img_s", "eval_contiguous_img_s",
                "eval_channels_last_img_s", "train_ratio"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["main_py_layout"] == "channels_last"
    assert "| mobilenet_v2 | 32 |" in proc.stdout
    epoch = report["epoch"]
    assert epoch["layout"] == "channels_last" and epoch["images"] > 0
    for key in ("epoch_s", "batches_s", "steps_s", "checkpoint_s", "eval_tta_s"):
        assert epoch[key] > 0, key
    assert "train_one_epoch" in proc.stdout and "scoring, --tta flip" in proc.stdout
