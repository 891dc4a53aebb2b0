"""Convolution arithmetic: output sizes, padding and receptive fields, for one spatial axis.

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

The same quantities for every layer of a Keras model, with parameters and MACs, are in `kcnn.model_summary`.
"""

import numbers
from typing import NamedTuple

__all__ = [
    "ReceptiveField",
    "conv_output_size",
    "padding_for",
    "receptive_field",
    "same_padding",
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


def rf_step(rf, jump, kernel, stride, dilation):
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
        rf, jump = rf_step(rf, jump, kernel, stride, dilation)
    return ReceptiveField(rf, jump)
