"""Peak memory and speed of predict.py on folders of photos: flat in the number of photos.

    python benchmarks/predict_memory.py                        # 1,000 and 10,000 photos
    python benchmarks/predict_memory.py --sizes 20 --checkpoint RUN/fold0/checkpoint.pth

Makes N photos (faces from synthetic.py's CK+ tree, shrunk to --photo-size pixels) with a
CK+-style landmark file each, so no dlib is needed; trains a tiny squeezenet1_1 run with main.py
(one epoch, two folds) unless --checkpoint is given; then runs `python predict.py CHECKPOINT
photos/ --landmarks landmarks/` once per size, each in a fresh process, and prints its peak
resident memory (the RSS high-water mark, getrusage of the child) and its faces per second
(faces over the whole wall time, start-up included). Photos stream: the peak should not grow
with N beyond the list of file names.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

import ckplus  # noqa: E402
from ckplus import synthetic  # noqa: E402
import dataset  # noqa: E402
import utils  # noqa: E402

# Runs predict.py in a child of this small process and reports the child's peak RSS: each size
# gets its own parent, so one size's peak never hides in another's.
MEASURE = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t0
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
print(json.dumps({"rc": done.returncode, "wall_s": wall, "peak_kib": peak_kib, "stderr": done.stderr[-2000:]}))
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Peak memory and faces/s of predict.py for growing folders of photos.",
                                formatter_class=utils.HelpFormatter)
    p.add_argument("--sizes", metavar="N", type=int, nargs="+", default=[1000, 10000], help="photos per run")
    p.add_argument("--photo-size", type=int, metavar="PX", default=96,
                   help="longest side of each photo, in pixels (the face fills most of it)")
    p.add_argument("--checkpoint", metavar="PATH", default=None,
                   help="a run folder or checkpoint to predict with (default: train a tiny run first)")
    p.add_argument("--tree", metavar="DIR", default=None,
                   help="a synthetic CK+ copy to take the faces from (default: generate one of 4 subjects)")
    p.add_argument("-b", "--batch-size", type=int, metavar="N", default=32, help="predict.py's --batch-size")
    p.add_argument("--workdir", metavar="DIR", default=None, help="keep the photos and runs here (default: a temp folder)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the figures as JSON")
    return p


def source_faces(tree: Path, side: int) -> list[tuple[bytes, str]]:
    """Each frame of a synthetic CK+ tree shrunk to `side` px -> (PNG bytes, landmark file text), in pixels of the shrunk photo."""
    images, _, landmarks = ckplus.training_dirs(tree)
    points_of = {p.name[: -len("_landmarks.txt")]: p for p in ckplus.walk_files(landmarks)
                 if p.name.endswith("_landmarks.txt")}
    out = []
    for path in sorted(p for p in ckplus.walk_files(images) if p.suffix == ".png"):
        if path.stem not in points_of:
            continue
        with Image.open(path) as img:
            scale = side / max(img.size)
            small = img.convert("L").resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                            Image.Resampling.BILINEAR)
        points = dataset.read_landmarks(points_of[path.stem]) * scale
        buffer = io.BytesIO()
        small.save(buffer, format="PNG")
        out.append((buffer.getvalue(), "".join(f"   {x:.7e}   {y:.7e}\n" for x, y in points)))
    return out


def make_photos(folder: Path, n: int, faces: list[tuple[bytes, str]]) -> tuple[Path, Path]:
    """n photos (the faces in turn) under folder/photos, their landmark files under folder/landmarks."""
    photos, marks = folder / "photos", folder / "landmarks"
    photos.mkdir(parents=True, exist_ok=True)
    marks.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        png, text = faces[i % len(faces)]
        (photos / f"photo{i:06d}.png").write_bytes(png)
        (marks / f"photo{i:06d}_landmarks.txt").write_text(text)
    return photos, marks


def train_tiny(tree: Path, out: Path) -> Path:
    """A squeezenet1_1 run of one epoch and two folds: its fold0 checkpoint."""
    utils.run_main_py([*ckplus.training_dirs(tree), "--model", "squeezenet1_1", "--no-pretrained", "--epochs", "1",
                       "--kfold", "2", "-b", "8", "--image-size", "64", "-j", "0", "--quiet", "--output-dir", out])
    return out / "fold0" / "checkpoint.pth"


def measure(checkpoint: Path, photos: Path, marks: Path, out: Path, batch_size: int) -> dict:
    command = [sys.executable, str(REPO / "predict.py"), str(checkpoint), str(photos), "--landmarks", str(marks),
               "--out", str(out), "-b", str(batch_size), "--device", "cpu", "--quiet"]
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"predict.py failed (exit {result['rc']}):\n{result['stderr']}")
    with open(out, newline="") as f:
        result["faces"] = sum(row["status"] == "ok" for row in csv.DictReader(f))
    result["peak_mib"] = result.pop("peak_kib") / 1024
    result["faces_per_s"] = result["faces"] / result["wall_s"]
    return result


def main(args: argparse.Namespace) -> list[dict]:
    with contextlib.ExitStack() as stack:
        work = utils.work_folder(stack, args.workdir, "predict-memory-")
        tree = Path(args.tree) if args.tree else work / "ck"
        if not ckplus.training_dirs(tree)[0].is_dir():
            synthetic.generate(tree, subjects=4, seed=0, junk=False, workers=1)
        t0 = time.perf_counter()
        checkpoint = Path(args.checkpoint) if args.checkpoint else train_tiny(tree, work / "run")
        trained = time.perf_counter() - t0
        faces = source_faces(tree, args.photo_size)
        results = []
        for n in args.sizes:
            photos, marks = make_photos(work / f"photos-{n}", n, faces)
            row = {"photos": n, **measure(checkpoint, photos, marks, work / f"predictions-{n}.csv", args.batch_size)}
            row.pop("stderr", None)
            row.pop("rc", None)
            if row["faces"] != n:
                raise SystemExit(f"{n} photos gave {row['faces']} faces: each photo has one")
            results.append(row)
            print(f"{n:>7,} photos  peak RSS {row['peak_mib']:7.1f} MiB  {row['faces_per_s']:7.1f} faces/s  "
                  f"({row['wall_s']:.1f} s)", flush=True)
        print(f"(photos {args.photo_size} px, -b {args.batch_size}, on the CPU; "
              + (f"tiny run trained in {trained:.0f} s)" if not args.checkpoint else f"model {checkpoint})"))
        if len(results) > 1:
            print(f"peak RSS from {results[0]['photos']:,} to {results[-1]['photos']:,} photos: "
                  f"{results[-1]['peak_mib'] - results[0]['peak_mib']:+.1f} MiB")
        if args.json:
            utils.write_json(args.json, {"photo_size": args.photo_size, "batch_size": args.batch_size,
                                         "results": results})
        return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
