"""Grad-CAM at the last feature map (after a ResNet block's skip is added), flip TTA maps, and the share of
a map on the mouth and the eyes from the landmarks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fer_utils.analysis import saliency
from fer_utils.data.synthetic import render_face
from fer_utils.engine.models import MODELS, BasicBlock, ResidualPair, create_model
from fer_utils.engine.transforms import prepare_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def faces(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, size, size), dtype=np.uint8)


@pytest.mark.parametrize("name", MODELS)
def test_the_logits_see_the_input_only_through_the_feature_layer(name):
    """Replacing the feature layer's output by another image's makes the logits that image's: nothing
    bypasses it. Inside a ResNet block (its last Conv2d, where Grad-CAM used to hook) the identity
    path bypasses it, so this fails there."""
    torch.manual_seed(0)
    model = create_model(name, 4, 1, 32, width=8).eval()
    layer = saliency.feature_layer(model)
    expected = {"resnet": lambda m: m.stages[-1][-1], "pool_resnet": lambda m: m.stages[-1][-1],
                "resnet18": lambda m: m.layer4}.get(
        name, lambda m: [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)][-1])  # the plain CNNs
    assert layer is expected(model)
    x1, x2 = (prepare_batch(torch.from_numpy(faces(2, seed=s)), memory_format=torch.contiguous_format)
              for s in (1, 2))
    with torch.no_grad():
        kept = []
        handle = layer.register_forward_hook(lambda _m, _i, out: kept.append(out))
        reference = model(x1)
        handle.remove()
        handle = layer.register_forward_hook(lambda _m, _i, _out: kept[0])
        swapped = model(x2)
        handle.remove()
        assert not torch.allclose(model(x2), reference)
    torch.testing.assert_close(swapped, reference)
    if name == "resnet":
        assert isinstance(layer, BasicBlock)
    if name == "pool_resnet":
        assert isinstance(layer, ResidualPair)


def test_resnet_grad_cam_is_the_manual_one_at_the_last_block_output():
    torch.manual_seed(0)
    model = create_model("resnet", 4, 1, 32, width=8).eval()
    x, targets = faces(3), [0, 1, 3]
    xb = prepare_batch(torch.from_numpy(x), memory_format=torch.contiguous_format)
    features = model.stages(model.stem(xb))  # the last block's output: after the add and its ReLU
    logits = model.fc(model.pool(features).flatten(1))
    grads = torch.autograd.grad(logits[torch.arange(3), targets].sum(), features)[0]
    cam = F.relu((grads.mean((2, 3), keepdim=True) * features).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[:, 0].detach()
    cam = cam / cam.flatten(1).max(1).values[:, None, None]
    np.testing.assert_allclose(saliency.grad_cam(model, x, targets), cam.numpy(), atol=1e-5)


def test_grad_cam_sees_what_the_identity_path_alone_carries():
    """The last block's residual branch switched off: its output is the block's input, passed on by
    the skip connection. The map at the block output still shows evidence; one at the block's last
    Conv2d has none (its batch norm multiplies everything by zero)."""
    torch.manual_seed(0)
    model = create_model("resnet", 4, 1, 32, width=8).eval()
    last = model.stages[-1][-1]
    with torch.no_grad():
        last.bn2.weight.zero_()
        last.bn2.bias.zero_()
    x = faces(4)
    maps = saliency.grad_cam(model, x)
    assert (maps.reshape(4, -1).max(1) == 1).all()
    assert (saliency.grad_cam(model, x, layer=last.conv2) == 0).all()


@pytest.mark.parametrize("name", ["regularized_cnn", "resnet"])
def test_flip_maps_are_mirror_symmetric_for_a_symmetric_face_and_mirror_with_the_face(name):
    torch.manual_seed(0)
    model = create_model(name, 4, 1, 32, width=8).eval()
    x = faces(3)
    symmetric = np.concatenate([x[..., :16], x[..., :16][..., ::-1]], -1)
    maps = saliency.grad_cam(model, symmetric, flip=True)
    np.testing.assert_allclose(maps, maps[..., ::-1], atol=1e-6)
    assert (maps.reshape(3, -1).max(1) == 1).sum() >= 2  # not symmetric by being empty
    # An asymmetric face: the TTA map of its mirror image is the mirror of its TTA map (same answer).
    mirrored = saliency.grad_cam(model, x[..., ::-1].copy(), flip=True)
    np.testing.assert_allclose(mirrored, saliency.grad_cam(model, x, flip=True)[..., ::-1], atol=1e-6)
    assert not np.allclose(saliency.grad_cam(model, x), saliency.grad_cam(model, x, flip=True), atol=1e-3)


def test_occlusion_with_flip_tta_is_mirror_symmetric_for_a_symmetric_face():
    torch.manual_seed(0)
    model = create_model("regularized_cnn", 4, 1, 32, width=8).eval()
    x = faces(2)
    symmetric = np.concatenate([x[..., :16], x[..., :16][..., ::-1]], -1)
    maps = saliency.occlusion(model, symmetric, patch=8, stride=4, flip=True)  # a mirror-symmetric grid
    np.testing.assert_allclose(maps, maps[..., ::-1], atol=1e-5)
    assert maps.max() == 1


def hand_landmarks() -> np.ndarray:
    """68 iBUG points in a 32 px image: eyes in boxes x 6-10 and 22-26, y 10-12 (centres 16 px apart),
    outer lips in x 10-22, y 22-26, everything else (jaw, brows, nose) at the top-left corner."""
    lnd = np.zeros((68, 2))
    ring = np.array([[0, 1], [1, 0], [2, 0], [4, 1], [2, 2], [1, 2]], float)  # 6 points, x 0-4, y 0-2
    lnd[36:42] = ring + [6, 10]
    lnd[42:48] = ring + [22, 10]
    lnd[48:60] = np.array([[x, y] for x in (10, 13, 16, 19, 22, 16) for y in (22, 26)], float)
    return lnd


def test_region_masks_are_the_padded_landmark_boxes():
    masks = saliency.region_masks(hand_landmarks(), 32, pad=0.0)
    mouth, eyes = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    mouth[22:27, 10:23] = True
    eyes[10:13, 6:11] = eyes[10:13, 22:27] = True
    assert (masks["mouth"] == mouth).all() and (masks["eyes"] == eyes).all()
    grown = saliency.region_masks(hand_landmarks(), 32, pad=0.25)  # 0.25 x 16 px between the eye centres
    mouth[18:31, 6:27] = True
    assert (grown["mouth"] == mouth).all()
    eyes[6:17, 2:15] = eyes[6:17, 18:31] = True
    assert (grown["eyes"] == eyes).all()
    wide = saliency.region_masks(hand_landmarks(), 32, pad=0.5)  # boxes that overlap: the mouth keeps its own
    mouth[14:32, 2:31] = True
    assert (wide["mouth"] == mouth).all() and not (wide["eyes"] & wide["mouth"]).any() and wide["eyes"].any()
    # Landmarks of a 64 px image (twice the coordinates, pixel centres) give the same masks on a 32 px map.
    doubled = saliency.region_masks((hand_landmarks() + 0.5) * 2 - 0.5, 32, source_size=64, pad=0.0)
    assert (doubled["mouth"] == masks["mouth"]).all() and (doubled["eyes"] == masks["eyes"]).all()


def test_region_shares_on_hand_made_maps():
    lnd = hand_landmarks()
    on_mouth = np.zeros((32, 32))
    on_mouth[23:26, 12:20] = 1.0
    half_eye = np.zeros((32, 32))
    half_eye[11, 7] = half_eye[0, 31] = 0.5
    uniform = np.ones((32, 32))
    shares = saliency.region_shares(np.stack([on_mouth, half_eye, uniform, np.zeros((32, 32)), uniform]),
                                    [lnd, lnd, lnd, lnd, None], pad=0.0)
    np.testing.assert_allclose(shares.loc[0, ["mouth", "eyes", "other"]], [1, 0, 0])
    np.testing.assert_allclose(shares.loc[1, ["mouth", "eyes", "other"]], [0, 0.5, 0.5])
    np.testing.assert_allclose(shares.loc[2, ["mouth", "eyes"]], [65 / 1024, 30 / 1024])  # uniform = area
    np.testing.assert_allclose(shares.loc[2, ["mouth", "eyes"]].to_numpy(),
                               shares.loc[2, ["mouth_area", "eyes_area"]].to_numpy())
    np.testing.assert_allclose(shares.loc[:2, ["mouth", "eyes", "other"]].sum(axis=1), 1)
    assert shares.loc[3:].isna().all().all()  # an empty map, no landmarks


def test_region_summary_averages_per_class_in_class_order():
    shares = pd.DataFrame(dict(mouth=[0.6, 0.2, 0.4, np.nan], eyes=[0.1, 0.3, 0.1, np.nan],
                               other=[0.3, 0.5, 0.5, np.nan], mouth_area=[0.1] * 3 + [np.nan],
                               eyes_area=[0.05] * 3 + [np.nan]))
    table = saliency.region_summary(shares, ["happy", "sad", "happy", "sad"], classes=["neutral", "sad", "happy"])
    assert list(table.index) == ["sad", "happy"] and list(table["images"]) == [1, 2]
    np.testing.assert_allclose(table.loc["happy", ["mouth", "eyes", "other"]], [0.5, 0.1, 0.4])


def test_synthetic_face_regions_hold_its_mouth_and_eye_landmarks():
    """The synthetic faces' landmarks (iBUG order, pixel centres of the 64 px image) on a 48 px map."""
    _, annotations = render_face(1, np.random.default_rng(3), 64)
    lnd = annotations["landmarks"]
    masks = saliency.region_masks(lnd, 48, source_size=64)
    at48 = np.round((lnd + 0.5) * 48 / 64 - 0.5).astype(int)
    assert masks["mouth"][at48[48:60, 1], at48[48:60, 0]].all()
    assert masks["eyes"][at48[36:48, 1], at48[36:48, 0]].all()
    assert not (masks["mouth"] & masks["eyes"]).any()
    assert 0.02 < masks["mouth"].mean() < 0.25 and 0.02 < masks["eyes"].mean() < 0.25
