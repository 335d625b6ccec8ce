"""Classification metrics from labels and predictions: confusion matrix and accuracies."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class.

    Args:
      labels, predictions: (N,) integer arrays in [0, num_classes).
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def accuracy(matrix: np.ndarray) -> float:
    """Fraction of examples on the diagonal of a confusion matrix (0.0 for an empty one)."""
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else 0.0


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """(K,) float64 recall of each true class; NaN for a class with no examples."""
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(matrix) / support
