"""The graph-rebuild engine behind `kcnn.convert.dense_to_conv` and `kcnn.convert.pool_to_conv`.

`GraphRebuild` walks a model's graph node by node: every layer that is not replaced is cloned from its config
(``layer.__class__.from_config(layer.get_config())``) and keeps its name, weights and trainable flag; a replaced
layer keeps the old layer's name. Nested functional / Sequential models are rebuilt the same way and stay
nested. The original model is left untouched, and the new model is not compiled.
"""
from __future__ import annotations

import contextlib

import keras
import numpy as np

from kcnn import _compat
from keras import layers

# Activations that act on each value separately, so they commute with flattening.
_ELEMENTWISE_ACTIVATIONS = frozenset({
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish", "mish",
    "sigmoid", "hard_sigmoid", "hard_silu", "hard_swish", "tanh", "hard_tanh", "softplus", "softsign",
    "exponential", "log_sigmoid", "squareplus", "sparse_plus", "hard_shrink", "soft_shrink", "tanh_shrink",
    "threshold",
})
# Layers that act on each value separately (given the extra checks in `_elementwise`).
_ELEMENTWISE_LAYERS = (
    layers.ReLU, layers.LeakyReLU, layers.ELU, layers.GaussianNoise, layers.GaussianDropout,
    layers.ActivityRegularization, layers.Identity,
)
# Layers that combine same-shaped inputs value by value.
_MERGE_LAYERS = (layers.Add, layers.Subtract, layers.Multiply, layers.Average, layers.Maximum, layers.Minimum)
_POOL_LAYERS = (layers.MaxPooling2D, layers.AveragePooling2D)

_PLAIN, _FLAT, _MAP, _POOLED = "plain", "flat", "map", "pooled"


class GraphValue:
    """What one tensor of the original graph became in the rebuilt graph.

    kinds:
      * ``plain``: the same tensor, computed by cloned layers.
      * ``flat``: the original was ``Flatten()(x)``; ``tensor`` is still the (N, H', W', C) map ``x`` and
        ``flat_shape`` its (H, W, C) at the original size. Only a Dense (through element-wise layers) may
        read it.
      * ``map``: the original was an (N, units) vector; ``tensor`` is the (N, H', W', units) map of it.
      * ``pooled``: the original was ``GlobalAveragePooling2D()(x)``; ``tensor`` is ``x`` and ``pool`` the
        cloned pooling layer, applied only when something other than a Dense (or a Dropout) reads the value.

    ``free`` is False for a flat tensor that comes only from flat model inputs, not from a feature map.
    """

    __slots__ = ("tensor", "kind", "free", "flat_shape", "pool", "source", "_pooled")

    def __init__(self, tensor, kind=_PLAIN, *, free=True, flat_shape=None, pool=None, source=None):
        self.tensor = tensor
        self.kind = kind
        self.free = free
        self.flat_shape = flat_shape
        self.pool = pool
        self.source = source  # name of the Flatten / pooling layer behind a "flat" / "pooled" value
        self._pooled = None

    def like(self, tensor):
        """The same kind of value for another tensor (after an element-wise layer, a nested model, ...)."""
        return GraphValue(tensor, self.kind, free=self.free, flat_shape=self.flat_shape, pool=self.pool,
                      source=self.source)


