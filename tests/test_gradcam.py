"""Our GradCAM against the reference implementation (pytorch-grad-cam, a test-only dependency) on every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from melanoma.classifiers.registry import build_model
from melanoma.evaluation import gradcam
from melanoma.params import ARCHS
from tests.tiny import TINY_MODELS


def reference(arch: str, model: torch.nn.Module, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    at = gradcam.target(arch, model, x.shape[-1])
    with GradCAM(model=model, target_layers=[at.layer], reshape_transform=at.fold) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])


@pytest.mark.parametrize("arch", ARCHS)
def test_cams_equal_pytorch_grad_cam(arch):
    torch.manual_seed(0)
    # 128 px: every family's explained layer is at least 4 x 4 there (at 32 px the CNNs' is 1 x 1: a blank map)
    model = build_model(arch, TINY_MODELS[arch], 2, 128).model
    x = torch.randn(4, 3, 128, 128)
    classes = [0, 1, 1, 0]
    ours = gradcam.cams(arch, model, x, classes)
    theirs = reference(arch, model, x, classes)
    assert ours.shape == theirs.shape == (4, 128, 128) and ours.dtype == np.float32
    assert ours.min() >= 0 and ours.max() <= 1 and ours.max() > 0.99  # scaled per image
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    # a map for the other class is a different explanation, not the same picture
    assert np.abs(gradcam.cams(arch, model, x, [1 - c for c in classes]) - ours).max() > 0.05


@pytest.mark.parametrize("arch", ARCHS)
def test_a_layer_with_at_least_4x4_cells_is_explained_at_the_demo_size(arch):
    torch.manual_seed(0)
    model = build_model(arch, TINY_MODELS[arch], 2, 32).model
    at = gradcam.target(arch, model, 32)
    assert min(at.cells) >= gradcam.MIN_CELLS, at
    if arch in ("DenseNet", "ResNet", "MedViT", "Swin"):  # their last map is 32 / 32 = 1 x 1 here
        assert at.name != at.last and at.last_cells == (1, 1)
        assert f"the last layer, {at.last}, is 1 x 1" in at.describe(32)
    heat = gradcam.cams(arch, model, torch.randn(2, 3, 32, 32), [1, 0], at)
    # a map, not a uniform wash (an untrained net may give one class an all-negative, i.e. zero, map)
    assert heat.shape == (2, 32, 32) and heat.std(axis=(1, 2)).max() > 0.05
    # at 128 px the last layer is already 4 x 4: nothing shallower is chosen
    assert gradcam.target(arch, build_model(arch, TINY_MODELS[arch], 2, 128).model, 128).name == at.last


def test_blend_is_close_to_pytorch_grad_cam():
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    heat = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    ours = gradcam.blend(image, heat)
    theirs = show_cam_on_image(image.astype(np.float32) / 255, heat, use_rgb=True, image_weight=0.6)
    assert ours.dtype == np.uint8 and ours.shape == (8, 8, 3)
    # jet by formula vs OpenCV's jet table: the same colour map up to a few grey levels
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 6


def test_overlay_enlarges_and_carries_a_colour_bar_and_its_caption():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    heat = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    plain = gradcam.overlay(image, heat, scale=8)
    assert plain.shape == (64, 64 + 34, 3) and (plain[:64, :64][::8, ::8] == gradcam.blend(image, heat)).all()
    bar = plain[6:58, 64 + 4 : 64 + 12].astype(int)
    assert bar[0, 0, 0] > 100 and bar[0, 0, 2] < 50  # red at the top (1)
    assert bar[-1, 0, 2] > 100 and bar[-1, 0, 0] < 50  # blue at the bottom (0)
    captioned = gradcam.overlay(image, heat, scale=8, caption="true positive  P=0.83")
    assert captioned.shape == (64 + 14, 64 + 34, 3) and (captioned[14:] == plain).all()
    assert (captioned[:14, :64] < 128).sum() > 30  # the caption's dark text is drawn


def test_overlays_are_sized_for_viewing_not_a_fixed_enlargement():
    """A 224 px study image stays 224 px (4x made 896 px PNGs, ~65 MB of report at study size); a 32 px demo image
    is enlarged to 256 px; predict uses the same rule."""
    assert [gradcam.view_scale(s) for s in (32, 64, 100, 224, 512)] == [8, 4, 2, 1, 1]
    heat = np.zeros((224, 224), np.float32)
    assert gradcam.overlay(np.zeros((224, 224, 3), np.uint8), heat).shape == (224, 224 + 34, 3)
    assert gradcam.overlay(np.zeros((32, 32, 3), np.uint8), heat[:32, :32]).shape == (256, 256 + 34, 3)


def test_an_all_zero_map_says_so_in_its_caption():
    image = np.full((8, 8, 3), 120, np.uint8)
    empty = gradcam.overlay(image, np.zeros((8, 8), np.float32), scale=8, caption="TN  P=0.10")
    some = gradcam.overlay(image, np.eye(8, dtype=np.float32), scale=8, caption="TN  P=0.10")
    assert (empty[:14] < 128).sum() > (some[:14] < 128).sum() + 20  # "  empty map" is added to the caption
