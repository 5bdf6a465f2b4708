"""The privacy audit: does a factory reproduce its hospital's training images?

Before publishing, the hospital samples its factory and measures, class by class, how close the samples come
to its own training images, against how close *fresh* images of the same class (held out of training) come.

- **Metric**: nearest-neighbour distance, per-pixel RMS with pixels in [0, 1], from a sample to the training
  images of its class. When the factory was trained with flips (``flip="h"`` or ``"hv"``), the training images
  are compared in every orientation the training could show them (a flipped copy is a copy): the distance is
  the minimum over those flips.
- **Threshold**, per class: ``copy_factor`` × the ``copy_quantile`` quantile of the held-out images' distances
  to the training images (same metric). Without held-out images (a class of fewer than 10 images) the training
  images' leave-one-out distances stand in. A sample closer than the threshold is a *copy*.
- **Verdict**: the factory passes when its *worst* class's copy rate is at most ``max_copy_rate``. A pooled rate
  would let one fully memorized class hide among clean ones; it is reported, not judged.

The result is the ``privacy_audit`` section of `factory.json`, which the aggregator's privacy gate reads
(`passed`, `worst_class`, `worst_copy_rate`, `copy_quantile`, `copy_factor`, `samples_per_class`,
`flip_invariant`, `allowed_copies`, `per_class`, ...). It is a measurement of near-copies, not a formal
privacy guarantee (no differential privacy).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .client_data import ClientData
from .errors import FactoryError, PrivacyAuditError
from .tensors import samples_to_uint8

#: Orientations compared for each training flip setting ("v" = upside down, "hv" = both flips).
FLIP_VARIANTS: dict[str, tuple[str, ...]] = {"none": ("none",), "h": ("none", "h"), "hv": ("none", "h", "v", "hv")}

#: The audit's defaults (the aggregator's gate demands at least these by default).
DEFAULT_SAMPLES_PER_CLASS = 64
DEFAULT_COPY_QUANTILE = 0.05
DEFAULT_COPY_FACTOR = 0.5
DEFAULT_MAX_COPY_RATE = 0.1


def _flipped(images: np.ndarray, variant: str) -> np.ndarray:
    """``images`` (N×C×H×W) in one orientation of `FLIP_VARIANTS`."""
    if variant in ("h", "hv"):
        images = images[..., ::-1]
    if variant in ("v", "hv"):
        images = images[..., ::-1, :]
    return images


def _flat(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1)).float().div_(255.0)


def nearest_distances(queries: np.ndarray, references: np.ndarray, *, flip: str = "none",
                      leave_one_out: bool = False) -> np.ndarray:
    """Distance from each query image to its nearest reference image (per-pixel RMS, pixels in [0, 1]).

    ``queries`` and ``references`` are uint8 N×C×H×W. With ``flip`` "h" or "hv", each reference is also compared
    flipped (see `FLIP_VARIANTS`) and the smallest distance counts. With ``leave_one_out``, ``queries`` must be
    ``references`` and an image is never compared with itself, in any orientation.
    """
    if flip not in FLIP_VARIANTS:
        raise FactoryError(f"flip must be one of {sorted(FLIP_VARIANTS)}, got {flip!r}")
    if leave_one_out and queries.shape != references.shape:
        raise FactoryError("leave-one-out distances compare a set of images with itself")
    q = _flat(queries)
    nearest = None
    for variant in FLIP_VARIANTS[flip]:
        d = torch.cdist(q, _flat(_flipped(references, variant)))
        if leave_one_out:
            d.fill_diagonal_(float("inf"))
        d = d.min(dim=1).values
        nearest = d if nearest is None else torch.minimum(nearest, d)
    return (nearest / math.sqrt(q.shape[1])).numpy()


def metric_text(flip: str) -> str:
    """The audit's metric in words, as stated in `factory.json` and the card."""
    text = "nearest-neighbour distance (per-pixel RMS, pixels in [0, 1]) from each sample to its class's training images"
    if flip != "none":
        kinds = {"h": "mirrored left-right", "hv": "mirrored left-right, upside down and both"}[flip]
        text += f", minimised over the training images as trained on (also {kinds}: a flipped copy is a copy)"
    return text


def threshold_text(copy_quantile: float, copy_factor: float, max_copy_rate: float) -> str:
    """The copy rule and the verdict rule in words."""
    return (f"a sample is a copy when its distance is below {copy_factor:g} x the {copy_quantile:g} quantile "
            f"(q{copy_quantile * 100:g}) of the distances from the class's held-out images to its training images "
            "(leave-one-out distances among the training images when the class has no held-out images); the factory "
            f"passes when its worst class's copy rate is at most {max_copy_rate:.0%}")


