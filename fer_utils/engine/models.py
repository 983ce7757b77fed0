"""Model factory: the original study's plain CNN, its regularised twin, a small
ResNet sized for 48-224 px faces, a ResNet-9-style net whose first stage sees the
full face (pool_resnet), a small U-Net classifier, and torchvision's ResNet-18.

Every model takes `in_channels` (1 = grayscale, 3 = RGB) and carries a plain
`config` dict (name, num_classes, in_channels, image_size, width, dropout,
dropblock; the small ResNet also its `shortcut` version; a model with a
valence/arousal head also `valence_arousal: True`) that checkpoints store, so a
checkpoint can be checked against, or rebuilt into, the model it belongs to
(`model_from_config`).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import DropBlock2d

from ..config.registry import MODELS



# -- plain CNN (baseline and regularised) ------------------------------------

def _cnn_stages(image_size: int) -> int:
    """Halve the image until it is at most 8 px (3 stages at 48 px, 4 at 96, 5 at 224)."""
    stages, side = 0, image_size
    while side > 8 and stages < 5:
        side //= 2
        stages += 1
    return max(stages, 3)


def _plain_cnn(num_classes, in_channels, image_size, width, regularized, dropout=0.0, dropblock=0.0):
    """Stages of two 3x3 convs + 2x2 max-pool (widths w, 2w, 4w, 8w, 8w), flatten, one hidden FC."""
    stages = _cnn_stages(image_size)
    layers, c_in, side = [], in_channels, image_size
    for i in range(stages):
        c_out = width * 2 ** min(i, 3)
        for j in range(2):
            layers.append(nn.Conv2d(c_in if j == 0 else c_out, c_out, 3, padding=1, bias=not regularized))
            if regularized:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.MaxPool2d(2))
        # DropBlock only in the last two stages: early maps are too large and too generic to benefit; and
        # only on maps that hold a 3x3 block (torchvision shrinks it to an even size and fails below that).
        if regularized and dropblock > 0 and i >= stages - 2 and side // 2 >= 3:
            layers.append(DropBlock2d(dropblock, block_size=3))
        c_in, side = c_out, side // 2
    hidden = 16 * width
    head = [nn.Flatten()]
    if regularized:
        head += [nn.Dropout(dropout), nn.Linear(c_in * side * side, hidden, bias=False),
                 nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
    else:
        head += [nn.Linear(c_in * side * side, hidden), nn.ReLU(inplace=True)]
    head.append(nn.Linear(hidden, num_classes))
    model = nn.Sequential(nn.Sequential(*layers), nn.Sequential(*head))
    # He init: without batch norm, PyTorch's default init shrinks the signal at every ReLU layer,
    # and the plain CNN then sits on the class prior for many steps before it learns anything.
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


# -- small ResNet -------------------------------------------------------------

class StridedPointwise(nn.Conv2d):
    """A 1x1 conv with stride s. When the input's channel count is not a multiple of 16 it is computed
    as a 1x1 conv on every s-th pixel (the same result, the same state_dict): oneDNN's CPU weight
    gradient for strided 1x1 convs on channels_last tensors segfaults for such counts at >= 48 px
    (torch 2.14.1; e.g. 8->8, 12->12, 3->64 crash, 16->8 and 32->64 do not). The native kernel is
    about 10% faster per training step at width 16, so it is kept where it is safe."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__(c_in, c_out, 1, stride, bias=False)
        self.subsample_first = c_in % 16 != 0

    def forward(self, x):
        if not self.subsample_first:
            return super().forward(x)
        s = self.stride
        return F.conv2d(x[:, :, ::s[0], ::s[1]], self.weight)


# The small ResNet's architecture versions, recorded in its config as "shortcut". "strided" (the first
# version; what a config without the key means) downsamples with a 1x1 stride-2 conv, which reads one
# pixel in four, and zero-initialises every block's last batch norm: at initialisation the network is
# then its chain of shortcuts, and at 48 px its output depends on 64 of the 2,304 pixels, none below row
# 34 (no mouth). Trained so, the ablation's resnet rung stayed at chance. "avgpool" (ResNet-D, He et al.
# 2019) averages each 2x2 window before a stride-1 1x1 conv, so every pixel reaches the output, and
# zero-initialises only blocks with an identity shortcut, the only ones that then start as identities.
SHORTCUTS = ("avgpool", "strided")  # the current version first
LEGACY_SHORTCUT = "strided"


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """A 3x3 conv (same side), batch norm and ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def large_face_stem(in_channels: int, width: int) -> nn.Sequential:
    """The usual ImageNet stem for faces over 64 px: a stride-2 7x7 conv and a max-pool divide the side by 4."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))


