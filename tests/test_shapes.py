"""kcnn.shapes checked against Keras' own shape inference, real convolutions and published numbers."""
import itertools

import numpy as np
import pytest

import keras
from kcnn.shapes import (
    ReceptiveField,
    conv_output_size,
    count_macs,
    padding_for,
    receptive_field,
    same_padding,
    summary,
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


# ----------------------------------------------------------------------------------------------------------
# summary and count_macs
# ----------------------------------------------------------------------------------------------------------


def rows_by_name(rows):
    return {row["name"]: row for row in rows}


def tiny_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.Conv2D(6, 1, name="pw")(x)
    x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(5, name="fc")(x)
    return keras.Model(inputs, outputs)


def test_summary_of_tiny_model_checked_by_hand():
    model = tiny_model()
    rows = summary(model, print_fn=None)
    # name: (output_shape, params, receptive field, jump, MACs)
    expected = {
        "image": ((None, 8, 8, 3), 0, 1, 1, 0),
        "conv": ((None, 8, 8, 4), 3 * 3 * 3 * 4 + 4, 3, 1, 8 * 8 * 4 * 3 * 3 * 3),  # 6912 MACs
        "bn": ((None, 8, 8, 4), 4 * 4, 3, 1, 0),
        "relu": ((None, 8, 8, 4), 0, 3, 1, 0),
        "pool": ((None, 4, 4, 4), 0, 4, 2, 0),
        "dw": ((None, 2, 2, 4), 3 * 3 * 4 + 4, 8, 2, 2 * 2 * 4 * 3 * 3),  # 144
        "pw": ((None, 2, 2, 6), 4 * 6 + 6, 8, 2, 2 * 2 * 6 * 4),  # 96
        "flat": ((None, 24), 0, None, None, 0),
        "fc": ((None, 5), 24 * 5 + 5, None, None, 24 * 5),  # 120
    }
    got = {
        row["name"]: (row["output_shape"], row["params"], row["receptive_field"], row["jump"], row["macs"])
        for row in rows[:-1]
    }
    assert got == expected
    assert [row["type"] for row in rows] == [
        "InputLayer", "Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D", "DepthwiseConv2D", "Conv2D",
        "Flatten", "Dense", "Total",
    ]
    assert rows[-1]["params"] == model.count_params() == 323
    assert rows[-1]["macs"] == count_macs(model) == 6912 + 144 + 96 + 120


def test_summary_prints_a_table():
    lines = []
    rows = summary(tiny_model(), print_fn=lines.append)
    assert len(lines) == len(rows) + 3  # header, rule, layers, rule, totals
    assert lines[0].split() == ["Layer", "(type)", "Output", "shape", "Params", "RF", "Jump", "MACs"]
    assert lines[-1].split() == ["Total", "323", "-", "-", "7,272"]
    assert lines[3].split()[:2] == ["conv", "(Conv2D)"]
    assert lines[3].split()[-4:] == ["112", "3", "1", "6,912"]


def vgg16_conv_macs(size):
    """MACs of VGG16's 13 3x3 'same' convs from its table: H*W*C_out*3*3*C_in per conv."""
    convs = [(1, 3, 64), (1, 64, 64), (2, 64, 128), (2, 128, 128)]
    convs += [(4, 128, 256)] + [(4, 256, 256)] * 2 + [(8, 256, 512)] + [(8, 512, 512)] * 2
    convs += [(16, 512, 512)] * 3
    return sum((size // down) ** 2 * cout * 9 * cin for down, cin, cout in convs)


def test_summary_vgg16_receptive_fields_params_and_macs():
    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
    rows = summary(model, print_fn=None)
    by_name = rows_by_name(rows)
    assert (by_name["block5_conv3"]["receptive_field"], by_name["block5_conv3"]["jump"]) == (196, 16)
    assert (by_name["block5_pool"]["receptive_field"], by_name["block5_pool"]["jump"]) == (212, 32)
    assert (by_name["block1_conv2"]["receptive_field"], by_name["block3_pool"]["receptive_field"]) == (5, 44)
    assert rows[-1]["params"] == model.count_params() == 14_714_688
    assert rows[-1]["macs"] == count_macs(model) == vgg16_conv_macs(224) == 15_346_630_656  # +0.12 G for FCs


def test_count_macs_of_mobilenet_matches_the_paper():
    # Howard et al. 2017, table 8: MobileNet-224 1.0 has 569 million mult-adds and 4.2 million parameters.
    model = keras.applications.MobileNet(weights=None, input_shape=(224, 224, 3))
    assert round(count_macs(model) / 1e6) == 569
    assert round(model.count_params() / 1e5) == 43  # 4,253,864 incl. BN statistics


def test_summary_merges_take_the_largest_receptive_field():
    inputs = keras.Input((16, 16, 3), name="x")
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
    c = keras.layers.Conv2D(4, 3, padding="same", name="c")(b)
    added = keras.layers.Add(name="add")([a, c])
    joined = keras.layers.Concatenate(name="cat")([inputs, b])
    down = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="down")(joined)
    pooled = keras.layers.MaxPooling2D(2, name="pool")(added)
    out = keras.layers.Concatenate(name="out")([down, pooled])
    model = keras.Model(inputs, out)
    rows = summary(model, print_fn=None)[:-1]
    fields = {row["name"]: (row["receptive_field"], row["jump"]) for row in rows}
    assert fields == {
        "x": (1, 1), "a": (3, 1), "b": (5, 1), "c": (7, 1), "add": (7, 1), "cat": (5, 1),
        "down": (7, 2), "pool": (8, 2), "out": (8, 2),
    }


def test_summary_padding_and_cropping_keep_the_receptive_field():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.ZeroPadding2D(2, name="pad"),
            keras.layers.Conv2D(1, 3, name="conv"),
            keras.layers.Cropping2D(1, name="crop"),
            keras.layers.AveragePooling2D(3, strides=2, name="avg"),
        ]
    )
    rows = rows_by_name(summary(model, print_fn=None))
    assert [(rows[n]["receptive_field"], rows[n]["jump"]) for n in ("pad", "conv", "crop", "avg")] == [
        (1, 1), (3, 1), (3, 1), (5, 2),
    ]
    assert rows["conv"]["output_shape"] == (None, 10, 10, 1)
    assert rows["conv"]["macs"] == 10 * 10 * 9


