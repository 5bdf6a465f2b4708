"""Pull factories, plan a class-balanced synthetic dataset, generate it (distributed, cached), assemble it.

Determinism. Each (factory, class) pair is an endless, seeded *stream* of images cut into fixed-size
chunks; chunk ``k`` is generated from its own seed, derived from the manifest's synthesis seed, the
factory's **content digest** (`factory_digest`: its weights and the configs that determine sampling), the
class name and ``k``. A shard (factory, class, count) is the first ``count`` images of its stream. So the
same factories give the same images whatever the number of processes (processes split the chunks, not the
randomness) and wherever or whenever they were published (the repo name and commit sha do not enter the
seed or the cache key); an interrupted run reuses every finished chunk, and a rebuild that needs fewer or
more images of a stream reuses the chunks it already has.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_writer
from .errors import ManifestError
from .hub.manifest import FactoryEntry, Manifest, PrivacyPolicy, SynthesisConfig
from .tensors import samples_to_uint8

#: Files of a factory repo that are downloaded. Nothing else (no code, no pickles) is ever fetched.
FACTORY_FILES = [
    "model_index.json",
    "factory.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
#: Files whose content determines what a factory samples: the digest covers exactly these.
DIGEST_FILES = [
    "model_index.json",
    "unet/config.json",
    "scheduler/scheduler_config.json",
    "unet/diffusion_pytorch_model.safetensors",
]
DIGEST_VERSION = "federated-factory-digest-v1"


@dataclass
class PulledFactory:
    repo: str
    revision: str  # resolved commit sha
    local_dir: str
    metadata: dict
    digest: str = ""  # content digest (`factory_digest`): what the synthetic data is derived from
    privacy: dict = field(default_factory=dict)  # the privacy gate's record (`privacy_gate.gate_factory`)

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])


def _canonical_json(path: Path) -> bytes:
    """A JSON config with its bookkeeping keys (``_diffusers_version``, ``_name_or_path``, ...) dropped, keys sorted:
    re-saving the same configuration with another library version gives the same bytes."""
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if not k.startswith("_") or k == "_class_name"}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _safetensors_content(path: Path, digest) -> None:
    """Feed every tensor of a safetensors file (name, dtype, shape, bytes; sorted by name) into ``digest``. The
    file's header metadata and tensor layout do not count, so re-saving the same tensors changes nothing."""
    raw = path.read_bytes()
    if len(raw) < 8:
        raise ManifestError(f"{path}: not a safetensors file")
    header_len = int.from_bytes(raw[:8], "little")
    try:
        header = json.loads(raw[8 : 8 + header_len])
    except ValueError:
        raise ManifestError(f"{path}: not a safetensors file (unreadable header)") from None
    data = memoryview(raw)[8 + header_len :]
    for name in sorted(k for k in header if k != "__metadata__"):
        entry = header[name]
        start, end = entry["data_offsets"]
        digest.update(f"{name}|{entry['dtype']}|{list(entry['shape'])}|{end - start}|".encode())
        digest.update(data[start:end])


def factory_digest(local_dir: str | Path) -> str:
    """The content digest of a factory folder: sha256 over its UNet tensors and the configs that determine
    sampling (`DIGEST_FILES`: the pipeline's class names, the UNet and scheduler configs). Independent of
    the repo's name, its commit, ``factory.json`` (training statistics, timings) and library versions, so
    the same weights published twice, mirrored or renamed have the same digest."""
    local_dir = Path(local_dir)
    digest = hashlib.sha256(DIGEST_VERSION.encode())
    for name in DIGEST_FILES:
        digest.update(f"\n{name}\n".encode())
        if name.endswith(".safetensors"):
            _safetensors_content(local_dir / name, digest)
        else:
            digest.update(_canonical_json(local_dir / name))
    return digest.hexdigest()


