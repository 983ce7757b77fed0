"""Model factory: output shapes, topology promises, architecture versions, offline-only pretrained weights."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops import DropBlock2d

from fer_utils.engine.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, load_model, save_checkpoint
from fer_utils.engine.models import (MODELS, SHORTCUTS, StridedPointwise, count_parameters, create_model,
                                     model_from_config, resnet18_weights_path, valence_arousal)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("size", [48, 96])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", MODELS)
def test_output_shape(name, channels, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=channels, image_size=size, width=8).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert model.config["name"] == name and model.config["in_channels"] == channels


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="baseline_cnn, regularized_cnn, resnet, pool_resnet, resnet18"):
        create_model("vgg", 7)


def test_baseline_has_no_regularisation_and_regularized_has_it():
    base = create_model("baseline_cnn", 7, width=8)
    kinds = {type(m) for m in base.modules()}
    assert nn.BatchNorm2d not in kinds and nn.Dropout not in kinds and DropBlock2d not in kinds
    assert sum(isinstance(m, nn.Linear) for m in base.modules()) == 2  # one hidden FC + classifier
    reg = create_model("regularized_cnn", 7, width=8, dropout=0.3, dropblock=0.1)
    kinds = [type(m) for m in reg.modules()]
    assert nn.BatchNorm2d in kinds and nn.Dropout in kinds
    assert kinds.count(DropBlock2d) == 2  # the last two stages only
    # same topology: same convs, same widths
    convs = lambda m: [(c.in_channels, c.out_channels) for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert convs(base) == convs(reg)


def test_resnet_stem_adapts_to_image_size():
    small = create_model("resnet", 7, image_size=48, width=8)
    large = create_model("resnet", 7, image_size=224, width=8)
    assert small.stem[0].stride == (1, 1) and not any(isinstance(m, nn.MaxPool2d) for m in small.stem)
    assert large.stem[0].stride == (2, 2) and isinstance(large.stem[-1], nn.MaxPool2d)
    assert [s[0].conv1.out_channels for s in small.stages] == [8, 16, 32, 64]
    with torch.no_grad():
        assert large.eval()(torch.randn(1, 1, 224, 224)).shape == (1, 7)


def test_strided_pointwise_equals_a_strided_1x1_conv():
    torch.manual_seed(0)
    ours = StridedPointwise(8, 16, 2)
    assert ours.subsample_first and not StridedPointwise(16, 32, 2).subsample_first
    ref = nn.Conv2d(8, 16, 1, 2, bias=False)
    ref.load_state_dict(ours.state_dict())
    for size in (47, 48):
        x = torch.randn(2, 8, size, size, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_()
        torch.testing.assert_close(ours(x), ref(x_ref))
        ours(x).sum().backward()
        ref(x_ref).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad)
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-4)  # summation order


@pytest.mark.parametrize("shortcut", SHORTCUTS)
@pytest.mark.parametrize("width", [8, 12])
def test_small_resnet_trains_in_channels_last_on_cpu(shortcut, width):
    """Width 8 at 48 px in channels_last once segfaulted in backward (oneDNN's strided 1x1 weight
    gradient for channel counts that are not multiples of 16); run in a child process so a crash
    fails this test instead of killing the suite. Both architecture versions must stay crash-free."""
    code = (
        "import torch\n"
        "from fer_utils.engine.models import create_model\n"
        "torch.set_num_threads(1)\n"
        f"m = create_model('resnet', 7, 1, 48, {width}, shortcut={shortcut!r}).to(memory_format=torch.channels_last)\n"
        "x = torch.randn(16, 1, 48, 48).contiguous(memory_format=torch.channels_last)\n"
        "torch.nn.functional.cross_entropy(m(x), torch.randint(0, 7, (16,))).backward()\n"
        "print(float(m.stem[0].weight.grad.abs().sum()) > 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.strip() == "True"


def pixels_reached(model: nn.Module, train: bool) -> torch.Tensor:
    """Which pixels of a 48 px input the first image's logits depend on, at initialisation: a (48, 48)
    bool map. Eval mode: the gradient of the logits' sum is exactly zero for a pixel no path reaches.
    Train mode: batch norm's batch statistics give every pixel a tiny gradient (~1e-5 of the largest)
    through the mean and variance of the whole batch; that is no view of the face, so a pixel counts
    only if its gradient is at least 1e-3 of the largest."""
    torch.manual_seed(0)
    x = torch.randn(16, 1, 48, 48, requires_grad=True)
    model.train(train)(x)[0].sum().backward()
    g = x.grad[0, 0].abs()
    return g >= 1e-3 * g.max() if train else g > 0


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_small_resnet_output_depends_on_the_whole_face_at_initialisation(train):
    """The ablation's resnet rung sat at chance: with 1x1 stride-2 shortcuts that read one pixel in four
    and every residual branch zeroed, the initial output saw 64 of 2,304 pixels and none of the mouth.
    The current architecture must see (nearly) every pixel, the lower third (mouth, chin) included."""
    torch.manual_seed(0)
    reached = pixels_reached(create_model("resnet", 7, 1, 48, 16), train)
    assert reached.float().mean() >= 0.95
    assert reached[32:].float().mean() >= 0.95


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_legacy_small_resnet_keeps_its_blind_spots(train):
    """The legacy version is rebuilt for old checkpoints exactly as it was, defect included: in eval
    mode 64 pixels (a 3x3 grid 16 px apart, each through the 3x3 stem), none below row 34; in train
    mode ~10% of the pixels pass the threshold (batch statistics), against >99% for the current one."""
    torch.manual_seed(0)
    reached = pixels_reached(create_model("resnet", 7, 1, 48, 16, shortcut="strided"), train)
    if train:
        assert reached.float().mean() < 0.2 and reached[32:].float().mean() < 0.2
    else:
        assert reached.sum() == 64 and reached[34:].sum() == 0


def test_architecture_version_is_recorded_and_old_configs_rebuild_the_legacy_one():
    new = create_model("resnet", 7, 1, 48, 8)
    assert new.config["shortcut"] == "avgpool"
    assert not any(isinstance(m, StridedPointwise) for m in new.modules())
    assert "shortcut" not in create_model("regularized_cnn", 7, 1, 48, 8).config  # the CNNs have one version
    old_config = {k: v for k, v in new.config.items() if k != "shortcut"}  # as written before versions
    legacy = model_from_config(old_config)
    assert legacy.config["shortcut"] == "strided"
    assert sum(isinstance(m, StridedPointwise) for m in legacy.modules()) == 4  # one per stage
    assert model_from_config(new.config).config == new.config
    # The versions' weights do not fit each other, so a legacy checkpoint never loads silently into the
    # current architecture (nor the reverse).
    with pytest.raises(RuntimeError, match="shortcut"):
        new.load_state_dict(legacy.state_dict())
    with pytest.raises(ValueError, match="unknown shortcut 'conv'; valid: avgpool, strided"):
        create_model("resnet", 7, shortcut="conv")


def test_legacy_checkpoint_rebuilds_the_legacy_resnet():
    """The first bundled FER2013 model (tests/data/, bundled until the recipe of 2026-11-29 replaced it)
    predates the versions: it must compute what it did when it was trained. The logits were recorded with
    the code before the versions existed (same to ~1e-6 across CPUs)."""
    model, ckpt = load_model(Path(__file__).parent / "data" / "legacy_fer2013_resnet.pt")
    assert "shortcut" not in ckpt["model_config"] and model.config["shortcut"] == "strided"
    x = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        logits = model(x)
    recorded = torch.tensor([[-1.5525, 0.11335, -0.32404, -0.88809, -1.46232, -2.10577, 1.86594],
                             [-1.40208, 0.39789, -0.07873, -0.97178, -1.9523, -1.72438, 1.0718]])
    torch.testing.assert_close(logits, recorded, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", list(MODELS))
def test_valence_arousal_head_leaves_the_logits_alone_and_is_rebuilt_from_the_config(name, tmp_path):
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(0)
    plain = create_model(name, 5, 1, 32, 8).eval()
    torch.manual_seed(0)
    headed = create_model(name, 5, 1, 32, 8, valence_arousal=True).eval()
    assert "valence_arousal" not in plain.config and headed.config["valence_arousal"] is True
    with torch.no_grad():
        assert torch.equal(plain(x), headed(x))  # the head draws no random numbers and changes no logit
        assert valence_arousal(plain) is None and valence_arousal(headed).shape == (3, 2)
    paths = {}
    for key, model in (("plain", plain), ("headed", headed)):
        with torch.no_grad():  # weights that give answers other than the initial zeros
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
        paths[key] = tmp_path / f"{key}.pt"
        save_checkpoint(dict(format=CHECKPOINT_FORMAT, model_config=model.config, model=model.state_dict(),
                             classes=list("abcde")), paths[key])
    # A checkpoint written before the head existed (no key in its config) rebuilds the same model, bit for bit.
    rebuilt, _ = load_model(paths["plain"])
    assert rebuilt.config == plain.config and rebuilt.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), plain(x)) and valence_arousal(rebuilt) is None
        rebuilt, _ = load_model(paths["headed"])
        assert torch.equal(rebuilt(x), headed(x))
        assert torch.equal(valence_arousal(rebuilt), valence_arousal(headed))
        assert 0 < valence_arousal(rebuilt).abs().max() <= 1
    headed.train()(x)  # an output with its autograd graph: the EMA's copy must not carry it
    assert valence_arousal(copy.deepcopy(headed)) is None
    with pytest.raises(CheckpointError, match="valence_arousal expected False, found True"):
        load_checkpoint(paths["headed"], create_model(name, 5, 1, 32, 8))



def test_pool_resnet_is_the_scripts_size_and_its_first_stage_sees_the_full_face():
    """Issue 13's script: 0.49 M parameters at width 16, 4 stages of one residual block each, the first
    on the full 48 px face. Over 64 px a stride-2 stem and max-pool divide the side by 4 first (224 -> 56),
    and odd sides keep their last row (ceil-mode pools)."""
    model = create_model("pool_resnet", 7, 1, 48, 16).eval()
    assert 485_000 <= count_parameters(model) <= 495_000
    large = create_model("pool_resnet", 7, 3, 224, 8).eval()
    odd = create_model("pool_resnet", 7, 1, 45, 8).eval()
    sides = {}
    for key, net in (("small", model), ("large", large), ("odd", odd)):
        sides[key] = []
        for stage in net.stages:
            stage.register_forward_hook(lambda _m, _i, out, kept=sides[key]: kept.append(out.shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 1, 48, 48))
        assert large(torch.randn(1, 3, 224, 224)).shape == (1, 7)
        assert odd(torch.randn(2, 1, 45, 45)).shape == (2, 7)
    assert sides == {"small": [48, 24, 12, 6], "large": [56, 28, 14, 7], "odd": [45, 23, 12, 6]}


@pytest.mark.parametrize("shortcut", SHORTCUTS)
def test_small_resnet_odd_sides_keep_shortcut_and_branch_aligned(shortcut):
    """conv1 (3x3, stride 2, padding 1) gives ceil(side / 2); the shortcut must give the same side."""
    model = create_model("resnet", 7, 1, 100, 8, shortcut=shortcut).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 100, 100)).shape == (2, 7)


def test_pretrained_resnet18_without_cache_warns_or_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.warns(UserWarning, match="not cached at .*resnet18-f37072fd.pth; training from scratch"):
        model = create_model("resnet18", 7, pretrained=True)
    assert model.conv1.in_channels == 1
    with pytest.raises(FileNotFoundError, match="not cached"):
        create_model("resnet18", 7, pretrained=True, require_weights=True)
    with pytest.raises(ValueError, match="only for resnet18"):
        create_model("resnet", 7, pretrained=True)


def test_pretrained_resnet18_from_cache_averages_rgb_filters(tmp_path, monkeypatch):
    from torchvision.models import resnet18
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    torch.manual_seed(1)
    imagenet = resnet18(weights=None).state_dict()  # stands in for the cached ImageNet weights
    resnet18_weights_path().parent.mkdir(parents=True)
    torch.save(imagenet, resnet18_weights_path())
    gray = create_model("resnet18", 5, in_channels=1, pretrained=True)
    assert torch.allclose(gray.conv1.weight, imagenet["conv1.weight"].mean(1, keepdim=True))
    assert torch.equal(gray.layer1[0].conv1.weight, imagenet["layer1.0.conv1.weight"])
    assert gray.fc[-1].out_features == 5
    rgb = create_model("resnet18", 5, in_channels=3, pretrained=True)
    assert torch.equal(rgb.conv1.weight, imagenet["conv1.weight"])


def test_unet_has_skip_connections_sees_the_whole_face_and_takes_any_side_from_16_px():
    """The ablation's U-Net rung: each decoder level convolves the upsampled deeper map together with the
    encoder's map of its size (the skip connections), the output depends on (nearly) every pixel of the
    face, the mouth included, at initialisation, and any side from the registry's minimum works."""
    model = create_model("unet", 7, 1, 48, 8)
    assert [level[0].in_channels for level in model.up] == [64 + 32, 32 + 16, 16 + 8]
    torch.manual_seed(0)
    reached = pixels_reached(create_model("unet", 7, 1, 48, 16), train=False)
    assert reached.float().mean() >= 0.95 and reached[32:].float().mean() >= 0.95
    with torch.no_grad():
        for side in (MODELS["unet"].min_image_size, 33, 100):
            assert model.eval()(torch.randn(2, 1, side, side)).shape == (2, 7)