class GlobalPoolClassifier(nn.Module):
    """What the ResNets here share: a stem, stages, then global average pool, dropout and a linear
    classifier; every conv Kaiming-initialised. Subclasses build `stem` and `stages`, then `add_head`."""

    def add_head(self, c_in: int, num_classes: int, dropout: float) -> None:
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.dropout(self.pool(self.stages(self.stem(x))).flatten(1)))


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity or projection shortcut (`shortcut`: see SHORTCUTS)."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if shortcut == "strided" and (stride != 1 or c_in != c_out):
            self.shortcut = nn.Sequential(StridedPointwise(c_in, c_out, stride), nn.BatchNorm2d(c_out))
        elif stride != 1 or c_in != c_out:
            # ceil_mode: the same output side as conv1 (stride 2, padding 1) for odd sides too; the
            # edge windows then average only the pixels they hold.
            pool = [nn.AvgPool2d(stride, ceil_mode=True)] if stride != 1 else []
            self.shortcut = nn.Sequential(*pool, nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(GlobalPoolClassifier):
    """4 stages of 2 basic blocks (widths w, 2w, 4w, 8w), global average pool, dropout, linear.

    Faces of <= 64 px get a stride-1 3x3 stem (a stride-2 stem + max-pool would
    discard most of a 48 px face before the first block); larger images get the
    usual stride-2 7x7 conv + max-pool. At 48 and 96 px the stages then run on the
    same 24-12-6-3 px maps, so the cost per image barely grows with the input.
    `shortcut` picks the architecture version (see SHORTCUTS); "strided" is the
    legacy one that old checkpoints were trained with.
    """

    def __init__(self, num_classes, in_channels=1, image_size=48, width=16, dropout=0.0,
                 shortcut: str = SHORTCUTS[0]):
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut '{shortcut}'; valid: {', '.join(SHORTCUTS)}")
        if image_size <= 64:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        else:
            self.stem = large_face_stem(in_channels, width)
        # Small faces: stride-1 stem, then every stage halves (48 px -> 24, 12, 6, 3).
        # Large faces: the stem already divides by 4, so stage 1 keeps it (224 px -> 56, 28, 14, 7).
        strides = (2, 2, 2, 2) if image_size <= 64 else (1, 2, 2, 2)
        stages, c_in = [], width
        for i, stride in enumerate(strides):
            c_out = width * 2 ** i
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, stride, shortcut),
                                        BasicBlock(c_out, c_out, 1, shortcut)))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.add_head(c_in, num_classes, dropout)
        for m in self.modules():  # zero-init the last BN of a block: the block starts as its shortcut
            if isinstance(m, BasicBlock) and (shortcut == "strided" or isinstance(m.shortcut, nn.Identity)):
                nn.init.zeros_(m.bn2.weight)