def audit_privacy(
    pipeline,
    data: ClientData,
    *,
    flip: str = "none",
    samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS,
    sampler: str = "dpm++",
    num_inference_steps: int = 20,
    copy_quantile: float = DEFAULT_COPY_QUANTILE,
    copy_factor: float = DEFAULT_COPY_FACTOR,
    max_copy_rate: float = DEFAULT_MAX_COPY_RATE,
    seed: int = 0,
) -> dict:
    """Audit ``pipeline`` (a `FactoryPipeline`) against the client's own images; returns `factory.json`'s ``privacy_audit``.

    ``flip`` is the flip augmentation the factory was trained with (``config.flip``): the comparison is invariant
    to exactly those flips. ``samples_per_class`` samples are drawn per class with ``sampler`` (on a copy of the
    pipeline: its own scheduler is left as it is). See the module docstring for the metric and the rules.
    """
    if not 0 < copy_quantile < 1 or copy_factor <= 0 or not 0 <= max_copy_rate <= 1 or samples_per_class < 1:
        raise FactoryError(
            f"invalid audit settings: copy_quantile={copy_quantile} (0-1), copy_factor={copy_factor} (> 0), "
            f"max_copy_rate={max_copy_rate} (0-1), samples_per_class={samples_per_class} (>= 1)"
        )
    sampling = pipeline.with_sampler(sampler)
    sampling.set_progress_bar_config(disable=True)
    per_class, all_sample_d, copies, total = {}, [], 0, 0
    generator = torch.Generator().manual_seed(seed)
    for local_id, name in enumerate(data.class_names):
        train = data.train_images[data.train_labels == local_id]
        holdout = data.holdout_images[data.holdout_labels == local_id]
        images = sampling(name, num_images=samples_per_class, num_inference_steps=num_inference_steps,
                          generator=generator, output_type="np").images
        samples = samples_to_uint8(images)
        d_samples = nearest_distances(samples, train, flip=flip)
        if len(holdout):
            d_reference = nearest_distances(holdout, train, flip=flip)
            reference = "held-out"
        else:
            d_reference = nearest_distances(train, train, flip=flip, leave_one_out=True)
            reference = "leave-one-out"
        threshold = copy_factor * float(np.quantile(d_reference, copy_quantile))
        n_copies = int((d_samples < threshold).sum())
        copies += n_copies
        total += len(d_samples)
        all_sample_d.append(d_samples)
        per_class[name] = {
            "samples": int(len(d_samples)),
            "copies": n_copies,
            "copy_rate": n_copies / len(d_samples),
            "passed": n_copies / len(d_samples) <= max_copy_rate,
            "threshold": threshold,
            "reference": reference,
            "reference_images": int(len(d_reference)),
            "training_images": int(len(train)),
            "sample_nn_distance_quantiles": _quantiles(d_samples),
            "reference_nn_distance_quantiles": _quantiles(d_reference),
        }
    worst = max(per_class, key=lambda name: per_class[name]["copy_rate"])  # first of the worst on ties
    return {
        "method": "nearest-neighbour distance of samples to the client's training images vs held-out images",
        "metric": metric_text(flip),
        "threshold_rule": threshold_text(copy_quantile, copy_factor, max_copy_rate),
        "distance": "per-pixel RMS distance, pixels in [0, 1]",
        "copy_rule": f"sample distance < {copy_factor} x q{copy_quantile * 100:g} of reference distances",
        "copy_quantile": copy_quantile,
        "copy_factor": copy_factor,
        "samples_per_class": samples_per_class,
        "sampler": sampler,
        "num_inference_steps": num_inference_steps,
        "seed": seed,
        "flip": flip,
        "flip_invariant": flip != "none",
        "flips_compared": list(FLIP_VARIANTS[flip]),
        "copy_rate": copies / max(1, total),  # pooled over classes: reported, not judged
        "worst_class": worst,
        "worst_copy_rate": per_class[worst]["copy_rate"],
        "max_copy_rate": max_copy_rate,
        "passed": per_class[worst]["copy_rate"] <= max_copy_rate,
        "allowed_copies": False,  # set by the publisher when it publishes a failed audit on purpose
        "sample_nn_distance_quantiles": _quantiles(np.concatenate(all_sample_d)),
        "per_class": per_class,
    }


def require_passed(audit: dict, repo_id: str) -> None:
    """Raise `PrivacyAuditError` (naming the worst class) unless ``audit`` passed."""
    if audit.get("passed") is True:
        return
    worst, rate = audit.get("worst_class"), audit.get("worst_copy_rate", audit.get("copy_rate"))
    which = f"in class {worst!r}, " if worst is not None else ""
    raise PrivacyAuditError(
        f"privacy audit failed for {repo_id}: {which}{float(rate):.1%} of samples are near-copies of training "
        f"images (limit {float(audit['max_copy_rate']):.1%} for every class; pooled over classes "
        f"{float(audit['copy_rate']):.1%}); nothing was published. Train longer on more data, or pass "
        "allow_copies=True / --allow-copies to publish anyway (factory.json and the card will say so, and "
        "aggregators refuse it unless their manifest overrides it)."
    )


def _quantiles(values: np.ndarray) -> dict[str, float]:
    return {f"q{q:02d}": float(np.quantile(values, q / 100)) for q in (1, 5, 25, 50, 75, 95)}