class GraphRebuild:
    """Rebuilds a model's graph, replacing Flatten/Dense heads (``dense``) or pooling layers (``pool_init``).

    Layers are cloned once per original layer (a shared layer stays shared) and their weights copied right
    after the clone's first call, one layer at a time.
    """

    def __init__(self, *, dense: bool = False, pool_init: str | None = None, seed=None):
        self.dense = dense
        self.pool_init = pool_init
        self.seed = seed
        self.what = "dense_to_conv" if dense else "pool_to_conv"
        # set by dense_to_conv: in a model with an image input, a Dense on a flat side input is kept as it is
        self.has_image = False
        self.clones: dict = {}  # id(original layer) -> (key, new layer, original layer)
        self.nested: dict = {}  # id(original nested model) -> (key, rebuilt model, output values)

    def refuse(self, name: str, layer, why: str) -> ValueError:
        return ValueError(f"{self.what} cannot convert layer '{name}' ({type(layer).__name__}): {why}")

    # ------------------------------------------------------------------------------------------ models
    def model(self, model: keras.Model, specs, prefix: str = "", top: bool = False):
        """Rebuild ``model`` on new inputs described by ``specs``.

        Args:
            model: A functional or Sequential model.
            specs: One ``(batch_shape, dtype, template GraphValue)`` per model input.
            prefix: Path of the model inside its parents (``"outer/"``), for error messages.
            top: Whether this is the model passed by the user (its outputs must be finished tensors).

        Returns:
            (new model, one GraphValue per model output, holding the new model's output tensors).
        """
        graph = graph_of(model, prefix[:-1] if prefix else model.name, self.what)
        inputs, table = [], {}
        for original, (batch_shape, dtype, template) in zip(graph.inputs, specs):
            tensor = keras.Input(batch_shape=batch_shape, dtype=dtype, name=_input_name(original))
            inputs.append(tensor)
            table[id(original)] = template.like(tensor)
        calls = []  # layers in call order (rebuilds a Sequential)
        for node in _nodes_in_order(graph):
            if any(id(x) not in table for x in node.input_tensors):
                continue  # not reachable from the inputs (as in Function._run_through_graph)
            outs = self.node(node, [table[id(x)] for x in node.input_tensors], prefix, calls)
            for x, value in zip(node.outputs, outs):
                table[id(x)] = value
        outputs = []
        for x in graph.outputs:
            value = self.materialize(table[id(x)], calls)
            if top and value.kind == _FLAT:
                raise ValueError(
                    f"{self.what} cannot convert layer '{value.source}' (Flatten): its output is a model "
                    "output and no Dense reads it, so there is no convolution to make of it; end the model "
                    "before the Flatten or add the Dense head"
                )
            outputs.append(value)
        if isinstance(model, keras.Sequential):
            batch_shape, dtype, _ = specs[0]
            first = keras.Input(batch_shape=batch_shape, dtype=dtype, name=_input_name(graph.inputs[0]))
            new = keras.Sequential([first] + calls, name=model.name)
        else:
            new = keras.Model(
                keras.tree.pack_sequence_as(graph._inputs_struct, inputs),
                keras.tree.pack_sequence_as(graph._outputs_struct, [v.tensor for v in outputs]),
                name=model.name,
            )
        if not model.trainable:
            new.trainable = False
        return new, outputs

    def node(self, node, ins, prefix, calls):
        """New values for the outputs of one node of the original graph."""
        op = node.operation
        name = prefix + op.name
        if isinstance(op, keras.Model):
            return self.nested_model(node, op, ins, prefix, calls)
        if not isinstance(op, layers.Layer):  # a stateless keras.ops operation used in the functional API
            ins = [self.materialize(v, calls) for v in ins]
            if any(v.kind != _PLAIN for v in ins):
                raise self.refuse(name, op, "a keras.ops operation cannot be rewritten for the converted "
                                  "head")
            return self.plain(node, op, op, ins, calls)
        if self.pool_init and isinstance(op, _POOL_LAYERS):
            return [self.pool(name, op, ins[0], calls)]
        if self.dense:
            return self.dense_node(node, name, op, ins, calls)
        return self.plain(node, op, self.clone(name, op), ins, calls)

    def nested_model(self, node, op, ins, prefix, calls):
        ins = [self.materialize(v, calls) for v in ins]
        key = tuple((v.kind, v.flat_shape, v.free) for v in ins)
        if id(op) in self.nested:
            old_key, new, outs = self.nested[id(op)]
            if old_key != key:
                raise self.refuse(prefix + op.name, op, "a nested model shared between a converted head and "
                                  "an unconverted part cannot be rebuilt once for both")
        else:
            specs = [(tuple(v.tensor.shape), v.tensor.dtype, v) for v in ins]
            new, outs = self.model(op, specs, prefix=f"{prefix}{op.name}/")
            self.nested[id(op)] = (key, new, outs)
        results = self.call(new, node, ins, calls)
        return [v.like(t) for v, t in zip(outs, results)]

    # ----------------------------------------------------------------------------------- dense_to_conv
    def dense_node(self, node, name, op, ins, calls):
        if isinstance(op, (layers.Lambda, layers.Reshape)):
            raise self.refuse(name, op, "its effect on the spatial layout cannot be known (a Reshape used as "
                              "a Flatten, or Lambda code); use layers.Flatten / stock layers instead")
        if isinstance(op, layers.Flatten):
            return [self.flatten(node, name, op, ins[0], calls)]
        if isinstance(op, layers.Dense):
            return [self.dense_layer(node, name, op, ins[0], calls)]
        if (isinstance(op, layers.GlobalAveragePooling2D) and ins[0].kind == _PLAIN
                and len(node.outputs[0].shape) == 2 and op.data_format == "channels_last"):
            return [GraphValue(ins[0].tensor, _POOLED, pool=self.clone(name, op), source=name)]
        kinds = {v.kind for v in ins}
        if kinds == {_PLAIN}:
            return self.plain(node, op, self.clone(name, op), ins, calls)
        if _FLAT in kinds:
            if len(ins) == 1 and _elementwise(op):
                return [ins[0].like(t) for t in self.call_generic(node, op, self.clone(name, op), ins, calls)]
            raise self.refuse(name, op, f"it reads the flattened feature map of '{_first_source(ins)}', "
                              "which can only go to a Dense (through element-wise layers such as Dropout)")
        if _POOLED in kinds and len(ins) == 1 and _plain_dropout(op):
            config = op.get_config()
            config["noise_shape"] = (None, 1, 1, None)  # one draw per channel = dropout of the pooled vector
            new = self.clone(name, op, config=config)
            return [ins[0].like(t) for t in self.call_generic(node, op, new, ins, calls)]
        if _MAP in kinds:
            if kinds != {_MAP}:
                raise self.refuse(name, op, "it mixes the class-score map of a converted Dense with tensors "
                                  "that are not maps")
            config = _per_channel_config(op)
            if config is None:
                raise self.refuse(name, op, "it reads the output of a converted Dense and does not act on "
                                  "the last axis alone (supported: activations, dropout/noise, batch/layer "
                                  "norm, Softmax, PReLU, element-wise merges, Concatenate on the last axis)")
            new = self.clone(name, op, config=config)
            return [GraphValue(t, _MAP) for t in self.call_generic(node, op, new, ins, calls)]
        ins = [self.materialize(v, calls) for v in ins]
        return self.plain(node, op, self.clone(name, op), ins, calls)

    def plain(self, node, op, new, ins, calls):
        outs = self.call_generic(node, op, new, ins, calls)
        free = any(v.free for v in ins)
        return [GraphValue(t, free=free or len(x.shape) >= 3) for t, x in zip(outs, node.outputs)]

    def flatten(self, node, name, op, value, calls):
        rank = len(node.input_tensors[0].shape)
        if rank == 2 or value.kind in (_MAP, _POOLED):  # flattening a vector changes nothing
            if value.kind == _PLAIN:
                return self.plain(node, op, self.clone(name, op), [value], calls)[0]
            return value
        if rank != 4:
            raise self.refuse(name, op, f"dense_to_conv converts Flatten on 2-D feature maps (N, H, W, C); "
                              f"got a rank-{rank} input")
        if op.data_format != "channels_last":
            raise self.refuse(name, op, "a channels_first Flatten orders the vector differently; rebuild the "
                              "model channels_last")
        shape = tuple(node.input_tensors[0].shape[1:])
        if None in shape:
            raise self.refuse(name, op, f"its input has an unknown spatial size {shape}, so no kernel size "
                              "can be derived for the Dense after it; build the model with a fixed "
                              "input_shape")
        return GraphValue(value.tensor, _FLAT, flat_shape=shape, source=name)

    def dense_layer(self, node, name, op, value, calls):
        if value.kind == _PLAIN:
            if len(node.input_tensors[0].shape) == 2 and not value.free and not self.has_image:
                raise self.refuse(name, op, "its input is a flat tensor of unknown spatial size (the model "
                                  "has no image input: nothing to turn into a convolution)")
            return self.plain(node, op, self.clone(name, op), [value], calls)[0]
        if getattr(op, "lora_enabled", False) or getattr(op, "quantization_mode", None):
            raise self.refuse(name, op, "LoRA / quantized Dense layers are not supported; merge or "
                              "dequantize the weights first")
        if value.kind in (_FLAT, _MAP):
            size = value.flat_shape[:2] if value.kind == _FLAT else (1, 1)
            conv = self.replacement(name, op, ("conv", size), lambda: _dense_conv(op, size))
            return GraphValue(self.call(conv, None, [value], calls, copy_from=op)[0], _MAP)
        # pooled: W . mean(x) + b == mean(W . x + b), so the Dense moves before the pooling and its
        # activation (which does not commute with the mean) after it.
        if op.activity_regularizer is not None:  # it would see the map, not the vector: keep the Dense
            return self.plain(node, op, self.clone(name, op), [self.materialize(value, calls)], calls)[0]
        conv = self.replacement(name, op, ("conv", (1, 1), _POOLED),
                                lambda: _dense_conv(op, (1, 1), activation="linear"))
        scores = self.call(conv, None, [value], calls, copy_from=op)[0]
        out = self.call(value.pool, None, [GraphValue(scores)], calls)[0]
        activation = op.get_config()["activation"]
        if activation not in ("linear", None):
            act = self.replacement(name, op, ("activation",), lambda: layers.Activation(
                activation, name=f"{op.name}_activation", dtype=op.dtype_policy))
            out = self.call(act, None, [GraphValue(out)], calls)[0]
        return GraphValue(out)

    def materialize(self, value, calls):
        """Apply a deferred global average pooling (once); other values pass unchanged."""
        if value.kind != _POOLED:
            return value
        if value._pooled is None:
            value._pooled = GraphValue(self.call(value.pool, None, [value], calls)[0])
        return value._pooled

    # ------------------------------------------------------------------------------------ pool_to_conv
    def pool(self, name, op, value, calls):
        config = op.get_config()
        channels = value.tensor.shape[-1 if config["data_format"] == "channels_last" else 1]
        if channels is None:
            raise self.refuse(name, op, "its number of channels is unknown, so the conv's filters cannot be "
                              "set")

        def make():
            return layers.Conv2D(
                channels, config["pool_size"], strides=config["strides"] or config["pool_size"],
                padding=config["padding"], data_format=config["data_format"], name=op.name, trainable=True,
                kernel_initializer=keras.initializers.GlorotUniform(seed=self.seed), dtype=op.dtype_policy,
            )

        conv = self.replacement(name, op, ("pool",), make)
        fresh = not conv.built
        out = self.call(conv, None, [value], calls, cheap=self.pool_init == "average")[0]
        if fresh and self.pool_init == "average":
            kh, kw = conv.kernel.shape[:2]
            kernel = np.zeros(tuple(conv.kernel.shape), dtype="float32")
            kernel[:, :, np.arange(channels), np.arange(channels)] = 1.0 / (kh * kw)
            conv.kernel.assign(kernel)
            conv.bias.assign(np.zeros(channels, dtype="float32"))
        return GraphValue(out)

    # ----------------------------------------------------------------------------------------- helpers
    def clone(self, name, op, config=None):
        """The clone of ``op``, created once (a shared layer stays shared); weights follow on first call."""
        key = ("clone", None if config is None else repr(sorted(config.items())))
        if id(op) in self.clones:
            old_key, new, _ = self.clones[id(op)]
            if old_key != key:
                raise self.refuse(name, op, "a layer shared between a converted head and an unconverted part "
                                  "cannot be cloned once for both")
            return new
        try:
            new = op.__class__.from_config(op.get_config() if config is None else config)
        except Exception as err:  # noqa: BLE001 - any failure means the layer cannot be cloned
            raise self.refuse(name, op, f"it cannot be re-created from its config ({err})") from err
        self.clones[id(op)] = (key, new, op)  # keeping `op` alive keeps its id unique
        return new

    def replacement(self, name, op, key, make):
        """A new layer standing for ``op`` (created once per original layer and ``key[0]``)."""
        ident = (id(op), key[0])
        if ident in self.clones:
            old_key, new, _ = self.clones[ident]
            if old_key != key:
                raise self.refuse(name, op, "a Dense shared between inputs that need different kernels")
            return new
        new = make()
        self.clones[ident] = (key, new, op)
        return new

    def call_generic(self, node, op, new, ins, calls):
        """Call ``new`` with the node's arguments; copy ``op``'s weights into it on its first call."""
        return self.call(new, node, ins, calls, copy_from=op if isinstance(new, layers.Layer) else None)

    def call(self, new, node, ins, calls, copy_from=None, cheap=None):
        """Call ``new`` on the values ``ins`` (with ``node``'s other arguments, if given).

        On the first call of a layer whose weights come from ``copy_from``, it is built with zero initialisers
        (``cheap``) and then given those weights. Returns the outputs as a flat list.
        """
        if node is None:
            args, kwargs = (ins[0].tensor,), {}
        else:
            tensors = {id(x): v.tensor for x, v in zip(node.input_tensors, ins)}
            args, kwargs = node.arguments.fill_in(tensors)
        first = isinstance(new, layers.Layer) and not new.built
        cheap = (copy_from is not None) if cheap is None else cheap
        with _zeros_init(new) if first and cheap else contextlib.nullcontext():
            outputs = new(*args, **kwargs)
        if first and copy_from is not None:
            copy_weights(copy_from, new, self)
        if isinstance(new, layers.Layer):
            calls.append(new)
        return keras.tree.flatten(outputs)