def pull_factories(
    manifest: Manifest,
    *,
    token: str | None = None,
    cache_dir: str | Path | None = None,
    privacy: PrivacyPolicy | None = None,
) -> tuple[list[FactoryEntry], list[PulledFactory]]:
    """Resolve every factory to a commit sha, check it, and download it (safetensors + JSON only).

    Returns the pinned factory entries (the resolved manifest's, each with its content digest) and the pulled
    factories. Checks: the repo is readable and is a safetensors `FactoryPipeline`; its classes are in the
    label space; its content digest equals the one the manifest recorded (if any) and no other factory has
    the same content; its privacy audit passes the manifest's privacy gate (``privacy``, default
    ``manifest.privacy``; see `federated_factory.privacy_gate`) or it is overridden there with a reason.
    Every problem of every factory is collected and raised together as one `ManifestError`, before any
    compute starts.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    from .privacy_gate import gate_factory

    policy = privacy if privacy is not None else manifest.privacy

    api = HfApi(token=token)
    problems, resolved, pulled = [], [], []
    for entry in manifest.factories:
        try:
            info = api.model_info(entry.repo, revision=entry.revision, files_metadata=False)
        except (RepositoryNotFoundError, GatedRepoError):
            problems.append(f"{entry}: repository not found, or this token may not read it")
            continue
        except RevisionNotFoundError:
            problems.append(f"{entry}: revision {entry.revision!r} does not exist")
            continue
        except HfHubHTTPError as err:
            problems.append(f"{entry}: the Hub answered {err.response.status_code}")
            continue
        files = {s.rfilename for s in (info.siblings or [])}
        missing = [f for f in FACTORY_FILES if f not in files]
        pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
        if "unet/diffusion_pytorch_model.safetensors" not in files and pickles:
            problems.append(f"{entry}: weights are pickle-only ({', '.join(pickles)}); only safetensors weights are loaded")
            continue
        if missing:
            problems.append(f"{entry}: not a FederatedFactory factory, missing {', '.join(missing)}")
            continue
        local_dir = snapshot_download(
            entry.repo, revision=info.sha, token=token, allow_patterns=FACTORY_FILES, cache_dir=cache_dir
        )
        model_index = json.loads((Path(local_dir) / "model_index.json").read_text())
        if model_index.get("_class_name") != "FactoryPipeline":
            problems.append(f"{entry}: pipeline class is {model_index.get('_class_name')!r}, only FactoryPipeline is loaded")
            continue
        metadata = json.loads((Path(local_dir) / "factory.json").read_text())
        outside = [c for c in metadata.get("classes", []) if c not in manifest.label_space]
        if outside:
            problems.append(f"{entry}: declares class(es) {outside} outside the label space {manifest.label_space}")
        try:
            digest = factory_digest(local_dir)
        except (ManifestError, OSError, KeyError, ValueError) as err:
            problems.append(f"{entry}: cannot compute its content digest ({err})")
            continue
        if entry.digest and entry.digest != digest:
            problems.append(f"{entry}: its content digest is {digest}, but the manifest recorded {entry.digest} "
                            "(the weights or sampling configs at this revision are not the ones the manifest names)")
        gate = gate_factory(entry.repo, info.sha, metadata, policy)
        if gate["verdict"] == "refused":
            problems.append(f"{entry}: refused by the privacy gate: " + "; ".join(gate["problems"])
                            + " (accept it only by naming it under privacy.overrides with a reason)")
        resolved.append(FactoryEntry(repo=entry.repo, revision=info.sha, digest=digest))
        pulled.append(PulledFactory(repo=entry.repo, revision=info.sha, local_dir=str(local_dir), metadata=metadata,
                                    digest=digest, privacy=gate))

    by_digest: dict[str, list[str]] = {}
    for p in pulled:
        by_digest.setdefault(p.digest, []).append(p.repo)
    for digest, repos in by_digest.items():
        if len(repos) > 1:
            problems.append(f"{', '.join(repos)} have the same content (digest {digest[:16]}...): a factory may be "
                            "listed once, under one name")

    formats = {(p.metadata.get("image_size"), p.metadata.get("channels")) for p in pulled}
    if len(formats) > 1:
        listing = ", ".join(f"{p.repo}: {p.metadata.get('image_size')}px x{p.metadata.get('channels')}" for p in pulled)
        problems.append(f"factories disagree on image size/channels ({listing})")
    if problems:
        raise ManifestError(f"{len(problems)} problem(s) with the manifest's factories:\n" + "\n".join(f"  - {p}" for p in problems))
    return resolved, pulled


# --------------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """The first ``count`` images of the stream of ``class_name`` from the factory with content ``digest``
    (pulled as ``repo@revision``)."""

    repo: str
    revision: str
    class_name: str
    count: int
    stream_seed: int
    digest: str = ""

    def chunks(self, chunk_size: int) -> range:
        return range((self.count + chunk_size - 1) // chunk_size)


@dataclass
class SynthesisPlan:
    label_space: list[str]
    samples_per_class: int
    shards: list[Shard]
    missing_classes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {name: 0 for name in self.label_space}
        for shard in self.shards:
            out[shard.class_name] += shard.count
        return out

    def to_dict(self) -> dict:
        return {
            "label_space": self.label_space,
            "samples_per_class": self.samples_per_class,
            "missing_classes": self.missing_classes,
            "shards": [asdict(s) for s in self.shards],
        }


def stream_seed(base_seed: int, digest: str, class_name: str) -> int:
    """The seed of the stream of ``class_name`` from the factory with content ``digest`` (see `factory_digest`)."""
    if not digest:
        raise ValueError("stream_seed needs the factory's content digest (pull it with pull_factories)")
    value = hashlib.sha256(f"{base_seed}|{digest}|{class_name}".encode()).hexdigest()
    return int(value[:15], 16)


def split_by_counts(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` by largest remainder (ties go to the earlier entry)."""
    weight_sum = sum(weights)
    exact = [total * w / weight_sum for w in weights]
    base = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in order[: total - sum(base)]:
        base[i] += 1
    return base


