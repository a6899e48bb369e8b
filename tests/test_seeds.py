"""--seeds N: the whole k-fold run N times into RUN/seed{i}/, per-seed --fold jobs and resume, -e of
every seed, and the summary of each figure's spread across the seeds."""
from __future__ import annotations

import json
import statistics

import pytest

import compare
import main
from conftest import FAST


def test_seeds_2_trains_twice_and_reports_both(ck, tmp_path, capsys):
    run = tmp_path / "two-seeds"
    argv = [*ck.dirs, *FAST, "--kfold", "2", "--seeds", "2", "--seed", "5", "--bootstrap", "300"]
    # a --fold job trains that fold of every seed; the summary waits for the other fold
    assert main.cli([*argv, "--fold", "0", "--output-dir", str(run)]) == 0
    assert [p.name for p in sorted(run.glob("seed*/fold*/checkpoint.pth"))] == ["checkpoint.pth"] * 2
    assert sorted(str(p.relative_to(run)) for p in run.glob("seed*/fold*")) == ["seed0/fold0", "seed1/fold0"]
    assert not (run / "results.json").exists()
    capsys.readouterr()
    # --resume RUN finishes every seed, then the summary
    assert main.cli(["--resume", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    per_seed = [json.loads((run / f"seed{i}" / "results.json").read_text()) for i in range(2)]
    assert [json.loads((run / f"seed{i}" / "args.json").read_text())["seed"] for i in range(2)] == [5, 6]
    assert per_seed[0]["per_au"] != per_seed[1]["per_au"]  # two trainings, two sets of predictions
    summary = json.loads((run / "results.json").read_text())
    assert summary["seeds"] == [5, 6] and summary["runs"] == ["seed0", "seed1"]
    f1 = summary["macro"]["f1"]
    values = [r["macro"]["f1"] for r in per_seed]
    assert f1["values"] == values and f1["intervals"] == [r["macro"]["ci"]["f1"] for r in per_seed]
    assert f1["mean"] == pytest.approx(statistics.mean(values)) and f1["std"] == pytest.approx(statistics.stdev(values))
    assert (f1["min"], f1["max"]) == (min(values), max(values))
    assert set(summary["per_au"]) == {f"AU{a}" for a in per_seed[0]["aus"]}
    assert "over 2 seeds (5, 6)" in out and f"{f1['mean']:.3f} ± {f1['std']:.3f}" in out
    low, high = per_seed[1]["macro"]["ci"]["f1"]
    assert f"{values[1]:.3f} [{low:.3f}, {high:.3f}]" in out  # each seed's pooled interval beside the spread
    assert (run / "results.csv").read_text().splitlines()[0].startswith("AU,metric,mean,std,min,max,seed0,")
    # -e evaluates every seed's checkpoints again: the same figures, the same intervals
    assert main.cli(["-e", "--resume", str(run), "--quiet"]) == 0
    again = json.loads((run / "evaluate" / "results.json").read_text())
    assert again["per_au"] == summary["per_au"] and again["macro"] == summary["macro"]
    assert (run / "evaluate" / "seed1" / "results.json").is_file()
    capsys.readouterr()
    # the run's seeds are its own
    assert main.cli(["--resume", str(run), "--seeds", "3", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--seeds 3" in err and "--seeds 2" in err
    # compare.py takes the seeds' folders, which are paired (the same sequences), not the summary
    assert compare.cli([str(run), "--out", str(tmp_path / "cmp")]) == 2
    assert f"{run}/seed0" in capsys.readouterr().err
    assert compare.cli([str(run / "seed0"), str(run / "seed1"), "--out", str(tmp_path / "cmp")]) == 0
    assert "(--seed 6)" in capsys.readouterr().out


def test_one_seed_is_a_plain_run(fast_run):
    assert not (fast_run / "seed0").exists() and not (fast_run / "seeds.json").exists()
