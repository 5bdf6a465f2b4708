"""Baselines that train the same classifier on the clients' REAL data.

* :func:`run_centralized`: one model on the union of the clients' training data (the upper reference).
* :func:`run_fedavg`: FedAvg (``mu=0``) or FedProx (``mu>0``): each round every client starts from the
  global model, trains ``local_epochs`` on its own data, and the server averages the client models
  (parameters AND BatchNorm buffers) weighted by client size. Under one-class-per-client silos the average
  of ten one-class models is close to chance; that is the failure FederatedFactory addresses.
* :func:`run_scaffold`: SCAFFOLD (Karimireddy et al., 2020): FedAvg whose local SGD steps are corrected by
  control variates (``c - c_i``, the server's minus the client's estimate of the update direction), which
  is meant to cancel client drift under heterogeneous data.

All report the test metrics of :func:`federated_factory.classifier.evaluate_classifier`. Model selection
never looks at the test set: the centralized model keeps its best epoch on a validation slice of the
training union, FedAvg its best round on the union of the clients' held-out slices.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from federated_factory.classifier import (
    ClassifierConfig,
    accuracy_on,
    augment_batch,
    autocast_for,
    build_classifier,
    cpu_threads,
    deterministic,
    evaluate_classifier,
    image_channels_of,
    label_names_of,
    resolve_precision,
    stratified_split,
    train_classifier,
)
from federated_factory.tensors import dataset_to_tensors

BYTES_PER_VALUE = 4  # float32 on the wire


def run_centralized(
    data,
    test_ds,
    config: ClassifierConfig | None = None,
    *,
    accelerator=None,
    progress: bool = True,
    return_model: bool = False,
) -> dict[str, Any]:
    """Train the classifier on ``data`` (a ``datasets.Dataset`` or a list of client datasets, concatenated)
    and evaluate on ``test_ds``. Returns the test metrics plus the training summary (history, best_epoch,
    wall time); ``"model"`` too when ``return_model``."""
    import datasets

    t0 = time.perf_counter()
    config = config or ClassifierConfig()
    if isinstance(data, (list, tuple)):
        _check_same_classes(data)
        train_ds = datasets.concatenate_datasets(list(data))
    else:
        train_ds = data
    result = train_classifier(train_ds, config, accelerator=accelerator, progress=progress)
    metrics = evaluate_classifier(result.model, test_ds, result.label_names)
    out = {
        "method": "centralized",
        **metrics,
        **result.summary(),
        "train_time_s": result.wall_time_s,
        "wall_time_s": time.perf_counter() - t0,
    }
    if return_model:
        out["model"] = result.model
    return out


def model_bytes(model: nn.Module) -> int:
    """Bytes to send ``model`` once: every parameter and buffer value as float32."""
    return sum(t.numel() for t in model.state_dict().values()) * BYTES_PER_VALUE


def communication_cost(model_size_bytes: int, rounds: int, num_clients: int) -> dict[str, int]:
    """Each round every client downloads the global model and uploads its update (one model each way)."""
    per_client = rounds * model_size_bytes
    return {
        "model_bytes": model_size_bytes,
        "uploaded_bytes_per_client": per_client,
        "downloaded_bytes_per_client": per_client,
        "uploaded_bytes_total": per_client * num_clients,
        "downloaded_bytes_total": per_client * num_clients,
        "total_bytes": 2 * per_client * num_clients,  # rounds × model bytes × clients × 2
    }


def weighted_average(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Average of state dicts with ``weights`` (summing to 1). Integer buffers (BatchNorm's
    ``num_batches_tracked``) are averaged too and rounded."""
    out = {}
    for key, ref in states[0].items():
        acc = sum(w * s[key].double() for w, s in zip(weights, states))
        out[key] = acc.round().to(ref.dtype) if not ref.is_floating_point() else acc.to(ref.dtype)
    return out


def _check_same_classes(client_datasets: Sequence) -> list[str]:
    names = label_names_of(client_datasets[0])
    for i, ds in enumerate(client_datasets[1:], start=1):
        if label_names_of(ds) != names:
            raise ValueError(f"client {i} has classes {label_names_of(ds)}, client 0 has {names}")
    return names


