"""Where a trained model looks: per-AU saliency maps of face crops, with captum.

- A convolutional backbone gets Grad-CAM (`grad_cam`: captum's `LayerGradCam`'s maps, batched over the
  AUs) at the deepest layer whose map
  is at least GRID_MIN x GRID_MIN at the run's image size (`choose_method` probes the model once
  with hooks): res18's last convolution is 5x5 at 160 px, too coarse to tell the brows from the
  eyes. Only positive class evidence is kept (ReLU of the CAM), and the map is upsampled
  (bilinear) to the crop's size.
- A backbone without convolutions (a vision transformer, whose only convolution is its patch
  embedding) gets integrated gradients on the input pixels (captum's `IntegratedGradients`, from
  the normalised mid-gray image), summed over the colour channels, positive part.
- A --geometry model (and --model landmarks) also gets the attribution of its 136 landmark numbers
  (integrated gradients on the landmark branch, from the training set's mean shape, the image's
  features held fixed), summed per landmark as |dx| + |dy|.

`overlay` draws a map over its face for predict.py --explain; `FaceExplainer` writes those overlays.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

import models
import utils

GRID_MIN = 10  # the coarsest map worth drawing: 10x10 cells over a face
IG_STEPS = 16  # integrated gradients' steps along the path (captum's default is 50)


@dataclass(frozen=True)
class Method:
    """How a model's maps are made: Grad-CAM at `layer` (its map is `grid`), or integrated gradients."""

    kind: str  # "Grad-CAM" or "integrated gradients"
    layer: str | None = None  # the module's dotted name inside the model
    grid: tuple[int, int] | None = None
    coarse: bool = False  # no layer reaches GRID_MIN: the finest one was taken

    def describe(self) -> str:
        if self.kind != "Grad-CAM":
            return "integrated gradients on the input pixels (the backbone has no convolutions)"
        note = f" (no layer reaches {GRID_MIN}x{GRID_MIN} at this image size: the finest was taken)" \
            if self.coarse else ""
        return f"Grad-CAM at {self.layer}, a {self.grid[0]}x{self.grid[1]} map{note}"

    def record(self) -> dict:
        return {"method": self.kind, "layer": self.layer, "grid": list(self.grid) if self.grid else None,
                "text": self.describe()}


def has_image(model: models.AUNet) -> bool:
    return not isinstance(model.backbone, models.NoImage)


def _is_patch_embedding(conv: nn.Conv2d) -> bool:
    """A convolution that only cuts the image into patches (kernel = stride), as a transformer's."""
    return conv.kernel_size == conv.stride and conv.kernel_size != (1, 1)


def choose_method(model: models.AUNet, size: int) -> Method | None:
    """Grad-CAM's layer for `model` at `size` px inputs, integrated gradients for a backbone without
    convolutions, None for a model that sees no image (--model landmarks).

    The candidates are the backbone's convolutions and the blocks that hold one, whose output is a
    (B, C, H, W) map; one forward pass of a zero image records each one's map and the order in
    which they finish. The deepest (the last to finish) with a map of at least GRID_MIN on each
    side wins; when none reaches it (a tiny input), the one with the finest map. A module called
    twice in one pass cannot be hooked unambiguously and is left out."""
    if not has_image(model):
        return None
    backbone = model.backbone
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if not any(not _is_patch_embedding(c) for c in convs):
        return Method("integrated gradients")
    seen: dict[str, list] = {}
    hooks = []
    for name, module in backbone.named_modules():
        if name and any(isinstance(m, nn.Conv2d) for m in module.modules()):
            def record(mod, inputs, output, name=name):
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
                given = tuple(inputs[0].shape[2:]) if inputs and isinstance(inputs[0], torch.Tensor) else None
                seen.setdefault(name, []).append((len(seen), shape, given))
            hooks.append(module.register_forward_hook(record))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, 3, size, size, device=device), torch.zeros(1, models.GEOMETRY_FEATURES, device=device))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    maps = {name: calls[0] for name, calls in seen.items()
            if len(calls) == 1 and calls[0][1] is not None and len(calls[0][1]) == 4}

    def inside_a_downsampling_block(name: str) -> bool:
        # mobilenet's expansion conv inside a stride-2 block finishes after the block before it,
        # at the same grid: the block that takes that grid in and hands a coarser one on is one
        # unit, and its insides are not candidates
        grid = maps[name][1][2:]
        parts = name.split(".")
        outer = [maps[".".join(parts[:k])] for k in range(1, len(parts)) if ".".join(parts[:k]) in maps]
        return any(given == grid and shape[2:] != grid for _, shape, given in outer)

    candidates = [(order, name, shape[2:]) for name, (order, shape, _) in maps.items()
                  if not inside_a_downsampling_block(name)]
    if not candidates:
        return Method("integrated gradients")
    candidates.sort()
    fine = [c for c in candidates if min(c[2]) >= GRID_MIN]
    if fine:
        _, name, grid = fine[-1]
        return Method("Grad-CAM", f"backbone.{name}", tuple(grid))
    _, name, grid = max(candidates, key=lambda c: (c[2][0] * c[2][1], -c[0]))
    return Method("Grad-CAM", f"backbone.{name}", tuple(grid), coarse=True)


