"""kcnn.arithmetic checked against Keras' own shape inference, real convolutions and published numbers."""
import itertools

import numpy as np
import pytest

import keras
import kcnn
from kcnn.arithmetic import (
    ReceptiveField,
    conv_output_size,
    padding_for,
    receptive_field,
    same_padding,
)

SIZES = range(1, 13)
KERNELS = (1, 2, 3, 4, 5, 7)
DILATIONS = (1, 2, 3)


def keras_conv_size(size, kernel, stride, padding, dilation):
    """Spatial output size by Keras' own shape inference (height and width differ to test both axes)."""
    layer = keras.layers.Conv2D(1, kernel, strides=stride, padding=padding, dilation_rate=dilation)
    return layer.compute_output_shape((1, size, size + 1, 1))[1:3]


# ----------------------------------------------------------------------------------------------------------
# conv_output_size
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_conv_output_size_matches_keras_shape_inference(padding, stride):
    # Keras refuses stride > 1 together with dilation > 1, so those pairs are left to the formula tests.
    dilations = DILATIONS if stride == 1 else (1,)
    checked = 0
    for size, kernel, dilation in itertools.product(SIZES, KERNELS, dilations):
        args = dict(kernel=kernel, stride=stride, padding=padding, dilation=dilation)
        span = dilation * (kernel - 1) + 1
        if padding == "valid" and size < span:
            # The kernel does not fit the height: both Keras and kcnn refuse.
            with pytest.raises(ValueError):
                keras_conv_size(size, kernel, stride, padding, dilation)
            with pytest.raises(ValueError, match="output size would be < 1"):
                conv_output_size(size, **args)
            continue
        expected = keras_conv_size(size, kernel, stride, padding, dilation)
        assert (conv_output_size(size, **args), conv_output_size(size + 1, **args)) == expected
        checked += 1
    assert checked > 50


def test_conv_output_size_same_stride2_odd_and_even():
    # ceil(w / 2): the odd sizes round up.
    assert [conv_output_size(w, 3, 2, "same") for w in (7, 8, 9, 224, 225)] == [4, 4, 5, 112, 113]
    assert [conv_output_size(w, 3, 2, "valid") for w in (7, 8, 9, 224, 225)] == [3, 3, 4, 111, 112]
    for w in (7, 8, 9, 224, 225):
        assert keras_conv_size(w, 3, 2, "same", 1)[0] == conv_output_size(w, 3, 2, "same")


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_conv_output_size_matches_keras_pooling(padding):
    for size, pool, stride in itertools.product(SIZES, (1, 2, 3), (1, 2, 3)):
        layer = keras.layers.MaxPooling2D(pool, strides=stride, padding=padding)
        if padding == "valid" and size < pool:
            with pytest.raises(ValueError):
                conv_output_size(size, pool, stride, padding)
            continue
        expected = layer.compute_output_shape((1, size, size + 1, 1))[1:3]
        got = tuple(conv_output_size(w, pool, stride, padding) for w in (size, size + 1))
        assert got == expected


def test_conv_output_size_integer_and_tuple_padding_match_zero_padding_then_valid():
    grid = itertools.product((3, 6, 9), (1, 3, 4), (1, 2), (0, 1, 2), (0, 1, 3))
    for size, kernel, stride, before, after in grid:
        padded = keras.layers.ZeroPadding2D(((before, after), (before, before))).compute_output_shape(
            (1, size, size, 1)
        )
        if min(padded[1:3]) < kernel:
            continue
        conv = keras.layers.Conv2D(1, kernel, strides=stride, padding="valid")
        out_h, out_w = conv.compute_output_shape(padded)[1:3]
        assert conv_output_size(size, kernel, stride, (before, after)) == out_h
        assert conv_output_size(size, kernel, stride, before) == out_w


def test_conv_output_size_lecture_formula_with_dilation_and_stride():
    # o = floor((w + 2p - d(k-1) - 1)/s) + 1, including stride > 1 with dilation (which PyTorch allows).
    for w, k, s, p, d in itertools.product(range(1, 20), (1, 3, 5), (1, 2, 3), (0, 1, 2), (1, 2, 3)):
        if w + 2 * p < d * (k - 1) + 1:
            continue
        assert conv_output_size(w, k, s, p, d) == (w + 2 * p - d * (k - 1) - 1) // s + 1
    assert conv_output_size(224, 7, 2, 3) == 112  # ResNet stem
    assert conv_output_size(32, 3, 1, 2, dilation=2) == 32  # dilated "same"
    assert conv_output_size(10, 3, 2, "causal") == 5
    assert conv_output_size(10, 3, 1, "SAME") == 10


