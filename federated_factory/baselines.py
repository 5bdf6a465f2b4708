"""Baselines that train the same classifier on the clients' REAL data.

* :func:`run_centralized`: one model on the union of the clients' training data (the upper reference).
* :func:`run_federated`: the round loop of federated averaging around a *strategy*, as in Flower: every
  round each client starts from the global model, trains ``local_epochs`` on its own data, and the
  strategy aggregates the client models. The strategies:

  - :class:`FedAvg`: AdamW locally; the server averages the client models (parameters AND BatchNorm
    buffers) weighted by client size. Under one-class-per-client silos the average of ten one-class models
    is close to chance; that is the failure FederatedFactory addresses.
  - :class:`FedProx` (Li et al., 2020): FedAvg whose local loss adds ``mu/2 · ||w - w_global||²``.
  - :class:`Scaffold` (Karimireddy et al., 2020): local SGD steps corrected by control variates
    (``c - c_i``, the server's minus the client's estimate of the update direction), which is meant to
    cancel client drift under heterogeneous data; the aggregation also moves the server's ``c``.

  :func:`run_fedavg` and :func:`run_scaffold` are the shortcuts the demo and the benchmarks call.

All report the test metrics of :func:`federated_factory.classifier.evaluate_classifier`. Model selection
never looks at the test set: the centralized model keeps its best epoch on a validation slice of the
training union, the federated ones their best round on the union of the clients' held-out slices.
"""

from __future__ import annotations

import copy
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
    build_classifier,
    evaluate_classifier,
    stratified_split,
    train_classifier,
)
from federated_factory.data import image_channels_of, label_names_of
from federated_factory.errors import BaselineError
from federated_factory.runtime import autocast_for, cpu_threads, deterministic, resolve_precision
from federated_factory.schedules import warmup_cosine
from federated_factory.tensors import dataset_to_tensors

BYTES_PER_VALUE = 4  # float32 on the wire
LR_SCHEDULES = ("constant", "cosine")


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
    """Each round every client downloads the global model and uploads its update (one message each way)."""
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
            raise BaselineError(f"client {i} has classes {label_names_of(ds)}, client 0 has {names}")
    return names


# ----------------------------------------------------------------------------------------------------------
# strategies: what differs between the algorithms; the round loop is run_federated


class FedAvg:
    """Federated averaging (McMahan et al., 2017). The base strategy: each hook below is one place where an
    algorithm may differ, called by :func:`run_federated` in this order per round and client:
    :meth:`begin_local` → (per step) :meth:`optimizer` once, :meth:`local_loss`, backward,
    :meth:`before_step`, step → :meth:`end_local`; then once per round :meth:`aggregate`."""

    name = "fedavg"
    local_optimizer = "adamw"

    def __init__(self, local_lr: float):
        self.local_lr = local_lr

    def extra_values_per_message(self, model: nn.Module) -> int:
        """Values sent with the model in each message, beyond its state dict (none for FedAvg)."""
        return 0

    def initialize(self, global_model: nn.Module, num_clients: int) -> None:
        """Server-side state before the first round (none for FedAvg)."""

    def optimizer(self, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """A fresh local optimizer for one client's round."""
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def begin_local(self, client: int, model: nn.Module) -> None:
        """Called with the client's copy of the global model before its local steps."""

    def local_loss(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        """The loss minimised locally, from the task loss of a batch."""
        return loss

    def before_step(self, model: nn.Module) -> None:
        """Called between ``backward`` and ``optimizer.step`` (gradients are in ``p.grad``)."""

    def end_local(self, client: int, global_model: nn.Module, local: nn.Module, steps: int, lr: float) -> None:
        """Called after the client's ``steps`` local steps at learning rate ``lr``."""

    def aggregate(self, global_model: nn.Module, states: list[dict[str, torch.Tensor]], weights: list[int]) -> None:
        """Load the client-size-weighted average of the client models into ``global_model``."""
        total = float(sum(weights))
        global_model.load_state_dict(weighted_average(states, [w / total for w in weights]))

    def summary(self) -> dict[str, Any]:
        """The strategy's settings, as reported in the results."""
        return {"mu": 0.0, "local_lr": self.local_lr, "local_optimizer": self.local_optimizer}


class FedProx(FedAvg):
    """FedProx (Li et al., 2020): FedAvg with the proximal term ``mu/2 · ||w - w_global||²`` in the local loss,
    ``w_global`` being the model the client started the round from."""

    name = "fedprox"

    def __init__(self, local_lr: float, mu: float):
        if mu <= 0:
            raise BaselineError(f"FedProx: mu must be > 0, got {mu} (mu = 0 is FedAvg)")
        super().__init__(local_lr)
        self.mu = mu
        self._anchor: list[torch.Tensor] = []

    def begin_local(self, client: int, model: nn.Module) -> None:
        self._anchor = [p.detach().clone() for p in model.parameters()]

    def local_loss(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), self._anchor))
        return loss + 0.5 * self.mu * prox

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "mu": self.mu}