def _local_train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: ClassifierConfig,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    mu: float,
    generator: torch.Generator,
    device: torch.device,
    precision: str = "fp32",
    correction: dict[str, torch.Tensor] | None = None,
) -> tuple[float, int]:
    """``epochs`` passes of AdamW over one client's data (fresh optimizer state), with the FedProx term
    ``mu/2 · ||w - w_global||²`` when ``mu > 0``. With ``correction`` (SCAFFOLD's ``c - c_i`` by parameter
    name) the steps are plain SGD on the corrected gradient ``g + c - c_i``, as in the SCAFFOLD paper.
    Returns the mean training loss and the number of optimizer steps taken."""
    model.train()
    anchor = [p.detach().clone() for p in model.parameters()] if mu > 0 else None
    if correction is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=config.weight_decay)
        named = [(p, correction[name]) for name, p in model.named_parameters()]
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on one image
                continue
            xb = augment_batch(x[idx], config, generator).to(device)
            if config.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y[idx].to(device)
            with autocast_for(precision, device):
                loss = F.cross_entropy(model(xb), yb, label_smoothing=config.label_smoothing)
            if anchor is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
                loss = loss + 0.5 * mu * prox
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if correction is not None:
                for p, c in named:
                    if p.grad is not None:
                        p.grad.add_(c)
            optimizer.step()
            losses.append(loss.item())
    return (float(np.mean(losses)) if losses else float("nan")), len(losses)


def run_fedavg(
    client_datasets: Sequence,
    test_ds,
    config: ClassifierConfig | None = None,
    *,
    rounds: int,
    local_epochs: int,
    mu: float = 0.0,
    client_val_fraction: float = 0.1,
    seed: int | None = None,
    local_batch_size: int | None = 32,
    lr_schedule: str = "constant",
    progress: bool = True,
    device: str | torch.device | None = None,
    return_model: bool = False,
    scaffold_lr: float | None = None,
) -> dict[str, Any]:
    """FedAvg (``mu=0``) / FedProx (``mu>0``) over ``client_datasets`` (one ``datasets.Dataset`` per client,
    same ``ClassLabel``), with ``config.arch`` and its training settings (augmentation, label smoothing,
    weight decay, precision, threads; AdamW at ``config.lr`` decayed by a cosine over rounds, fresh
    optimizer state per client and round). Local mini-batches have ``local_batch_size`` images (default 32,
    the FedAvg custom; ``None`` → ``config.batch_size``): with ~400 images per client, 128-image batches
    leave 3 steps per local epoch and FedAvg barely moves even on iid data.

    Each client holds out ``client_val_fraction`` of its data (stratified); the reported round is the one
    whose global model is most accurate on the union of those slices (ties → later round). Returns the test
    metrics of that round, ``history`` (per round: mean local loss, validation accuracy), ``selected_round``,
    ``wall_time_s`` and ``communication`` (see :func:`communication_cost`).

    ``scaffold_lr`` (use :func:`run_scaffold`) switches to SCAFFOLD with local SGD at that learning rate.
    """
    from tqdm.auto import tqdm

    if rounds < 1 or local_epochs < 1:
        raise ValueError(f"run_fedavg: rounds ({rounds}) and local_epochs ({local_epochs}) must be >= 1")
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"run_fedavg: lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    if mu < 0:
        raise ValueError(f"run_fedavg: mu must be >= 0, got {mu}")
    if scaffold_lr is not None and (scaffold_lr <= 0 or mu > 0):
        raise ValueError(f"run_scaffold: local_lr must be > 0 (got {scaffold_lr}) and mu must be 0 (got {mu})")
    method = "scaffold" if scaffold_lr is not None else "fedprox" if mu > 0 else "fedavg"
    if not client_datasets:
        raise ValueError("run_fedavg: no client datasets")
    t0 = time.perf_counter()
    config = config or ClassifierConfig()
    seed = config.seed if seed is None else seed
    local_batch_size = local_batch_size or config.batch_size
    device = torch.device(device) if device is not None else torch.device("cpu")
    precision = resolve_precision(config.precision, device)
    label_names = _check_same_classes(client_datasets)
    channels = image_channels_of(client_datasets[0])

    train_parts, val_x, val_y = [], [], []
    for k, ds in enumerate(client_datasets):
        x, y = dataset_to_tensors(ds, channels)
        tr, va = stratified_split(y, client_val_fraction, seed + k)
        train_parts.append((x[tr], y[tr]))
        val_x.append(x[va])
        val_y.append(y[va])
    x_val, y_val = torch.cat(val_x), torch.cat(val_y)
    sizes = [len(x) for x, _ in train_parts]
    if sum(sizes) == 0:
        raise ValueError("run_fedavg: the clients hold no training images")
    image_size = train_parts[0][0].shape[-1] if sizes[0] else x_val.shape[-1]

    with deterministic(seed, device), cpu_threads(config.num_threads):
        global_model = build_classifier(config.arch, len(label_names), channels, image_size).to(device)
        size_bytes = model_bytes(global_model)
        if scaffold_lr is not None:
            # SCAFFOLD sends the control variate (one value per parameter) along with the model, both ways
            size_bytes += BYTES_PER_VALUE * sum(p.numel() for p in global_model.parameters())
            c_server = {n: torch.zeros_like(p) for n, p in global_model.named_parameters()}
            c_clients = [{n: torch.zeros_like(p) for n, p in global_model.named_parameters()} for _ in train_parts]
        history: list[dict[str, Any]] = []
        best_acc, best_round, best_state = -1.0, rounds, None
        bar = tqdm(range(1, rounds + 1), desc=f"{method} rounds", disable=not progress)
        for rnd in bar:
            lr = config.lr if scaffold_lr is None else scaffold_lr
            if lr_schedule == "cosine":
                lr *= 0.5 * (1.0 + math.cos(math.pi * (rnd - 1) / rounds))
            states, weights, losses, control_deltas = [], [], [], []
            for k, (x, y) in enumerate(train_parts):
                if len(x) == 0:
                    continue
                local = copy.deepcopy(global_model)
                if config.channels_last:
                    local = local.to(memory_format=torch.channels_last)
                gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rnd, k]).generate_state(1)[0]))
                correction = None
                if scaffold_lr is not None:
                    correction = {n: c_server[n] - c_clients[k][n] for n in c_server}
                loss, steps = _local_train(
                    local, x, y, config, epochs=local_epochs, batch_size=local_batch_size, lr=lr, mu=mu,
                    generator=gen, device=device, precision=precision, correction=correction,
                )
                losses.append(loss)
                if scaffold_lr is not None and steps > 0:
                    # option II of the paper: c_i+ = c_i - c + (x - y_i) / (K · lr)
                    start = dict(global_model.named_parameters())
                    updated = {
                        n: c_clients[k][n] - c_server[n] + (start[n].detach() - p.detach()) / (steps * lr)
                        for n, p in local.named_parameters()
                    }
                    control_deltas.append({n: updated[n] - c_clients[k][n] for n in updated})
                    c_clients[k] = updated
                states.append({key: v.detach().contiguous() for key, v in local.state_dict().items()})
                weights.append(len(x))
            total = float(sum(weights))
            global_model.load_state_dict(weighted_average(states, [w / total for w in weights]))
            for delta in control_deltas:  # c += mean over all N clients of (c_i+ - c_i)
                for n in c_server:
                    c_server[n] += delta[n] / len(train_parts)
            val_acc = accuracy_on(global_model, x_val, y_val) if len(x_val) else None
            history.append(
                {"round": rnd, "loss": float(np.average(losses, weights=weights)), "val_accuracy": val_acc, "lr": lr}
            )
            if val_acc is not None and val_acc >= best_acc:
                best_acc, best_round = val_acc, rnd
                best_state = {key: v.detach().clone() for key, v in global_model.state_dict().items()}
            bar.set_postfix(val_acc="n/a" if val_acc is None else f"{val_acc:.3f}", best=best_round)
        if best_state is not None:
            global_model.load_state_dict(best_state)
        global_model.eval()

    metrics = evaluate_classifier(global_model, test_ds, label_names)
    out = {
        "method": method,
        **metrics,
        "mu": mu,
        "local_lr": scaffold_lr if scaffold_lr is not None else config.lr,
        "local_optimizer": "sgd" if scaffold_lr is not None else "adamw",
        "rounds": rounds,
        "local_epochs": local_epochs,
        "local_batch_size": local_batch_size,
        "num_clients": len(client_datasets),
        "client_train_sizes": sizes,
        "num_val": int(len(x_val)),
        "selected_round": best_round,
        "best_val_accuracy": best_acc if best_state is not None else None,
        "history": history,
        "communication": communication_cost(size_bytes, rounds, len(client_datasets)),
        "arch": config.arch,
        "precision": precision,
        "config": config.to_dict(),
        "label_names": label_names,
        "wall_time_s": time.perf_counter() - t0,
    }
    if return_model:
        out["model"] = global_model
    return out


