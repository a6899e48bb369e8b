"""--draw: each photo with its faces' boxes, 68 landmarks and the AUs that are on, as a PNG; each
video annotated the same way frame by frame as an MP4, and each AU's probability over time as a
PNG plot. Drawn from a clip's results (clips.Clip); the frames are decoded again, never held."""
from __future__ import annotations

import functools
import io
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from faces import clips, detect, video
from faces.ensemble import Ensemble
from scoring import metrics
import utils


def drawing_path(folder: Path, image_path: Path, taken: set[Path], ending: str = ".png") -> Path:
    """folder/<stem><ending>, numbered when two inputs share a stem; never one of the inputs themselves."""
    out, n = folder / f"{image_path.stem}{ending}", 1
    while out.resolve() in taken:
        n += 1
        out = folder / f"{image_path.stem}-{n}{ending}"
    taken.add(out.resolve())
    return out


def au_label(probs: np.ndarray, ensemble: Ensemble) -> str:
    on = [utils.au_name(a) for a, v in zip(ensemble.aus, probs) if v > ensemble.threshold]
    return ", ".join(on) or "no AU on"


@functools.lru_cache(maxsize=64)
def label_font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # cached: a video draws the same sizes on every frame


def annotate(canvas: Image.Image, found: list[detect.Face], labels: list[str], note: str | None = None) -> None:
    """Draw each face's box, its 68 landmarks and its label (the AUs that are on) onto `canvas`,
    and `note` (why there is no face) in the corner; lines, dots and text are sized to each face,
    so small faces in big photos stay readable."""
    draw = ImageDraw.Draw(canvas)
    texts = []
    for face, label in zip(found, labels):
        x0, y0, x1, y1 = face.box
        size = max(x1 - x0, y1 - y0, 1)
        width, r = max(1, round(size / 150)), max(1.0, size / 100)
        draw.rectangle(face.box, outline=(0, 255, 0), width=width)
        for x, y in face.landmarks:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 0, 0))
        texts.append((x0, y0, size, label))
    if note is not None:
        texts.append((0, 0, max(canvas.size) / 2, note))
    for x, y, size, text in texts:
        font = label_font(max(11, round(size / 12)))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(2, round(size / 100))
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        y = y - h if y >= h else y  # above the box where it fits, else inside it
        draw.rectangle((x, y, x + w, y + h), fill=(0, 0, 0))
        draw.text((x + pad - left, y + pad - top), text, fill=(255, 255, 0), font=font)


def annotated_frames(clip: clips.Clip, ensemble: Ensemble, every: int, quiet: bool):
    """The clip's predicted frames decoded again, each annotated with its faces (in a video each
    label starts with the face's number; with --smooth the smoothed AUs) or why it has none."""
    probs = clip.smoothed if clip.smoothed is not None else clip.probs
    empty = {frame: status for frame, _, status in clip.empty}
    last = max([*clip.frame[-1:].tolist(), *(frame for frame, _, _ in clip.empty[-1:])])
    with video.open_clip(clip.path) as reader, \
            clips.clip_progress(Path(f"{clip.path.name} (drawing)"), clip.decoded, quiet or not clip.is_video) as bar:
        try:
            for index, _, image in reader.frames(every):
                bar.update(reader.decoded - bar.n)
                if index > last:
                    break  # the first decoding stopped before this frame
                low, high = np.searchsorted(clip.frame, [index, index + 1])
                found = [detect.Face(tuple(clip.boxes[i]), clip.landmarks[i]) for i in range(low, high)]
                labels = [f"{clip.face[i]}: " * clip.is_video + au_label(probs[i], ensemble) for i in range(low, high)]
                canvas = image.convert("RGB")
                annotate(canvas, found, labels, empty.get(index))
                yield canvas
        except video.VideoError:
            pass  # the rows already say where decoding stopped; what was drawn is kept


