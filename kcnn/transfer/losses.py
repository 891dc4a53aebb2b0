"""The loss and metrics both engines train with: cross-entropy with label smoothing, and accuracy, top-5 accuracy and
macro-F1 that read integer labels and soft (mixed) labels alike.

Labels are either integers, shape ``(B,)`` or ``(B, 1)``, or soft labels ``(B, classes)`` (mixup / cutmix batches,
`kcnn.data.Mixing`); every function here takes both, so a run that mixes its training batches validates on plain
integer labels with the same compiled loss and metrics. All are registered Keras serializables (package "kcnn").
"""
from __future__ import annotations

import keras
from keras import ops


def soft_targets(y_true, classes: int, label_smoothing: float = 0.0):
    """``y_true`` (integer or soft labels) as float32 ``(B, classes)`` targets, smoothed toward uniform:
    ``(1 - label_smoothing) * y + label_smoothing / classes``."""
    if len(y_true.shape) == 2 and y_true.shape[-1] == classes and classes > 1:
        target = ops.cast(y_true, "float32")
    else:
        target = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), classes, dtype="float32")
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / classes
    return target


def hard_labels(y_true, classes: int):
    """The int32 class of each label: the label itself, or the largest weight of a soft label."""
    if len(y_true.shape) == 2 and y_true.shape[-1] == classes and classes > 1:
        return ops.cast(ops.argmax(y_true, axis=-1), "int32")
    return ops.cast(ops.reshape(y_true, (-1,)), "int32")


def per_example_loss(y_true, probs, label_smoothing: float = 0.0):
    """Cross-entropy of each example, ``-sum_c t_c log p_c`` with ``t = soft_targets(y_true, C, label_smoothing)``
    (probabilities clipped to [1e-7, 1 - 1e-7], as Keras' own cross-entropy does)."""
    probs = ops.cast(probs, "float32")
    target = soft_targets(y_true, probs.shape[-1], label_smoothing)
    probs = ops.clip(probs, 1e-7, 1.0 - 1e-7)
    return -ops.sum(target * ops.log(probs), axis=-1)


@keras.saving.register_keras_serializable(package="kcnn")
class CrossEntropy(keras.losses.Loss):
    """Categorical cross-entropy on softmax outputs for integer or soft labels, with label smoothing.

    With integer labels and ``label_smoothing=0`` it equals Keras' ``sparse_categorical_crossentropy``.

    Args:
        label_smoothing: In [0, 1): the target puts ``1 - label_smoothing + label_smoothing / C`` on the true
            class and ``label_smoothing / C`` on each other (Szegedy et al. 2016).
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        return per_example_loss(y_true, y_pred, self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


class _Mean(keras.metrics.Metric):
    """A running mean of a per-example 0/1 quantity (accuracy, top-k)."""

    def __init__(self, name, **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def hits(self, labels, probs):
        raise NotImplementedError  # pragma: no cover

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = hard_labels(y_true, y_pred.shape[-1])
        hits = ops.cast(self.hits(labels, y_pred), "float32")
        self.total.assign_add(ops.sum(hits))
        self.count.assign_add(ops.cast(ops.shape(hits)[0], "float32"))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


@keras.saving.register_keras_serializable(package="kcnn")
class Accuracy(_Mean):
    """Fraction of examples whose top class is the label's (a soft label's largest weight)."""

    def __init__(self, name: str = "accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def hits(self, labels, probs):
        return ops.equal(ops.cast(ops.argmax(probs, axis=-1), "int32"), labels)


@keras.saving.register_keras_serializable(package="kcnn")
class TopKAccuracy(_Mean):
    """Fraction of examples whose label is among the ``k`` most probable classes."""

    def __init__(self, k: int = 5, name: str | None = None, **kwargs):
        super().__init__(name=name or f"top{k}_accuracy", **kwargs)
        self.k = int(k)

    def hits(self, labels, probs):
        return ops.in_top_k(labels, ops.cast(probs, "float32"), self.k)

    def get_config(self):
        return {**super().get_config(), "k": self.k}


@keras.saving.register_keras_serializable(package="kcnn")
class MacroF1(keras.metrics.Metric):
    """Macro-averaged F1 over the classes that occur (as true or predicted class), from a running confusion matrix:
    per class ``2 TP / (2 TP + FP + FN)``, then the mean (scikit-learn's ``f1_score(average="macro")``)."""

    def __init__(self, classes: int, name: str = "macro_f1", **kwargs):
        super().__init__(name=name, **kwargs)
        self.classes = int(classes)
        self.matrix = self.add_variable(shape=(self.classes, self.classes), initializer="zeros", name="matrix")

    def update_state(self, y_true, y_pred, sample_weight=None):
        true = ops.one_hot(hard_labels(y_true, self.classes), self.classes, dtype="float32")
        pred = ops.one_hot(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), self.classes, dtype="float32")
        self.matrix.assign_add(ops.matmul(ops.transpose(true), pred))

    def result(self):
        return macro_f1_of(self.matrix)

    def reset_state(self):
        self.matrix.assign(ops.zeros((self.classes, self.classes)))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}


def macro_f1_of(matrix):
    """Macro-F1 of a confusion matrix (rows: true class, columns: predicted), over the classes that occur."""
    matrix = ops.cast(matrix, "float32")
    tp = ops.diagonal(matrix)
    true, pred = ops.sum(matrix, axis=1), ops.sum(matrix, axis=0)
    f1 = ops.divide_no_nan(2.0 * tp, true + pred)
    present = ops.cast((true + pred) > 0, "float32")
    return ops.divide_no_nan(ops.sum(f1 * present), ops.sum(present))


#: Classes from which the metrics include top-5 accuracy (below, top-5 says little or nothing).
TOP5_MIN_CLASSES = 10


def metrics_for(classes: int) -> list:
    """The metrics both engines report for a ``classes``-way classifier: accuracy, macro-F1 and, from
    `TOP5_MIN_CLASSES` classes, top-5 accuracy (history keys ``accuracy``, ``macro_f1``, ``top5_accuracy``)."""
    out = [Accuracy(), MacroF1(classes)]
    if classes >= TOP5_MIN_CLASSES:
        out.append(TopKAccuracy(5))
    return out