def plan_synthesis(label_space: list[str], factories: list[PulledFactory], synthesis: SynthesisConfig) -> SynthesisPlan:
    """Give every class of the label space ``samples_per_class`` images, split across the factories that
    hold it in proportion to their declared training counts. Classes held by nobody are reported."""
    shards, missing = [], []
    for name in label_space:
        holders = [f for f in factories if name in f.classes]
        if not holders:
            missing.append(name)
            continue
        weights = [max(1, int(f.metadata.get("class_counts", {}).get(name, 1))) for f in holders]
        for factory, count in zip(holders, split_by_counts(synthesis.samples_per_class, weights)):
            if count:
                digest = factory.digest or factory_digest(factory.local_dir)
                seed = stream_seed(synthesis.seed, digest, name)
                shards.append(Shard(factory.repo, factory.revision, name, count, seed, digest))
    return SynthesisPlan(list(label_space), synthesis.samples_per_class, shards, missing)


# --------------------------------------------------------------------------------------------------
# Generation with a chunk cache
# --------------------------------------------------------------------------------------------------


class ChunkCache:
    """Generated chunks on disk: ``<root>/<stream key>/chunk-<k>.npy`` (uint8 N×C×H×W), written atomically.

    The stream key is derived from the factory's content digest, the class, the stream seed and the sampling
    settings: never from the repo name or commit, so a renamed or re-published factory reuses its chunks.
    (Caches written before content digests keyed streams by repo@sha: their entries are simply never read
    again; delete ``<root>`` to reclaim the space.)"""

    def __init__(self, root: str | Path, synthesis: SynthesisConfig):
        self.root = Path(root)
        self.synthesis = synthesis

    def stream_key(self, shard: Shard) -> str:
        s = self.synthesis
        if not shard.digest:
            raise ValueError(f"shard {shard.repo}/{shard.class_name} has no content digest (plan it with plan_synthesis)")
        spec = {
            "digest": shard.digest,
            "class": shard.class_name,
            "stream_seed": shard.stream_seed,
            "sampler": s.sampler,
            "steps": s.num_inference_steps,
            "guidance": s.guidance_scale,
            "chunk": s.batch_size,
        }
        if s.precision != "fp32":  # fp32 streams keep the keys they had before precision was a setting
            spec["precision"] = s.precision
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, shard: Shard, chunk: int) -> Path:
        return self.root / self.stream_key(shard) / f"chunk-{chunk:05d}.npy"

    def has(self, shard: Shard, chunk: int) -> bool:
        return self.path(shard, chunk).exists()

    def write(self, shard: Shard, chunk: int, images: np.ndarray) -> None:
        with atomic_writer(self.path(shard, chunk)) as handle:
            np.save(handle, images)

    def read(self, shard: Shard, chunk: int) -> np.ndarray:
        return np.load(self.path(shard, chunk))

    def shard_images(self, shard: Shard) -> np.ndarray:
        """The first ``shard.count`` images of the shard's stream (all its chunks must exist)."""
        chunks = [self.read(shard, k) for k in shard.chunks(self.synthesis.batch_size)]
        return np.concatenate(chunks)[: shard.count]


