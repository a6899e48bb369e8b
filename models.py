"""Backbones for AU recognition: a torchvision ImageNet classifier with its last layer
swapped for a multi-label AU head.

`build_model` is the one factory. It takes the original program's names (alexnet, vgg16,
vgg16_bn, vgg19, res18, res50, res101, inception) or any torchvision classification model
name, loads ImageNet weights through torchvision's weights API and its cache, and returns an
`AUNet`: `backbone` (penultimate features, shape (B, F)) followed by `head` (one logit per AU).
Input size and normalisation come from the weights' own metadata (`model_config`), never from
literals.

Two design points a reader should know:

- The ImageNet classifier is found generically: the last layer with 1000 outputs, either a
  `Linear` or (squeezenet) a 1x1 `Conv2d`. It becomes `nn.Identity`, so the backbone ends in
  the features that classifier saw. For squeezenet that means the AU head is a `Linear` on the
  pooled 512 channels, which is the same map as a 1x1 conv before the pooling; the ReLU that
  followed squeezenet's classifier conv is then a no-op, since the features are already
  non-negative.
- inception_v3 is always built with `transform_input=True` and its auxiliary classifier,
  pretrained or not, as torchvision builds it with ImageNet weights. Checkpoints therefore load
  into a model built either way, and the model sees the same input transform in training and
  in evaluation. That transform maps ImageNet-normalised input to the [-1, 1] range Google's
  weights expect; with the original's 0.5/0.5 normalisation it distorts the input slightly,
  exactly as it did in the original program.
"""
from __future__ import annotations

import difflib
import http.client
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from ckplus import geometry
import utils
from utils import UserError

# The original program's model names, and the torchvision model each one means.
ALIASES = {
    "alexnet": "alexnet",
    "vgg16": "vgg16",
    "vgg16_bn": "vgg16_bn",
    "vgg19": "vgg19",
    "res18": "resnet18",
    "res50": "resnet50",
    "res101": "resnet101",
    "inception": "inception_v3",
}

# --model landmarks: no backbone, the AU head on the landmark geometry alone (the classic CK+ shape baseline):
# the 136 normalised numbers standardised, then one linear unit per AU -- one logistic regression per AU.
LANDMARKS = geometry.SHAPE_MODEL
# --geometry: width of the landmark branch whose output joins the backbone's features before the AU head.
GEOMETRY_WIDTH = 64
GEOMETRY_FEATURES = geometry.FEATURES  # (the name `geometry` is the flag inside AUNet)

# Weight of inception's auxiliary loss, as in torchvision's classification recipe.
AUX_WEIGHT = 0.4
# inception's auxiliary branch runs a 5x5 conv on a map that is 5x5 only from 299x299 inputs up.
INCEPTION_AUX_MIN_SIZE = 299

# Used only for a model that has no ImageNet weights to take them from.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_FALLBACK_SIZE = 224
_IMAGENET_CLASSES = 1000


# The memory layout each backbone trains fastest in on a CPU. channels_last (NHWC) lets oneDNN run its
# convolutions without reordering every activation; on a GPU main.py always uses it (docs/performance.md).
# Value: images/s of a training step in channels_last over contiguous (torchvision's architecture names;
# batch 16, 160 px), measured by `python benchmarks/cpu_layout.py` on a shared 2-core x86 CPU, except vgg16
# and resnet50 (the team's 2-core CPU, issue 24); docs/performance.md has the table. A backbone is trained,
# scored and predicted in channels_last on a CPU where the ratio is at least 1; a model not in the table
# stays contiguous (not measured: no promise either way).
CPU_CHANNELS_LAST = {
    "mobilenet_v2": 1.62,  # the recommended backbone (1.25 at a lighter load; the team's CPU: 1.63)
    "efficientnet_b0": 1.61,  # (the team's: 1.26)
    "resnet18": 1.05,  # (1.08 at a lighter load; the team's: 1.08)
    "squeezenet1_1": 1.21,
    "shufflenet_v2_x1_0": 1.22,
    "alexnet": 1.09,  # (the team's: 1.07)
    "vgg16": 1.13,  # the team's
    "resnet50": 1.16,  # the team's
    "mobilenet_v3_large": 0.64,  # slower: evaluation too (0.47); stays contiguous
    # the rest of the original's backbones, on the idle machine (2 passes of 2 batches, 160 px; inception 299 px)
    "vgg16_bn": 0.97,  # slower in training (scoring 1.14); stays contiguous
    "vgg19": 1.03,
    "resnet101": 1.03,
    "inception_v3": 1.13,
}