def grad_cam(model: models.AUNet, layer: nn.Module, x: torch.Tensor, shape: torch.Tensor | None,
             columns: list[int]) -> torch.Tensor:
    """(N, len(columns), h, w) ReLU'd Grad-CAM at `layer` for several AU columns from one forward pass.

    What captum's LayerGradCam computes (tests/test_explain.py checks it against captum), batched
    over the AUs: captum runs the whole model forward once per AU; here the layer's output is cut
    from the graph below it (nothing under the layer needs a gradient) and each AU costs one
    backward pass from its logit down to the layer only, a third of the work for ten AUs."""
    store = {}

    def cut(module, inputs, output):
        store["act"] = output.detach().requires_grad_(True)
        return store["act"].clone()  # the next layer may be an in-place ReLU (alexnet's)

    hook = layer.register_forward_hook(cut)
    try:
        with torch.enable_grad():
            logits = model(x, shape)
    finally:
        hook.remove()
    act = store["act"]
    maps = []
    for k, j in enumerate(columns):
        grad, = torch.autograd.grad(logits[:, j].sum(), act, retain_graph=k < len(columns) - 1)
        weights = grad.mean(dim=(2, 3), keepdim=True)  # each channel's mean gradient: its importance
        maps.append((weights * act.detach()).sum(1, keepdim=True).relu())
    return torch.cat(maps, 1)


def au_maps(model: models.AUNet, method: Method, x: torch.Tensor, shape: torch.Tensor | None,
            columns: list[int] | None = None) -> torch.Tensor:
    """(N, A, S, S) non-negative maps of normalised images `x` (N, 3, S, S) for the model's AU
    columns `columns` (all by default); `shape`: the landmarks a --geometry model takes beside."""
    from captum.attr import IntegratedGradients, LayerAttribution

    columns = list(range(model.num_aus)) if columns is None else columns
    size = tuple(x.shape[-2:])
    model.eval()
    if method.kind == "Grad-CAM":
        model.requires_grad_(False)  # the gradient is taken with respect to the layer's output only
        cam = grad_cam(model, model.get_submodule(method.layer), x, shape, columns)
        return LayerAttribution.interpolate(cam.detach(), size, "bilinear").clamp_(min=0)
    model.requires_grad_(False)
    ig = IntegratedGradients(lambda images, g: model(images, g))
    out = []
    for j in columns:
        a = ig.attribute(x, baselines=torch.zeros_like(x), target=j, additional_forward_args=(shape,),
                         n_steps=IG_STEPS, internal_batch_size=len(x) * 4)
        out.append(a.detach().sum(1, keepdim=True).clamp_(min=0))
    return torch.cat(out, 1)


