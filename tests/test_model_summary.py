"""kcnn.model_summary: per-layer output shapes, parameters, receptive fields and MACs, checked by hand, against
keras' own counts and against published numbers."""
import pytest

import keras
import kcnn
from kcnn.model_summary import count_macs, summary


def test_the_package_exports_summary_and_count_macs():
    assert kcnn.summary is summary and kcnn.count_macs is count_macs


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
