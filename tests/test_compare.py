"""compare.py: the Experiments table from run folders, on fake runs whose results.json comes from
metrics.compute_metrics on small hand-made predictions (no training)."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

import compare
from scoring import metrics
import utils

# 8 sequences x 4 AUs (1, 2, 4, 12): the labels every fake run is scored on
TARGETS = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 1],
                    [1, 1, 0, 1], [0, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0]])
AUS = [1, 2, 4, 12]
SETTINGS = dict(model="res18", aus=None, min_count=None, crop="square", margin=0.1, image_size=64, norm="weights",
                augment=False, no_pretrained=True, freeze_backbone=False, epochs=18, step=6, gamma=0.5,
                start_epoch=0, batch_size=16, lr=0.01, momentum=0.9, wd=0.0001, pos_weight=False, threshold=0.5,
                kfold=5, split="subject", noise=0, amp=False, skip_bad=False, final=False)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root: Path, name: str, noise: int, scored: list[int] = AUS, **settings) -> Path:
    """A finished run folder: args.json as main.py writes it (`settings` over the defaults), results.json
    from noisy predictions of the AUs `scored` (`noise` seeds the noise, so runs differ in which AU
    they do best)."""
    args = {**SETTINGS, **settings}
    targets = TARGETS[:, [AUS.index(a) for a in scored]]
    jitter = np.random.default_rng(noise).uniform(-0.45, 0.45, targets.shape)
    probs = np.clip(0.25 + 0.5 * targets + jitter, 0.0, 1.0)
    scores = metrics.compute_metrics(targets, probs, scored, args["threshold"])
    split_words = "subject-independent folds" if args["split"] == "subject" else "folds over sequences"
    results = {"model": args["model"], "aus": scored, "split": args["split"], "kfold": args["kfold"],
               "protocol": f"{args['kfold']}-fold cross-validation, {split_words}, pooled out-of-fold predictions",
               "pretrained": not args["no_pretrained"], "freeze_backbone": args["freeze_backbone"],
               "epochs": args["epochs"], "image_size": args["image_size"], "crop": args["crop"],
               "sequences": len(targets), **scores}
    run = root / name
    run.mkdir(parents=True)
    utils.write_json(run / "args.json", {**args, "data_dir": str(root / f"ck-{name}" / "images"),
                                         "label_dir": str(root / f"ck-{name}" / "facs"),
                                         "landmark_dir": str(root / f"ck-{name}" / "lmk"),
                                         "command": f"main.py --output-dir {run}"})
    utils.write_json(run / "results.json", results)
    return run


def run_compare(capsys, *argv: str | Path) -> tuple[int, str, list[str]]:
    """compare.cli on `argv`: (exit code, stdout, the lines on stderr)."""
    code = compare.cli([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def table_rows(text: str) -> list[list[str]]:
    """The cells of a printed or written Markdown table, header first, without the rule line."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|-")]
    return rows


def warnings_of(lines: list[str]) -> list[str]:
    return [line.split("warning: ", 1)[1] for line in lines if "warning: " in line]


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, Path]:
    return (make_run(tmp_path / "runs", "a", noise=1, lr=0.001),
            make_run(tmp_path / "runs", "b", noise=2, lr=0.01, augment=True))


def test_rows_are_named_by_the_flags_that_differ(tmp_path, capsys, two_runs):
    a, b = two_runs  # they also differ in data paths and command, which must not name a row
    code, out, err = run_compare(capsys, a, b, "--out", tmp_path / "cmp")
    assert code == 0
    rows = table_rows(out)
    assert rows[0] == ["Run", "AU1", "AU2", "AU4", "AU12", "Avg"]
    assert [row[0] for row in rows[1:]] == ["res18 (--lr 0.001)", "res18 (--lr 0.01, --augment)"]
    assert warnings_of(err) == []  # same protocol: nothing to warn about
    assert "**" not in out  # bold is for the Markdown file, not the terminal


def test_runs_with_the_same_settings_are_told_apart_by_folder(tmp_path, capsys):
    a = make_run(tmp_path, "a", noise=1)
    b = make_run(tmp_path, "b", noise=2)
    code, out, _ = run_compare(capsys, a, b, "--out", tmp_path / "cmp")
    assert code == 0
    assert [row[0] for row in table_rows(out)[1:]] == [f"res18 [{a}]", f"res18 [{b}]"]