class ResidualPair(nn.Module):
    """x + two conv-BN-ReLU at the same width and side (the residual of Myrtle.ai's ResNet-9)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn_relu(channels, channels), _conv_bn_relu(channels, channels))

    def forward(self, x):
        return x + self.body(x)


class PoolResNet(GlobalPoolClassifier):
    """4 stages (widths w, 2w, 4w, 8w), each a conv-BN-ReLU, a 2x2 max-pool (not in the first stage) and
    one ResidualPair; global average pool, dropout, linear. The layout of Myrtle.ai's ResNet-9 (Page,
    "How to train your ResNet", 2018) with a fourth stage.

    Why it exists: issue 13's 60-line script (0.49 M parameters at width 16, 4 stages, one residual
    block each; this layout has that count) beat the small ResNet's recipe. Its first stage runs on the
    full 48 px face and each stage convolves three times at its side: 3.7x the small ResNet's
    multiply-adds per face (75 M against 20 M at width 16), trained at about 40% of its images/s.
    Faces over 64 px first get the small ResNet's stride-2 7x7 stem and max-pool (224 px -> 56), so the
    cost stays bounded on AffectNet.
    """

    def __init__(self, num_classes, in_channels=1, image_size=48, width=16, dropout=0.0):
        super().__init__()
        self.stem = large_face_stem(in_channels, width) if image_size > 64 else nn.Identity()
        stages, c_in = [], width if image_size > 64 else in_channels
        for i in range(4):
            c_out = width * 2 ** i
            pool = [nn.MaxPool2d(2, ceil_mode=True)] if i else []  # ceil: odd sides keep their last row
            stages.append(nn.Sequential(_conv_bn_relu(c_in, c_out), *pool, ResidualPair(c_out)))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.add_head(c_in, num_classes, dropout)


# -- small U-Net --------------------------------------------------------------

def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    """One level of the U: two 3x3 convs, each with batch norm and ReLU."""
    return nn.Sequential(*_conv_bn_relu(c_in, c_out), *_conv_bn_relu(c_out, c_out))  # flat: its keys 0-5


class SmallUNet(nn.Module):
    """The U-shaped network the original study named (Ronneberger et al. 2015), as a classifier: an encoder of
    three double-conv levels (widths w, 2w, 4w) and a bottleneck (8w), each a 2x2 max-pool below the last,
    and a decoder that upsamples back level by level, concatenates the encoder's map of the same size (the
    skip connections) and applies a double conv. The head reads only the last decoder map, as the
    original's 1x1 head does: a 1x1 conv widens its w channels to 8w (with batch norm and ReLU, as
    MobileNetV2's last conv: with the w channels pooled directly, the default ablation's U-Net reached
    val macro-F1 0.24 after 9 of its 10 epochs), then global average pool, dropout, linear. Everything
    the logits see passes through that conv (the layer Grad-CAM weighs, `analysis.saliency.feature_layer`).

    A stride-1 3x3 stem and a max-pool put the U on half the input side (48 px -> 24, 12, 6, 3): a decoder
    at full resolution would cost more than the rest of the network together on a CPU. The decoder
    upsamples bilinearly to the skip's exact size, so odd sides work; the smallest input is 16 px (1 px at
    the bottom).
    """

    def __init__(self, num_classes, in_channels=1, width=16, dropout=0.0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(2))
        widths = [width * 2 ** i for i in range(4)]  # w, 2w, 4w (encoder levels), 8w (bottleneck)
        self.down = nn.ModuleList(_double_conv(c_in, c_out) for c_in, c_out in zip([width] + widths, widths))
        self.up = nn.ModuleList(_double_conv(c_deep + c_skip, c_skip)
                                for c_deep, c_skip in zip(widths[:0:-1], widths[-2::-1]))
        self.head = nn.Sequential(nn.Conv2d(width, widths[-1], 1, bias=False), nn.BatchNorm2d(widths[-1]),
                                  nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.stem(x)
        skips = []
        for i, level in enumerate(self.down):
            x = level(x if i == 0 else self.pool(x))
            skips.append(x)
        for level, skip in zip(self.up, skips[-2::-1]):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = level(torch.cat([x, skip], 1))
        return self.fc(self.dropout(self.head(x).mean((2, 3))))


# -- valence/arousal head --------------------------------------------------------

class ValenceArousalHead(nn.Module):
    """A model's classifier (the last linear layer, `classifier`) and, on the same features, a regressor of
    valence and arousal (`regressor`: 2 outputs through tanh, in [-1, 1] as the annotations are).

    `forward` returns the logits, so `model(x)` stays the classifier for every caller (inference, Grad-CAM,
    export); the (N, 2) valence/arousal of that forward pass is kept in `output` (read it with
    `valence_arousal(model)`). One pass gives both, as joint training needs. The regressor starts at zero
    (every face at valence = arousal = 0) and draws nothing from the random stream, so the classifier path
    is initialised exactly as without the head."""

    def __init__(self, classifier: nn.Linear):
        super().__init__()
        self.classifier = classifier
        self.regressor = nn.Linear(classifier.in_features, 2)
        nn.init.zeros_(self.regressor.weight)
        nn.init.zeros_(self.regressor.bias)
        self.output: torch.Tensor | None = None

    def forward(self, h):
        self.output = torch.tanh(self.regressor(h))
        return self.classifier(h)

    def __getstate__(self):  # copies (the EMA's deepcopy, pickling) leave the last pass's output (and graph) behind
        return {**self.__dict__, "output": None}


def add_valence_arousal_head(model: nn.Module) -> None:
    """Replace the model's classifier, the last nn.Linear (the final layer of every architecture here), by a
    ValenceArousalHead around it."""
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent, _, child = name.rpartition(".")
    owner = model.get_submodule(parent)
    setattr(owner, child, ValenceArousalHead(getattr(owner, child)))


def valence_arousal(model: nn.Module) -> torch.Tensor | None:
    """The (N, 2) valence and arousal of the model's last forward pass; None for a model without the head."""
    head = next((m for m in model.modules() if isinstance(m, ValenceArousalHead)), None)
    return None if head is None else head.output


# -- torchvision ResNet-18 ----------------------------------------------------

def resnet18_weights_path() -> Path:
    """Where torchvision would cache ResNet-18's ImageNet weights (torch hub dir/checkpoints)."""
    from torchvision.models import ResNet18_Weights
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(ResNet18_Weights.IMAGENET1K_V1.url).name