@dataclass(frozen=True)
class ModelConfig:
    """What the data pipeline needs to know about a backbone."""

    name: str  # as the user gave it ("res18")
    arch: str  # torchvision's name ("resnet18")
    input_size: int  # side of the square input the weights were trained at
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_file: str | None  # file name in torch's hub checkpoints folder
    weights_url: str | None


def list_aliases() -> list[str]:
    """The original program's model names, for --help."""
    return list(ALIASES)


def _torchvision_models() -> list[str]:
    return list_models(module=torchvision.models)


def resolve_arch(name: str) -> str:
    """The torchvision model behind `name`, or a UserError with the closest valid name."""
    if name == LANDMARKS:
        return LANDMARKS
    if name in ALIASES:
        return ALIASES[name]
    known = _torchvision_models()
    if name in known:
        return name
    close = difflib.get_close_matches(name.lower(), list(ALIASES) + known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UserError(f"unknown model {name!r}: choose one of {', '.join(ALIASES)} "
                    f"or a torchvision classification model{hint}")


def _default_weights(arch: str):
    return get_model_weights(arch).DEFAULT


def _weights_enum(arch: str):
    if arch == LANDMARKS:
        return None
    try:
        return get_model_weights(arch)
    except (KeyError, ValueError):  # a model torchvision ships without any weights
        return None


def weights_names(name: str) -> list[str]:
    """The weights names torchvision knows for a model (`DEFAULT` first), for --weights."""
    enum = _weights_enum(resolve_arch(name))
    return [] if enum is None else ["DEFAULT", *(n for n in enum.__members__ if n != "DEFAULT")]


def resolve_weights(name: str, weights: str) -> str:
    """A --weights name of model `name` -> the name of the weights it means (`DEFAULT` becomes the
    weights it stands for, e.g. IMAGENET1K_V2), or one line listing the valid names."""
    valid = weights_names(name)
    if weights not in valid:
        choices = ", ".join([*valid, "none"]) if valid else "none (torchvision has no weights for it)"
        raise UserError(f"--weights {weights} is not a weights name of {name}: choose one of {choices}, "
                        f"or give a weights file")
    return _weights_enum(resolve_arch(name))[weights].name


def weights_file(name: str, weights: str) -> tuple[str, str]:
    """(file name in torch's hub checkpoints folder, URL) of the weights `weights` of model `name`."""
    url = _weights_enum(resolve_arch(name))[weights].url
    return Path(urlparse(url).path).name, url


def model_config(name: str) -> ModelConfig:
    """Input size, normalisation and weights file of a model, from its DEFAULT ImageNet weights."""
    arch = resolve_arch(name)
    if arch == LANDMARKS:  # no images: the size only keeps the (unused) image pipeline small
        return ModelConfig(name, arch, 32, _IMAGENET_MEAN, _IMAGENET_STD, None, None)
    weights = _default_weights(arch)
    if weights is None:
        return ModelConfig(name, arch, _FALLBACK_SIZE, _IMAGENET_MEAN, _IMAGENET_STD, None, None)
    transform = weights.transforms()
    return ModelConfig(
        name=name,
        arch=arch,
        input_size=int(transform.crop_size[0]),
        mean=tuple(float(v) for v in transform.mean),
        std=tuple(float(v) for v in transform.std),
        weights_file=Path(urlparse(weights.url).path).name,
        weights_url=weights.url,
    )


class AUNet(nn.Module):
    """A backbone giving (B, F) features and a linear head giving (B, num_aus) AU logits.

    In eval mode `model(x)` is exactly `forward_head(forward_features(x))` (timm's names), which
    lets the training loop compute a frozen backbone's features once and train the head alone.
    In training, inception (not frozen) returns `(logits, aux_logits)`; the loss weighs the
    second by `AUX_WEIGHT`.

    With `geometry` (--geometry, and always for --model landmarks) the model also takes each
    image's normalised landmarks (B, 136, geometry.normalise): a small MLP maps them to
    GEOMETRY_WIDTH numbers, concatenated with the backbone's features before the head, so
    training decides how much each counts. The branch is part of the head: it trains on a
    frozen backbone, and cached features need only the geometry beside them.

    With `shape_only` (--model landmarks: no backbone features) the branch is the standardisation
    alone and the head one linear unit per AU on the 136 standardised numbers: one logistic
    regression per AU, the classic shape baseline. A hidden layer here only added capacity that
    about 300 training sequences cannot fill (the MLP measured 0.62 macro F1 on a synthetic tree
    where the logistic regression gave 0.90).
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_aus: int, config: ModelConfig,
                 aux_features: int | None = None, frozen: bool = False, geometry: bool = False,
                 shape_only: bool = False):
        super().__init__()
        self.backbone = backbone
        self.geometry = geometry
        # The normalised points vary by a few hundredths of an inter-ocular distance between
        # expressions: standardised first (BatchNorm's running statistics, kept in the checkpoint,
        # are the training data's mean and spread), as a shape classifier standardises its inputs.
        standardise = nn.BatchNorm1d(GEOMETRY_FEATURES, affine=False)
        if shape_only:
            self.geometry_branch, width = nn.Sequential(standardise), GEOMETRY_FEATURES
        elif geometry:
            self.geometry_branch, width = nn.Sequential(
                standardise, nn.Linear(GEOMETRY_FEATURES, 128), nn.ReLU(), nn.Linear(128, GEOMETRY_WIDTH), nn.ReLU(),
            ), GEOMETRY_WIDTH
        else:
            self.geometry_branch, width = None, 0
        self.head = nn.Linear(num_features + width, num_aus)
        self.aux_head = nn.Linear(aux_features, num_aus) if aux_features is not None else None
        self.num_aus = num_aus
        self.config = config
        self.frozen = frozen
        if frozen:
            # The aux branch never runs on a frozen backbone (it stays in eval mode), so its
            # head is frozen too rather than left as parameters that never get a gradient.
            self.backbone.requires_grad_(False)
            if self.aux_head is not None:
                self.aux_head.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> AUNet:
        """As nn.Module.train, except that a frozen backbone always stays in eval mode:
        its BatchNorm statistics and dropout are part of what is frozen."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor, geometry: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        aux_runs = self.aux_head is not None and self.backbone.training
        if aux_runs and min(x.shape[-2:]) < INCEPTION_AUX_MIN_SIZE:
            raise UserError(f"{self.config.name} trains its auxiliary head on inputs of at least "
                            f"{INCEPTION_AUX_MIN_SIZE}x{INCEPTION_AUX_MIN_SIZE}, got {x.shape[-2]}x{x.shape[-1]}: "
                            f"pass --image-size {INCEPTION_AUX_MIN_SIZE} or more, or --freeze-backbone")
        out = self.forward_features(x)
        if isinstance(out, tuple):  # inception in training: (features, aux features)
            features, aux = out
            return self.forward_head(features, geometry), self.aux_head(aux)
        return self.forward_head(out, geometry)

    def forward_features(self, x: torch.Tensor):
        """The backbone's penultimate features (B, F)."""
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor, geometry: torch.Tensor | None = None) -> torch.Tensor:
        """AU logits (B, A) from backbone features (and, for a geometry model, the normalised landmarks)."""
        if self.geometry_branch is None:
            return self.head(features)
        if geometry is None:
            raise ValueError("this model takes the landmarks' geometry beside the image (--geometry)")
        shape = self.geometry_branch(geometry.to(features.dtype))
        return self.head(torch.cat([features, shape], dim=1))


