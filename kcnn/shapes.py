"""Convolution arithmetic: output sizes, padding, receptive fields and a per-layer summary.

This module covers topic 1 of the lecture (padding). Notation used throughout, for one spatial axis:

- ``w``: input size, ``o``: output size
- ``k``: kernel size, ``s``: stride, ``d``: dilation, ``p``: padding on each side
- ``k_eff = d * (k - 1) + 1``: the number of input pixels one (dilated) kernel spans

The output size of a convolution or pooling window is::

    o = floor((w + 2p - d(k - 1) - 1) / s) + 1

Keras does not take an integer padding; it takes ``padding="valid"`` (``p = 0``) or ``padding="same"``
(output ``ceil(w / s)``, padding split as evenly as possible with the odd pixel at the bottom/right).
PyTorch takes an integer ``p`` and pads symmetrically. The helpers here speak both languages, so a layer
can be translated from one framework to the other without guessing.

Receptive fields follow the recurrence of Araujo et al., "Computing Receptive Fields of Convolutional
Neural Networks", Distill 2019 (and Dumoulin & Visin, "A guide to convolution arithmetic for deep
learning", 2016, for the output sizes)::

    r_out = r_in + (k - 1) * d * j_in        j_out = j_in * s

where ``r`` is the receptive field (in input pixels) of one unit and ``j`` the jump: the distance, in
input pixels, between two neighbouring units of the feature map (its effective stride).
"""

import math
import numbers
from typing import NamedTuple

__all__ = [
    "ReceptiveField",
    "conv_output_size",
    "count_macs",
    "padding_for",
    "receptive_field",
    "same_padding",
    "summary",
]

_PADDING_MODES = ("valid", "same", "causal")


# ----------------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------------


def _check_int(name, value, minimum):
    """Returns ``value`` as an int, or raises ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _check_padding(padding):
    """Normalizes ``padding`` to a lower-case mode string or a ``(before, after)`` tuple of ints."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode not in _PADDING_MODES:
            raise ValueError(
                "`padding` must be an integer >= 0, a (before, after) tuple, or one of "
                f"{', '.join(repr(m) for m in _PADDING_MODES)}. Received: padding={padding!r}"
            )
        return mode
    if isinstance(padding, (tuple, list)):
        if len(padding) != 2:
            raise ValueError(
                "`padding` given as a sequence must be a (before, after) pair of integers >= 0. "
                f"Received: padding={padding!r}"
            )
        for value in padding:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(
                    "`padding` given as a sequence must be a (before, after) pair of integers >= 0. "
                    f"Received: padding={padding!r}"
                )
        return (int(padding[0]), int(padding[1]))
    if isinstance(padding, bool) or not isinstance(padding, numbers.Integral) or padding < 0:
        raise ValueError(
            "`padding` must be an integer >= 0, a (before, after) tuple, or one of "
            f"{', '.join(repr(m) for m in _PADDING_MODES)}. Received: padding={padding!r}"
        )
    return (int(padding), int(padding))


# ----------------------------------------------------------------------------------------------------------
# Output size and padding
# ----------------------------------------------------------------------------------------------------------


