"""Classification metrics from labels and predictions: confusion matrix and accuracies."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class.

    Args:
      labels, predictions: (N,) integer arrays in [0, num_classes).
    Raises:
      ValueError: `labels` or `predictions` is not (N,) integers in [0, num_classes), or
        their lengths differ. Counted as they were, a (1,) or (N, 1) array would broadcast,
        and a prediction of num_classes would count as the next row's class 0.
    """
    labels = _class_indices(labels, "labels", num_classes)
    predictions = _class_indices(predictions, "predictions", num_classes)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"confusion_matrix: {labels.shape[0]} labels but {predictions.shape[0]} predictions"
        )
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def accuracy(matrix: np.ndarray) -> float:
    """Fraction of examples on the diagonal of a (K, K) confusion matrix (0.0 for an empty
    one)."""
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else 0.0


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """(K,) float64 recall of each true class; NaN for a class with no examples."""
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(matrix) / support


def out_of_range(values: np.ndarray, num_classes: int) -> str | None:
    """`must lie in 0..K-1; found MIN..MAX` when some of the class indices `values` (any
    shape, integers) lie outside [0, num_classes), else None: a label of -1 one-hot encodes
    as the last class, and one of K indexes past the logits."""
    values = np.asarray(values)
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        return f"must lie in 0..{num_classes - 1}; found {values.min()}..{values.max()}"
    return None


def _class_indices(values: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    """`values` as (N,) int64, raising ValueError unless they are integers in [0, num_classes)."""
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        hint = ": the argmax of logits" if array.ndim == 2 and name == "predictions" else ""
        raise ValueError(
            f"confusion_matrix: {name} {array.shape} {array.dtype}; expected (N,) integer "
            f"class indices{hint}"
        )
    if problem := out_of_range(array, num_classes):
        raise ValueError(f"confusion_matrix: {name} {problem}")
    return array.astype(np.int64)
