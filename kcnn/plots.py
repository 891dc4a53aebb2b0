"""Learning curves with phase boundaries, confusion matrices and grids of augmented training batches
(matplotlib's object API: no backend switch)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def figure(*, figsize) -> Figure:
    """A figure drawn by the Agg canvas, outside pyplot: the user's backend and open figures are untouched."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _values(rows, key):
    values = [row.get(key) for row in rows]
    return None if all(v in (None, "") for v in values) else [np.nan if v in (None, "") else float(v)
                                                              for v in values]


def _present(epochs, values):
    """The (epoch, value) points that have a value: validated every few epochs, a line joins them."""
    kept = [(e, v) for e, v in zip(epochs, values) if not np.isnan(v)]
    return [e for e, _ in kept], [v for _, v in kept]


def learning_curves(history: list[dict], path, title: str = "", comparison: list[dict] | None = None,
                    comparison_label: str = "from scratch") -> Path:
    """Plot loss and accuracy per epoch (train and val) with dashed lines where a new phase starts.

    Args:
        history: Rows with ``epoch`` and optionally ``phase``, ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``.
        path: Output PNG path.
        title: Figure title.
        comparison: Rows of another run drawn beside (thin grey lines), e.g. the same network from scratch.
        comparison_label: Its name in the legend.

    Returns:
        The path written.
    """
    fig = figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    epochs = [row["epoch"] for row in history]
    marker = "o" if len(history) <= 40 else None
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            values = _values(history, key)
            if values is not None:
                ax.plot(*_present(epochs, values), style, marker=marker, label=key, ms=3)
            other = _values(comparison or [], key)
            if other is not None:
                ax.plot(*_present([row["epoch"] for row in comparison], other), style, color="gray", lw=1,
                        label=f"{key} ({comparison_label})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    phases = [row.get("phase") for row in history]
    for i in range(1, len(history)):
        if phases[i] != phases[i - 1]:
            for ax in axes:
                ax.axvline(epochs[i] - 0.5, color="gray", ls=":", lw=1)
                ax.text(epochs[i] - 0.45, ax.get_ylim()[1], str(phases[i]), fontsize=7, va="top", color="gray")
    if history and phases[0] is not None:
        axes[0].text(epochs[0], axes[0].get_ylim()[1], str(phases[0]), fontsize=7, va="top", color="gray")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def confusion_matrix_plot(matrix, class_names, path, title: str = "confusion matrix") -> Path:
    """Plot a confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    matrix = np.asarray(matrix)
    n = len(class_names)
    size = max(4.0, 0.45 * n + 2)
    fig = figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), [str(c) for c in class_names], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [str(c) for c in class_names], fontsize=7)
        top = matrix.max() if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def _label_title(label, class_names) -> str:
    """``"shirt"`` for an int label or a one-hot row; ``"shirt .62 / bag .38"`` for a mixed soft label."""
    label = np.asarray(label)
    if label.ndim == 0:
        return str(class_names[int(label)])
    top = np.argsort(-label, kind="stable")[:2]
    if len(top) < 2 or label[top[1]] <= 0:
        return str(class_names[int(top[0])])
    return " / ".join(f"{class_names[int(c)]} " + f"{label[c]:.2f}".lstrip("0") for c in top)


def augment_grid(splits, path, *, epoch: int = 0, count: int = 16) -> Path:
    """A PNG grid of the first ``count`` training images of epoch ``epoch``, exactly as the training pipeline
    yields them (augmented, erased and mixed), each titled with its label's class name (a mixed label: its two
    largest classes and their weights, e.g. ``"shirt .62 / bag .38"``).

    Args:
        splits: A `kcnn.data.Splits`.
        path: Output PNG path.
        epoch: The 0-based epoch (``splits.dataset("train", training=True, epoch=epoch)``).
        count: Images to show (fewer if the training split has fewer).

    Returns:
        The path written.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"`count` must be a positive int. Received: count={count!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"`epoch` must be a non-negative int. Received: epoch={epoch!r}")
    images, labels = [], []
    for batch in splits.dataset("train", training=True, epoch=int(epoch)):
        images.extend(batch[0].numpy())
        labels.extend(batch[1].numpy())
        if len(images) >= count:
            break
    images, labels = images[:count], labels[:count]
    cols = max(1, int(np.ceil(np.sqrt(len(images)))))
    rows = max(1, int(np.ceil(len(images) / cols)))
    fig = figure(figsize=(1.9 * cols, 2.0 * rows))
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, label in zip(axes, images, labels):
        ax.imshow(np.clip(image, 0, 255).astype(np.uint8), interpolation="nearest")
        ax.set_title(_label_title(label, splits.class_names), fontsize=7)
    fig.suptitle(f"{splits.source}: training epoch {int(epoch) + 1}, augment={splits.augment or 'none'}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