def conv_output_size(size, kernel, stride=1, padding=0, dilation=1):
    """Output size of a convolution or pooling window along one spatial axis.

    Computes ``o = floor((w + p_before + p_after - d(k - 1) - 1) / s) + 1``, which with symmetric padding
    ``p`` is the lecture's ``o = floor((w + 2p - d(k - 1) - 1) / s) + 1``. The Keras padding modes give:

    - ``"valid"``: no padding, ``floor((w - d(k - 1) - 1) / s) + 1``;
    - ``"same"``: ``ceil(w / s)`` whatever the kernel (Keras pads as needed, see `same_padding`);
    - ``"causal"`` (Conv1D only): ``d(k - 1)`` pixels on the left, so also ``ceil(w / s)``.

    The same formula holds for pooling layers (``kernel=pool_size``; Keras' default stride for pooling is
    the pool size, not 1).

    Args:
        size (int | None): Input size ``w`` along the axis, >= 1. ``None`` (an unknown dimension, as in
            ``keras.Input((None, None, 3))``) gives ``None``.
        kernel (int): Kernel (or pool) size ``k``, >= 1.
        stride (int): Stride ``s``, >= 1.
        padding (int | tuple[int, int] | str): Pixels added on each side (int, PyTorch style), a
            ``(before, after)`` pair, or a Keras mode ``"valid"``, ``"same"`` or ``"causal"``
            (case-insensitive).
        dilation (int): Dilation ``d``, >= 1.

    Returns:
        int | None: The output size ``o`` (>= 1), or ``None`` when ``size`` is ``None``.

    Raises:
        ValueError: If an argument is out of range, ``padding`` is not understood, or the kernel does not
            fit into the padded input (output < 1). The message names the argument and ends in
            ``Received: name=value``.

    Example:
        >>> conv_output_size(224, kernel=7, stride=2, padding=3)  # ResNet stem
        112
        >>> conv_output_size(7, kernel=3, stride=2, padding="same")
        4
        >>> conv_output_size(7, kernel=3, stride=2, padding="valid")
        3
    """
    kernel = _check_int("kernel", kernel, 1)
    stride = _check_int("stride", stride, 1)
    dilation = _check_int("dilation", dilation, 1)
    mode = _check_padding(padding)
    if size is None:
        return None
    size = _check_int("size", size, 1)
    if mode in ("same", "causal"):
        return -(-size // stride)
    before, after = (0, 0) if mode == "valid" else mode
    span = dilation * (kernel - 1) + 1
    padded = size + before + after
    if padded < span:
        raise ValueError(
            f"The kernel spans {span} pixels (dilation * (kernel - 1) + 1) but the padded input has only "
            f"{padded}, so the output size would be < 1; use a smaller kernel or dilation, or more padding. "
            f"Received: size={size}, kernel={kernel}, stride={stride}, padding={padding!r}, "
            f"dilation={dilation}"
        )
    return (padded - span) // stride + 1


def same_padding(kernel, stride=1, dilation=1, size=None):
    """The padding Keras (and TensorFlow) ``padding="same"`` adds, as a ``(before, after)`` pair.

    Keras pads so that the output size is ``ceil(w / s)``. The total padding is::

        total = max((ceil(w / s) - 1) * s + d(k - 1) + 1 - w, 0)

    and it is split as ``before = total // 2``, ``after = total - before``: when ``total`` is odd the extra
    pixel goes at the bottom/right. At stride 1 the total is ``d(k - 1)`` for every input size, so even
    kernels are padded asymmetrically. At stride > 1 the total depends on the input size, so ``size`` is
    required; e.g. a 3x3 stride-2 convolution on a 224 input pads ``(0, 1)`` (bottom/right only) but on a
    225 input ``(1, 1)``.

    PyTorch instead pads symmetrically (``Conv2d(..., padding=1)`` adds one pixel on every side). Both give
    a 112 output from a 224 input with a 3x3 stride-2 kernel, but the sampling grid is shifted by one pixel,
    so weights ported from PyTorch need ``ZeroPadding2D(1)`` followed by ``padding="valid"`` in Keras (as
    ``keras.applications.ResNet50`` does) rather than ``padding="same"``.

    Args:
        kernel (int): Kernel (or pool) size ``k``, >= 1.
        stride (int): Stride ``s``, >= 1.
        dilation (int): Dilation ``d``, >= 1.
        size (int | None): Input size ``w``, >= 1. Required when ``stride > 1``; ignored otherwise (apart
            from being validated).

    Returns:
        tuple[int, int]: ``(before, after)``, the pixels Keras adds at the top/left and at the
        bottom/right. Their sum is the total padding; ``before == after`` means symmetric padding.

    Raises:
        ValueError: If an argument is out of range, or ``stride > 1`` and ``size`` is ``None``.

    Example:
        >>> same_padding(3)
        (1, 1)
        >>> same_padding(4)  # even kernel: asymmetric even at stride 1
        (1, 2)
        >>> same_padding(3, stride=2, size=224)  # Keras pads bottom/right only
        (0, 1)
    """
    kernel = _check_int("kernel", kernel, 1)
    stride = _check_int("stride", stride, 1)
    dilation = _check_int("dilation", dilation, 1)
    span = dilation * (kernel - 1) + 1
    if size is not None:
        size = _check_int("size", size, 1)
    if stride == 1:
        total = span - 1
    else:
        if size is None:
            raise ValueError(
                "`size` is required when stride > 1, because Keras' 'same' padding then depends on the "
                f"input size (e.g. a 3x3 stride-2 kernel pads (0, 1) on 224 pixels but (1, 1) on 225). "
                f"Received: size={size!r}"
            )
        out = -(-size // stride)
        total = max((out - 1) * stride + span - size, 0)
    before = total // 2
    return (before, total - before)


def padding_for(size_in, size_out, kernel, stride=1, dilation=1):
    """The symmetric padding ``p`` (pixels on each side) that maps ``size_in`` to ``size_out``.

    Solves ``o = floor((w + 2p - d(k - 1) - 1) / s) + 1`` for ``p``. Its smallest solution is the
    lecture's ``p = (s(o - 1) - w + d(k - 1) + 1) / 2`` rounded up; with ``s > 1`` the floor lets a few
    larger paddings give the same output too, and the smallest is returned. "Same" size at stride 1 needs
    ``p = d(k - 1) / 2``, which is an integer only for odd kernels (or even dilations).

    Args:
        size_in (int): Input size ``w``, >= 1.
        size_out (int): Wanted output size ``o``, >= 1.
        kernel (int): Kernel size ``k``, >= 1.
        stride (int): Stride ``s``, >= 1.
        dilation (int): Dilation ``d``, >= 1.

    Returns:
        int: The smallest ``p >= 0`` with ``conv_output_size(size_in, kernel, stride, p, dilation) ==
        size_out``.

    Raises:
        ValueError: If an argument is out of range, or no non-negative integer padding gives ``size_out``
            (the output is too small even without padding, or the total padding needed is odd). The
            message lists the output sizes that symmetric padding can reach.

    Example:
        >>> padding_for(32, 32, kernel=3)  # "same" at stride 1
        1
        >>> padding_for(224, 112, kernel=7, stride=2)  # ResNet stem
        3
    """
    size_in = _check_int("size_in", size_in, 1)
    size_out = _check_int("size_out", size_out, 1)
    kernel = _check_int("kernel", kernel, 1)
    stride = _check_int("stride", stride, 1)
    dilation = _check_int("dilation", dilation, 1)
    span = dilation * (kernel - 1) + 1
    # floor((w + T - span) / s) == o - 1  <=>  T in [t_min, t_min + s - 1], T = total padding = 2p.
    t_min = stride * (size_out - 1) - size_in + span
    t_max = t_min + stride - 1
    p = max(0, -(-t_min // 2))
    if 2 * p <= t_max:
        return p
    smallest = (size_in - span) // stride + 1 if size_in >= span else None
    first = 0 if smallest is not None else -(-(span - size_in) // 2)
    reachable = sorted(
        {conv_output_size(size_in, kernel, stride, q, dilation) for q in range(first, first + 6)}
    )
    if t_max < 0:
        reason = (
            f"even without padding the output is {smallest}, larger than {size_out}; use a larger stride "
            "or kernel, or crop the input"
        )
    else:
        reason = (
            f"the total padding would have to be {t_min}"
            + (f" to {t_max}" if t_max > t_min else "")
            + ", which cannot be split evenly; use asymmetric padding (e.g. keras.layers.ZeroPadding2D "
            f"(({t_min // 2}, {t_min - t_min // 2}), ...)) or another kernel size"
        )
    raise ValueError(
        f"No symmetric integer padding gives output size {size_out} from input size {size_in} with "
        f"kernel={kernel}, stride={stride}, dilation={dilation}: {reason}. Output sizes reachable with "
        f"padding={first}, {first + 1}, ...: {', '.join(str(o) for o in reachable)}, ... "
        f"Received: size_out={size_out}"
    )


# ----------------------------------------------------------------------------------------------------------
# Receptive field
# ----------------------------------------------------------------------------------------------------------


class ReceptiveField(NamedTuple):
    """Receptive field of one unit and the jump (effective stride) of its feature map, in input pixels."""

    size: int
    jump: int


def _rf_step(rf, jump, kernel, stride, dilation):
    """One application of ``r_out = r_in + (k - 1) d j_in``, ``j_out = j_in s``."""
    return rf + (kernel - 1) * dilation * jump, jump * stride


def receptive_field(layers, size=1, jump=1):
    """Receptive field and jump of a stack of convolution / pooling layers along one spatial axis.

    Applies, layer by layer::

        r_out = r_in + (k - 1) * d * j_in        j_out = j_in * s

    Padding does not enter: it moves the receptive field (part of it may fall on padding) but does not
    change its size. Element-wise layers (activations, batch norm, dropout) can be left out.

    Args:
        layers (Iterable[int | tuple]): One entry per layer, input side first: ``kernel``,
            ``(kernel,)``, ``(kernel, stride)`` or ``(kernel, stride, dilation)``. Stride and dilation
            default to 1; give pooling layers their stride explicitly (``(2, 2)`` for a 2x2 max pool).
        size (int): Receptive field before the first layer (1: a pixel of the input image).
        jump (int): Jump before the first layer (1: neighbouring input pixels).

    Returns:
        ReceptiveField: ``(size, jump)``: the receptive field of one unit of the last layer and the
        distance between neighbouring units, both in input pixels.

    Raises:
        ValueError: If an entry is malformed or holds a value < 1.

    Example:
        >>> receptive_field([3, 3])  # two 3x3 convs see as much as one 5x5
        ReceptiveField(size=5, jump=1)
        >>> receptive_field([(3, 1, 1), (3, 1, 2), (3, 1, 4)])  # dilated context module
        ReceptiveField(size=15, jump=1)
        >>> receptive_field([(3, 1), (3, 1), (2, 2)])  # VGG block 1 with its max pool
        ReceptiveField(size=6, jump=2)
    """
    rf = _check_int("size", size, 1)
    jump = _check_int("jump", jump, 1)
    try:
        entries = list(layers)
    except TypeError:
        raise ValueError(
            "`layers` must be a sequence of kernel sizes or (kernel, stride[, dilation]) tuples. "
            f"Received: layers={layers!r}"
        ) from None
    for i, entry in enumerate(entries):
        values = tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)
        if not 1 <= len(values) <= 3:
            raise ValueError(
                f"Each entry of `layers` must be kernel or (kernel, stride[, dilation]). "
                f"Received: layers[{i}]={entry!r}"
            )
        kernel, stride, dilation = values + (1, 1, 1)[len(values):]
        kernel = _check_int(f"layers[{i}] kernel", kernel, 1)
        stride = _check_int(f"layers[{i}] stride", stride, 1)
        dilation = _check_int(f"layers[{i}] dilation", dilation, 1)
        rf, jump = _rf_step(rf, jump, kernel, stride, dilation)
    return ReceptiveField(rf, jump)


# ----------------------------------------------------------------------------------------------------------
# Model summary
# ----------------------------------------------------------------------------------------------------------


class _Span(NamedTuple):
    """Receptive field and jump of a tensor, one entry per spatial axis."""

    rf: tuple
    jump: tuple


def _layer_classes():
    """Keras layer classes grouped by how they are treated, looked up once keras is imported."""
    import keras

    L = keras.layers
    return {
        "transpose": (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose),
        "separable": (L.SeparableConv1D, L.SeparableConv2D),
        "depthwise": (L.DepthwiseConv1D, L.DepthwiseConv2D),
        "conv": (L.Conv1D, L.Conv2D, L.Conv3D),
        "pool": (
            L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
            L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
        ),
        "global_pool": (
            L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
            L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
        ),
        "upsample": (L.UpSampling1D, L.UpSampling2D, L.UpSampling3D),
        "shift": (
            L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
            L.Cropping1D, L.Cropping2D, L.Cropping3D,
        ),
        "dense": (L.Dense,),
        "input": (L.InputLayer,),
    }


def _shape(spec):
    return tuple(spec.shape)


def _channels_first(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_first"


def _spatial(shape, channels_first=False):
    """Spatial dimensions of a (batch, ..., channels) shape; ``()`` when it has none."""
    if len(shape) < 3:
        return ()
    return tuple(shape[2:]) if channels_first else tuple(shape[1:-1])


def _channels(shape, channels_first=False):
    return shape[1] if channels_first else shape[-1]


def _prod(values):
    if any(v is None for v in values):
        return None
    return math.prod(values)


def _next_span(layer, classes, in_shapes, in_spans, out_shape):
    """Receptive field / jump of a layer's output, or None where it is not a spatial map or not modelled."""
    first = _channels_first(layer)
    out_spatial = _spatial(out_shape, first)
    if not out_spatial:
        return None
    rank = len(out_spatial)
    if isinstance(layer, classes["input"]):
        return _Span((1,) * rank, (1,) * rank)
    if not in_spans or any(s is None or len(s.rf) != rank for s in in_spans):
        return None
    span = in_spans[0]
    if isinstance(layer, classes["transpose"] + classes["upsample"] + classes["global_pool"]):
        return None  # Fractional jumps (up-sampling) and collapsed maps are not modelled.
    if isinstance(layer, classes["conv"] + classes["depthwise"] + classes["separable"] + classes["pool"]):
        if isinstance(layer, classes["pool"]):
            kernels, strides, dilations = layer.pool_size, layer.strides, (1,) * rank
        else:
            kernels, strides, dilations = layer.kernel_size, layer.strides, layer.dilation_rate
        steps = [
            _rf_step(r, j, k, s, d)
            for r, j, k, s, d in zip(span.rf, span.jump, kernels, strides, dilations)
        ]
        return _Span(tuple(r for r, _ in steps), tuple(j for _, j in steps))
    if len(in_spans) > 1:
        # Merge (Add, Concatenate, ...): each unit sees the union of its inputs' fields.
        return _Span(
            tuple(max(s.rf[i] for s in in_spans) for i in range(rank)),
            tuple(max(s.jump[i] for s in in_spans) for i in range(rank)),
        )
    if isinstance(layer, classes["shift"]):
        return span
    # Any other single-input layer that keeps the spatial grid is taken to act per position (activations,
    # normalization, dropout, 1x1 Dense, ...). Layers that change the grid in other ways are not modelled.
    if len(in_shapes) == 1 and _spatial(in_shapes[0], first) == out_spatial:
        return span
    return None


def _layer_macs(layer, classes, in_shape, out_shape):
    """Multiply-accumulates of one call of ``layer`` for one image; None when a dimension is unknown."""
    first = _channels_first(layer)
    if isinstance(layer, classes["transpose"]):
        # Every input position scatters a k x k x filters block.
        n = _prod(_spatial(in_shape, first) + (_channels(in_shape, first),))
        return None if n is None else n * math.prod(layer.kernel_size) * layer.filters
    if isinstance(layer, classes["separable"]):
        n = _prod(_spatial(out_shape, first))
        cin = _channels(in_shape, first)
        if n is None or cin is None:
            return None
        mid = cin * layer.depth_multiplier
        return n * mid * math.prod(layer.kernel_size) + n * mid * layer.filters
    if isinstance(layer, classes["depthwise"]):
        n = _prod(_spatial(out_shape, first) + (_channels(out_shape, first),))
        return None if n is None else n * math.prod(layer.kernel_size)
    if isinstance(layer, classes["conv"]):
        n = _prod(_spatial(out_shape, first) + (_channels(out_shape, first),))
        cin = _channels(in_shape, first)
        if n is None or cin is None:
            return None
        return n * math.prod(layer.kernel_size) * (cin // getattr(layer, "groups", 1))
    if isinstance(layer, classes["dense"]):
        n = _prod(tuple(out_shape[1:]))
        if n is None or in_shape[-1] is None:
            return None
        return n * in_shape[-1]
    return 0


def _spec_of(shape, dtype="float32"):
    import keras

    return keras.KerasTensor(shape=tuple(shape), dtype=dtype)


def _output_specs(operation, node, spec_dict):
    """Output specs of ``node`` given recomputed input specs; the graph's own when the shapes agree."""
    import keras

    same = all(
        id(t) in spec_dict and _shape(spec_dict[id(t)]) == _shape(t) for t in node.input_tensors
    )
    if same:
        return list(node.outputs)
    args, kwargs = node.arguments.fill_in(spec_dict)
    outputs = operation.compute_output_spec(*args, **kwargs)
    return keras.tree.flatten(outputs)


class _Walker:
    """Walks a functional / Sequential graph, flattening nested models, and collects summary rows."""

    def __init__(self):
        import keras

        self.keras = keras
        self.classes = _layer_classes()
        self.rows = []
        self.seen = set()

    def _is_graph_model(self, operation):
        return isinstance(operation, self.keras.Sequential) or (
            isinstance(operation, self.keras.Model) and hasattr(operation, "_nodes_by_depth")
        )

    def _params(self, operation):
        if id(operation) in self.seen:
            return 0  # A shared layer's weights are counted at its first call only.
        self.seen.add(id(operation))
        try:
            return int(operation.count_params())
        except (AttributeError, ValueError):
            return 0

    def _row(self, operation, prefix, in_shapes, in_spans, out_specs):
        out_shapes = [_shape(s) for s in out_specs]
        span = _next_span(operation, self.classes, in_shapes, in_spans, out_shapes[0])
        macs = _layer_macs(operation, self.classes, in_shapes[0] if in_shapes else (), out_shapes[0])

        def collapse(values):
            if values is None:
                return None
            return values[0] if len(set(values)) == 1 else values

        self.rows.append(
            {
                "name": prefix + operation.name,
                "type": type(operation).__name__,
                "output_shape": out_shapes[0] if len(out_shapes) == 1 else out_shapes,
                "params": self._params(operation),
                "receptive_field": collapse(span.rf if span else None),
                "jump": collapse(span.jump if span else None),
                "macs": macs,
            }
        )
        return [span] * len(out_specs)

    def walk(self, model, in_specs, in_spans, prefix="", top=False):
        """Appends rows for ``model`` and returns (output specs, output spans)."""
        if isinstance(model, self.keras.Sequential):
            if top:
                input_layer = model.inputs[0]._keras_history[0]
                in_spans = self._row(input_layer, prefix, [], [], in_specs)
            specs, spans = in_specs, in_spans
            for layer in model.layers:
                specs, spans = self._call(layer, prefix, specs, spans, node=None)
            return specs, spans

        spec_dict = {id(t): s for t, s in zip(model.inputs, in_specs)}
        span_dict = {id(t): s for t, s in zip(model.inputs, in_spans)}
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                operation = node.operation
                if node.is_input:
                    if top:
                        tensor = node.outputs[0]
                        spans = self._row(operation, prefix, [], [], [spec_dict[id(tensor)]])
                        span_dict[id(tensor)] = spans[0]
                    continue
                inputs = list(node.input_tensors)
                specs = [spec_dict[id(t)] for t in inputs]
                spans = [span_dict.get(id(t)) for t in inputs]
                out_specs, out_spans = self._call(
                    operation, prefix, specs, spans, node=node, spec_dict=spec_dict
                )
                for t, s, r in zip(node.outputs, out_specs, out_spans):
                    spec_dict[id(t)] = s
                    span_dict[id(t)] = r
        outputs = list(model.outputs)
        return [spec_dict[id(t)] for t in outputs], [span_dict.get(id(t)) for t in outputs]

    def _call(self, operation, prefix, specs, spans, node, spec_dict=None):
        if self._is_graph_model(operation):
            return self.walk(operation, specs, spans, prefix=f"{prefix}{operation.name}/")
        if node is not None:
            out_specs = _output_specs(operation, node, spec_dict)
        else:
            out_specs = self.keras.tree.flatten(operation.compute_output_spec(*specs))
        out_spans = self._row(operation, prefix, [_shape(s) for s in specs], spans, out_specs)
        return out_specs, out_spans


def _model_rows(model, input_shape):
    import keras

    if not isinstance(model, keras.Model) or not (
        isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")
    ):
        raise ValueError(
            "`model` must be a functional or Sequential keras.Model (a subclassed model has no layer graph "
            f"to walk). Received: model={type(model).__name__}"
        )
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError):
        raise ValueError(
            "`model` has no defined inputs yet; start it with keras.Input(shape) or call "
            f"model.build(input_shape) first. Received: model={model.name}"
        ) from None
    if input_shape is None:
        specs = inputs
    else:
        shapes = [input_shape] if len(inputs) == 1 else list(input_shape)
        if len(shapes) != len(inputs):
            raise ValueError(
                f"`input_shape` must give one shape per model input ({len(inputs)}). "
                f"Received: input_shape={input_shape!r}"
            )
        specs = []
        for shape, ref in zip(shapes, inputs):
            shape = tuple(shape)
            if len(shape) != len(ref.shape) - 1:
                raise ValueError(
                    f"`input_shape` must leave out the batch axis and match the model input {ref.shape}. "
                    f"Received: input_shape={input_shape!r}"
                )
            specs.append(_spec_of((None,) + shape, ref.dtype))
    walker = _Walker()
    walker.walk(model, specs, [None] * len(specs), top=True)
    return walker.rows


def _format(value):
    if value is None:
        return "-"
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return "x".join(str(v) for v in value)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _print_table(rows, print_fn):
    headers = ("Layer (type)", "Output shape", "Params", "RF", "Jump", "MACs")
    table = [
        (
            f"{row['name']} ({row['type']})" if row["type"] != "Total" else "Total",
            "" if row["output_shape"] is None else str(row["output_shape"]),
            _format(row["params"]),
            _format(row["receptive_field"]),
            _format(row["jump"]),
            _format(row["macs"]),
        )
        for row in rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]

    def line(cells):
        left = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        right = [c.rjust(w) for c, w in zip(cells[2:], widths[2:])]
        return "  ".join(left + right).rstrip()

    rule = "-" * len(line(headers))
    print_fn(line(headers))
    print_fn(rule)
    for cells in table[:-1]:
        print_fn(line(cells))
    print_fn(rule)
    print_fn(line(table[-1]))


def summary(model, print_fn=print, input_shape=None):
    """Per-layer table of output shapes, parameters, receptive fields, jumps and MACs.

    Walks a functional or Sequential Keras model in graph order. Nested functional / Sequential models are
    flattened (their rows are named ``outer/inner_layer``); a shared layer gets a row per call but its
    parameters are counted at the first call only, so the parameter total equals ``model.count_params()``.

    Receptive field (``receptive_field``) and jump (``jump``, the effective stride) are in input pixels
    (see `receptive_field`). Convolutions (incl. depthwise / separable) and pooling layers change them;
    padding and cropping layers do not; a merge (Add, Concatenate, ...) takes the largest field and jump of
    its inputs; per-position layers (activations, BN, dropout) pass them on. They are ``None`` where the
    output has no spatial axes (after Flatten, global pooling or on a Dense stack) and for layers whose
    effect is not modelled (up-sampling, transposed convolutions, resizing). When the two spatial axes
    differ (a 1x7 kernel) the value is a tuple per axis, otherwise an int.

    MACs (multiply-accumulates) are per image, for one forward pass: ``H_out * W_out * C_out * k_h * k_w *
    C_in / groups`` for a convolution, ``H_out * W_out * C * k_h * k_w * depth_multiplier`` for a depthwise
    one, depthwise plus 1x1 for separable ones, ``C_in * units`` (per position) for Dense. Bias additions,
    batch norm, activations, pooling and merges are element-wise and count 0, as do layers not named here.
    One MAC is about 2 FLOPs. ``None`` means a spatial size is unknown; pass ``input_shape``.

    Args:
        model (keras.Model): A built functional or Sequential model.
        print_fn (Callable[[str], None] | None): Called with each line of the table; ``None`` prints
            nothing.
        input_shape (tuple | list[tuple] | None): Input shape without the batch axis, e.g.
            ``(224, 224, 3)``, to use instead of the model's own (needed for MACs when the model was built
            with ``keras.Input((None, None, 3))``). One shape per input for multi-input models.

    Returns:
        list[dict]: One dict per layer call, in graph order (inputs first), with keys ``name``, ``type``,
        ``output_shape`` (with the batch axis, a list of shapes for multi-output layers), ``params``,
        ``receptive_field``, ``jump`` and ``macs``; then a last totals row with ``name="total"``,
        ``type="Total"``, the summed ``params`` and ``macs`` and ``None`` elsewhere.

    Raises:
        ValueError: If ``model`` is subclassed (no graph to walk) or not built, or ``input_shape`` does not
            fit its inputs.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3)])
        >>> rows = summary(model, print_fn=None)
        >>> rows[1]["receptive_field"], rows[1]["macs"]  # 30 * 30 * 8 * 3 * 3 * 3
        (3, 194400)
    """
    rows = _model_rows(model, input_shape)
    macs = [row["macs"] for row in rows]
    rows.append(
        {
            "name": "total",
            "type": "Total",
            "output_shape": None,
            "params": sum(row["params"] for row in rows),
            "receptive_field": None,
            "jump": None,
            "macs": None if None in macs else sum(macs),
        }
    )
    if print_fn is not None:
        _print_table(rows, print_fn)
    return rows


def count_macs(model, input_shape=None):
    """Total multiply-accumulates of one forward pass for one image.

    Counts convolutions (incl. depthwise, separable and transposed) and Dense layers as described in
    `summary`; element-wise layers count 0. Multiply by 2 for FLOPs, and by images per second for FLOP/s.

    Args:
        model (keras.Model): A built functional or Sequential model.
        input_shape (tuple | list[tuple] | None): Input shape without the batch axis to use instead of the
            model's own (required when its spatial size is ``None``).

    Returns:
        int: The MACs per image.

    Raises:
        ValueError: If the model cannot be walked (see `summary`) or a layer's size is unknown.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10)])
        >>> count_macs(model)
        40
    """
    rows = _model_rows(model, input_shape)
    unknown = [row["name"] for row in rows if row["macs"] is None]
    if unknown:
        raise ValueError(
            f"The MACs of {', '.join(unknown)} depend on a spatial size the model leaves unknown; pass "
            f"input_shape=(height, width, channels). Received: input_shape={input_shape!r}"
        )
    return sum(row["macs"] for row in rows)
