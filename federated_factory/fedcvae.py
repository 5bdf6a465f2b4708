"""FedCVAE-Ens (Heinbaugh et al., ICLR 2023): the one-shot, data-free generative baseline.

Each client trains a conditional VAE on its own rows only and uploads the decoder (a safetensors blob with
its settings and class counts in the header metadata). The server decodes the uploaded bytes, samples a
class-balanced synthetic set from the ensemble of decoders (``samples_per_class`` images per class; a class
held by several clients is split in proportion to their declared counts, exactly as FederatedFactory's
:func:`federated_factory.synthesis.plan_synthesis` splits it) and trains the same classifier with the same
:class:`~federated_factory.classifier.ClassifierConfig` as the aggregator.

The CVAE (conditioning = one-hot over the federation's label space, known to every party like the
manifest's ``label_space``): encoder two 4×4 stride-2 convs on the image with the one-hot broadcast as
extra channels, then a linear layer to (μ, log σ²); decoder a linear layer from (z, one-hot) to a
``2·width × S/4 × S/4`` map and two 4×4 stride-2 transposed convs to a sigmoid image. Loss: per-image
binary cross-entropy summed over pixels + ``beta`` · KL(q(z|x, y) ‖ N(0, I)), Adam.

Compute budget: ``train_steps × batch_size`` images seen per client, by default 1200 × 64, the same number
of training images as one factory at the ``cpu`` preset (far fewer FLOPs: the CVAE is a few hundred
thousand parameters against the factory's U-Net). Everything is deterministic from ``seed`` on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from federated_factory.errors import FederatedFactoryError

FORMAT = "federated_factory.fedcvae/1"


class FedCVAEError(FederatedFactoryError, ValueError):
    """A FedCVAE-Ens setting, client dataset or uploaded decoder is unusable (the message names which)."""


@dataclass
class CVAEConfig:
    """One client's CVAE settings. ``train_steps`` Adam steps of ``batch_size`` images (sampled with
    replacement-free reshuffling per pass); ``width`` is the first conv's channel count."""

    latent_dim: int = 16
    width: int = 32
    train_steps: int = 1200
    batch_size: int = 64
    lr: float = 1e-3
    beta: float = 1.0
    num_threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("latent_dim", "width", "train_steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise FedCVAEError(f"CVAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise FedCVAEError(f"CVAEConfig.lr must be > 0, got {self.lr}")
        if not self.beta >= 0:
            raise FedCVAEError(f"CVAEConfig.beta must be >= 0, got {self.beta}")
        if self.num_threads < 0:
            raise FedCVAEError(f"CVAEConfig.num_threads must be >= 0 (0 = leave torch's setting), got {self.num_threads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class CVAEDecoder(nn.Module):
    """(z, one-hot label) → image in [0, 1], C × S × S."""

    def __init__(self, latent_dim: int, num_classes: int, channels: int, image_size: int, width: int):
        super().__init__()
        self.start = image_size // 4
        self.width = width
        self.fc = nn.Linear(latent_dim + num_classes, 2 * width * self.start * self.start)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1)

    def forward(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc(torch.cat([z, onehot], 1))).view(-1, 2 * self.width, self.start, self.start)
        return torch.sigmoid(self.up2(F.relu(self.up1(h))))


class CVAE(nn.Module):
    """Encoder q(z | x, y) and :class:`CVAEDecoder` p(x | z, y)."""

    def __init__(self, latent_dim: int, num_classes: int, channels: int, image_size: int, width: int):
        super().__init__()
        self.num_classes = num_classes
        self.enc = nn.Sequential(
            nn.Conv2d(channels + num_classes, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        )
        self.to_stats = nn.Linear(2 * width * (image_size // 4) ** 2, 2 * latent_dim)
        self.decoder = CVAEDecoder(latent_dim, num_classes, channels, image_size, width)

    def forward(self, x: torch.Tensor, onehot: torch.Tensor, noise: torch.Tensor):
        maps = onehot[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        mu, logvar = self.to_stats(self.enc(torch.cat([x, maps], 1))).chunk(2, 1)
        z = mu + (0.5 * logvar).exp() * noise
        return self.decoder(z, onehot), mu, logvar


@dataclass
class ClientDecoder:
    """What one client uploads (``blob``: safetensors bytes) and what it measured while training."""

    client: str
    blob: bytes
    class_counts: dict[str, int]
    seconds: float = 0.0
    images_seen: int = 0
    final_loss: float | None = None
    num_rows: int = 0

    @property
    def upload_bytes(self) -> int:
        return len(self.blob)

    def summary(self) -> dict[str, Any]:
        return {"client": self.client, "upload_bytes": self.upload_bytes, "class_counts": self.class_counts,
                "seconds": self.seconds, "images_seen": self.images_seen, "final_loss": self.final_loss,
                "num_rows": self.num_rows}


@contextlib.contextmanager
def _threads_and_rng(num_threads: int, seed: int):
    before = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if num_threads:
            torch.set_num_threads(num_threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def _label_names(dataset, what: str) -> list[str]:
    names = getattr(getattr(dataset, "features", {}).get("label"), "names", None)
    if not names:
        raise FedCVAEError(f"{what}: column 'label' must be a datasets.ClassLabel with names")
    return list(names)


def _to_tensors(dataset, label_space: Sequence[str], channels: int | None, what: str):
    from federated_factory.tensors import dataset_to_tensors

    if dataset is None or len(dataset) == 0:
        raise FedCVAEError(f"{what} has no rows")
    names = _label_names(dataset, what)
    unknown = sorted(set(names[i] for i in set(dataset["label"])) - set(label_space))
    if unknown:
        raise FedCVAEError(f"{what} has classes {unknown} outside the label space {list(label_space)}")
    x, y = dataset_to_tensors(dataset, channels)
    if x.shape[-1] != x.shape[-2] or x.shape[-1] % 4:
        raise FedCVAEError(f"{what}: images must be square with a side divisible by 4, got {tuple(x.shape[-2:])}")
    remap = torch.as_tensor([list(label_space).index(n) if n in label_space else -1 for n in names])
    return x, remap[y]


def train_client_cvae(
    dataset, label_space: Sequence[str], config: CVAEConfig | None = None, *, client: str = "client",
    channels: int | None = None,
) -> ClientDecoder:
    """Train one client's CVAE on ``dataset`` (its own rows only) and return the decoder it uploads."""
    config = config or CVAEConfig()
    label_space = list(label_space)
    if not label_space or len(set(label_space)) != len(label_space):
        raise FedCVAEError(f"label_space must be non-empty and without duplicates, got {label_space}")
    x, y = _to_tensors(dataset, label_space, channels, f"client {client!r}'s dataset")
    counts = np.bincount(y.numpy(), minlength=len(label_space))
    class_counts = {label_space[k]: int(c) for k, c in enumerate(counts) if c}
    t0 = time.perf_counter()
    with _threads_and_rng(config.num_threads, config.seed):
        model = CVAE(config.latent_dim, len(label_space), x.shape[1], x.shape[-1], config.width)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        gen = torch.Generator().manual_seed(config.seed + 1)
        onehot_all = F.one_hot(y, len(label_space)).float()
        order, pos, loss = torch.randperm(len(x), generator=gen), 0, None
        model.train()
        for _ in range(config.train_steps):
            if pos + config.batch_size > len(order) and pos > 0:
                order, pos = torch.randperm(len(x), generator=gen), 0
            idx = order[pos:pos + config.batch_size]
            pos += len(idx)
            xb, ob = x[idx], onehot_all[idx]
            noise = torch.randn(len(idx), config.latent_dim, generator=gen)
            recon, mu, logvar = model(xb, ob, noise)
            rec = F.binary_cross_entropy(recon, xb, reduction="sum") / len(idx)
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(idx)
            loss = rec + config.beta * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    meta = {"image_shape": list(x.shape[1:]), "label_space": label_space}
    blob = serialize_decoder(model.decoder.eval(), config, meta, class_counts)
    return ClientDecoder(client=client, blob=blob, class_counts=class_counts, seconds=time.perf_counter() - t0,
                         images_seen=config.train_steps * config.batch_size,
                         final_loss=None if loss is None else float(loss.detach()), num_rows=len(x))


def serialize_decoder(decoder: CVAEDecoder, config: CVAEConfig, meta: dict, class_counts: dict[str, int]) -> bytes:
    """The upload: the decoder's weights as safetensors bytes, settings and class counts in its metadata."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in decoder.state_dict().items()}
    # one metadata key: safetensors does not keep the order of several, and the upload must be reproducible
    info = {"format": FORMAT, "config": config.to_dict(), "meta": meta, "class_counts": class_counts}
    return save(state, metadata={"federated_factory": json.dumps(info, sort_keys=True)})


def load_decoder(blob: bytes, *, client: str = "client") -> tuple[CVAEDecoder, CVAEConfig, dict, dict[str, int]]:
    """Rebuild an uploaded decoder from its bytes (safetensors only; nothing is executed)."""
    from safetensors.torch import load

    try:
        state = load(blob)
        header_len = int.from_bytes(blob[:8], "little")  # safetensors layout: u64 header size, JSON header
        metadata = (json.loads(blob[8:8 + header_len]).get("__metadata__") or {}).get("federated_factory", "{}")
        info = json.loads(metadata)
        if info.get("format") != FORMAT:
            raise ValueError(f"format {info.get('format')!r}, expected {FORMAT!r}")
        config = CVAEConfig(**info["config"])
        meta = info["meta"]
        counts = {str(k): int(v) for k, v in info["class_counts"].items()}
        channels, size, _ = meta["image_shape"]
        decoder = CVAEDecoder(config.latent_dim, len(meta["label_space"]), channels, size, config.width)
        decoder.load_state_dict(state)
    except FedCVAEError:
        raise
    except Exception as err:  # a corrupt or foreign upload
        raise FedCVAEError(f"client {client!r}'s uploaded decoder cannot be read: {err}") from err
    return decoder.eval(), config, meta, counts


def stream_seed(seed: int, client: str, class_name: str) -> int:
    """The seed of one (client, class) sample stream."""
    return int(hashlib.sha256(f"{seed}|{client}|{class_name}".encode()).hexdigest()[:15], 16)


def sample_synthetic(
    uploads: Sequence[ClientDecoder], label_space: Sequence[str], samples_per_class: int, *, seed: int = 0,
    batch_size: int = 500,
):
    """The server's synthetic ``datasets.Dataset``: ``samples_per_class`` images of every class of
    ``label_space``, a shared class split across its holders in proportion to their class counts.
    Columns: image, label (ClassLabel = label space), source_client, seed (the stream's), index."""
    from datasets import ClassLabel, Dataset, Features, Image, Value
    from PIL import Image as PILImage

    from federated_factory.synthesis import split_by_counts

    label_space = list(label_space)
    if samples_per_class < 1:
        raise FedCVAEError(f"samples_per_class must be >= 1, got {samples_per_class}")
    if not uploads:
        raise FedCVAEError("no client decoders were uploaded")
    names = [u.client for u in uploads]
    if len(set(names)) != len(names):
        raise FedCVAEError(f"client names must be distinct, got {names}")
    decoders = {u.client: load_decoder(u.blob, client=u.client) for u in uploads}
    for client, (_, _, meta, _) in decoders.items():
        if meta["label_space"] != label_space:
            raise FedCVAEError(f"client {client!r}'s decoder was trained on label space {meta['label_space']}, "
                               f"not the federation's {label_space}")
    missing = [c for c in label_space if not any(u.class_counts.get(c) for u in uploads)]
    if missing:
        raise FedCVAEError(f"classes {missing} are held by no client; a balanced set cannot be sampled")
    columns: dict[str, list] = {"image": [], "label": [], "source_client": [], "seed": [], "index": []}
    for label, name in enumerate(label_space):
        holders = [u for u in uploads if u.class_counts.get(name)]
        for upload, count in zip(holders, split_by_counts(samples_per_class, [u.class_counts[name] for u in holders])):
            decoder, config, _, _ = decoders[upload.client]
            stream = stream_seed(seed, upload.client, name)
            gen = torch.Generator().manual_seed(stream)
            done = 0
            with torch.no_grad():
                while done < count:
                    n = min(batch_size, count - done)
                    z = torch.randn(n, config.latent_dim, generator=gen)
                    onehot = F.one_hot(torch.full((n,), label), len(label_space)).float()
                    pixels = decoder(z, onehot).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
                    for i, array in enumerate(pixels):
                        buffer = io.BytesIO()
                        image = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
                        PILImage.fromarray(image).save(buffer, format="PNG")
                        columns["image"].append({"bytes": buffer.getvalue(), "path": None})
                        columns["label"].append(label)
                        columns["source_client"].append(upload.client)
                        columns["seed"].append(stream)
                        columns["index"].append(done + i)
                    done += n
    features = Features({"image": Image(), "label": ClassLabel(names=label_space), "source_client": Value("string"),
                         "seed": Value("int64"), "index": Value("int64")})
    return Dataset.from_dict(columns, features=features)


@dataclass
class FedCVAEResult:
    """One FedCVAE-Ens run: uploads, the synthetic set, the trained classifier and its timings."""

    uploads: list[ClientDecoder]
    synthetic: Any
    trained: Any  # federated_factory.classifier.TrainResult
    timings: dict[str, float] = field(default_factory=dict)
    decoders_reused: bool = False  # the decoders came from an earlier run (``uploads=``), not trained here

    @property
    def upload_bytes(self) -> int:
        return sum(u.upload_bytes for u in self.uploads)


def save_uploads(uploads: Sequence[ClientDecoder], folder) -> None:
    """Keep uploaded decoders (``<client>.safetensors`` and ``uploads.json`` with what each client measured)
    so that another synthesis setting can reuse them: a decoder depends on its client's rows, its CVAE
    setting and the seed, not on the images per class or the classifier. Written to a temporary folder and
    renamed, so a folder that exists is complete."""
    import shutil
    from pathlib import Path

    from federated_factory.atomic import atomic_write_json

    folder = Path(folder)
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for upload in uploads:
        (partial / f"{upload.client}.safetensors").write_bytes(upload.blob)
    atomic_write_json(partial / "uploads.json", [upload.summary() for upload in uploads])
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def load_uploads(folder) -> list[ClientDecoder]:
    """The decoders kept by :func:`save_uploads`, in their upload order (each blob is checked on use)."""
    from pathlib import Path

    folder = Path(folder)
    try:
        summaries = json.loads((folder / "uploads.json").read_text())
        return [ClientDecoder(client=s["client"], blob=(folder / f"{s['client']}.safetensors").read_bytes(),
                              class_counts=s["class_counts"], seconds=s["seconds"], images_seen=s["images_seen"],
                              final_loss=s["final_loss"], num_rows=s["num_rows"]) for s in summaries]
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise FedCVAEError(f"{folder}: not a folder of kept decoders ({err})") from err


def _check_reused(uploads: Sequence[ClientDecoder], partition, cvae: CVAEConfig) -> None:
    """Decoders given to :func:`run_fedcvae` must be this partition's clients', trained with this setting."""
    names = [u.client for u in uploads]
    if names != list(partition.client_names):
        raise FedCVAEError(f"the decoders given are clients {names}, not the partition's {list(partition.client_names)}")
    for upload in uploads:
        _, config, _, _ = load_decoder(upload.blob, client=upload.client)
        if config.to_dict() != cvae.to_dict():
            raise FedCVAEError(f"client {upload.client!r}'s decoder was trained with {config.to_dict()}, "
                               f"not {cvae.to_dict()}")


def run_fedcvae(
    train_ds, partition, *, cvae: CVAEConfig | None = None, classifier=None, samples_per_class: int = 500,
    seed: int = 0, channels: int | None = None, progress: bool = False,
    uploads: Sequence[ClientDecoder] | None = None,
) -> FedCVAEResult:
    """Clients train CVAEs on their partition rows, the server samples and trains the classifier.

    ``partition``: a :class:`federated_factory.partition.Partition` of ``train_ds``. ``seed`` drives the
    CVAEs (``cvae.seed`` is replaced by ``seed``), the sampling and the classifier (``classifier.seed``
    likewise), so one seed changes all three, as for FederatedFactory. ``uploads``: the clients' decoders
    from an earlier run with the same CVAE setting and seed (:func:`load_uploads`); they must have been
    trained with exactly this setting, and the timings then report their original training time.
    """
    from federated_factory.classifier import ClassifierConfig, train_classifier

    cvae = dataclasses.replace(cvae or CVAEConfig(), seed=seed)
    classifier = dataclasses.replace(classifier or ClassifierConfig(), seed=seed)
    label_space = _label_names(train_ds, "train_ds")
    t0 = time.perf_counter()
    reused = uploads is not None
    if reused:
        uploads = list(uploads)
        _check_reused(uploads, partition, cvae)
    else:
        uploads = []
        for i, name in enumerate(partition.client_names):
            uploads.append(train_client_cvae(partition.client_dataset(train_ds, i), label_space, cvae, client=name,
                                             channels=channels))
            if progress:
                print(f"fedcvae: {name} trained its CVAE ({i + 1}/{len(partition.client_names)}) in "
                      f"{uploads[-1].seconds:.0f} s", flush=True)
    t1 = time.perf_counter()
    synthetic = sample_synthetic(uploads, label_space, samples_per_class, seed=seed)
    t2 = time.perf_counter()
    if progress:
        print(f"fedcvae: sampled {len(synthetic)} synthetic images in {t2 - t1:.0f} s; training the classifier",
              flush=True)
    trained = train_classifier(synthetic, classifier, progress=progress)
    t3 = time.perf_counter()
    clients_seconds = sum(u.seconds for u in uploads) if reused else t1 - t0
    return FedCVAEResult(uploads, synthetic, trained, {
        "clients_seconds": clients_seconds, "synthesis_seconds": t2 - t1, "classifier_seconds": t3 - t2,
        "client_seconds_max": max(u.seconds for u in uploads)}, decoders_reused=reused)