# --------------------------------------------------------------------------------------------- layer tests
def _elementwise(layer) -> bool:
    """Whether ``layer`` acts on every value separately (so it commutes with Flatten)."""
    if isinstance(layer, (layers.Dropout, layers.AlphaDropout)):
        return _plain_dropout(layer)
    if isinstance(layer, layers.Activation):
        return _activation_name(layer) in _ELEMENTWISE_ACTIVATIONS
    if isinstance(layer, layers.Rescaling):
        return np.ndim(layer.scale) == 0 and np.ndim(layer.offset) == 0
    return isinstance(layer, _ELEMENTWISE_LAYERS)


def _plain_dropout(layer) -> bool:
    return isinstance(layer, (layers.Dropout, layers.AlphaDropout)) and layer.noise_shape is None


def _activation_name(layer):
    activation = layer.get_config().get("activation")
    return activation if isinstance(activation, str) else None


def _last_axis(axis):
    """-1 if ``axis`` means the last axis of an (N, units) tensor, else None."""
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return None
        axis = axis[0]
    return -1 if axis in (-1, 1) else None


def _per_channel_config(layer):
    """The config of ``layer`` for an (N, H, W, units) map instead of an (N, units) vector, or None."""
    config = layer.get_config()
    if _elementwise(layer) or isinstance(layer, (layers.Activation, layers.Rescaling, *_MERGE_LAYERS)):
        return config
    if isinstance(layer, (layers.Softmax, layers.BatchNormalization, layers.LayerNormalization,
                          layers.UnitNormalization, layers.Concatenate)):
        axis = _last_axis(config["axis"])
        if axis is None:
            return None
        config["axis"] = axis
        return config
    if isinstance(layer, layers.PReLU) and config.get("shared_axes") is None:
        config["shared_axes"] = [1, 2]  # one alpha per unit, as on the vector
        return config
    return None