def test_markdown_bolds_the_best_value_of_each_column(tmp_path, capsys):
    runs = [make_run(tmp_path, f"r{seed}", noise=seed, seed=seed) for seed in (1, 2, 3)]
    out_dir = tmp_path / "cmp"
    assert run_compare(capsys, *runs, "--out", out_dir)[0] == 0
    rows = table_rows((out_dir / "compare.md").read_text())
    body = rows[1:]
    winners = set()
    for c in range(1, len(rows[0])):
        shown = [float(row[c].strip("*")) for row in body]
        for r, row in enumerate(body):
            assert row[c].startswith("**") == (shown[r] == max(shown)), (rows[0][c], row)
            if shown[r] == max(shown):
                winners.add(r)
    assert len(winners) > 1  # the fake runs win different columns, so the check above can fail


def test_csv_holds_the_json_values_and_empty_for_null(tmp_path, capsys, two_runs):
    a, b = two_runs
    # AU4 has no positive sequence in this run: its F1 is null, n/a in the table, empty in the CSV
    targets = TARGETS.copy()
    targets[:, 2] = 0
    results = json.loads((b / "results.json").read_text())
    results.update(metrics.compute_metrics(targets, np.clip(0.3 + 0.4 * targets, 0, 1), AUS, 0.5))
    utils.write_json(b / "results.json", results)
    out_dir = tmp_path / "cmp"
    code, out, _ = run_compare(capsys, a, b, "--out", out_dir)
    assert code == 0
    rows = read_csv(out_dir / "compare.csv")
    assert [row["folder"] for row in rows] == [str(a), str(b)]
    for row, run in zip(rows, (a, b)):
        saved = json.loads((run / "results.json").read_text())
        assert row["metric"] == "f1"
        for au in AUS:
            expected = saved["per_au"][f"AU{au}"]["f1"]
            assert row[f"AU{au}"] == ("" if expected is None else repr(expected))
            if expected is not None:
                assert float(row[f"AU{au}"]) == expected
        assert float(row["Avg"]) == saved["macro"]["f1"]
    assert rows[1]["AU4"] == ""
    assert table_rows(out)[2][3] == "n/a"