def test_conv_output_size_none_size_is_none():
    assert conv_output_size(None, 3, 2, "same") is None
    unknown = keras.layers.Conv2D(1, 3, strides=2, padding="same").compute_output_shape((1, None, None, 1))
    assert unknown == (1, None, None, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size=0, kernel=3), r"`size` must be an integer >= 1\. Received: size=0$"),
        (dict(size=2.5, kernel=3), r"Received: size=2\.5$"),
        (dict(size=8, kernel=0), r"`kernel`.*Received: kernel=0$"),
        (dict(size=8, kernel=3, stride=0), r"`stride`.*Received: stride=0$"),
        (dict(size=8, kernel=3, dilation=0), r"`dilation`.*Received: dilation=0$"),
        (dict(size=8, kernel=3, padding="full"), r"`padding`.*Received: padding='full'$"),
        (dict(size=8, kernel=3, padding=-1), r"`padding`.*Received: padding=-1$"),
        (dict(size=8, kernel=3, padding=(1,)), r"\(before, after\).*Received: padding=\(1,\)$"),
        (dict(size=3, kernel=5), r"spans 5 pixels.*Received: size=3, kernel=5, stride=1, padding=0"),
        (dict(size=4, kernel=3, dilation=2, padding="valid"), r"spans 5 pixels.*has only 4"),
    ],
)
def test_conv_output_size_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        conv_output_size(**kwargs)


# ----------------------------------------------------------------------------------------------------------
# same_padding: the padding Keras actually applies
# ----------------------------------------------------------------------------------------------------------


def test_same_padding_reproduces_keras_same_convolutions():
    rng = np.random.default_rng(0)
    cases = 0
    for height, kernel, stride in itertools.product(range(5, 11), (1, 2, 3, 4), (1, 2, 3)):
        width = height + 1  # one odd and one even axis per case
        x = rng.normal(size=(1, height, width, 1)).astype("float32")
        w = rng.normal(size=(kernel, kernel, 1, 1)).astype("float32")
        same = keras.ops.convert_to_numpy(keras.ops.conv(x, w, strides=stride, padding="same"))
        pad_h = same_padding(kernel, stride, size=height)
        pad_w = same_padding(kernel, stride, size=width)
        padded = np.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
        valid = keras.ops.convert_to_numpy(keras.ops.conv(padded, w, strides=stride, padding="valid"))
        assert same.shape[1:3] == (conv_output_size(height, kernel, stride, "same"),
                                   conv_output_size(width, kernel, stride, "same"))
        np.testing.assert_allclose(same, valid, rtol=1e-5, atol=1e-5)
        cases += 1
    assert cases == 72


def test_same_padding_is_asymmetric_at_stride_2_unlike_pytorch():
    assert same_padding(3) == (1, 1)
    assert same_padding(5, dilation=2) == (4, 4)
    assert same_padding(4) == (1, 2)  # even kernel: more at bottom/right
    assert same_padding(3, stride=2, size=224) == (0, 1)
    assert same_padding(3, stride=2, size=225) == (1, 1)
    assert same_padding(7, stride=2, size=224) == (2, 3)
    assert same_padding(1, stride=2, size=8) == (0, 0)
    # PyTorch-style symmetric padding=1 gives the same 112 size but a shifted grid, hence other numbers.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 224, 224, 1)).astype("float32")
    w = rng.normal(size=(3, 3, 1, 1)).astype("float32")
    keras_same = keras.ops.convert_to_numpy(keras.ops.conv(x, w, strides=2, padding="same"))
    symmetric = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    torch_like = keras.ops.convert_to_numpy(keras.ops.conv(symmetric, w, strides=2, padding="valid"))
    assert keras_same.shape == torch_like.shape == (1, 112, 112, 1)
    assert not np.allclose(keras_same, torch_like)


def test_same_padding_errors():
    with pytest.raises(ValueError, match=r"`size` is required when stride > 1.*Received: size=None$"):
        same_padding(3, stride=2)
    with pytest.raises(ValueError, match=r"Received: kernel=0$"):
        same_padding(0)


# ----------------------------------------------------------------------------------------------------------
# padding_for
# ----------------------------------------------------------------------------------------------------------