def _first_source(values):
    return next(v.source for v in values if v.kind in (_FLAT, _POOLED))


# ------------------------------------------------------------------------------------------------ builders
def _dense_conv(dense, kernel_size, activation=None):
    """A Conv2D with ``dense``'s name and settings and a ``kernel_size`` kernel (valid padding)."""
    config = dense.get_config()
    return layers.Conv2D(
        config["units"], kernel_size, padding="valid",
        activation=config["activation"] if activation is None else activation,
        use_bias=config["use_bias"],
        kernel_initializer=config["kernel_initializer"], bias_initializer=config["bias_initializer"],
        kernel_regularizer=config["kernel_regularizer"], bias_regularizer=config["bias_regularizer"],
        kernel_constraint=config["kernel_constraint"], bias_constraint=config["bias_constraint"],
        activity_regularizer=dense.activity_regularizer,
        name=dense.name, trainable=dense.trainable, dtype=dense.dtype_policy,
    )


@contextlib.contextmanager
def _zeros_init(layer):
    """Build ``layer`` with zero initialisers, then restore its own (they are what its config saves).

    Its weights are overwritten right after the build; drawing VGG16's 1.4e8 random numbers first would take
    seconds and raise the peak memory by a model's size.
    """
    saved = {k: v for k, v in vars(layer).items() if isinstance(v, keras.initializers.Initializer)}
    zeros = keras.initializers.Zeros()
    try:
        for k in saved:
            object.__setattr__(layer, k, zeros)
        yield
    finally:
        for k, v in saved.items():
            object.__setattr__(layer, k, v)


