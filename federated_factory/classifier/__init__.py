"""The aggregator's classifier (also trained by the baselines), one module per concern:

=====================  ===================================================================================
``models``             architectures and the registry: :func:`build_classifier`, :func:`parse_arch`,
                       timm's ``ff_cnn`` / ``ff_resnet18`` (registered with timm on import), transformers
                       models behind :class:`HFImageClassifier`
``config``             :class:`ClassifierConfig`, validated on construction
``training``           :func:`train_classifier`, :func:`train_on_tensors`, :class:`TrainResult`,
                       :func:`describe_selection`, :func:`stratified_split`, :func:`augment_batch`
``evaluation``         :func:`evaluate_classifier` (test metrics, classes matched by name),
                       :func:`predict_logits`, :func:`accuracy_on`, :func:`held_out_scores`
``io``                 :func:`save_classifier`, :func:`load_classifier`, :class:`LoadedClassifier`,
                       :func:`initialize_from`
=====================  ===================================================================================

Plots (:func:`plot_confusion_matrix`, :func:`plot_history`) live in :mod:`federated_factory.plots`, dataset
helpers (:func:`label_names_of`, :func:`image_channels_of`) in :mod:`federated_factory.data`, thread /
seed / precision context managers in :mod:`federated_factory.runtime`; all are re-exported here so
``from federated_factory.classifier import X`` works for every name listed in ``__all__``.

A saved classifier is a timm Hub folder (``config.json`` + ``model.safetensors``), so after uploading it::

    import federated_factory.classifier  # registers ff_cnn / ff_resnet18 with timm
    model = timm.create_model("hf-hub:user/repo", pretrained=True)

(``pretrained=True`` is what makes timm load the weights; ``local-dir:/path`` works the same way.) Models
take images in [0, 1] (N×C×H×W, as :func:`federated_factory.tensors.dataset_to_tensors` returns them); the
saved preprocessing config says so (mean 0, std 1).
"""

from federated_factory.classifier.config import ClassifierConfig
from federated_factory.classifier.evaluation import accuracy_on, evaluate_classifier, held_out_scores, predict_logits
from federated_factory.classifier.io import LoadedClassifier, initialize_from, load_classifier, save_classifier
from federated_factory.classifier.models import (
    DEFAULT_ARCH,
    FF_CONFIG_KEY,
    FFCNN,
    HF_PRESETS,
    TIMM_ALIASES,
    HFImageClassifier,
    SmallStemResNet,
    build_classifier,
    parse_arch,
)
from federated_factory.classifier.training import (
    TrainResult,
    augment_batch,
    describe_selection,
    stratified_split,
    train_classifier,
    train_on_tensors,
)
from federated_factory.data import image_channels_of, label_names_of
from federated_factory.plots import plot_confusion_matrix, plot_history
from federated_factory.runtime import autocast_for, cpu_threads, deterministic, resolve_precision
from federated_factory.tensors import dataset_to_tensors

__all__ = [
    "DEFAULT_ARCH",
    "FF_CONFIG_KEY",
    "FFCNN",
    "HF_PRESETS",
    "TIMM_ALIASES",
    "ClassifierConfig",
    "HFImageClassifier",
    "LoadedClassifier",
    "SmallStemResNet",
    "TrainResult",
    "accuracy_on",
    "held_out_scores",
    "augment_batch",
    "describe_selection",
    "autocast_for",
    "build_classifier",
    "cpu_threads",
    "dataset_to_tensors",
    "deterministic",
    "evaluate_classifier",
    "image_channels_of",
    "initialize_from",
    "label_names_of",
    "load_classifier",
    "parse_arch",
    "plot_confusion_matrix",
    "plot_history",
    "predict_logits",
    "resolve_precision",
    "save_classifier",
    "stratified_split",
    "train_classifier",
    "train_on_tensors",
]
