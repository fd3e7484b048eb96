"""Our GradCAM against the reference implementation (pytorch-grad-cam, a test-only dependency) on every family."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from melanoma.classifiers import build_model, family
from melanoma.evaluation import gradcam
from melanoma.params import ARCHS
from tests.tiny import TINY_MODELS


def reference(arch: str, model: torch.nn.Module, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer, reshape = family(arch).gradcam(model)
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
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


def test_overlay_is_close_to_pytorch_grad_cam_and_enlarges():
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    heat = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    ours = gradcam.overlay(image, heat, scale=1)
    theirs = show_cam_on_image(image.astype(np.float32) / 255, heat, use_rgb=True, image_weight=0.6)
    assert ours.dtype == np.uint8 and ours.shape == (8, 8, 3)
    # jet by formula vs OpenCV's jet table: the same colour map up to a few grey levels
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 6
    big = gradcam.overlay(image, heat, scale=4)
    assert big.shape == (32, 32, 3) and (big[::4, ::4] == ours).all()
