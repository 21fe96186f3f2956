"""The network builders adapt to channels, image size and number of classes."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tuckerflow.train.models import MODELS, build_model, layer_parameter_counts  # noqa: E402


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("input_shape", [(1, 8, 8), (3, 28, 28)])
def test_models_map_images_to_class_logits(name, input_shape):
    torch.manual_seed(0)
    model = MODELS[name](input_shape[0], input_shape[1:], 7)
    if name == "resnet18":
        model = MODELS[name](input_shape[0], input_shape[1:], 7, width=4)
    out = model(torch.randn(3, *input_shape))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_lenet5_has_the_caffe_layer_sizes_on_mnist():
    model = build_model("lenet5", (1, 28, 28), 10)
    counts = layer_parameter_counts(model)
    assert counts == {
        "conv1": ("conv", 20 * 1 * 5 * 5 + 20),
        "conv2": ("conv", 50 * 20 * 5 * 5 + 50),
        "fc1": ("linear", 500 * 800 + 500),
        "fc2": ("linear", 10 * 500 + 10),
    }


def test_bad_model_arguments():
    with pytest.raises(ValueError, match=r"model='alexnet' is not one of"):
        build_model("alexnet", (1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"num_classes=1 must be at least 2"):
        build_model("lenet5", (1, 8, 8), 1)
    with pytest.raises(ValueError, match=r"input_shape=\(8, 8\) must be \(C, H, W\)"):
        build_model("lenet5", (8, 8), 10)


@pytest.mark.parametrize("input_shape", [(1, 1, 1), (1, 3, 3), (2, 30, 3)])
def test_lenet5_refuses_images_too_small_for_its_layers(input_shape):
    with pytest.raises(ValueError, match=r"is too small for lenet5: .* at least 4×4 pixels"):
        build_model("lenet5", input_shape, 3)
    assert build_model("lenet5", (1, 4, 4), 3)(torch.zeros(2, 1, 4, 4)).shape == (2, 3)


def test_sizes_are_integers_not_rounded():
    assert build_model("lenet5", (np.int64(1), 8, 8), 3)(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
    # in_channels=2.7 built a 2-channel network, inf raised OverflowError, a negative width
    # a RuntimeError from torch
    cases = [
        (lambda: MODELS["lenet5"](2.7, 8, 3), TypeError, r"in_channels=2.7 must be an integer"),
        (lambda: MODELS["lenet5"](1, 8, math.inf), TypeError, r"num_classes=inf must be an"),
        (lambda: MODELS["resnet18"](math.inf, 8, 3), TypeError, r"in_channels=inf must be an"),
        (lambda: MODELS["lenet5"](1, 8.0, 3), TypeError, r"image_size=8.0 must be a positive"),
        (lambda: MODELS["lenet5"](1, (8, 0), 3), ValueError, r"image_size\[1\]=0 must be at"),
        (lambda: MODELS["lenet5"](1, (8,), 3), ValueError, r"image_size=\(8,\) must be a"),
        (lambda: MODELS["resnet18"](1, 8, 3, width=2.5), TypeError, r"width=2.5 must be an"),
        (lambda: MODELS["vgg_small"](1, 8, 3, widths=(-1,)), ValueError, r"widths\[0\]=-1 must"),
        (lambda: MODELS["vgg_small"](1, 8, 3, widths=()), ValueError, r"widths=\(\) gives no"),
        (lambda: MODELS["vgg_small"](1, 8, 3, widths=slice(1)), TypeError, "widths=slice"),
        (lambda: build_model("lenet5", (1, 8.5, 8), 3), TypeError, r"input_shape\[1\]=8.5"),
        (lambda: build_model("lenet5", "188", 3), TypeError, "input_shape='188' must be"),
        (lambda: build_model(None, (1, 8, 8), 3), ValueError, "model=None is not one of"),
    ]
    for build, error, message in cases:
        with pytest.raises(error, match=message):
            build()
