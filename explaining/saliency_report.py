"""Where a finished run's models look, per AU, in the face's own frame: explain.py's work.

Each fold's model is asked only about its own test faces (faces it never saw in training). Every
face's map (explaining/saliency.py) is upsampled to its crop, warped onto the run's mean landmark shape
(face_regions.Warp), and divided by its sum, so each face weighs the same; the maps are then
averaged over the faces that code the AU and over those that do not. Each AU's FACS region
(face_regions.REGIONS) gets the lift of the AU's mean map: its share of the map's mass on the
face, over its share of the face's area, with a 95% interval from the subject bootstrap the
results use (scoring/intervals.py: resample subjects, recompute the mean map's lift). The same is done
for every AU's map against every AU's region (the matrix).

Written to RUN/explain/ (or --out): regions.json, regions.csv, the printed table, AU<n>.png per AU
and saliency.png; with --geometry (and --model landmarks), landmarks.png and landmarks.csv; and
faces.csv, the faces explained and the fold whose model explained each.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import dataset
from explaining import face_regions, saliency
import models
import preprocess
from scoring import intervals, seeds_folder
from training import checkpoints, engine, settings
import utils
from utils import UserError

log = logging.getLogger(utils.LOGGER_NAME)

LIFT_TEXT = ("lift = (share of the mean map's mass on the face that lies in the region) / (the region's share of "
             "the face's area); the face is the convex hull of the 68 mean landmarks and of the brows moved "
             f"{face_regions.FOREHEAD} inter-ocular distances up (the forehead); 1: the map is no denser in the "
             "region than on the rest of the face")
NORMALISATION = ("each face's map (ReLU'd Grad-CAM or positive integrated gradients, upsampled to the crop) is "
                 "warped onto the mean landmark shape and divided by its sum before averaging, so every face "
                 "weighs the same")


# ----------------------------------------------------------------------------- the run


def run_args(run_dir: Path) -> argparse.Namespace:
    """The run's settings from its args.json, as engine.load_data reads them (peaks only)."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder: give a run folder main.py wrote")
    if seeds_folder.is_seeds_run(run_dir):
        raise UserError(f"{run_dir} is a --seeds run: explain one seed's run, e.g. python explain.py "
                        f"{run_dir / 'seed0'}")
    source = run_dir / "args.json"
    if not source.is_file():
        raise UserError(f"{run_dir} is not a run folder (no args.json): give the folder main.py created")
    saved = settings.read_run_settings(source)
    for key in ("data_dir", "label_dir", "landmark_dir"):
        if not saved.get(key):
            raise UserError(f"{source} has no {key}: it was not written by main.py; retrain the run")
    args = argparse.Namespace(**{**settings.defaults(), **saved})
    args.cache_dir, args.no_cache, args.workers = str(dataset.default_cache_dir()), False, 0
    return args


def fold_checkpoints(run_dir: Path, kfold: int, fold: int | None) -> list[Path]:
    """The fold checkpoints to explain (--fold: that one); a run without any is refused."""
    if fold is not None:
        if not 0 <= fold < kfold:
            raise UserError(f"--fold {fold}: {run_dir} has folds 0 to {kfold - 1}")
        path = run_dir / f"fold{fold}" / checkpoints.CHECKPOINT
        if not path.is_file():
            raise UserError(f"--fold {fold}: {path} does not exist: train that fold first")
        return [path]
    paths = [run_dir / f"fold{k}" / checkpoints.CHECKPOINT for k in range(kfold)]
    found = [p for p in paths if p.is_file()]
    if not found:
        raise UserError(f"{run_dir} holds no fold checkpoints (fold<k>/{checkpoints.CHECKPOINT}): train it first")
    if len(found) < kfold:
        log.warning("%s has %d of its %d fold checkpoints: only their test faces are explained", run_dir,
                    len(found), kfold)
    return found


def chosen_aus(text: str | None, run_aus: list[int]) -> list[int]:
    if text is None:
        return list(run_aus)
    aus = dataset.parse_au_list(text)
    missing = [a for a in aus if a not in run_aus]
    if missing:
        raise UserError(f"--aus {text}: the run does not recognise {', '.join(f'AU{a}' for a in missing)}; choose among "
                        f"{','.join(str(a) for a in run_aus)}")
    return aus


def frame_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:  # reads the header only
        return im.size


# ----------------------------------------------------------------------------- accumulating maps


