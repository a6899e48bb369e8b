"""channels_last on a CPU: the backbones measured faster in it use it for training, scoring and
prediction, and it changes no probability beyond float noise."""
from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from faces import ensemble
import models
from training import engine, settings

CPU = torch.device("cpu")


def train_and_score(channels_last: bool) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """A random mobilenet_v2 scored with flip TTA, then one augmented epoch (2 steps at 64 px) and
    scored again, all in one layout -> (probabilities before, after, the first conv's weight)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 1, 64, 64), dtype=torch.uint8, generator=g)
    labels = (torch.rand(12, 3, generator=g) < 0.4).float()
    torch.manual_seed(0)
    model = engine.place(models.build_model("mobilenet_v2", 3, pretrained=False), CPU, channels_last)
    inputs = engine.Inputs(labels=labels, images=images, augment=True, channels_last=channels_last)
    before = engine.evaluate(model, inputs, torch.arange(12), CPU, batch_size=5, tta="flip")
    args = argparse.Namespace(lr=0.001, backbone_lr=1.0, momentum=0.9, wd=1e-4)
    with engine.Clock(1, quiet=True).bar(12, "test") as progress:
        engine.train_one_epoch(model, nn.BCEWithLogitsLoss(reduction="none"), engine.make_optimizer(model, args),
                               torch.amp.GradScaler("cpu", enabled=False), inputs, torch.arange(12), CPU,
                               engine.epoch_generator(0, 0, 0), progress, batch_size=6, loss="mean")
    after = engine.evaluate(model, inputs, torch.arange(12), CPU, batch_size=5, tta="flip")
    return before, after, model.backbone.features[0][0].weight


def test_channels_last_trains_and_scores_as_contiguous_does():
    """The same probabilities before and after a fine-tuning epoch, to float noise. (A random
    network trained on batches of 6 amplifies float32 rounding in its gradients: both layouts are
    about as far from a float64 reference, so the weights are compared loosely, the outputs tightly.)"""
    before, contiguous, w_contiguous = train_and_score(False)
    before_cl, channels_last, w_channels_last = train_and_score(True)
    # the two runs really ran in two layouts ...
    assert w_channels_last.is_contiguous(memory_format=torch.channels_last) and not w_channels_last.is_contiguous()
    assert w_contiguous.is_contiguous()
    # ... gave the same probabilities before training and after it, which moved them well past the tolerance
    np.testing.assert_allclose(before_cl, before, atol=1e-5)
    assert np.abs(contiguous - before).max() > 1e-3
    np.testing.assert_allclose(channels_last, contiguous, atol=1e-4)


def test_a_cpu_run_of_mobilenet_v2_is_channels_last(ck, tmp_path):
    """What main.py builds on a CPU for the recommended backbone: channels_last batches (training,
    scoring and the frozen feature pass take them from Inputs), and predict.py's models too."""
    assert models.CPU_CHANNELS_LAST["mobilenet_v2"] >= 1.0
    args = argparse.Namespace(**{**settings.defaults(), "model": "mobilenet_v2", "image_size": 32, "workers": 0,
                                 "data_dir": ck.dirs[0], "label_dir": ck.dirs[1], "landmark_dir": ck.dirs[2],
                                 "cache_dir": str(tmp_path), "no_cache": False, "skip_bad": False,
                                 "no_feature_cache": False})
    data, _ = engine.load_data(args, training=False)
    inputs = engine.make_inputs(data, args, CPU)
    assert inputs.channels_last
    x, _ = inputs.batch(torch.arange(2), CPU, None, train=False)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    model = engine.place(models.build_model("mobilenet_v2", 3, pretrained=False), CPU, inputs.channels_last)
    assert model.backbone.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    runs = ensemble.Ensemble(checkpoints=[], description="final", arch="mobilenet_v2", aus=[1], settings={},
                             threshold=0.5)
    assert runs.channels_last


def test_unmeasured_and_slower_backbones_stay_contiguous_on_a_cpu():
    slower = [arch for arch, ratio in models.CPU_CHANNELS_LAST.items() if ratio < 1.0]
    for name in [*slower, "regnet_y_400mf", models.LANDMARKS]:
        assert not models.channels_last(name, CPU), name
    assert models.channels_last("res18", CPU) == (models.CPU_CHANNELS_LAST["resnet18"] >= 1.0)  # aliases resolve
    assert models.channels_last("regnet_y_400mf", torch.device("cuda"))  # on CUDA: always