class NoImage(nn.Module):
    """--model landmarks' backbone: no features from the image, (B, 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 0)


def _builder_kwargs(config: ModelConfig, pretrained: bool) -> dict:
    """Constructor options that make a model built from scratch match the pretrained one,
    so a checkpoint trained either way loads into either."""
    kwargs: dict = {}
    if config.arch == "inception_v3":
        kwargs.update(aux_logits=True, transform_input=True)
    elif config.arch == "googlenet":
        kwargs.update(transform_input=True)
        if not pretrained:
            kwargs.update(aux_logits=False)  # torchvision drops them from the pretrained one
    if config.arch in ("inception_v3", "googlenet") and not pretrained:
        kwargs.update(init_weights=True)  # torchvision's own init, stated to silence its warning
    if config.arch.startswith("vit_") and not pretrained:
        kwargs.update(image_size=config.input_size)  # positional embeddings are sized for it
    return kwargs


# What a failed download raises: urllib and socket errors are OSErrors; a broken connection
# can surface as an http.client error; torch.hub raises RuntimeError on a hash mismatch.
_DOWNLOAD_ERRORS = (OSError, http.client.HTTPException, RuntimeError)
# What loading a truncated or foreign file raises.
_UNREADABLE_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError,
                      KeyError)


def _pretrained_model(config: ModelConfig, kwargs: dict, name: str = "DEFAULT") -> nn.Module:
    """torchvision's model with its ImageNet weights `name` (DEFAULT, IMAGENET1K_V1, ...), from the
    hub cache or downloaded into it; every way this can fail offline is a one-line UserError
    naming the file of the weights asked for and what to do."""
    if _default_weights(config.arch) is None:
        raise UserError(f"torchvision has no ImageNet weights for {config.name}: pass --weights none")
    weights = _weights_enum(config.arch)[resolve_weights(config.name, name)]
    file_name, url = weights_file(config.name, weights.name)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    cached = folder / file_name
    if cached.is_file():
        try:
            return get_model(config.arch, weights=weights, **kwargs)
        except _UNREADABLE_ERRORS as e:
            raise UserError(f"cannot load the ImageNet weights {cached} ({utils.first_line(e, limit=120)}): the file is damaged or "
                            f"not {config.arch}'s; delete it and run again to download it afresh, "
                            f"or pass --weights none") from e
    try:
        return get_model(config.arch, weights=weights, **kwargs)
    except _DOWNLOAD_ERRORS as e:
        if isinstance(e, RuntimeError) and not any(w in str(e).lower() for w in ("download", "hash", "url")):
            raise  # not a download problem: a bug, keep its traceback
        raise UserError(f"no ImageNet weights {weights.name} for {config.name} offline ({utils.first_line(e, limit=120)}): put "
                        f"{file_name} (from {url}) in {folder}/, or pass --weights none to train from "
                        f"scratch") from e


def _find_classifier(model: nn.Module, num_classes: int, name: str) -> tuple[str, int]:
    """Dotted path and input width of the ImageNet classifier: the last layer with
    `num_classes` outputs, a Linear or a 1x1 Conv2d (squeezenet)."""
    found = None
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            found = (path, module.in_features)
        elif (isinstance(module, nn.Conv2d) and module.out_channels == num_classes
              and module.kernel_size == (1, 1) and module.groups == 1):
            found = (path, module.in_channels)
    if found is None:
        raise UserError(f"model {name} is not supported: it has no {num_classes}-way linear classifier to replace "
                        f"with the AU head; choose another --model")
    return found


def _strip_classifier(model: nn.Module, name: str) -> tuple[str, int, int | None]:
    """Replace the ImageNet classifier (and inception's auxiliary one) with nn.Identity ->
    (the classifier's dotted path, its input width, the auxiliary classifier's or None)."""
    weights = _default_weights(resolve_arch(name))
    num_classes = len(weights.meta["categories"]) if weights is not None else _IMAGENET_CLASSES
    path, num_features = _find_classifier(model, num_classes, name)
    model.set_submodule(path, nn.Identity())
    aux_features = None
    if getattr(model, "AuxLogits", None) is not None:  # inception_v3
        aux_features = model.AuxLogits.fc.in_features
        model.AuxLogits.fc = nn.Identity()
    return path, num_features, aux_features


def backbone_state(name: str, state: dict, source: str) -> dict:
    """A state dict of torchvision's `name` (ImageNet classifier included or not) -> the weights
    of the AU model's backbone, i.e. without the classifier. Anything that is not that model's
    state dict is a UserError naming `source` (the file it came from)."""
    config = model_config(name)
    if config.arch == LANDMARKS:
        raise UserError(f"--weights {source}: --model {LANDMARKS} has no backbone to take weights: pass --weights none")
    skeleton, _ = shapes_only(lambda: get_model(config.arch, weights=None, **_builder_kwargs(config, pretrained=False)))
    path, _, _ = _strip_classifier(skeleton, name)
    expected = skeleton.state_dict()
    dropped = tuple(p + "." for p in (path, "AuxLogits.fc") if p)
    kept = {k: v for k, v in state.items() if not k.startswith(dropped)}
    # BatchNorm fills in a missing num_batches_tracked itself (files saved before it existed)
    missing = [k for k in expected if k not in kept and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in kept if k not in expected]
    wrong = [k for k in expected if k in kept and tuple(kept[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what} {len(keys)} (e.g. {keys[0]})" for what, keys in
                           (("missing", missing), ("unexpected", unexpected), ("other shapes", wrong)) if keys)
        raise UserError(f"--weights {source} is not a state dict of {name} ({detail}): give {name}'s weights, or a "
                        f"checkpoint of a {name} run of this program")
    return kept


def build_model(name: str, num_aus: int, pretrained: bool = True, freeze_backbone: bool = False,
                backbone_state: dict | None = None, weights: str = "DEFAULT", geometry: bool = False) -> AUNet:
    """An `AUNet` for `name` with a fresh `num_aus`-unit head.

    pretrained: torchvision's ImageNet weights `weights` (a name such as DEFAULT or
    IMAGENET1K_V1; from its hub cache, downloaded if missing); otherwise torchvision's own
    random initialisation. freeze_backbone: only the head trains and the backbone stays in eval
    mode, as in the original program. backbone_state: the backbone's weights to load instead
    (a run's frozen backbone.pth, or a --weights file). geometry: the landmark branch beside
    the backbone (always there for --model landmarks, which has no backbone).
    """
    config = model_config(name)
    if config.arch == LANDMARKS:
        if pretrained:
            raise UserError(f"--model {LANDMARKS} has no backbone and no ImageNet weights: pass --weights none")
        return AUNet(NoImage(), 0, num_aus, config, frozen=freeze_backbone, geometry=True, shape_only=True)
    kwargs = _builder_kwargs(config, pretrained)
    if pretrained:
        model = _pretrained_model(config, kwargs, weights)
    else:
        model = get_model(config.arch, weights=None, **kwargs)
    _, num_features, aux_features = _strip_classifier(model, name)
    if backbone_state is not None:
        model.load_state_dict(backbone_state)
    return AUNet(model, num_features, num_aus, config, aux_features=aux_features, frozen=freeze_backbone,
                 geometry=geometry)


def shapes_only(build):
    """`build()` on the meta device (shapes only: nothing allocated or initialised) -> (module,
    device). A builder that computes with tensor values on the way (regnet's block widths) cannot
    run there: it is built on the CPU instead, for real."""
    try:
        with torch.device("meta"):
            return build(), torch.device("meta")
    except NotImplementedError:  # "Cannot copy out of meta tensor"
        return build(), torch.device("cpu")


def check_input_size(name: str, image_size: int, freeze_backbone: bool) -> None:
    """Fail before any file is written when the model cannot train on `image_size` inputs.

    The model is built with `shapes_only` and run forward once in training mode, which raises
    what the first real batch would."""
    model, device = shapes_only(lambda: build_model(name, 2, pretrained=False, freeze_backbone=freeze_backbone))
    try:
        model.train()
        with torch.no_grad():
            model(torch.zeros(2, 3, image_size, image_size, device=device),
                  torch.zeros(2, GEOMETRY_FEATURES, device=device))
    except RuntimeError as e:
        raise UserError(f"--image-size {image_size} is too small for {name} "
                        f"({utils.first_line(e)}): use a larger --image-size, e.g. 224") from None


def channels_last(name: str, device: torch.device) -> bool:
    """Whether `name` runs in channels_last on `device`: always on CUDA, on a CPU where
    CPU_CHANNELS_LAST measured it no slower (--model landmarks has no image to lay out)."""
    arch = resolve_arch(name)
    if arch == LANDMARKS:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and CPU_CHANNELS_LAST.get(arch, 0.0) >= 1.0