def test_padding_for_roundtrip_with_conv_output_size():
    cases = 0
    for w, k, s, d, p in itertools.product(range(1, 17), (1, 2, 3, 5), (1, 2, 3), (1, 2), (0, 1, 2, 3)):
        if w + 2 * p < d * (k - 1) + 1:
            continue
        o = conv_output_size(w, k, s, p, d)
        found = padding_for(w, o, k, s, d)
        assert found <= p
        assert conv_output_size(w, k, s, found, d) == o
        cases += 1
    assert cases > 1000


def test_padding_for_raises_exactly_when_no_padding_works():
    for w, k, s, d, o in itertools.product((1, 4, 7, 10), (1, 2, 3, 4), (1, 2, 3), (1, 2), range(1, 14)):
        span = d * (k - 1) + 1
        options = [p for p in range(0, 30) if w + 2 * p >= span and conv_output_size(w, k, s, p, d) == o]
        if options:
            assert padding_for(w, o, k, s, d) == options[0]
        else:
            with pytest.raises(ValueError, match="No symmetric integer padding"):
                padding_for(w, o, k, s, d)


def test_padding_for_lecture_examples():
    assert [padding_for(32, 32, k) for k in (1, 3, 5, 7)] == [0, 1, 2, 3]  # p = (k - 1) / 2
    assert padding_for(224, 112, 7, stride=2) == 3
    assert padding_for(224, 112, 3, stride=2) == 1
    assert padding_for(32, 32, 3, dilation=2) == 2
    assert padding_for(32, 36, 3) == 3


def test_padding_for_errors_say_what_is_reachable():
    reachable = r"reachable with padding=0, 1, \.\.\.: 29, 31, 33"
    with pytest.raises(ValueError, match=r"cannot be split evenly.*" + reachable):
        padding_for(32, 32, 4)
    with pytest.raises(ValueError, match=r"even without padding the output is 30.*Received: size_out=10$"):
        padding_for(32, 10, 3)
    with pytest.raises(ValueError, match=r"padding=2, 3, \.\.\.: 2, 4, 6"):
        padding_for(2, 1, 5)
    with pytest.raises(ValueError, match=r"Received: size_out=0$"):
        padding_for(32, 0, 3)


# ----------------------------------------------------------------------------------------------------------
# receptive_field
# ----------------------------------------------------------------------------------------------------------

VGG16_FEATURES = [3, 3, (2, 2)] + [3, 3, (2, 2)] + [3, 3, 3, (2, 2)] + [3, 3, 3, (2, 2)] + [3, 3, 3, (2, 2)]


def test_receptive_field_of_stacked_3x3_convs():
    # Simonyan & Zisserman 2014: two 3x3 convs see 5x5, three see 7x7.
    assert receptive_field([3, 3]) == (5, 1)
    assert receptive_field([(3, 1, 1)] * 3) == ReceptiveField(size=7, jump=1)
    assert receptive_field([]) == (1, 1)
    assert receptive_field([3], size=5, jump=2) == (9, 2)


def test_receptive_field_of_vgg16_and_alexnet():
    # Araujo et al. 2019 (Distill), table of receptive fields of the final feature maps: VGG-16 212 px at
    # stride 32, AlexNet 195 px at stride 32. VGG16's conv5_3, one max pool earlier, has 196 px at 16.
    assert receptive_field(VGG16_FEATURES[:-1]) == (196, 16)
    assert receptive_field(VGG16_FEATURES) == (212, 32)
    alexnet = [(11, 4), (3, 2), 5, (3, 2), 3, 3, 3, (3, 2)]
    assert receptive_field(alexnet) == (195, 32)


def test_receptive_field_of_dilated_context_module():
    # Yu & Koltun 2016: 3x3 convs with dilation 1, 2, 4 give 3, 7, 15.
    fields = [receptive_field([(3, 1, 2 ** i) for i in range(n)]).size for n in (1, 2, 3)]
    assert fields == [3, 7, 15]


def test_receptive_field_errors():
    with pytest.raises(ValueError, match=r"`layers\[1\] stride`.*Received: layers\[1\] stride=0$"):
        receptive_field([3, (3, 0)])
    with pytest.raises(ValueError, match=r"Received: layers\[0\]=\(3, 1, 1, 1\)$"):
        receptive_field([(3, 1, 1, 1)])
    with pytest.raises(ValueError, match=r"Received: layers=3$"):
        receptive_field(3)


def test_the_package_exports_the_arithmetic():
    assert kcnn.conv_output_size is conv_output_size and kcnn.receptive_field is receptive_field
    assert kcnn.same_padding is same_padding and kcnn.padding_for is padding_for
    assert kcnn.ReceptiveField is ReceptiveField
