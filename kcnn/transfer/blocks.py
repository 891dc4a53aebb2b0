"""Blocks: the ordered stages of a backbone (shallow to deep), trainability per block, per-block rates.

A `classifier` model splits into the layers before its nested "backbone" model, the backbone and the head
(`split_model`); blocks are found by layer name inside the backbone, so a reloaded model works too.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import keras
from keras import layers

from kcnn.registry import get_entry
from kcnn.transfer.families import family_of
from kcnn.transfer.names import KCNN
from kcnn.transfer.schedule import resolve_train

if TYPE_CHECKING:
    from kcnn.transfer.backbones import Backbone


def _body_layers(model) -> list:
    return [layer for layer in model.layers if not isinstance(layer, layers.InputLayer)]


def _named_blocks(model, rules) -> list[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = {}
    current = None
    pending: list[str] = []  # layers before the first named one (rescaling, padding) join the first block
    for layer in _body_layers(model):
        block = current
        for pattern, repl in rules:
            match = re.search(pattern, layer.name)
            if match:
                block = match.expand(repl)
                if block.startswith("+stage"):  # ConvNeXt: downsampling_block_k opens stage k + 1
                    block = f"stage{int(block[6:]) + 1}"
                break
        if block is None:
            pending.append(layer.name)
            continue
        groups.setdefault(block, []).append(layer.name)
        current = block
    if not groups:
        return [("stage1", pending)] if pending else []
    first = next(iter(groups))
    groups[first] = pending + groups[first]
    return list(groups.items())


def _spatial(layer):
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return None
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        return None
    return min(shape[1], shape[2])


def _staged_blocks(model, unit_pattern=None, closer=None) -> list[tuple[str, list[str]]]:
    """Stages split where the feature map shrinks; units (by name) are never split between stages."""
    units: list[list] = []
    current_key = None
    close = False
    for layer in _body_layers(model):
        key = None
        if unit_pattern:
            match = re.search(unit_pattern, layer.name)
            if match:
                key = match.group(1) if match.groups() else match.group(0)
        per_layer = unit_pattern is None and closer is None
        if not units or per_layer or close or (key is not None and key != current_key):
            units.append([])
        if key is not None:
            current_key = key
        units[-1].append(layer)
        close = bool(closer and re.search(closer, layer.name))
    stages: list[list[str]] = []
    resolution = None
    for unit in units:
        size = _spatial(unit[-1])
        if not stages or (size is not None and resolution is not None and size < resolution):
            stages.append([])
        if size is not None and (resolution is None or size < resolution):
            resolution = size
        stages[-1].extend(layer.name for layer in unit)
    return [(f"stage{i}", names) for i, names in enumerate(stages, start=1)]


def _prefix_blocks(model, prefixes) -> list[tuple[str, list[str]]]:
    groups = {p: [] for p in prefixes}
    current = prefixes[0]
    for layer in _body_layers(model):
        matches = [p for p in prefixes if layer.name == p or layer.name.startswith(p + "_")]
        if matches:
            current = max(matches, key=len)
        groups[current].append(layer.name)
    return [(p, names) for p, names in groups.items() if names]


def group_blocks(model, source: str, arch: str) -> list[tuple[str, list[str]]]:
    """The backbone's blocks (block name, layer names), shallow to deep, covering every layer."""
    if source == KCNN:
        prefixes = list(get_entry(arch).blocks)
        return _prefix_blocks(model, prefixes) if prefixes else _staged_blocks(model)
    family = family_of(arch)  # its block rules are the family table's (kcnn.transfer.families)
    if family is None:
        return _staged_blocks(model)
    if family.block_rules:
        return _named_blocks(model, family.block_rules)
    return _staged_blocks(model, family.unit_pattern, family.unit_closer)


def split_model(model: keras.Model):
    """(layers before the backbone, the nested backbone, head layers) of a `classifier` model."""
    try:
        body = model.get_layer("backbone")
    except ValueError:
        body = None
    if not isinstance(body, keras.Model):
        raise ValueError(f"Model {model.name!r} has no nested model named 'backbone'; build it with "
                         f"kcnn.transfer.classifier(backbone(...), classes).")
    top = _body_layers(model)
    index = top.index(body)
    return top[:index], body, top[index + 1:]


def block_layers(model: keras.Model, backbone: Backbone) -> list[tuple[str, list[str]]]:
    """The blocks of the backbone nested in ``model`` (grouped on that model, so a reloaded one works)."""
    _, body, _ = split_model(model)
    return group_blocks(body, backbone.source, backbone.name)


def set_trainable(model: keras.Model, backbone: Backbone, train="head") -> list[str]:
    """Make the head and the chosen blocks trainable and everything else in ``model`` frozen.

    Args:
        model: A `classifier` model.
        backbone: Its `Backbone` (gives the block structure).
        train: "head", "all", "top:N" (the head and the N deepest blocks) or a list of block names (the head
            always trains).

    Returns:
        The trained block names, shallow to deep.
    """
    pre, body, head = split_model(model)
    blocks = block_layers(model, backbone)
    chosen = resolve_train(train, [b for b, _ in blocks])
    names = {n for b, layer_names in blocks if b in chosen for n in layer_names}
    body.trainable = True
    for layer in _body_layers(body):
        layer.trainable = layer.name in names
    for layer in pre:
        layer.trainable = False
    for layer in head:
        layer.trainable = True
    return chosen


def lr_multipliers(model: keras.Model, backbone: Backbone, blocks, lr_mult: float) -> dict[str, float]:
    """Discriminative learning rates: ``{variable.path: lr_mult**k}`` for the variables of ``blocks``.

    k counts the backbone's blocks from the top: 1 for the deepest block, 2 for the one below it, and so on
    (Howard & Ruder 2018). The head is not listed: it trains at the phase's rate.

    Args:
        model: A `classifier` model.
        backbone: Its `Backbone`.
        blocks: Names of the trained blocks.
        lr_mult: Factor per block going down, e.g. 0.1.

    Returns:
        A dict for `make_optimizer`'s ``lr_multipliers``.

    Example:
        >>> lr_multipliers(model, bb, ["conv4", "conv5"], 0.1)["conv5_block3_3_conv/kernel"]
        0.1
    """
    _, body, _ = split_model(model)
    all_blocks = block_layers(model, backbone)
    order = [b for b, _ in all_blocks]
    unknown = [b for b in blocks if b not in order]
    if unknown:
        raise ValueError(f"unknown block {unknown[0]!r}; blocks are: {', '.join(order)}")
    layer_block = {name: block for block, names in all_blocks for name in names}
    multipliers = {}
    for layer in _body_layers(body):
        block = layer_block.get(layer.name)
        if block not in blocks:
            continue
        depth = len(order) - order.index(block)  # 1 for the deepest block
        for variable in layer.trainable_variables:
            multipliers[variable.path] = float(lr_mult) ** depth
    return multipliers