def run_scaffold(
    client_datasets: Sequence,
    test_ds,
    config: ClassifierConfig | None = None,
    *,
    rounds: int,
    local_epochs: int,
    local_lr: float = 0.05,
    **kwargs: Any,
) -> dict[str, Any]:
    """SCAFFOLD over ``client_datasets``: like :func:`run_fedavg` (same classifier, client validation
    slices, round selection, weighted model average), but every client keeps a control variate ``c_i`` and
    the server one ``c`` (one value per model parameter, zero at the start); local steps are SGD at
    ``local_lr`` on ``g + c - c_i``; after its local steps a client sets ``c_i+ = c_i - c + (x - y_i)/(K·lr)``
    (the paper's option II: ``K`` steps, ``x`` the global and ``y_i`` the local model) and the server moves
    ``c`` by the mean of the clients' changes. Messages carry model + control variate, so the bytes per
    round are those of FedAvg plus one float32 per parameter each way. ``kwargs`` go to :func:`run_fedavg`.
    """
    return run_fedavg(client_datasets, test_ds, config, rounds=rounds, local_epochs=local_epochs, scaffold_lr=local_lr,
                      **kwargs)


__all__ = ["communication_cost", "model_bytes", "run_centralized", "run_fedavg", "run_scaffold", "weighted_average"]
