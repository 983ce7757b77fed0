"""Model factory: output shapes, topology promises, offline-only pretrained weights."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from torchvision.ops import DropBlock2d

from fer_utils.engine.models import MODELS, StridedPointwise, create_model, resnet18_weights_path


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
    with pytest.raises(ValueError, match="baseline_cnn, regularized_cnn, resnet, resnet18"):
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


def test_small_resnet_trains_in_channels_last_on_cpu():
    """Width 8 at 48 px in channels_last once segfaulted in backward (oneDNN's strided 1x1 weight
    gradient); run in a child process so a crash fails this test instead of killing the suite."""
    code = (
        "import torch\n"
        "from fer_utils.engine.models import create_model\n"
        "torch.set_num_threads(1)\n"
        "m = create_model('resnet', 7, 1, 48, 8).to(memory_format=torch.channels_last)\n"
        "x = torch.randn(16, 1, 48, 48).contiguous(memory_format=torch.channels_last)\n"
        "torch.nn.functional.cross_entropy(m(x), torch.randint(0, 7, (16,))).backward()\n"
        "print(float(m.stem[0].weight.grad.abs().sum()) > 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.strip() == "True"


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
