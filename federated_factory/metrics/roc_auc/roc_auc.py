# Licensed under the Apache License, Version 2.0. Modelled on the canonical `roc_auc` metric of
# huggingface/evaluate; shipped inside federated_factory so that it loads from a local path, offline.
"""Area under the ROC curve, binary, multiclass or multilabel (one column per class)."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import roc_auc_score

_DESCRIPTION = """
Area under the Receiver Operating Characteristic curve (0.5 = chance, 1.0 = perfect ranking).
Configurations:
    - "binary" (default): references (n,) in {0, 1}, prediction_scores (n,).
    - "multiclass": references (n,) class ids, prediction_scores (n, n_classes); pass multi_class="ovr" or "ovo".
    - "multilabel": references (n, n_classes) 0/1 indicators, prediction_scores (n, n_classes). With one-hot
      references this is the one-vs-rest AUROC of each class (average=None) or their mean (average="macro").
"""

_KWARGS_DESCRIPTION = """
Args:
    references: see the configurations above.
    prediction_scores: see the configurations above.
    average (`str` or None, default "macro"): "micro", "macro", "weighted", "samples" or None (per class).
    sample_weight (`list` of `float`, optional): per-example weights.
    max_fpr (`float`, optional): standardized partial AUC over [0, max_fpr] (binary only).
    multi_class (`str`, default "raise"): "ovr" or "ovo" for the multiclass configuration.
    labels (`list` of `int`, optional): multiclass only, the class ids indexing the score columns.
Returns:
    roc_auc (`float`, or `list` of `float` when `average=None`).
Example:
    >>> metric = evaluate.load("federated_factory/metrics/roc_auc")
    >>> metric.compute(references=[0, 0, 1, 1], prediction_scores=[0.1, 0.4, 0.35, 0.8])
    {'roc_auc': 0.75}
"""

_CITATION = """
@article{hand2001, title={A Simple Generalisation of the Area Under the ROC Curve for Multiple Class
Classification Problems}, author={Hand, David J. and Till, Robert J.}, journal={Machine Learning},
volume={45}, pages={171--186}, year={2001}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RocAuc(evaluate.Metric):
    def _info(self):
        if self.config_name == "multiclass":
            features = {
                "prediction_scores": datasets.Sequence(datasets.Value("float64")),
                "references": datasets.Value("int32"),
            }
        elif self.config_name == "multilabel":
            features = {
                "prediction_scores": datasets.Sequence(datasets.Value("float64")),
                "references": datasets.Sequence(datasets.Value("int32")),
            }
        else:
            features = {"prediction_scores": datasets.Value("float64"), "references": datasets.Value("int32")}
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(features),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.roc_auc_score.html"],
        )

    def _compute(
        self,
        references,
        prediction_scores,
        average="macro",
        sample_weight=None,
        max_fpr=None,
        multi_class="raise",
        labels=None,
    ):
        score = roc_auc_score(
            references,
            prediction_scores,
            average=average,
            sample_weight=sample_weight,
            max_fpr=max_fpr,
            multi_class=multi_class,
            labels=labels,
        )
        if np.ndim(score) == 0:
            return {"roc_auc": float(score)}
        return {"roc_auc": [float(s) for s in score]}
