"""--seeds N: the whole k-fold run N times into RUN/seed{i}/, per-seed --fold jobs and resume, -e of
every seed, the summary of each figure's spread across the seeds, and their ensemble (scored in
main.py, predicting in predict.py, a row in compare.py)."""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest

import compare
from conftest import FAST, close
import main
import predict
from scoring import intervals, metrics
from training import seeds
from utils import UserError


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
    check_ensemble(run, summary, per_seed, out)
    # -e evaluates every seed's checkpoints again: the same figures, the same intervals, the same ensemble
    assert main.cli(["-e", "--resume", str(run), "--quiet"]) == 0
    again = json.loads((run / "evaluate" / "results.json").read_text())
    assert again["per_au"] == summary["per_au"] and again["macro"] == summary["macro"]
    assert again["ensemble"]["macro"] == summary["ensemble"]["macro"]
    assert (run / "evaluate" / "predictions.csv").read_text() == (run / "predictions.csv").read_text()
    assert (run / "evaluate" / "seed1" / "results.json").is_file()
    capsys.readouterr()
    # the run's seeds are its own
    assert main.cli(["--resume", str(run), "--seeds", "3", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--seeds 3" in err and "--seeds 2" in err
    check_compare(run, summary, tmp_path, capsys)
    check_predict(run, ck, tmp_path, capsys)


def mean_of_seeds(run: Path, n: int) -> tuple[list[str], list[str], list[int], np.ndarray, np.ndarray]:
    """The seeds' predictions.csv read here with csv, each sequence's probabilities averaged:
    (ids in seed 0's order, subjects, AUs, targets, mean probabilities)."""
    tables = []
    for i in range(n):
        with open(run / f"seed{i}" / "predictions.csv", newline="") as f:
            tables.append({row["sequence"]: row for row in csv.DictReader(f)})
    first = tables[0]
    aus = [int(c[len("prob_AU"):]) for c in next(iter(first.values())) if c.startswith("prob_AU")]
    ids = list(first)
    targets = np.array([[int(first[s][f"true_AU{a}"]) for a in aus] for s in ids])
    probs = np.mean([[[float(t[s][f"prob_AU{a}"]) for a in aus] for s in ids] for t in tables], axis=0)
    return ids, [first[s]["subject"] for s in ids], aus, targets, probs


def check_ensemble(run: Path, summary: dict, per_seed: list[dict], out: str) -> None:
    """The ensemble in results.json is the mean of the seeds' predictions scored once, with seed 0's
    bootstrap for its intervals, and its paired difference from seed 0."""
    ids, subjects, aus, targets, probs = mean_of_seeds(run, 2)
    ensemble = summary["ensemble"]
    expected = metrics.compute_metrics(targets, probs, aus, per_seed[0]["threshold"])
    assert ensemble["seeds"] == [5, 6] and ensemble["aus"] == aus and ensemble["sequences"] == len(ids)
    for name, scores in [*expected["per_au"].items(), ("macro", expected["macro"])]:
        got = ensemble["macro"] if name == "macro" else ensemble["per_au"][name]
        assert {k: got[k] for k in metrics.METRIC_KEYS} == pytest.approx({k: scores[k] for k in metrics.METRIC_KEYS})
    assert ensemble["macro"]["f1"] not in (per_seed[0]["macro"]["f1"], per_seed[1]["macro"]["f1"])
    # the same 300 resamples of the subjects as seed 0's (--bootstrap 300, --seed 5)
    assert ensemble["bootstrap"] == per_seed[0]["bootstrap"]
    resampling = intervals.draw(subjects, 300, 5)
    with_ci = intervals.add_intervals(expected, resampling, targets, probs, aus, per_seed[0]["threshold"])
    assert ensemble["macro"]["ci"]["auc"] == pytest.approx(with_ci["macro"]["ci"]["auc"])
    low, high = ensemble["macro"]["ci"]["f1"]
    assert low <= ensemble["macro"]["f1"] <= high
    diff = ensemble["difference"]
    assert diff["from"] == "seed0" and diff["seed"] == 5
    for key in ("f1", "auc"):
        assert diff[key]["difference"] == pytest.approx(ensemble["macro"][key] - per_seed[0]["macro"][key])
        assert diff[key]["interval"][0] <= diff[key]["difference"] <= diff[key]["interval"][1]
    # the run folder reads like a run's: the ensemble's pooled predictions, its table
    pooled, file_aus = metrics.FoldPredictions.read(run / "predictions.csv")
    assert pooled.ids == ids and file_aus == aus
    np.testing.assert_allclose(pooled.probs, probs, rtol=0, atol=1e-12)
    assert (run / "f1.png").is_file() and (run / "confusion.png").is_file()
    assert "The ensemble: each sequence's mean probability over the 2 seeds'" in out
    assert f"macro F1 {diff['f1']['difference']:+.3f} [{diff['f1']['interval'][0]:+.3f}, " in out
    macro_row = next(r for r in csv.DictReader((run / "results.csv").open()) if r["AU"] == "macro" and r["metric"] == "f1")
    assert float(macro_row["ensemble"]) == ensemble["macro"]["f1"]
    assert float(macro_row["ensemble_minus_seed0"]) == diff["f1"]["difference"]


def check_compare(run: Path, summary: dict, tmp_path: Path, capsys) -> None:
    """compare.py takes a --seeds run as one row, its ensemble, paired with the other runs; with
    seed 0's resamples its difference from seed 0 is the one results.json holds."""
    capsys.readouterr()
    table = compare.main(compare.get_args_parser().parse_args(
        [str(run / "seed0"), str(run), str(run / "seed1"), "--bootstrap", "300", "--seed", "5", "--quiet",
         "--out", str(tmp_path / "cmp")]))
    assert table.names == ["squeezenet1_1 (--seed 5)", "squeezenet1_1 (--seed 5) --seeds 2 (ensemble)",
                           "squeezenet1_1 (--seed 6)"]
    ensemble = summary["ensemble"]
    assert table.values[1][-1] == ensemble["macro"]["f1"]
    for key in ("f1", "auc"):
        got, want = table.differences[1][key], ensemble["difference"][key]
        assert got.difference == pytest.approx(want["difference"]) and got.interval == pytest.approx(want["interval"])
    assert "--seeds 2 (ensemble)" in capsys.readouterr().out


def peak_frames(ck) -> list[Path]:
    return sorted(max(d.glob("S*.png")) for d in ck.images.glob("S*/*") if any(d.glob("S*.png")))


def check_predict(run: Path, ck, tmp_path: Path, capsys) -> None:
    """predict.py on a --seeds run averages every seed's fold models: the mean of each seed's own."""
    frames = peak_frames(ck)[:6]
    probs = {}
    for name, folder in (("all", run), ("seed0", run / "seed0"), ("seed1", run / "seed1")):
        capsys.readouterr()
        quiet = ["--quiet"] if name != "all" else []
        assert predict.cli([str(folder), *map(str, frames), "--landmarks", str(ck.landmarks),
                            "--out", str(tmp_path / f"{name}.csv"), *quiet]) == 0
        if name == "all":
            assert "predicting with 4 models (mean of 2 seeds x 2 folds)" in capsys.readouterr().err
        with open(tmp_path / f"{name}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["file"] for r in rows] == [str(p) for p in frames]
        probs[name] = np.array([[float(v) for k, v in r.items() if k.startswith("prob_AU")] for r in rows])
    assert {r["models"] for r in csv.DictReader((tmp_path / "all.csv").open())} == {"mean of 2 seeds x 2 folds"}
    assert np.abs(probs["seed0"] - probs["seed1"]).max() > 1e-4  # two seeds, two sets of models
    np.testing.assert_allclose(probs["all"], (probs["seed0"] + probs["seed1"]) / 2, rtol=0, atol=close(1e-7))


def test_one_seed_is_a_plain_run(fast_run):
    assert not (fast_run / "seed0").exists() and not (fast_run / "seeds.json").exists()


# ----------------------------------------------------------------------------- the ensemble, without training


def predictions(ids: list[str], probs: list[list[float]], targets: list[list[int]]) -> metrics.FoldPredictions:
    return metrics.FoldPredictions(ids=ids, subjects=[i.split("_")[0] for i in ids], folds=[0] * len(ids),
                                   targets=np.array(targets, dtype=np.float32), probs=np.array(probs))


def test_the_ensemble_averages_each_sequence_whatever_the_row_order(tmp_path):
    ids = ["S1_001", "S1_002", "S2_001", "S3_001"]
    targets = [[1, 0], [0, 1], [1, 1], [0, 0]]
    seed0 = predictions(ids, [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.1, 0.3]], targets)
    order = [2, 0, 3, 1]  # seed 1 wrote its rows in another order
    seed1 = predictions([ids[i] for i in order], [[[0.7, 0.5], [0.5, 0.3], [0.4, 0.6], [0.3, 0.1]][i] for i in order],
                        [targets[i] for i in order])
    mean = seeds.mean_predictions([seed0, seed1], ["seed0", "seed1"], tmp_path)
    assert mean.ids == ids and mean.folds == [0] * 4
    np.testing.assert_allclose(mean.probs, [[0.8, 0.3], [0.35, 0.55], [0.5, 0.5], [0.2, 0.2]])
    with pytest.raises(UserError, match="seed1/predictions.csv holds 3 sequences"):
        seeds.mean_predictions([seed0, predictions(ids[:3], [[0.5, 0.5]] * 3, targets[:3])], ["seed0", "seed1"],
                               tmp_path)
    other_labels = predictions(ids, [[0.5, 0.5]] * 4, [[0, 0], *targets[1:]])
    with pytest.raises(UserError, match="other subjects or labels"):
        seeds.mean_predictions([seed0, other_labels], ["seed0", "seed1"], tmp_path)


def test_without_a_bootstrap_the_ensemble_still_gives_its_difference(tmp_path):
    ids = [f"S{s}_00{k}" for s in range(1, 5) for k in (1, 2)]
    targets = [[1, 0], [0, 1]] * 4
    rng = np.random.default_rng(0)
    parts = [predictions(ids, rng.random((8, 2)).tolist(), targets) for _ in range(2)]
    results = [{"model": "m", "aus": [1, 2], "bootstrap": None, "kfold": 2, "split": "subject",
                **metrics.compute_metrics(p.targets, p.probs, [1, 2], 0.5)} for p in parts]
    ensemble, pooled = seeds.score_ensemble(results, parts, ["seed0", "seed1"], [3, 4], tmp_path)
    assert ensemble["bootstrap"] is None and "ci" not in ensemble["macro"]
    assert ensemble["difference"]["f1"] == {"difference": pytest.approx(ensemble["macro"]["f1"] - results[0]["macro"]["f1"]),
                                            "interval": None, "reason": "no --bootstrap"}
    assert "macro F1 " in seeds.format_difference(ensemble) and "[n/a]" in seeds.format_difference(ensemble)


def test_compare_asks_an_older_seeds_run_to_be_resumed(tmp_path, capsys):
    run = tmp_path / "old-seeds"
    (run / "seed0").mkdir(parents=True)
    (run / "seeds.json").write_text(json.dumps({"seeds": 2, "seed": 0, "command": "main.py --seeds 2"}))
    (run / "seed0" / "args.json").write_text("{}")
    assert compare.cli([str(run), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unfinished --seeds run" in err and f"--resume {run}" in err
    (run / "results.json").write_text(json.dumps({"model": "m", "seeds": [0, 1], "per_au": {}, "macro": {}}))
    assert compare.cli([str(run), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no ensemble" in err and f"python main.py --resume {run}" in err
