"""The network builders adapt to channels, image size and number of classes."""

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