def _resnet18(num_classes, in_channels, dropout, pretrained, require_weights):
    from torchvision.models import resnet18
    model = resnet18(weights=None)
    state = None
    if pretrained:
        path = resnet18_weights_path()
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:  # never download: the project must run offline
            message = f"ImageNet weights for resnet18 are not cached at {path}"
            if require_weights:
                raise FileNotFoundError(message + "; copy resnet18-f37072fd.pth there or set pretrained=False")
            warnings.warn(message + "; training from scratch", stacklevel=3)
    if state is not None:
        model.load_state_dict(state)
    if in_channels != 3:
        conv = model.conv1
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        if state is not None:  # grayscale: the mean RGB filter responds to luminance as the original did
            with torch.no_grad():
                model.conv1.weight.copy_(conv.weight.mean(1, keepdim=True).expand(-1, in_channels, -1, -1))
    model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(model.fc.in_features, num_classes))
    return model


def create_model(name: str, num_classes: int, in_channels: int = 1, image_size: int = 48, width: int = 32,
                 dropout: float = 0.0, dropblock: float = 0.0, pretrained: bool = False,
                 require_weights: bool = False, shortcut: str = SHORTCUTS[0],
                 valence_arousal: bool = False) -> nn.Module:
    """Build a model by name (one of config.registry.MODELS) with its `build_<name>` function.

    `pretrained` only applies to resnet18 and never downloads: weights are used if
    cached locally (see `resnet18_weights_path`); otherwise a warning says so and the
    model trains from scratch, or, with `require_weights=True`, FileNotFoundError.
    The plain CNNs' dense head is sized for `image_size`, so they need inputs of that size.
    `shortcut` is the small ResNet's architecture version (SHORTCUTS; new models get the
    current one, `model_from_config` rebuilds what a checkpoint was trained with).
    `valence_arousal`: add a ValenceArousalHead (recorded in the config only when present, so configs
    written before it existed rebuild the same model).
    """
    if pretrained and name != "resnet18":
        raise ValueError(f"pretrained weights exist only for resnet18, not '{name}'")
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; valid names: {', '.join(MODELS)}")
    model = globals()[f"build_{name}"](num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                                       width=width, dropout=dropout, dropblock=dropblock, pretrained=pretrained,
                                       require_weights=require_weights, shortcut=shortcut)
    model.config = dict(name=name, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                        width=width, dropout=dropout, dropblock=dropblock)
    if name == "resnet":
        model.config["shortcut"] = shortcut
    if valence_arousal:
        add_valence_arousal_head(model)
        model.config["valence_arousal"] = True
    return model


def model_from_config(config: dict) -> nn.Module:
    """Rebuild the model a checkpoint's `model_config` describes (untrained weights). A small ResNet
    config without "shortcut" was written before the architecture versions existed, so it gets the
    legacy architecture it was trained with (its weights do not fit the current one: the avgpool
    shortcut shifts the names of the projection's weights)."""
    return create_model(config["name"], config["num_classes"], config["in_channels"], config["image_size"],
                        config["width"], config["dropout"], config["dropblock"],
                        shortcut=config.get("shortcut", LEGACY_SHORTCUT),
                        valence_arousal=config.get("valence_arousal", False))


# -- the builders config.registry.MODELS names: build_<name>(**every create_model argument) --

def build_baseline_cnn(num_classes, in_channels, image_size, width, **_):
    return _plain_cnn(num_classes, in_channels, image_size, width, regularized=False)


def build_regularized_cnn(num_classes, in_channels, image_size, width, dropout, dropblock, **_):
    return _plain_cnn(num_classes, in_channels, image_size, width, True, dropout, dropblock)


def build_resnet(num_classes, in_channels, image_size, width, dropout, shortcut, **_):
    return SmallResNet(num_classes, in_channels, image_size, width, dropout, shortcut)


def build_pool_resnet(num_classes, in_channels, image_size, width, dropout, **_):
    return PoolResNet(num_classes, in_channels, image_size, width, dropout)


def build_unet(num_classes, in_channels, width, dropout, **_):
    return SmallUNet(num_classes, in_channels, width, dropout)


def build_resnet18(num_classes, in_channels, dropout, pretrained, require_weights, **_):
    return _resnet18(num_classes, in_channels, dropout, pretrained, require_weights)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module) -> int:
    """Floating-point operations of one forward pass over one face of the model's input size (torch's
    FlopCounterMode: convolutions and matrix products, which dominate these models' cost)."""
    cfg = model.config
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, cfg["in_channels"], cfg["image_size"], cfg["image_size"]))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