def test_png_is_written(tmp_path, capsys, two_runs):
    out_dir = tmp_path / "cmp"
    assert run_compare(capsys, *two_runs, "--out", out_dir)[0] == 0
    assert (out_dir / "compare.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in out_dir.iterdir()) == ["compare.csv", "compare.md", "compare.png"]


def test_metric_auc_shows_auc(tmp_path, capsys, two_runs):
    a, b = two_runs
    out_dir = tmp_path / "cmp"
    code, out, _ = run_compare(capsys, a, b, "--metric", "auc", "--out", out_dir)
    assert code == 0
    assert "ROC AUC" in out.splitlines()[0]
    saved = json.loads((a / "results.json").read_text())
    first = table_rows(out)[1]
    assert first[1:] == [f"{saved['per_au'][f'AU{au}']['auc']:.2f}" for au in AUS] + [f"{saved['macro']['auc']:.2f}"]
    assert saved["per_au"]["AU1"]["auc"] != saved["per_au"]["AU1"]["f1"]  # otherwise the test proves nothing
    assert float(read_csv(out_dir / "compare.csv")[0]["AU1"]) == saved["per_au"]["AU1"]["auc"]


def test_protocol_differences_are_one_warning_each(tmp_path, capsys):
    a = make_run(tmp_path, "a", noise=1)
    b = make_run(tmp_path, "b", noise=2, kfold=10, split="sequence", threshold=0.3)
    code, out, err = run_compare(capsys, a, b, "--out", tmp_path / "cmp")
    assert code == 0
    assert len(table_rows(out)) == 3  # still compared
    assert warnings_of(err) == [
        f"{a} uses 5-fold subject-independent folds, {b} 10-fold folds over sequences: "
        f"their numbers are not comparable",
        f"{a} uses the threshold 0.5, {b} 0.3: their F1, precision and recall are not comparable (AUC is)",
    ]


def test_a_protocol_text_or_data_that_differs_on_its_own_is_a_warning(tmp_path, capsys):
    a = make_run(tmp_path, "a", noise=1)
    b = make_run(tmp_path, "b", noise=2)
    results = json.loads((b / "results.json").read_text())
    results.update(protocol="5-fold cross-validation, subject-independent folds, mean of the folds", sequences=288)
    utils.write_json(b / "results.json", results)
    code, _, err = run_compare(capsys, a, b, "--out", tmp_path / "cmp")
    assert code == 0
    assert warnings_of(err) == [
        f'{a} uses the protocol "5-fold cross-validation, subject-independent folds, pooled out-of-fold '
        f'predictions", {b} "5-fold cross-validation, subject-independent folds, mean of the folds": '
        f"their numbers are not comparable",
        f"{a} scores 8 sequences, {b} 288 sequences: they were not evaluated on the same data, so their "
        f"numbers are not comparable",
    ]


def test_differing_au_lists_give_the_union_of_columns(tmp_path, capsys):
    a = make_run(tmp_path, "a", noise=1)
    b = make_run(tmp_path, "b", noise=2, scored=[1, 12], aus="1,12")
    out_dir = tmp_path / "cmp"
    code, out, err = run_compare(capsys, a, b, "--out", out_dir)
    assert code == 0
    rows = table_rows(out)
    assert rows[0] == ["Run", "AU1", "AU2", "AU4", "AU12", "Avg"]
    assert rows[2][2:4] == ["n/a", "n/a"] and rows[2][1] != "n/a" and rows[2][4] != "n/a"
    assert read_csv(out_dir / "compare.csv")[1]["AU2"] == ""
    assert any(w.startswith(f"{a} scores AUs 1,2,4,12, {b} AUs 1,12: ") for w in warnings_of(err))


def test_bad_folders_are_one_line_each_and_the_rest_is_shown(tmp_path, capsys, two_runs):
    a, b = two_runs
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    unfinished = tmp_path / "unfinished"
    (unfinished / "fold0").mkdir(parents=True)
    (unfinished / "fold1").mkdir()
    (unfinished / "fold2").mkdir()  # started, no predictions yet
    utils.write_json(unfinished / "args.json", {**SETTINGS, "kfold": 5})
    for k in (0, 1):
        (unfinished / f"fold{k}" / "predictions.csv").write_text("sequence,subject,fold\n")
    broken = make_run(tmp_path, "broken", noise=3)
    (broken / "results.json").write_text('{"model": "res18", "aus": [1, 2], "per_au"')
    code, out, err = run_compare(capsys, empty, a, unfinished, broken, b, "--out", tmp_path / "cmp")
    assert code == 0
    assert [row[0] for row in table_rows(out)[1:]] == ["res18 (--lr 0.001)", "res18 (--lr 0.01, --augment)"]
    warned = warnings_of(err)
    assert len(warned) == 3
    assert str(empty) in warned[0] and "not a run folder" in warned[0]
    assert str(unfinished) in warned[1] and "2 of 5 folds" in warned[1] and "--resume" in warned[1]
    assert str(broken / "results.json") in warned[2]


def test_a_results_file_holding_nan_is_refused(tmp_path, capsys, two_runs):
    a, b = two_runs
    text = (b / "results.json").read_text()
    spoiled = re.sub(r'"auc": [0-9.]+', '"auc": NaN', text, count=1)
    assert spoiled != text
    (b / "results.json").write_text(spoiled)
    code, out, err = run_compare(capsys, a, b, "--out", tmp_path / "cmp")
    assert code == 0 and len(table_rows(out)) == 2
    assert len(warnings_of(err)) == 1 and "malformed" in warnings_of(err)[0] and str(b) in warnings_of(err)[0]


def test_no_usable_run_is_one_error_line_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out_dir = tmp_path / "cmp"
    code, out, err = run_compare(capsys, empty, tmp_path / "missing", "--out", out_dir)
    assert code == 2
    assert out == ""
    assert len(err) == 1 and err[0].startswith("error: ") and str(empty) in err[0]
    assert not out_dir.exists()


def test_default_out_is_the_comparison_folder(tmp_path, capsys, two_runs, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert run_compare(capsys, *two_runs)[0] == 0
    assert [p.name for p in work.iterdir()] == ["comparison"]  # nothing else lands in the working directory
    help_text = " ".join(compare.get_args_parser().format_help().split())
    assert "(default: comparison, in the current directory)" in help_text


# ----------------------------------------------------------------------------- paired differences (issue 18)


def rescored_copy(run: Path, to: Path, change) -> Path:
    """A copy of a finished run whose pooled predictions are `change(targets, probs)`, rescored:
    results.json as the run would have written it from those predictions."""
    to.mkdir(parents=True)
    for name in ("args.json", "results.json"):
        (to / name).write_bytes((run / name).read_bytes())
    ids, subjects, folds, aus, targets, probs = metrics.read_predictions(run / "predictions.csv")
    probs = change(targets, probs)
    metrics.write_predictions(to / "predictions.csv", ids, subjects, aus, targets, probs, fold=folds)
    results = json.loads((run / "results.json").read_text())
    utils.write_json(to / "results.json", {**results, **metrics.compute_metrics(targets, probs, aus)})
    return to


def differences(out: str) -> dict[str, list[str]]:
    """Run name -> its cells in the ΔF1 and ΔAUC columns of the printed table."""
    rows = table_rows(out)
    at = [rows[0].index("Δ F1"), rows[0].index("Δ ROC AUC")]
    return {row[0]: [row[c] for c in at] for row in rows[1:]}


def test_a_real_difference_is_marked_and_an_identical_copy_is_not(fast_run, tmp_path, capsys):
    perfect = rescored_copy(fast_run, tmp_path / "perfect", lambda t, p: 0.05 + 0.9 * t)
    rng = np.random.default_rng(0)
    same = rescored_copy(fast_run, tmp_path / "same", lambda t, p: np.clip(p + rng.uniform(-1e-6, 1e-6, p.shape), 0, 1))
    code, out, err = run_compare(capsys, fast_run, same, perfect, "--out", tmp_path / "cmp")
    assert code == 0
    cells = list(differences(out).values())
    assert cells[0] == ["baseline", "baseline"]
    assert not any(c.endswith("*") for c in cells[1]), cells[1]  # the copy: no difference
    assert all(c.endswith("*") and c.startswith("+") for c in cells[2]), cells[2]  # perfect predictions: real
    assert "paired percentile bootstrap interval over subjects (2000 resamples of 8 subjects" in out
    rows = read_csv(tmp_path / "cmp" / "compare.csv")
    base_f1 = json.loads((fast_run / "results.json").read_text())["macro"]["f1"]
    assert float(rows[2]["diff_f1"]) == pytest.approx(1.0 - base_f1)
    assert 0 < float(rows[2]["diff_f1_low"]) <= float(rows[2]["diff_f1_high"])
    # the same seed, the same intervals
    assert run_compare(capsys, fast_run, same, perfect, "--out", tmp_path / "cmp2")[1] == out


def test_baseline_picks_the_run_the_others_are_compared_with(fast_run, tmp_path, capsys):
    perfect = rescored_copy(fast_run, tmp_path / "perfect", lambda t, p: 0.05 + 0.9 * t)
    code, out, _ = run_compare(capsys, fast_run, perfect, "--baseline", perfect, "--out", tmp_path / "cmp")
    assert code == 0
    cells = list(differences(out).values())
    assert cells[1] == ["baseline", "baseline"] and all(c.startswith("-") and c.endswith("*") for c in cells[0])
    assert f"macro difference from {perfect}" in out


def test_runs_on_other_sequences_get_a_warning_and_no_difference(fast_run, tmp_path, capsys):
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for name in ("args.json", "results.json"):
        (fewer / name).write_bytes((fast_run / name).read_bytes())
    ids, subjects, folds, aus, targets, probs = metrics.read_predictions(fast_run / "predictions.csv")
    metrics.write_predictions(fewer / "predictions.csv", ids[1:], subjects[1:], aus, targets[1:], probs[1:],
                              fold=folds[1:])
    code, out, err = run_compare(capsys, fast_run, fewer, "--out", tmp_path / "cmp")
    assert code == 0
    warned = [w for w in warnings_of(err) if "other sequences" in w]
    assert len(warned) == 1 and str(fewer) in warned[0] and "not paired" in warned[0]
    assert "Δ" not in out  # no run is paired: no difference column at all
