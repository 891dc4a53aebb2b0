"""A per-layer table of a Keras model: output shapes, parameters, receptive fields, jumps and MACs.

`summary` walks a functional or Sequential model in graph order (nested models flattened) and returns one
row per layer call; `count_macs` sums the multiply-accumulates of one forward pass. Receptive field and jump
follow the recurrence of `kcnn.arithmetic.receptive_field`, applied per spatial axis::

    r_out = r_in + (k - 1) * d * j_in        j_out = j_in * s
"""

import math
from typing import NamedTuple

from kcnn import _compat
from kcnn.arithmetic import rf_step

__all__ = ["count_macs", "summary"]


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
            rf_step(r, j, k, s, d)
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
            isinstance(operation, self.keras.Model) and _compat.keras_is_functional(operation)
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
                input_layer = _compat.keras_history(model.inputs[0])[0]
                in_spans = self._row(input_layer, prefix, [], [], in_specs)
            specs, spans = in_specs, in_spans
            for layer in model.layers:
                specs, spans = self._call(layer, prefix, specs, spans, node=None)
            return specs, spans

        spec_dict = {id(t): s for t, s in zip(model.inputs, in_specs)}
        span_dict = {id(t): s for t, s in zip(model.inputs, in_spans)}
        nodes = _compat.keras_nodes_by_depth(model)
        for depth in sorted(nodes, reverse=True):
            for node in nodes[depth]:
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
        isinstance(model, keras.Sequential) or _compat.keras_is_functional(model)
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
    (see `kcnn.arithmetic.receptive_field`). Convolutions (incl. depthwise / separable) and pooling layers
    change them; padding and cropping layers do not; a merge (Add, Concatenate, ...) takes the largest field
    and jump of its inputs; per-position layers (activations, BN, dropout) pass them on. They are ``None``
    where the output has no spatial axes (after Flatten, global pooling or on a Dense stack) and for layers
    whose effect is not modelled (up-sampling, transposed convolutions, resizing). When the two spatial axes
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
