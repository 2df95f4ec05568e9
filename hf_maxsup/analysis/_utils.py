"""What the analysis modules share: converting and checking their inputs, softmax, a new figure."""

import numpy as np

__all__ = ["check_logits_labels", "log_softmax", "new_figure", "softmax", "to_labels", "to_numpy"]


def to_numpy(x, dtype=np.float64) -> np.ndarray:
    """Converts a torch tensor, numpy array or nested sequence to a numpy array of `dtype` (`None` keeps it)."""
    # Duck-typed so that the analysis functions work without importing torch.
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        # numpy has no bfloat16; float32 holds it exactly.
        x = (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
    return np.asarray(x, dtype=dtype)


def to_labels(labels, n: int, num_classes: int | None = None) -> np.ndarray:
    """Converts `labels` to an int64 array of shape (n,), checking its length and range."""
    raw = to_numpy(labels, dtype=None)
    if raw.ndim != 1 or raw.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match the first dimension of the inputs, got {raw.shape}.")
    if raw.dtype.kind not in "iub":
        if raw.dtype.kind != "f" or not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            raise ValueError(f"labels must be integer class ids, got dtype {raw.dtype} with non-integer values.")
    labels = raw.astype(np.int64)
    if num_classes is not None and n > 0 and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for logits of {num_classes} classes, got values in "
            f"[{labels.min()}, {labels.max()}]. Drop ignored positions (e.g. -100) before calling."
        )
    return labels


def check_logits_labels(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    """Returns float64 logits (N, K) and int64 labels (N,), raising a ValueError on malformed input."""
    logits = to_numpy(logits)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        raise ValueError(
            f"logits must have shape (N, K) with N >= 1 examples and K >= 2 classes, got {logits.shape}. "
            "For sequence models, flatten to (num_tokens, vocab) and drop ignored positions first."
        )
    # -inf is allowed (masked classes); NaN, +inf or a row without any finite logit is not.
    if np.isnan(logits).any() or not np.isfinite(logits.max(axis=1)).all():
        raise ValueError("logits contain NaN, +inf or a row of all -inf; check the model outputs (e.g. fp16 overflow).")
    return logits, to_labels(labels, logits.shape[0], logits.shape[1])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """The log-softmax of each row of `logits` (N, K), shifted by the row's maximum so that no `exp` overflows."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """The softmax of each row of `logits` (N, K)."""
    return np.exp(log_softmax(logits))


def new_figure(ax=None, figsize=(5.0, 4.5)):
    """Returns (figure, axes): a new Agg-backed figure, or `ax` and its figure."""
    # matplotlib is optional (the `analysis` extra): imported when a figure is drawn.
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("Plotting needs matplotlib: run `pip install hf_maxsup[analysis]`.") from err
    if ax is not None:
        return ax.figure, ax
    # A bare Figure on an Agg canvas: no pyplot global state, no figure leak in long runs, and the
    # user's interactive backend is left untouched.
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()