def chunk_seed(stream: int, chunk: int) -> int:
    return int(hashlib.sha256(f"{stream}|{chunk}".encode()).hexdigest()[:15], 16)


@dataclass
class SynthesisStats:
    chunks_total: int = 0
    chunks_generated: int = 0
    images_generated: int = 0
    network_evaluations_per_image: int = 0
    wall_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images_generated / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "images_per_second": self.images_per_second}


def synthesize(plan: SynthesisPlan, factories: list[PulledFactory], cache: ChunkCache, *, accelerator=None, progress: bool = True) -> SynthesisStats:
    """Generate every chunk of the plan that the cache lacks. Processes take chunks round-robin.

    Returns this process's statistics (chunks generated here, wall time); call on every process.
    """
    import torch
    from tqdm.auto import tqdm

    from .pipeline import FactoryPipeline, make_scheduler

    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    main = accelerator.is_main_process if accelerator else True
    device_type = accelerator.device.type if accelerator else "cpu"
    s = cache.synthesis
    work = [(shard, k) for shard in plan.shards for k in shard.chunks(s.batch_size)]
    mine = [item for i, item in enumerate(work) if i % world == rank and not cache.has(*item)]

    stats = SynthesisStats(chunks_total=len(work))
    stats.network_evaluations_per_image = s.num_inference_steps * (2 if s.guidance_scale != 1.0 else 1)
    by_repo = {f.repo: f for f in factories}
    pipelines: dict[str, FactoryPipeline] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=len(mine) * s.batch_size, desc=f"synthesis [{rank}]", unit="img", disable=not (progress and main))
    for shard, k in mine:
        if shard.repo not in pipelines:
            pipe = FactoryPipeline.from_pretrained(by_repo[shard.repo].local_dir, use_safetensors=True)
            pipe.scheduler = make_scheduler(s.sampler, pipe.scheduler.config)
            pipe.set_progress_bar_config(disable=True)
            if accelerator is not None:
                pipe.to(accelerator.device)  # the initial noise still comes from the CPU generator
            pipelines[shard.repo] = pipe
        generator = torch.Generator().manual_seed(chunk_seed(shard.stream_seed, k))
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=s.precision == "bf16"):
            out = pipelines[shard.repo](
                shard.class_name,
                num_images=s.batch_size,
                num_inference_steps=s.num_inference_steps,
                guidance_scale=s.guidance_scale,
                generator=generator,
                output_type="np",
            ).images
        cache.write(shard, k, samples_to_uint8(out))
        stats.chunks_generated += 1
        stats.images_generated += s.batch_size
        bar.update(s.batch_size)
    bar.close()
    stats.wall_seconds = time.perf_counter() - t0
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return stats


def assemble_dataset(plan: SynthesisPlan, cache: ChunkCache):
    """The synthetic `datasets.Dataset`: image, label (ClassLabel = label space), source_repo,
    source_revision, source_digest (the factory's content digest), seed (the stream seed), index (position
    in its stream). Rows follow the plan."""
    from datasets import ClassLabel, Dataset, Features, Image, Value
    from PIL import Image as PILImage

    columns = {"image": [], "label": [], "source_repo": [], "source_revision": [], "source_digest": [], "seed": [],
               "index": []}
    for shard in plan.shards:
        images = cache.shard_images(shard)
        label = plan.label_space.index(shard.class_name)
        for i, pixels in enumerate(images):
            buffer = io.BytesIO()
            array = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
            PILImage.fromarray(array).save(buffer, format="PNG")
            columns["image"].append({"bytes": buffer.getvalue(), "path": None})
            columns["label"].append(label)
            columns["source_repo"].append(shard.repo)
            columns["source_revision"].append(shard.revision)
            columns["source_digest"].append(shard.digest)
            columns["seed"].append(shard.stream_seed)
            columns["index"].append(i)
    features = Features(
        {
            "image": Image(),
            "label": ClassLabel(names=plan.label_space),
            "source_repo": Value("string"),
            "source_revision": Value("string"),
            "source_digest": Value("string"),
            "seed": Value("int64"),
            "index": Value("int64"),
        }
    )
    return Dataset.from_dict(columns, features=features)