def landmark_attribution(model: models.AUNet, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """(N, A, 68) non-negative: how much each landmark's two numbers moved each AU's logit away from
    the training set's mean shape (integrated gradients, |dx| + |dy|), the image held fixed."""
    from captum.attr import IntegratedGradients

    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
    mean_shape = model.geometry_branch[0].running_mean  # BatchNorm's: the training set's mean shape
    ig = IntegratedGradients(lambda g, f: model.forward_head(f, g))
    out = []
    for j in range(model.num_aus):
        a = ig.attribute(shape, baselines=mean_shape.expand_as(shape), target=j, additional_forward_args=(features,),
                         n_steps=IG_STEPS * 2)
        out.append(a.detach().reshape(len(shape), -1, 2).abs().sum(-1))
    return torch.stack(out, 1)


def normalise_per_face(maps: torch.Tensor) -> torch.Tensor:
    """Each (face, AU) map divided by its sum, so every face weighs the same in a mean; a map with
    no positive evidence anywhere stays all zero."""
    total = maps.flatten(2).sum(-1)[..., None, None]
    return torch.where(total > 0, maps / total.clamp(min=1e-30), torch.zeros_like(maps))


# ----------------------------------------------------------------------------- pictures of one face


def colour(amap: np.ndarray) -> np.ndarray:
    """A map scaled to its maximum -> (H, W, 4) RGBA floats (matplotlib's inferno, alpha by value)."""
    from matplotlib import colormaps

    peak = float(amap.max())
    v = amap / peak if peak > 0 else np.zeros_like(amap)
    rgba = colormaps["inferno"](v)
    rgba[..., 3] = 0.15 + 0.6 * v
    return rgba


def overlay(face: np.ndarray, amap: np.ndarray, title: str, scale: int = 4) -> Image.Image:
    """A gray face crop (S, S) uint8 with its map (S, S) over it, `scale` times larger, titled."""
    size = face.shape[0] * scale
    base = np.asarray(Image.fromarray(face).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float64) / 255
    m = np.asarray(Image.fromarray(amap.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
    rgba = colour(m)
    mixed = base * (1 - rgba[..., 3:]) + rgba[..., :3] * rgba[..., 3:]
    canvas = Image.new("RGB", (size, size + 18), "white")
    canvas.paste(Image.fromarray((mixed * 255).round().astype(np.uint8)), (0, 18))
    ImageDraw.Draw(canvas).text((3, 3), title, fill="black")
    return canvas


class FaceExplainer:
    """predict.py --explain: for each face, an overlay per AU that is on (the face, the mean map of
    the ensemble's models, the AU and its probability), written as DIR/<file>[_frame<N>]_face<K>_AU<n>.png."""

    def __init__(self, members: list[models.AUNet], aus: list[int], mean, std, threshold: float, folder: Path,
                 device: torch.device):
        self.members, self.aus, self.mean, self.std = members, aus, mean, std
        self.threshold, self.folder, self.device = threshold, Path(folder), device
        if not has_image(members[0]):
            import logging

            logging.getLogger(utils.LOGGER_NAME).warning(
                "--explain: a --model landmarks run sees no image, so there is no map to draw")
        self.methods: list[Method | None] = []  # chosen at the first batch, from the crops' size
        self.written: list[Path] = []
        self.folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, crops: np.ndarray, landmarks: np.ndarray, probs: np.ndarray, where: list[tuple]) -> None:
        """`crops` (N, S, S) uint8, their landmarks (N, 68, 2) in image pixels, the probabilities
        (N, A), and per face (file, is_video, frame, face number)."""
        from ckplus import geometry
        import preprocess

        on = probs > self.threshold
        if not on.any():
            return
        size = crops.shape[-1]
        if not self.methods:
            self.methods = [choose_method(m, size) for m in self.members]
        rows = np.flatnonzero(on.any(1))
        images = torch.from_numpy(crops[rows]).unsqueeze(1).to(self.device)
        x = preprocess.prepare_batch(images, self.mean, self.std)
        shape = torch.from_numpy(geometry.normalise(landmarks[rows])).to(self.device)
        maps = None
        for model, method in zip(self.members, self.methods):
            if method is None:
                return  # a model without an image has nothing to map
            one = normalise_per_face(au_maps(model, method, x, shape if model.geometry else None))
            maps = one if maps is None else maps + one
        maps = (maps / len(self.members)).cpu().numpy()
        for k, i in enumerate(rows):
            path, is_video, frame, face = where[i]
            stem = Path(path).stem + (f"_frame{int(frame):06d}" if is_video else "")
            for j in np.flatnonzero(on[i]):
                name = utils.au_name(self.aus[j])
                out = self.folder / f"{stem}_face{int(face)}_{name}.png"
                overlay(crops[i], maps[k, j], f"{name} p={probs[i, j]:.2f}").save(out)
                self.written.append(out)