class Scaffold(FedAvg):
    """SCAFFOLD (Karimireddy et al., 2020). Every client keeps a control variate ``c_i`` and the server one
    ``c`` (one value per model parameter, zero at the start). Local steps are SGD at ``local_lr`` on
    ``g + c - c_i``; after its ``K`` local steps a client sets ``c_i+ = c_i - c + (x - y_i)/(K·lr)`` (the
    paper's option II: ``x`` the global and ``y_i`` the local model), and the aggregation moves ``c`` by the
    mean over all clients of ``c_i+ - c_i``. Messages carry model + control variate."""

    name = "scaffold"
    local_optimizer = "sgd"

    def __init__(self, local_lr: float):
        if not local_lr > 0:
            raise BaselineError(f"run_scaffold: local_lr must be > 0, got {local_lr}")
        super().__init__(local_lr)
        self.c_server: dict[str, torch.Tensor] = {}
        self.c_clients: list[dict[str, torch.Tensor]] = []
        self._deltas: list[dict[str, torch.Tensor]] = []
        self._corrected: list[tuple[torch.Tensor, torch.Tensor]] = []

    def extra_values_per_message(self, model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    def initialize(self, global_model: nn.Module, num_clients: int) -> None:
        self.c_server = {n: torch.zeros_like(p) for n, p in global_model.named_parameters()}
        self.c_clients = [{n: torch.zeros_like(p) for n, p in global_model.named_parameters()}
                          for _ in range(num_clients)]
        self._deltas = []

    def optimizer(self, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)

    def begin_local(self, client: int, model: nn.Module) -> None:
        correction = {n: self.c_server[n] - self.c_clients[client][n] for n in self.c_server}
        self._corrected = [(p, correction[name]) for name, p in model.named_parameters()]

    def before_step(self, model: nn.Module) -> None:
        for p, c in self._corrected:
            if p.grad is not None:
                p.grad.add_(c)

    def end_local(self, client: int, global_model: nn.Module, local: nn.Module, steps: int, lr: float) -> None:
        if steps == 0:
            return
        start = dict(global_model.named_parameters())
        old = self.c_clients[client]
        updated = {
            n: old[n] - self.c_server[n] + (start[n].detach() - p.detach()) / (steps * lr)
            for n, p in local.named_parameters()
        }
        self._deltas.append({n: updated[n] - old[n] for n in updated})
        self.c_clients[client] = updated

    def aggregate(self, global_model: nn.Module, states: list[dict[str, torch.Tensor]], weights: list[int]) -> None:
        super().aggregate(global_model, states, weights)
        for delta in self._deltas:  # c += mean over all N clients of (c_i+ - c_i)
            for n in self.c_server:
                self.c_server[n] += delta[n] / len(self.c_clients)
        self._deltas = []

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "mu": 0.0}


# ----------------------------------------------------------------------------------------------------------
# the round loop


