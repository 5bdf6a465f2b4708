# Licensed under the Apache License, Version 2.0. Modelled on the canonical `f1` metric of
# huggingface/evaluate; shipped inside federated_factory so that it loads from a local path, offline.
"""F1: harmonic mean of precision and recall, per class or averaged."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import f1_score

_DESCRIPTION = """
F1 = 2 * precision * recall / (precision + recall), computed per class and averaged as `average` says.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    labels (`list` of `int`, optional): the classes to score (and average over); by default every class
        that occurs in `predictions` or `references`.
    pos_label (`int`, default 1): the positive class when `average="binary"`.
    average (`str` or None, default "binary"): "binary", "micro", "macro", "weighted", or None (per class).
    sample_weight (`list` of `float`, optional): per-example weights.
    zero_division (default 0.0): value used when a precision or recall has a zero denominator.
Returns:
    f1 (`float`, or `list` of `float` when `average=None`).
Example:
    >>> metric = evaluate.load("federated_factory/metrics/f1")
    >>> metric.compute(references=[0, 1, 2, 0], predictions=[0, 2, 1, 0], average="macro")
    {'f1': 0.3333333333333333}
"""

_CITATION = """
@article{scikit-learn, title={Scikit-learn: Machine Learning in Python}, author={Pedregosa, F. and others},
journal={Journal of Machine Learning Research}, volume={12}, pages={2825--2830}, year={2011}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(
        self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None, zero_division=0.0
    ):
        score = f1_score(
            references,
            predictions,
            labels=labels,
            pos_label=pos_label,
            average=average,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        if np.ndim(score) == 0:
            return {"f1": float(score)}
        return {"f1": [float(s) for s in score]}