def test_summary_flattens_nested_models_and_counts_shared_layers_once():
    inner = keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, padding="same", name="c1"),
            keras.layers.Conv2D(4, 3, padding="same", name="c2"),
        ],
        name="inner",
    )
    shared = keras.layers.Conv2D(4, 3, padding="same", name="shared")
    inputs = keras.Input((8, 8, 4), name="x")
    x = shared(inputs)
    x = inner(x)
    x = shared(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    model = keras.Model(inputs, x)
    rows = summary(model, print_fn=None)
    got = [(r["name"], r["params"], r["receptive_field"], r["jump"], r["macs"]) for r in rows[:-1]]
    conv_params, conv_macs = 3 * 3 * 4 * 4 + 4, 8 * 8 * 4 * 3 * 3 * 4
    assert got == [
        ("x", 0, 1, 1, 0),
        ("shared", conv_params, 3, 1, conv_macs),
        ("inner/c1", conv_params, 5, 1, conv_macs),
        ("inner/c2", conv_params, 7, 1, conv_macs),
        ("shared", 0, 9, 1, conv_macs),
        ("pool", 0, 10, 2, 0),
    ]
    assert rows[-1]["params"] == model.count_params() == 3 * conv_params
    assert rows[-1]["macs"] == 4 * conv_macs


def test_summary_nested_backbone_with_unknown_size_gets_the_outer_shapes():
    backbone = keras.applications.VGG16(weights=None, include_top=False)  # input (None, None, 3)
    inputs = keras.Input((64, 64, 3))
    x = backbone(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(10, name="head")(x)
    model = keras.Model(inputs, outputs)
    rows = rows_by_name(summary(model, print_fn=None))
    assert rows["vgg16/block5_pool"]["output_shape"] == (None, 2, 2, 512)
    assert (rows["vgg16/block5_conv3"]["receptive_field"], rows["vgg16/block5_conv3"]["jump"]) == (196, 16)
    assert rows["gap"]["receptive_field"] is None
    assert rows["total"]["params"] == model.count_params()
    assert count_macs(model) == vgg16_conv_macs(64) + 512 * 10


def test_count_macs_needs_a_size_and_takes_input_shape():
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(8, 3, name="conv")])
    with pytest.raises(ValueError, match=r"conv depend on a spatial size.*Received: input_shape=None$"):
        count_macs(model)
    assert summary(model, print_fn=None)[-1]["macs"] is None
    assert count_macs(model, input_shape=(10, 12, 3)) == 8 * 10 * 8 * 3 * 3 * 3
    rows = summary(model, print_fn=None, input_shape=(10, 12, 3))
    assert rows[1]["output_shape"] == (None, 8, 10, 8)
    with pytest.raises(ValueError, match=r"Received: input_shape=\(10, 3\)$"):
        count_macs(model, input_shape=(10, 3))


def test_count_macs_of_other_layer_kinds():
    def macs(input_shape, layer):
        return count_macs(keras.Sequential([keras.Input(input_shape), layer]))

    # depthwise 4*4*(2*2)*9 + pointwise 4*4*4*3
    assert macs((6, 6, 2), keras.layers.SeparableConv2D(3, 3, depth_multiplier=2)) == 576 + 192
    assert macs((5, 5, 4), keras.layers.Conv2D(4, 3, groups=2)) == 3 * 3 * 4 * 9 * 2
    assert macs((4, 4, 2), keras.layers.Conv2DTranspose(3, 3, strides=2)) == 4 * 4 * 2 * 9 * 3
    assert macs((3, 3, 5), keras.layers.Dense(2)) == 3 * 3 * 5 * 2
    assert macs((20, 2), keras.layers.Conv1D(4, 5, padding="causal", dilation_rate=2)) == 20 * 4 * 5 * 2
    assert macs((8, 8, 3), keras.layers.GlobalAveragePooling2D()) == 0


def test_summary_non_square_kernels_and_strides_give_per_axis_values():
    model = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            keras.layers.Conv2D(2, (1, 7), name="wide"),
            keras.layers.Conv2D(2, 3, strides=(2, 1), name="tall_stride"),
            keras.layers.Activation("relu", name="act"),
        ]
    )
    rows = rows_by_name(summary(model, print_fn=None))
    assert (rows["wide"]["receptive_field"], rows["wide"]["jump"]) == ((1, 7), 1)
    assert (rows["tall_stride"]["receptive_field"], rows["tall_stride"]["jump"]) == ((3, 9), (2, 1))
    assert rows["act"]["receptive_field"] == (3, 9)


def test_summary_errors():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match=r"functional or Sequential.*Received: model=Subclassed$"):
        summary(Subclassed())
    unbuilt = keras.Sequential([keras.layers.Dense(2)], name="unbuilt")
    with pytest.raises(ValueError, match=r"no defined inputs.*Received: model=unbuilt$"):
        count_macs(unbuilt)