def draw_clip(clip: clips.Clip, ensemble: Ensemble, folder: Path, taken: set[Path], every: int = 1,
              smooth: int | None = None, quiet: bool = False) -> list[Path]:
    """--draw for one clip that decoded: a photo as folder/<stem>.png; a video as folder/<stem>.mp4,
    its predicted frames at the video's rate / --every so that it plays in real time, and
    folder/<stem>_aus.png, each AU's probability over time."""
    if clip.predicted == 0:  # nothing was decoded: nothing to draw
        return []
    folder.mkdir(parents=True, exist_ok=True)
    if not clip.is_video:
        buffer = io.BytesIO()
        for canvas in annotated_frames(clip, ensemble, every, quiet):
            canvas.save(buffer, format="PNG")
        if not buffer.getvalue():
            return []
        return [utils.atomic_write_bytes(drawing_path(folder, clip.path, taken), buffer.getvalue())]

    def write(file) -> None:
        writer = None
        for canvas in annotated_frames(clip, ensemble, every, quiet):
            writer = writer or video.VideoWriter(file, clip.rate / every if clip.rate else None, canvas.size)
            writer.write(canvas)
        if writer is not None:
            writer.close()

    out = drawing_path(folder, clip.path, taken, ".mp4")
    utils.write_atomically(out, write)
    written = [out]
    if len(clip.face):
        written.append(plot_clip(clip, ensemble, every, smooth, drawing_path(folder, clip.path, taken, "_aus.png")))
    return written


def with_gaps(position: np.ndarray, *series: np.ndarray) -> list[np.ndarray]:
    """NaN between predicted frames that are not neighbours, so a plotted line breaks where a face was missing."""
    cuts = np.flatnonzero(np.diff(position) > 1) + 1
    return [np.insert(np.asarray(s, dtype=np.float64), cuts, np.nan) for s in series]


def plot_clip(clip: clips.Clip, ensemble: Ensemble, every: int, smooth: int | None, out: Path,
              most_faces: int = 10) -> Path:
    """Each AU's probability over a video, one panel per AU, a line per face (the `most_faces`
    seen longest); with --smooth the raw values thin and the smoothed ones bold."""
    aus, threshold = ensemble.aus, ensemble.threshold
    timed = bool(np.isfinite(clip.time).all())
    x_all = clip.time if timed else clip.frame.astype(np.float64)
    shown = sorted(n for n, _ in Counter(clip.face.tolist()).most_common(most_faces))
    fig = metrics.new_figure(10, 0.75 * len(aus) + 1.3)
    axes = fig.subplots(len(aus), 1, sharex=True, squeeze=False)[:, 0]
    colors = [f"C{i % 10}" for i in range(len(shown))]
    for j, (ax, au) in enumerate(zip(axes, aus)):
        for number, color in zip(shown, colors):
            rows = np.flatnonzero(clip.face == number)
            position = clip.frame[rows] // every
            x, raw = with_gaps(position, x_all[rows], clip.probs[rows, j])
            label = f"face {number}" if len(shown) > 1 else None
            if clip.smoothed is not None:
                (smoothed,) = with_gaps(position, clip.smoothed[rows, j])
                ax.plot(x, raw, color=color, linewidth=0.7, alpha=0.35)
                ax.plot(x, smoothed, color=color, linewidth=1.5, label=label)
            else:
                ax.plot(x, raw, color=color, linewidth=1.2, label=label)
        ax.axhline(threshold, color="gray", linestyle="--", linewidth=0.8)
        ax.set_ylim(-0.03, 1.03)
        ax.set_yticks([0, 1])
        ax.set_ylabel(utils.au_name(au), rotation=0, ha="right", va="center")
        ax.grid(axis="x", alpha=0.3)
    if len(shown) > 1:
        axes[0].legend(loc="upper right", fontsize=7, ncol=min(len(shown), 5))
    axes[-1].set_xlabel("time (s)" if timed else "frame")
    how = f"; bold: mean over {smooth} frames" if clip.smoothed is not None else ""
    every_text = f", 1 frame in {every}" if every > 1 else ""
    fig.suptitle(f"{clip.path.name}: probability of each AU ({ensemble.description}{every_text}; "
                 f"dashed: on above {threshold:g}{how})", fontsize=10)
    fig.tight_layout()
    return metrics.save_png(fig, out)