def local_train(
    strategy: FedAvg,
    client: int,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: ClassifierConfig,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    device: torch.device,
    precision: str = "fp32",
) -> tuple[float, int]:
    """``epochs`` passes over one client's data (``model`` is its copy of the global model; fresh optimizer
    state), shaped by ``strategy``'s hooks. Batches of fewer than two images are skipped (BatchNorm cannot
    train on one). Returns the mean training loss and the number of optimizer steps taken."""
    model.train()
    strategy.begin_local(client, model)
    optimizer = strategy.optimizer(model, lr, config.weight_decay)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:
                continue
            xb = augment_batch(x[idx], config, generator).to(device)
            if config.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y[idx].to(device)
            with autocast_for(precision, device):
                loss = F.cross_entropy(model(xb), yb, label_smoothing=config.label_smoothing)
            loss = strategy.local_loss(model, loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            strategy.before_step(model)
            optimizer.step()
            losses.append(loss.item())
    return (float(np.mean(losses)) if losses else float("nan")), len(losses)


def run_federated(
    strategy: FedAvg,
    client_datasets: Sequence,
    test_ds,
    config: ClassifierConfig | None = None,
    *,
    rounds: int,
    local_epochs: int,
    client_val_fraction: float = 0.1,
    seed: int | None = None,
    local_batch_size: int | None = 32,
    lr_schedule: str = "constant",
    progress: bool = True,
    device: str | torch.device | None = None,
    return_model: bool = False,
) -> dict[str, Any]:
    """Federated training with ``strategy`` over ``client_datasets`` (one ``datasets.Dataset`` per client,
    same ``ClassLabel``), with ``config.arch`` and its training settings (augmentation, label smoothing,
    weight decay, precision, threads). Local mini-batches have ``local_batch_size`` images (default 32, the
    FedAvg custom; ``None`` → ``config.batch_size``): with ~400 images per client, 128-image batches leave 3
    steps per local epoch and FedAvg barely moves even on iid data. ``lr_schedule="cosine"`` decays the
    strategy's local learning rate over the rounds (:func:`~federated_factory.schedules.warmup_cosine`
    without warm-up); "constant" keeps it.

    Each client holds out ``client_val_fraction`` of its data (stratified); the reported round is the one
    whose global model is most accurate on the union of those slices (ties → later round). Returns the test
    metrics of that round, ``history`` (per round: mean local loss, validation accuracy, lr),
    ``selected_round``, ``wall_time_s`` and ``communication`` (see :func:`communication_cost`).
    """
    from tqdm.auto import tqdm

    if rounds < 1 or local_epochs < 1:
        raise BaselineError(f"run_fedavg: rounds ({rounds}) and local_epochs ({local_epochs}) must be >= 1")
    if lr_schedule not in LR_SCHEDULES:
        raise BaselineError(f"run_fedavg: lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    if not client_datasets:
        raise BaselineError("run_fedavg: no client datasets")
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
        raise BaselineError("run_fedavg: the clients hold no training images")
    image_size = train_parts[0][0].shape[-1] if sizes[0] else x_val.shape[-1]
    cosine = warmup_cosine(0, rounds)

    with deterministic(seed, device), cpu_threads(config.num_threads):
        global_model = build_classifier(config.arch, len(label_names), channels, image_size).to(device)
        size_bytes = model_bytes(global_model) + BYTES_PER_VALUE * strategy.extra_values_per_message(global_model)
        strategy.initialize(global_model, len(train_parts))
        history: list[dict[str, Any]] = []
        best_acc, best_round, best_state = -1.0, rounds, None
        bar = tqdm(range(1, rounds + 1), desc=f"{strategy.name} rounds", disable=not progress)
        for rnd in bar:
            lr = strategy.local_lr
            if lr_schedule == "cosine":
                lr *= cosine(rnd - 1)
            states, weights, losses = [], [], []
            for k, (x, y) in enumerate(train_parts):
                if len(x) == 0:
                    continue
                local = copy.deepcopy(global_model)
                if config.channels_last:
                    local = local.to(memory_format=torch.channels_last)
                gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rnd, k]).generate_state(1)[0]))
                loss, steps = local_train(strategy, k, local, x, y, config, epochs=local_epochs,
                                          batch_size=local_batch_size, lr=lr, generator=gen, device=device,
                                          precision=precision)
                losses.append(loss)
                strategy.end_local(k, global_model, local, steps, lr)
                states.append({key: v.detach().contiguous() for key, v in local.state_dict().items()})
                weights.append(len(x))
            strategy.aggregate(global_model, states, weights)
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
        "method": strategy.name,
        **metrics,
        **strategy.summary(),
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


def run_fedavg(
    client_datasets: Sequence,
    test_ds,
    config: ClassifierConfig | None = None,
    *,
    rounds: int,
    local_epochs: int,
    mu: float = 0.0,
    **kwargs: Any,
) -> dict[str, Any]:
    """FedAvg (``mu=0``) or FedProx (``mu>0``) at ``config.lr`` (AdamW, fresh optimizer state per client
    and round): :func:`run_federated` with :class:`FedAvg` or :class:`FedProx`. ``kwargs`` go to
    :func:`run_federated`."""
    if mu < 0:
        raise BaselineError(f"run_fedavg: mu must be >= 0, got {mu}")
    lr = (config or ClassifierConfig()).lr
    strategy = FedProx(lr, mu) if mu > 0 else FedAvg(lr)
    return run_federated(strategy, client_datasets, test_ds, config, rounds=rounds, local_epochs=local_epochs,
                         **kwargs)


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
    """SCAFFOLD over ``client_datasets``: :func:`run_federated` with :class:`Scaffold` (local SGD at
    ``local_lr``; same classifier, client validation slices, round selection and weighted model average as
    FedAvg). The bytes per round are those of FedAvg plus one float32 per parameter each way. ``kwargs`` go
    to :func:`run_federated`."""
    return run_federated(Scaffold(local_lr), client_datasets, test_ds, config, rounds=rounds,
                         local_epochs=local_epochs, **kwargs)


__all__ = [
    "FedAvg",
    "FedProx",
    "Scaffold",
    "communication_cost",
    "local_train",
    "model_bytes",
    "run_centralized",
    "run_fedavg",
    "run_federated",
    "run_scaffold",
    "weighted_average",
]
