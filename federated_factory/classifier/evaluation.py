"""Evaluating a classifier: logits in batches, accuracy on tensors, and the full test metrics of
:func:`evaluate_classifier` (classes matched by name)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from federated_factory.data import class_counts, image_channels_of, label_names_of
from federated_factory.errors import ClassifierError
from federated_factory.tensors import dataset_to_tensors


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits (float32, CPU) of ``model`` in eval mode on ``x``, in batches, on the model's device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def accuracy_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of ``x`` whose predicted class index equals ``y``; NaN for no images."""
    return held_out_scores(model, x, y, batch_size)["accuracy"]


def held_out_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
    """``accuracy`` (as :func:`accuracy_on`), ``balanced_accuracy`` (the mean over the classes present in ``y``
    of each one's recall) and ``loss`` (mean cross-entropy, no label smoothing) of ``model`` on ``x`` / ``y``
    from one pass of logits; NaN for all three when there are no images."""
    if len(x) == 0:
        return {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "loss": float("nan")}
    logits = predict_logits(model, x, batch_size)
    correct = (logits.argmax(1) == y).float()
    recalls = [correct[y == c].mean() for c in torch.unique(y)]
    return {"accuracy": correct.mean().item(), "balanced_accuracy": torch.stack(recalls).mean().item(),
            "loss": torch.nn.functional.cross_entropy(logits, y).item()}


def evaluate_classifier(model: nn.Module, test_ds, label_names: Sequence[str], *, batch_size: int = 512) -> dict:
    """Test metrics of ``model`` (whose output ``k`` is class ``label_names[k]``) on ``test_ds``.

    Classes are matched by NAME, so the model's label space may differ from the test set's (e.g. a model
    that unlearned a class). Definitions, over the label list ``confusion_labels`` = the test set's class
    names followed by any model class absent from the test set:

    * ``accuracy``: over all ``n`` test images; an image whose class the model does not know is an error.
    * ``macro_f1``: mean F1 over the classes that have test images (predictions of other classes only lower
      the recall of the true class).
    * ``auroc``: macro one-vs-rest AUROC over the classes the model knows AND that have test images (each
      class's softmax probability against all other test images, unknown-class images included as
      negatives); ``per_class_auroc`` lists them; None when fewer than one such class has both positives and
      negatives.
    * ``per_class_recall``: by class name, for every class with test images (0.0 for classes the model
      does not know).
    * ``confusion_matrix``: counts, rows = true class, columns = predicted class, both indexed by
      ``confusion_labels`` (pass those to :func:`plot_confusion_matrix`).
    * ``unknown_classes``: test classes the model cannot predict; ``n``: number of test images.

    The numbers come from the ``evaluate`` modules shipped in ``federated_factory/metrics`` (loaded offline).
    """
    from federated_factory.metrics import load_metric

    model_names = list(label_names)
    test_names = label_names_of(test_ds)
    if len(set(model_names)) != len(model_names):
        raise ClassifierError(f"label_names has duplicates: {model_names}")
    labels = test_names + [name for name in model_names if name not in test_names]
    index = {name: i for i, name in enumerate(labels)}
    model_to_union = np.array([index[name] for name in model_names])

    x, y_test = dataset_to_tensors(test_ds, getattr(model, "in_chans", None) or image_channels_of(test_ds))
    logits = predict_logits(model, x, batch_size)
    if logits.shape[1] != len(model_names):
        raise ClassifierError(f"model has {logits.shape[1]} outputs but {len(model_names)} label_names were given")
    probs = logits.softmax(1).double().numpy()
    references = y_test.numpy()  # test index == union index for test classes
    predictions = model_to_union[logits.argmax(1).numpy()]

    support = class_counts(references, len(labels))
    present = [i for i in range(len(labels)) if support[i] > 0]
    accuracy = load_metric("accuracy").compute(predictions=predictions, references=references)["accuracy"]
    macro_f1 = load_metric("f1").compute(
        predictions=predictions, references=references, labels=present, average="macro"
    )["f1"]
    cm = load_metric("confusion_matrix").compute(
        predictions=predictions, references=references, labels=list(range(len(labels)))
    )["confusion_matrix"]
    per_class_recall = {labels[i]: cm[i][i] / support[i] for i in present}

    # one-vs-rest AUROC for the model's classes that have both positives and negatives in the test set
    columns = [k for k, u in enumerate(model_to_union) if 0 < support[u] < len(references)]
    per_class_auroc: dict[str, float] = {}
    auroc = None
    if columns:
        onehot = (references[:, None] == model_to_union[columns][None, :]).astype(np.int32)
        scores = probs[:, columns]
        result = load_metric("roc_auc", "multilabel").compute(
            references=onehot.tolist(), prediction_scores=scores.tolist(), average=None
        )["roc_auc"]
        per_class_auroc = {model_names[k]: float(a) for k, a in zip(columns, result)}
        auroc = float(np.mean(result))
    return {
        "accuracy": float(accuracy),
        "macro_f1": float(macro_f1),
        "auroc": auroc,
        "per_class_recall": {k: float(v) for k, v in per_class_recall.items()},
        "per_class_auroc": per_class_auroc,
        "confusion_matrix": [[int(v) for v in row] for row in cm],
        "confusion_labels": labels,
        "unknown_classes": [name for name in test_names if name not in model_names and support[index[name]] > 0],
        "n": int(len(references)),
    }

