# Licensed under the Apache License, Version 2.0. Modelled on the canonical `confusion_matrix` metric of
# huggingface/evaluate; shipped inside federated_factory so that it loads from a local path, offline.
"""Confusion matrix: entry [i][j] counts examples of true class i predicted as class j."""

import datasets
import evaluate
from sklearn.metrics import confusion_matrix

_DESCRIPTION = """
Confusion matrix C where C[i][j] is the number of examples whose reference is labels[i] and whose prediction
is labels[j]. Rows are true classes, columns predicted classes.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    labels (`list` of `int`, optional): the classes indexing rows and columns, in order; by default the sorted
        union of `predictions` and `references`. Pass it to get a fixed square shape.
    sample_weight (`list` of `float`, optional): per-example weights.
    normalize (`str`, optional): "true" (rows sum to 1), "pred" (columns) or "all"; None gives counts.
Returns:
    confusion_matrix (`list` of `list`).
Example:
    >>> metric = evaluate.load("federated_factory/metrics/confusion_matrix")
    >>> metric.compute(references=[0, 1, 1], predictions=[0, 0, 1], labels=[0, 1])
    {'confusion_matrix': [[1, 0], [1, 1]]}
"""

_CITATION = """
@article{scikit-learn, title={Scikit-learn: Machine Learning in Python}, author={Pedregosa, F. and others},
journal={Journal of Machine Learning Research}, volume={12}, pages={2825--2830}, year={2011}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ConfusionMatrix(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.confusion_matrix.html"],
        )

    def _compute(self, predictions, references, labels=None, sample_weight=None, normalize=None):
        matrix = confusion_matrix(
            references, predictions, labels=labels, sample_weight=sample_weight, normalize=normalize
        )
        return {"confusion_matrix": matrix.tolist()}