def copy_weights(src, dst, rebuild=None):
    """Copy ``src``'s weights into ``dst`` one variable at a time, reshaping where the shapes differ.

    The values never go through numpy: with TensorFlow the new variable shares the old one's buffer until
    either is written to (copy on write), so the copy costs almost no memory until one model is trained.
    """
    source, target = src.weights, dst.weights
    if len(source) != len(target):
        why = f"its replacement has {len(target)} weights instead of {len(source)}"
        raise rebuild.refuse(src.name, src, why) if rebuild else ValueError(why)
    for s, t in zip(source, target):
        if tuple(s.shape) == tuple(t.shape):
            t.assign(s.value)
        elif int(np.prod(s.shape)) == int(np.prod(t.shape)):
            t.assign(keras.ops.reshape(s.value, tuple(t.shape)))
        else:
            why = f"weight '{s.path}' has shape {tuple(s.shape)} but its replacement {tuple(t.shape)}"
            raise rebuild.refuse(src.name, src, why) if rebuild else ValueError(why)


# -------------------------------------------------------------------------------------------------- graphs
def graph_of(model, path, what):
    """The functional graph behind ``model`` (a Sequential keeps one once it knows its input shape)."""
    if isinstance(model, keras.Sequential):
        graph = _compat.keras_sequential_graph(model)
        if graph is None:
            raise ValueError(
                f"{what} cannot convert the Sequential model '{path}': it has no input shape yet. "
                "Start it with keras.Input(shape=...) or call model.build(input_shape) first"
            )
        return graph
    if not _compat.keras_is_functional(model) or not getattr(model, "inputs", None):
        raise ValueError(
            f"{what} cannot convert layer '{path}' ({type(model).__name__}): it is a subclassed model whose "
            "layers cannot be seen from outside; build it with the functional API or Sequential"
        )
    return model


def _nodes_in_order(graph):
    """The nodes of a functional graph, inputs first."""
    nodes = _compat.keras_nodes_by_depth(graph)
    for depth in sorted(nodes, reverse=True):
        for node in nodes[depth]:
            if node.operation is not None and not node.is_input:
                yield node


def _input_name(tensor):
    history = _compat.keras_history(tensor)
    return history.operation.name if history is not None and history.operation is not None else None
