"""Saving and loading classifiers as timm (or transformers) Hub folders: ``config.json`` +
``model.safetensors``, never pickle; and warm-starting a model from a saved one."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn

from federated_factory.classifier.config import ClassifierConfig
from federated_factory.classifier.models import DEFAULT_ARCH, FF_CONFIG_KEY, HFImageClassifier
from federated_factory.errors import ClassifierError


@dataclass
class LoadedClassifier:
    """A classifier read back by :func:`load_classifier`: the model (eval mode), its class names in output
    order, and what ``save_classifier`` recorded (arch, training config, the raw metadata)."""

    model: nn.Module
    label_names: list[str]
    arch: str | None = None
    config: ClassifierConfig | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def save_classifier(
    model: nn.Module,
    out_dir,
    *,
    label_names: Sequence[str],
    config: ClassifierConfig | None = None,
    arch: str | None = None,
    image_size: int | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (no pickle) to ``out_dir``.

    timm models go through ``timm.models.save_for_hf``: uploaded to a Hub repo, the folder loads with
    ``timm.create_model("hf-hub:<repo>", pretrained=True)`` (after ``import federated_factory.classifier``
    for ``ff_*`` models); locally with ``"local-dir:<out_dir>"``. The config records ``label_names``, the
    constructor ``model_args`` and the preprocessing (input size, mean 0 / std 1: inputs in [0, 1]).
    transformers models go through ``save_pretrained`` (``id2label`` holds the names) and load with
    ``AutoModelForImageClassification.from_pretrained``. Either way, our arch and training config sit under
    the ``"federated_factory"`` key of ``config.json``; :func:`load_classifier` reads both layouts.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    label_names = list(label_names)
    config = config or ClassifierConfig(arch=arch or DEFAULT_ARCH)
    arch = arch or config.arch
    meta = {"arch": arch, "config": config.to_dict(), "label_names": label_names}
    num_out = getattr(model, "num_classes", None)
    if num_out is not None and num_out != len(label_names):
        raise ClassifierError(f"model has {num_out} classes but {len(label_names)} label_names were given")
    if isinstance(model, HFImageClassifier):
        hf = model.hf_model
        hf.config.id2label = dict(enumerate(label_names))
        hf.config.label2id = {name: i for i, name in enumerate(label_names)}
        setattr(hf.config, FF_CONFIG_KEY, meta)
        hf.save_pretrained(out_dir, safe_serialization=True)
        return out_dir
    from timm.models import save_for_hf

    in_chans = model.in_chans
    size = image_size or getattr(model, "ff_image_size", None)
    size = size or getattr(model, "pretrained_cfg", {}).get("input_size", (in_chans, 16, 16))[-1]
    meta["image_size"] = int(size)
    data_config = {
        "input_size": (in_chans, size, size),
        "mean": (0.0,) * in_chans,
        "std": (1.0,) * in_chans,
        "interpolation": "bicubic",
        "crop_pct": 1.0,
    }
    save_for_hf(
        model,
        str(out_dir),
        model_config={"label_names": label_names, FF_CONFIG_KEY: meta},
        safe_serialization=True,
        data_config=data_config,
    )
    return out_dir


def _read_config(dir_or_repo: str, revision: str | None) -> tuple[dict, bool]:
    path = Path(dir_or_repo)
    if path.is_dir():
        return json.loads((path / "config.json").read_text()), True
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(dir_or_repo, "config.json", revision=revision)).read_text()), False


def initialize_from(model: nn.Module, source: str) -> list[str]:
    """Copy into ``model`` every tensor of the classifier at ``source`` (a folder, or a Hub repo id with an
    optional ``@revision``) whose name and shape match; returns the names left at their fresh initialization
    (typically the head, when the label spaces differ). Raises :class:`~federated_factory.errors.ClassifierError` when nothing matches."""
    if Path(source).exists():
        loaded = load_classifier(source)
    else:
        repo, _, revision = source.partition("@")
        loaded = load_classifier(repo, revision=revision or None)
    own = model.state_dict()
    matching = {k: v for k, v in loaded.model.state_dict().items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ClassifierError(f"ClassifierConfig.init_from {source!r}: none of its tensors fits this architecture")
    model.load_state_dict(matching, strict=False)
    return sorted(set(own) - set(matching))


def load_classifier(dir_or_repo, *, revision: str | None = None) -> LoadedClassifier:
    """Rebuild a classifier written by :func:`save_classifier` from a local folder or a Hub repo id."""
    source = str(dir_or_repo)
    cfg, local = _read_config(source, revision)
    meta = cfg.get(FF_CONFIG_KEY, {})
    train_config = ClassifierConfig.from_dict(meta["config"]) if meta.get("config") else None
    if "architecture" in cfg:  # timm layout
        if local:
            model = timm.create_model(f"local-dir:{Path(source).resolve()}", pretrained=True)
        else:
            name = f"hf-hub:{source}@{revision}" if revision else f"hf-hub:{source}"
            model = timm.create_model(name, pretrained=True)
        names = cfg.get("label_names") or model.pretrained_cfg.get("label_names")
        if isinstance(names, dict):
            names = [names[str(i)] if str(i) in names else names[i] for i in range(len(names))]
        label_names = list(names) if names else [str(i) for i in range(model.num_classes)]
    else:  # transformers layout
        from transformers import AutoModelForImageClassification

        hf = AutoModelForImageClassification.from_pretrained(source, revision=revision)
        model = HFImageClassifier(hf)
        label_names = [hf.config.id2label[i] for i in range(hf.config.num_labels)]
    model.eval()
    return LoadedClassifier(
        model=model, label_names=label_names, arch=meta.get("arch"), config=train_config, metadata=meta
    )


