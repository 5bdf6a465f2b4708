"""Network-of-hospitals mode: every hospital trains its own expert; the federation predicts as a product of experts.

* :mod:`.expert` — what a hospital runs: its own real images + the synthetic images of the classes it lacks
  (the same cached chunk streams the aggregator draws) → an expert classifier, published to its private repo.
* :mod:`.product` — :class:`ProductOfExperts` (sum of clamped log-probabilities) and :func:`combine`, which
  checks a list of experts against the manifest and publishes the federation model.
* :mod:`.federation` — :func:`train_network`: simulate the whole network on one machine (demo, benchmarks).
* :mod:`.unlearning` — :func:`unlearn_network`: drop a hospital's expert and rebuild every other expert
  without its factory's chunks, with a certificate.
* :mod:`.commands` — argparse arguments and runners for ``train-expert`` and ``combine``.
"""

from .expert import OWN_DATA_SOURCE, ExpertError, ExpertResult, Hospital, expert_training_set, train_expert
from .federation import NetworkResult, train_network
from .product import CombineResult, ProductOfExperts, combine, load_expert
from .unlearning import unlearn_network

__all__ = [
    "OWN_DATA_SOURCE",
    "CombineResult",
    "ExpertError",
    "ExpertResult",
    "Hospital",
    "NetworkResult",
    "ProductOfExperts",
    "combine",
    "expert_training_set",
    "load_expert",
    "train_expert",
    "train_network",
    "unlearn_network",
]