@dataclass
class Tally:
    """What the faces leave behind: per face the masses of each AU map in each region and on the
    face, the sums of the maps (coding / not coding each AU), the sum of the warped faces; with
    the landmark attribution, per face per AU the share of each landmark."""

    masses: list  # (n, A, R + 1) per batch
    with_sum: torch.Tensor  # (A, S, S)
    without_sum: torch.Tensor
    face_sum: torch.Tensor  # (S, S)
    landmarks: list  # (n, A, 68) per batch
    empty: int = 0  # face-AU maps with no positive evidence anywhere


def explain(args: argparse.Namespace) -> dict:
    """explain.py: maps, lifts and pictures of the run `args.run_dir` -> the regions.json record."""
    run_dir = Path(args.run_dir)
    run = run_args(run_dir)
    out = Path(args.out) if args.out else run_dir / "explain"
    device = engine.resolve_device(args.device)
    paths = fold_checkpoints(run_dir, run.kfold, args.fold)
    first = checkpoints.load_checkpoint(paths[0])
    run_aus = [int(a) for a in first["aus"]]
    aus = chosen_aus(args.aus, run_aus)
    columns = [run_aus.index(a) for a in aus]
    run.aus = ",".join(str(a) for a in run_aus)
    run.min_count = None
    data, _ = engine.load_data(run, training=False)
    index = {seq_id: i for i, seq_id in enumerate(data.ids)}
    folds = []
    for path in paths:
        ckpt = checkpoints.load_fold_checkpoint(path, run, run_aus, None, None)
        missing = [s for s in ckpt["test_ids"] if s not in index]
        if missing:
            raise UserError(f"{path} was tested on {missing[0]}, which is not in {run.data_dir}: the data changed "
                            f"since the run; point the run at the same CK+ copy")
        folds.append((path, ckpt, np.array([index[s] for s in ckpt["test_ids"]], dtype=np.int64)))
    rows = np.concatenate([idx for *_, idx in folds])
    fold_of = np.concatenate([np.full(len(idx), ckpt["fold"]) for _, ckpt, idx in folds])
    labels = data.labels[rows][:, columns].numpy()
    subjects = [data.subjects[i] for i in rows]
    out.mkdir(parents=True, exist_ok=True)
    utils.write_csv(out / "faces.csv", ["id", "subject", "fold", *(utils.au_name(a) for a in aus)],
                    [[data.ids[i], data.subjects[i], int(k), *map(int, labels[n])]
                     for n, (i, k) in enumerate(zip(rows, fold_of))])

    images = run.model != models.LANDMARKS
    size = run.image_size
    points = None
    if images:
        points = np.stack([preprocess.crop_points(data.records[i].landmarks, frame_size(data.records[i].image_path),
                                                  size, run.crop, run.margin, run.crop_fill) for i in rows])
    inputs = engine.make_inputs(data, run, device)
    target = points.mean(0) if images else None
    warp = face_regions.Warp(target, size) if images else None
    masks = face_regions.region_masks(target, aus, size) if images else None
    matrix = masks.matrix().to(device) if images else None
    tally = Tally([], torch.zeros(len(aus), size, size), torch.zeros(len(aus), size, size), torch.zeros(size, size), [])

    from tqdm import tqdm

    method = None
    offset = 0
    with tqdm(total=len(rows), desc="faces", unit="face", leave=False,
              disable=args.quiet or not sys.stderr.isatty()) as bar:
        for path, ckpt, idx in folds:
            model = engine.place(checkpoints.build_trained_model(ckpt, path), device, inputs.channels_last)
            fold_method = saliency.choose_method(model, size)
            if method is None:
                method = fold_method
                if method is None:
                    log.info("--model landmarks sees no image: there is nothing to map; the landmark attribution "
                             "is drawn in %s instead", out / "landmarks.png")
                else:
                    log.info("maps: %s (%s at %d px)", method.describe(), run.model, size)
            for chunk in np.array_split(idx, max(1, -(-len(idx) // args.batch_size))):
                n = len(chunk)
                x, shape = inputs.batch(torch.from_numpy(chunk), device, None, train=False)
                if model.geometry:
                    tally.landmarks.append(saliency.normalise_per_face(
                        saliency.landmark_attribution(model, x, shape)[:, columns, :, None])[..., 0].cpu())
                if method is not None:
                    where = points[offset:offset + n]
                    maps = saliency.au_maps(model, method, x, shape if model.geometry else None, columns)
                    warped = saliency.normalise_per_face(warp(maps, where))
                    tally.empty += int((warped.flatten(2).sum(-1) == 0).sum())
                    tally.masses.append((warped.flatten(2) @ matrix).cpu())
                    y = torch.from_numpy(labels[offset:offset + n]).to(warped)
                    tally.with_sum += torch.einsum("na,nahw->ahw", y, warped).cpu()
                    tally.without_sum += torch.einsum("na,nahw->ahw", 1 - y, warped).cpu()
                    crops = data.images[torch.from_numpy(chunk)].float().to(device)
                    tally.face_sum += warp(crops, where).sum(0)[0].cpu()
                offset += n
                bar.update(n)
            del model

    resampling = intervals.draw(subjects, run.bootstrap, run.seed) if run.bootstrap else None
    record = {"run": str(run_dir), "model": run.model, "image_size": size, "faces": int(len(rows)),
              "subjects": len(set(subjects)), "folds": [int(ckpt["fold"]) for _, ckpt, _ in folds],
              "aus": [utils.au_name(a) for a in aus],
              "faces_file": "faces.csv: each face explained and the fold whose model (which never saw it) explained it"}
    if method is not None:
        record["method"] = method.record()
        record["normalisation"] = NORMALISATION
        record["lift_definition"] = LIFT_TEXT
        record.update(lift_record(np.concatenate(tally.masses), labels, aus, masks, resampling))
        record["empty_maps"] = tally.empty
        write_regions(out, record)
        from explaining import saliency_figures

        mean_face = (tally.face_sum / len(rows)).numpy()
        counts = labels.sum(0)
        with_maps = (tally.with_sum / torch.from_numpy(np.maximum(counts, 1))[:, None, None]).numpy()
        without_maps = (tally.without_sum / torch.from_numpy(np.maximum(len(rows) - counts, 1))[:, None, None]).numpy()
        saliency_figures.draw_all(out, aus, mean_face, target, with_maps, without_maps, counts, record)
    if tally.landmarks:
        shares = torch.cat(tally.landmarks).numpy()  # (N, A, 68), each face-AU row sums to 1
        record["landmarks"] = landmark_record(shares, labels, aus)
        mean_points = target if images else data.geometry[rows].numpy().reshape(-1, 68, 2).mean(0)
        from explaining import saliency_figures

        saliency_figures.draw_landmarks(out / "landmarks.png", aus, mean_points,
                                        (tally.face_sum / len(rows)).numpy() if images else None, record["landmarks"])
        utils.write_csv(out / "landmarks.csv", ["au", "faces", *(f"p{i}" for i in range(68))],
                        [[name, v["faces"], *(round(s, 6) for s in v["share"])]
                         for name, v in record["landmarks"].items()])
    if resampling is not None:
        record["intervals"] = resampling.record()
    utils.write_json(out / "regions.json", record)
    if method is not None:
        print(format_table(record))
    print(f"\nexplanations written to {out}")
    return record


# ----------------------------------------------------------------------------- lifts


def lift_record(masses: np.ndarray, labels: np.ndarray, aus: list[int], masks: face_regions.RegionMasks,
                resampling: intervals.Resampling | None) -> dict:
    """Per AU the lift of its mean map (faces coding it) in its region, with its interval over
    subjects, and the lift of its map over the faces that do not code it; and the matrix of every
    AU's map (faces coding it) against every region."""
    region_col = {a: r for r, a in enumerate(masks.aus)}
    share = masks.area_share
    weights = resampling.weights() if resampling is not None else None
    per_au, matrix = {}, []
    for j, au in enumerate(aus):
        pos, neg = labels[:, j], 1 - labels[:, j]
        face = masses[:, j, -1]
        on_face = float((pos * face).sum() / pos.sum()) if pos.sum() else None
        row = [float(face_regions.lift((pos * masses[:, j, r]).sum(), (pos * face).sum(), share[r]))
               for r in range(len(masks.aus))]
        matrix.append([None if not np.isfinite(v) else round(v, 4) for v in row])
        entry = {"region": None, "faces_with": int(pos.sum()), "faces_without": int(neg.sum()),
                 "on_face_share": None if on_face is None else round(on_face, 4)}
        r = region_col.get(au)
        if r is None:
            entry["reason"] = "no FACS region for this AU in face_regions.REGIONS"
        else:
            entry["region"] = face_regions.region_of(au).what
            entry["area_share"] = round(float(share[r]), 4)
            value = row[r]
            entry["lift"] = None if not np.isfinite(value) else round(value, 4)
            without = face_regions.lift((neg * masses[:, j, r]).sum(), (neg * face).sum(), share[r])
            entry["lift_without"] = None if not np.isfinite(without) else round(float(without), 4)
            entry["ci"], entry["ci_reason"] = None, None
            if entry["lift"] is None:
                entry["ci_reason"] = "no test face codes the AU" if not pos.sum() else \
                    "the AU's maps hold no positive evidence on the faces coding it"
            elif weights is not None:
                values = face_regions.lift(weights @ (pos * masses[:, j, r]), weights @ (pos * face), share[r])
                ci, why = intervals.percentile_interval(values, "no face coding the AU")
                entry["ci"], entry["ci_reason"] = (None if ci is None else [round(v, 4) for v in ci]), why
        per_au[utils.au_name(au)] = entry
    names = [utils.au_name(a) for a in aus]
    regions = [utils.au_name(a) for a in masks.aus]
    for au_name, entry in per_au.items():  # the best other AU's map in this AU's region
        if entry.get("lift") is None or au_name not in regions:
            continue
        r = regions.index(au_name)
        rivals = [(matrix[i][r], names[i]) for i in range(len(names)) if names[i] != au_name and matrix[i][r] is not None]
        if rivals:
            value, who = max(rivals)
            entry["best_other_map"] = {"au": who, "lift": value}
    return {"per_au": per_au, "matrix": {"maps": names, "regions": regions, "lift": matrix,
                                         "text": "row: an AU's mean map over the faces coding it; column: an AU's "
                                                 "region; cell: the lift"}}


def landmark_record(shares: np.ndarray, labels: np.ndarray, aus: list[int]) -> dict:
    """Per AU, each landmark's mean share of the attribution over the faces coding the AU."""
    out = {}
    for j, au in enumerate(aus):
        pos = labels[:, j] > 0
        mean = shares[pos, j].mean(0) if pos.any() else np.zeros(shares.shape[-1])
        top = np.argsort(-mean)[:5]
        out[utils.au_name(au)] = {"faces": int(pos.sum()), "share": [float(v) for v in mean],
                                  "top": [int(i) for i in top]}
    return out


# ----------------------------------------------------------------------------- files and the table


def write_regions(out: Path, record: dict) -> None:
    """regions.csv: a row per AU's map: its lift in its own region with the interval, over the
    faces without it, then its lift in every AU's region (the matrix's row)."""
    regions = record["matrix"]["regions"]
    header = ["au", "region", "faces_with", "lift", "ci_low", "ci_high", "lift_without",
              *(f"in_{r}_region" for r in regions)]
    rows = []
    for i, name in enumerate(record["matrix"]["maps"]):
        e = record["per_au"][name]
        ci = e.get("ci") or [None, None]
        rows.append([name, e["region"] or "", e["faces_with"], blank(e.get("lift")), blank(ci[0]), blank(ci[1]),
                     blank(e.get("lift_without")), *(blank(v) for v in record["matrix"]["lift"][i])])
    utils.write_csv(out / "regions.csv", header, rows)


def blank(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def format_table(record: dict) -> str:
    lines = [f"Where the models look: {record['method']['text']}; {record['faces']} test faces of "
             f"{record['subjects']} subjects, folds {','.join(map(str, record['folds']))}",
             "", "| AU | region | faces | lift [95% CI] | without the AU | strongest other map there |",
             "|----|--------|-------|---------------|----------------|---------------------------|"]
    for name, e in record["per_au"].items():
        if e.get("lift") is None:
            why = e.get("reason") or e.get("ci_reason") or ""
            lines.append(f"| {name} | {e['region'] or '-'} | {e['faces_with']} | n/a ({why}) | | |")
            continue
        ci = f" [{e['ci'][0]:.2f}, {e['ci'][1]:.2f}]" if e.get("ci") else ""
        other = e.get("best_other_map")
        rival = f"{other['au']} {other['lift']:.2f}" if other else ""
        without = "" if e.get("lift_without") is None else f"{e['lift_without']:.2f}"
        lines.append(f"| {name} | {e['region']} | {e['faces_with']} | {e['lift']:.2f}{ci} | {without} | {rival} |")
    lines += ["", LIFT_TEXT + ".", record.get("intervals", {}).get("text", "no intervals (--bootstrap 0)")]
    return "\n".join(lines)
