"""Model factory: every backbone on a tiny input, freezing, configs, ImageNet weights offline."""
from __future__ import annotations

import urllib.error
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

import models
from utils import UserError

NUM_AUS = 5
ORIGINAL_MODELS = ["alexnet", "vgg16", "vgg16_bn", "vgg19", "res18", "res50", "res101", "inception"]
SMALL = 64  # enough for every backbone in eval mode but inception
INCEPTION_SMALL = 80  # inception's eval-mode minimum is 75


@pytest.fixture(autouse=True)
def hub(tmp_path, monkeypatch) -> SimpleNamespace:
    """An empty torch hub cache of the test's own, and no network: a download attempt
    records its url and fails as it would offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub", "something called torch.hub.set_dir"
    attempts = []

    def offline(url, dst, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return SimpleNamespace(folder=tmp_path / "torch" / "hub" / "checkpoints", attempts=attempts)


def images(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(size))


def eval_size(name: str) -> int:
    return INCEPTION_SMALL if name == "inception" else SMALL


@pytest.mark.parametrize("name", ORIGINAL_MODELS)
def test_original_model_trains_end_to_end_and_predicts(name):
    model = models.build_model(name, NUM_AUS, pretrained=False)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == NUM_AUS
    assert all(p.requires_grad for p in model.parameters())

    model.train()
    if name == "inception":
        with pytest.raises(UserError, match="--image-size 299"):
            model(images(INCEPTION_SMALL))  # its aux branch cannot run on that
        logits, aux = model(images(models.INCEPTION_AUX_MIN_SIZE))
        assert logits.shape == aux.shape == (2, NUM_AUS)
        loss = logits.sum() + models.AUX_WEIGHT * aux.sum()
    else:
        logits = model(images(SMALL))
        assert logits.shape == (2, NUM_AUS)
        loss = logits.sum()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []  # the whole network trains, down to the first conv

    model.eval()
    x = images(eval_size(name))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, NUM_AUS)
        features = model.backbone(x)
        assert features.ndim == 2 and features.shape[1] == model.head.in_features
        # what main.py's frozen-feature cache relies on
        assert torch.equal(model.head(features), out)


@pytest.mark.parametrize("name", ORIGINAL_MODELS)
def test_frozen_model_trains_only_its_head(name):
    model = models.build_model(name, NUM_AUS, pretrained=False, freeze_backbone=True)
    assert model.frozen
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}

    model.train()
    assert model.training and model.head.training
    assert not any(m.training for m in model.backbone.modules())
    out = model(images(eval_size(name)))  # inception: no aux output, so small inputs are fine
    assert isinstance(out, torch.Tensor) and out.shape == (2, NUM_AUS)
    out.sum().backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {"head.weight", "head.bias"}

    model.eval()
    assert model(images(eval_size(name))).shape == (2, NUM_AUS)


def bce_step(model: models.AUNet) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    target = torch.tensor([[1.0, 0, 1, 0, 1], [0, 1, 0, 1, 0]])
    loss = nn.functional.binary_cross_entropy_with_logits(model(images(SMALL)), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics():
    model = models.build_model("res18", NUM_AUS, pretrained=False, freeze_backbone=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bce_step(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}
    assert not model.backbone.training

    # the same step without freezing moves the backbone and its BatchNorm statistics
    model = models.build_model("res18", NUM_AUS, pretrained=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bce_step(model)
    assert not torch.equal(before["backbone.conv1.weight"], model.backbone.conv1.weight)
    assert not torch.equal(before["backbone.bn1.running_mean"], model.backbone.bn1.running_mean)


@pytest.mark.parametrize("name", ["resnet34", "mobilenet_v2", "efficientnet_b0", "convnext_tiny",
                                  "squeezenet1_0", "googlenet"])
def test_other_torchvision_models_build_and_run(name):
    model = models.build_model(name, NUM_AUS, pretrained=False)
    assert model.config.arch == name
    model.train()
    out = model(images(SMALL))
    assert isinstance(out, torch.Tensor) and out.shape == (2, NUM_AUS)  # googlenet: no aux outputs
    out.sum().backward()
    assert model.head.weight.grad is not None
    model.eval()
    with torch.no_grad():
        x = images(SMALL)
        assert torch.equal(model.head(model.backbone(x)), model(x))


def test_config_comes_from_the_weights_metadata():
    for name, arch in [("res18", "resnet18"), ("inception", "inception_v3"), ("efficientnet_b3", "efficientnet_b3")]:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        transform = weights.transforms()
        config = models.model_config(name)
        assert (config.name, config.arch) == (name, arch)
        assert config.mean == tuple(transform.mean) and config.std == tuple(transform.std)
        assert config.weights_url == weights.url
        assert weights.url.endswith("/" + config.weights_file)
    assert models.model_config("res18").input_size == 224
    assert models.model_config("inception").input_size == 299
    assert models.model_config("efficientnet_b3").input_size == 300
    assert models.model_config("alexnet").weights_file == "alexnet-owt-7be5be79.pth"
    assert models.model_config("res18").weights_file == models.model_config("resnet18").weights_file
    assert models.list_aliases() == ORIGINAL_MODELS


def test_unknown_model_names_the_choices_and_the_closest_one():
    with pytest.raises(UserError) as err:
        models.build_model("resnt18", NUM_AUS, pretrained=False)
    message = str(err.value)
    assert "'resnt18'" in message and "did you mean resnet18?" in message and "alexnet" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="did you mean inception"):
        models.model_config("inceptoin")


def test_missing_weights_offline_say_which_file_goes_where(hub):
    config = models.model_config("res18")
    with pytest.raises(UserError) as err:
        models.build_model("res18", NUM_AUS, pretrained=True)
    message = str(err.value)
    assert hub.attempts == [config.weights_url]  # torchvision did try to fetch it
    assert config.weights_file in message and config.weights_url in message
    assert str(hub.folder) in message and "hub/checkpoints" in message
    assert "--weights none" in message and "\n" not in message


def test_cached_weights_are_loaded_around_a_fresh_head(hub):
    torch.manual_seed(1)
    imagenet = torchvision.models.resnet18()
    hub.folder.mkdir(parents=True)
    torch.save(imagenet.state_dict(), hub.folder / models.model_config("res18").weights_file)

    model = models.build_model("res18", 10, pretrained=True)
    assert hub.attempts == []
    expected = {k: v for k, v in imagenet.state_dict().items() if not k.startswith("fc.")}
    got = model.backbone.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert model.head.weight.shape == (10, 512)


def test_damaged_cached_weights_are_named(hub):
    hub.folder.mkdir(parents=True)
    path = hub.folder / models.model_config("res18").weights_file
    torch.save(torchvision.models.resnet18().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(UserError) as err:
        models.build_model("res18", NUM_AUS, pretrained=True)
    message = str(err.value)
    assert str(path) in message and "delete it" in message and "\n" not in message
    assert hub.attempts == []


def test_inception_checkpoint_loads_into_a_model_built_without_weights(hub):
    """evaluate/predict rebuild with pretrained=False: the model must be the same network,
    input transform included."""
    torch.manual_seed(2)
    imagenet = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
    hub.folder.mkdir(parents=True)
    torch.save(imagenet.state_dict(), hub.folder / models.model_config("inception").weights_file)
    trained = models.build_model("inception", NUM_AUS, pretrained=True).eval()
    rebuilt = models.build_model("inception", NUM_AUS, pretrained=False).eval()
    rebuilt.load_state_dict(trained.state_dict())
    assert trained.backbone.transform_input and rebuilt.backbone.transform_input
    x = images(INCEPTION_SMALL)
    with torch.no_grad():
        assert torch.equal(trained(x), rebuilt(x))


def test_input_size_check_refuses_too_small_inputs_and_builds_any_model():
    """The size check refuses what the first batch would fail on, in one line; a model whose builder
    computes with tensors (regnet's block widths cannot be computed on the meta device) is checked
    too, instead of being reported as 'too small'."""
    models.check_input_size("regnet_x_400mf", 64, freeze_backbone=False)
    models.check_input_size("res18", 64, freeze_backbone=False)
    with pytest.raises(UserError, match=r"^--image-size 32 is too small for alexnet \(.*\): use a larger --image-size"):
        models.check_input_size("alexnet", 32, freeze_backbone=False)
