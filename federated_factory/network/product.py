"""The federation's model in network mode: the product of the hospitals' experts.

    log p(y|x) ∝ Σ_i max(log p_i(y|x), log floor)        (floor = 1e-6 by default)

`ProductOfExperts.forward` returns that sum (unnormalised log-probabilities: use it as logits; its softmax is
the product's probability). The clamp keeps one expert that is sure a class is impossible from vetoing it
outright. The model is published as a small repo: ``federation.json`` lists the experts by repo@sha (with the
sha256 of their weights) plus the manifest hash and label space; its weights are the experts' own
``model.safetensors``, loaded through `load_classifier` from their pinned revisions. No code from any repo is
run and no pickle is read.

`combine` checks a list of experts against a manifest (label space, manifest hash, expert files) and
reports every problem at once, naming the repo at fault, before loading any weights.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..atomic import atomic_write_json, atomic_write_text
from ..hub.manifest import SHA_RE, Manifest
from .expert import EXPERT_FILE, EXPERT_FORMAT, ExpertError, manifest_identity

FEDERATION_FILE = "federation.json"
FEDERATION_FORMAT = "federated_factory.product_of_experts"
DEFAULT_FLOOR = 1e-6
EXPERT_FILES = ["config.json", "model.safetensors", EXPERT_FILE]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class ProductOfExperts(nn.Module):
    """Sum over experts of their log-softmax, each clamped below at ``log(floor)``.

    ``experts``: modules mapping images in [0, 1] (N×C×H×W) to logits over ``label_names`` (all the same
    label space, in the same order). ``refs``: one dict per expert (``repo``/``revision``/``weights_sha256``, or
    ``path`` for a local folder) recorded by `save_pretrained`.
    """

    def __init__(self, experts: Sequence[nn.Module], label_names: Sequence[str], *, floor: float = DEFAULT_FLOOR,
                 refs: Sequence[dict] | None = None, manifest_hash: str | None = None, federation: str | None = None):
        super().__init__()
        if not experts:
            raise ExpertError("a product of experts needs at least one expert")
        if not 0.0 < floor < 1.0:
            raise ValueError(f"floor must be in (0, 1), got {floor}")
        self.experts = nn.ModuleList(experts)
        self.label_names = list(label_names)
        self.floor = float(floor)
        self.refs = [dict(r) for r in refs] if refs is not None else [{} for _ in experts]
        self.manifest_hash = manifest_hash
        self.federation = federation
        self.eval()

    @property
    def in_chans(self) -> int | None:
        return getattr(self.experts[0], "in_chans", None)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def expert_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """E×N×K: each expert's log-softmax (float32), clamped below at ``log(floor)``."""
        low = math.log(self.floor)
        return torch.stack([F.log_softmax(expert(x).float(), dim=1).clamp_min(low) for expert in self.experts])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N×K unnormalised log-probabilities of the product (logits: softmax gives the probabilities)."""
        return self.expert_log_probs(x).sum(0)

    @torch.inference_mode()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """N×K probabilities of the product."""
        return self.forward(x).softmax(1)

    def config(self) -> dict:
        return {
            "format": FEDERATION_FORMAT,
            "version": 1,
            "federation": self.federation,
            "manifest_hash": self.manifest_hash,
            "label_names": self.label_names,
            "floor": self.floor,
            "combination": "sum of log-softmax clamped at log(floor); softmax for probabilities",
            "experts": self.refs,
        }

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write ``federation.json`` (no weights: they live in the experts' pinned revisions)."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path / FEDERATION_FILE, self.config())
        return path

    @classmethod
    def from_pretrained(cls, repo_or_dir: str | Path, revision: str | None = None, *, token: str | None = None,
                        cache_dir: str | Path | None = None) -> ProductOfExperts:
        """Load a federation model from a folder or a Hub repo (at ``revision``): read ``federation.json``,
        load every expert from its pinned revision (safetensors only), check its weights' sha256 and label
        space against the config. Raises `ExpertError` naming the repo at fault."""
        source = str(repo_or_dir)
        if Path(source).is_dir():
            config_path = Path(source) / FEDERATION_FILE
            if not config_path.is_file():
                raise ExpertError(f"{source}: no {FEDERATION_FILE}; not a federation model folder")
        else:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

            try:
                config_path = Path(hf_hub_download(source, FEDERATION_FILE, revision=revision, token=token,
                                                   cache_dir=cache_dir))
            except (RepositoryNotFoundError, RevisionNotFoundError):
                raise ExpertError(f"{source}@{revision or 'main'}: repository or revision not found, or this token "
                                  "may not read it") from None
            except EntryNotFoundError:
                raise ExpertError(f"{source}: no {FEDERATION_FILE}; not a federation model repo") from None
        config = json.loads(config_path.read_text())
        if config.get("format") != FEDERATION_FORMAT:
            raise ExpertError(f"{source}: {FEDERATION_FILE} has format {config.get('format')!r}, not {FEDERATION_FORMAT}")
        experts, refs = [], []
        for entry in config["experts"]:
            ref = entry.get("path") or f"{entry['repo']}@{entry['revision']}"
            loaded, expert_cfg, resolved = load_expert(ref, token=token, cache_dir=cache_dir)
            if entry.get("weights_sha256") and resolved["weights_sha256"] != entry["weights_sha256"]:
                raise ExpertError(f"expert {ref}: weights sha256 {resolved['weights_sha256'][:12]}… differ from the "
                                  f"{entry['weights_sha256'][:12]}… that {source} records")
            if loaded.label_names != config["label_names"]:
                raise ExpertError(f"expert {ref}: label space {loaded.label_names} differs from {source}'s "
                                  f"{config['label_names']}")
            experts.append(loaded.model)
            refs.append(entry)
        return cls(experts, config["label_names"], floor=config["floor"], refs=refs,
                   manifest_hash=config.get("manifest_hash"), federation=config.get("federation"))


# --------------------------------------------------------------------------------------------------
# experts: inspect (cheap) and load
# --------------------------------------------------------------------------------------------------


def inspect_expert(ref: str, *, token: str | None = None, cache_dir: str | Path | None = None) -> tuple[dict, dict]:
    """(resolved ref, ``expert.json``) of ``ref`` (a local folder, or ``org/name`` / ``org/name@rev`` on the Hub),
    reading only that small file. Raises `ExpertError` naming the repo when it is not a safetensors expert."""
    if Path(ref).is_dir():
        folder = Path(ref)
        missing = [f for f in EXPERT_FILES if not (folder / f).is_file()]
        if missing:
            raise ExpertError(f"expert {ref}: not an expert folder, missing {', '.join(missing)}")
        return {"path": str(folder.resolve())}, _read_expert_config(folder / EXPERT_FILE, ref)
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    repo, _, revision = ref.partition("@")
    try:
        info = HfApi(token=token).model_info(repo, revision=revision or None, files_metadata=False)
    except (RepositoryNotFoundError, GatedRepoError):
        raise ExpertError(f"expert {ref}: repository not found, or this token may not read it") from None
    except RevisionNotFoundError:
        raise ExpertError(f"expert {ref}: revision {revision!r} does not exist") from None
    except HfHubHTTPError as err:
        raise ExpertError(f"expert {ref}: the Hub answered {err.response.status_code}") from None
    files = {s.rfilename for s in (info.siblings or [])}
    missing = [f for f in EXPERT_FILES if f not in files]
    if "model.safetensors" not in files and any(f.endswith(PICKLE_SUFFIXES) for f in files):
        raise ExpertError(f"expert {ref}: weights are pickle-only; only safetensors weights are loaded")
    if missing:
        raise ExpertError(f"expert {ref}: not a FederatedFactory expert, missing {', '.join(missing)}")
    path = hf_hub_download(repo, EXPERT_FILE, revision=info.sha, token=token, cache_dir=cache_dir)
    return {"repo": repo, "revision": info.sha}, _read_expert_config(Path(path), ref)


def _read_expert_config(path: Path, ref: str) -> dict:
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExpertError(f"expert {ref}: {EXPERT_FILE} is not valid JSON ({err})") from None
    if config.get("format") != EXPERT_FORMAT:
        raise ExpertError(f"expert {ref}: {EXPERT_FILE} has format {config.get('format')!r}, not {EXPERT_FORMAT}")
    return config


def load_expert(ref: str, *, token: str | None = None, cache_dir: str | Path | None = None):
    """(LoadedClassifier, ``expert.json``, resolved ref with ``weights_sha256``) for a local expert folder or a
    Hub ``org/name[@rev]`` (downloaded at its resolved sha: config.json, model.safetensors, expert.json only)."""
    from ..classifier import load_classifier
    from ..unlearning import weights_digest

    resolved, config = inspect_expert(ref, token=token, cache_dir=cache_dir)
    if "path" in resolved:
        folder = Path(resolved["path"])
    else:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(resolved["repo"], revision=resolved["revision"], token=token,
                                        allow_patterns=EXPERT_FILES, cache_dir=cache_dir))
    loaded = load_classifier(folder)
    resolved["weights_sha256"] = weights_digest(folder)
    return loaded, config, resolved


# --------------------------------------------------------------------------------------------------
# combine
# --------------------------------------------------------------------------------------------------


@dataclass
class CombineResult:
    output_dir: Path
    model_dir: Path
    manifest_hash: str
    label_names: list[str]
    experts: list[dict]  # resolved refs + a summary of each expert.json
    evaluation: dict | None  # {"product": metrics, "experts": {ref: metrics}}
    published: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    model: ProductOfExperts | None = None

    @property
    def ref(self) -> str | None:
        pub = self.published.get("federation_model")
        return f"{pub['repo']}@{pub['revision']}" if pub else None

    def to_dict(self) -> dict:
        return {
            "output_dir": str(self.output_dir),
            "model_dir": str(self.model_dir),
            "manifest_hash": self.manifest_hash,
            "label_names": self.label_names,
            "experts": self.experts,
            "evaluation": self.evaluation,
            "published": self.published,
            "timings": self.timings,
        }


def resolved_manifest_hash(manifest: Manifest, *, token: str | None = None) -> str:
    """`manifest_identity` of ``manifest`` with every factory pinned (branch names resolved on the Hub; nothing is
    downloaded): the hash an expert records of the manifest it was trained against."""
    if all(SHA_RE.match(f.revision) for f in manifest.factories):
        return manifest_identity(manifest)
    from huggingface_hub import HfApi

    from ..hub.manifest import FactoryEntry

    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    entries = []
    for f in manifest.factories:
        if SHA_RE.match(f.revision):
            entries.append(f)
            continue
        try:
            entries.append(FactoryEntry(f.repo, api.model_info(f.repo, revision=f.revision).sha))
        except HfHubHTTPError:
            raise ExpertError(f"manifest factory {f}: cannot resolve its revision on the Hub (not found, or this "
                              "token may not read it)") from None
    return manifest_identity(Manifest(**{**manifest.__dict__, "factories": entries}))


def check_experts(manifest: Manifest, experts: Sequence[str], *, token: str | None = None,
                  cache_dir: str | Path | None = None) -> tuple[str, list[tuple[dict, dict]]]:
    """Check every expert against ``manifest`` (label space, manifest hash, files) reading only ``expert.json``;
    raise one `ExpertError` listing every problem, each naming its repo. Returns (manifest hash, [(ref, config)])."""
    if not experts:
        raise ExpertError("combine needs at least one expert (repo@sha or folder)")
    manifest_hash = resolved_manifest_hash(manifest, token=token)
    problems, checked, seen = [], [], set()
    for ref in experts:
        try:
            resolved, config = inspect_expert(ref, token=token, cache_dir=cache_dir)
        except ExpertError as err:
            problems.append(str(err))
            continue
        key = resolved.get("repo") or resolved.get("path")
        if key in seen:
            problems.append(f"expert {ref}: listed twice")
        seen.add(key)
        if config.get("label_space") != list(manifest.label_space):
            problems.append(f"expert {ref}: label space {config.get('label_space')} differs from the manifest's "
                            f"{list(manifest.label_space)}")
        if config.get("manifest_hash") != manifest_hash:
            problems.append(f"expert {ref}: trained against manifest {str(config.get('manifest_hash'))[:12]}…, not this "
                            f"manifest ({manifest_hash[:12]}…); retrain it with this manifest")
        checked.append((resolved, config))
    if problems:
        raise ExpertError(f"{len(problems)} problem(s) with the experts:\n" + "\n".join(f"  - {p}" for p in problems))
    return manifest_hash, checked


def combine(
    manifest: Manifest,
    experts: Sequence[str],
    *,
    repo: str | None = None,
    token: str | None = None,
    output_dir: str | Path | None = None,
    floor: float = DEFAULT_FLOOR,
    evaluate: bool = True,
    publish: bool = True,
    private: bool = True,
    cache_dir: str | Path | None = None,
) -> CombineResult:
    """Build the federation model from ``experts`` (``org/name@sha``, ``org/name`` or local expert folders),
    evaluate it and each expert on the manifest's real held-out data, and publish it to ``repo``.

    Every expert is checked first (`check_experts`): a label space other than the manifest's, an expert trained
    against another manifest, a repo that is not an expert: one `ExpertError` naming each repo at fault,
    before any weights are loaded.
    """
    t_start = time.perf_counter()
    manifest_hash, checked = check_experts(manifest, experts, token=token, cache_dir=cache_dir)
    output_dir = Path(output_dir or (str(manifest.output_dir).rstrip("/") + "-network"))
    models, refs, summaries = [], [], []
    for (resolved, config), ref in zip(checked, experts):
        loaded, _, full = load_expert(resolved.get("path") or f"{resolved['repo']}@{resolved['revision']}",
                                      token=token, cache_dir=cache_dir)
        models.append(loaded.model)
        refs.append(full)
        summaries.append({**full, "own_classes": config.get("own_classes"),
                          "synthetic_classes": config.get("synthetic_classes"),
                          "factories_used": config.get("factories_used"), "validation": config.get("validation")})
    model = ProductOfExperts(models, manifest.label_space, floor=floor, refs=refs, manifest_hash=manifest_hash,
                             federation=manifest.federation)
    model_dir = model.save_pretrained(output_dir / "federation_model")
    result = CombineResult(output_dir=output_dir, model_dir=model_dir, manifest_hash=manifest_hash,
                           label_names=list(manifest.label_space), experts=summaries, evaluation=None, model=model)
    result.timings["load_seconds"] = time.perf_counter() - t_start
    if evaluate:
        t0 = time.perf_counter()
        result.evaluation = evaluate_network(model, manifest, output_dir)
        result.timings["evaluation_seconds"] = time.perf_counter() - t0
    if publish and repo:
        result.published["federation_model"] = publish_federation_model(result, manifest, repo, token=token,
                                                                        private=private)
    atomic_write_json(output_dir / "results.json", result.to_dict())
    return result


def _expert_name(ref: dict) -> str:
    return f"{ref['repo']}@{ref['revision']}" if "repo" in ref else ref["path"]


def evaluate_network(model: ProductOfExperts, manifest: Manifest, output_dir: str | Path | None = None,
                     test=None) -> dict | None:
    """Metrics of the product and of each expert (same `evaluate_classifier` as the aggregator) on the
    manifest's evaluation data (or ``test``). None when there is none."""
    from ..classifier import evaluate_classifier, plot_confusion_matrix

    spec = dict(manifest.evaluation or {})
    if test is None:
        if not spec.get("dataset"):
            return None
        from ..data import load_image_dataset

        test = load_image_dataset(spec["dataset"], split=spec.get("split", "test"), image_size=spec.get("image_size"),
                                  channels=spec.get("channels"), revision=spec.get("revision"))
    product = evaluate_classifier(model, test, model.label_names)
    product["dataset"] = spec
    per_expert = {}
    for expert, ref in zip(model.experts, model.refs):
        per_expert[_expert_name(ref)] = evaluate_classifier(expert, test, model.label_names)
    if output_dir is not None:
        plot_confusion_matrix(product["confusion_matrix"], product["confusion_labels"],
                              Path(output_dir) / "confusion_matrix.png", title="Product of experts (row-normalised)")
    return {"product": product, "experts": per_expert}


def publish_federation_model(result: CombineResult, manifest: Manifest, repo: str, *, token: str | None = None,
                             private: bool = True) -> dict:
    """Upload ``federation.json``, the card and the confusion matrix to ``repo`` in one commit."""
    from huggingface_hub import HfApi

    from ..hub.cards import render_card

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="federation-model-") as tmp:
        folder = Path(tmp)
        (folder / FEDERATION_FILE).write_bytes((result.model_dir / FEDERATION_FILE).read_bytes())
        if (result.output_dir / "confusion_matrix.png").exists():
            (folder / "confusion_matrix.png").write_bytes((result.output_dir / "confusion_matrix.png").read_bytes())
        config = json.loads((result.model_dir / FEDERATION_FILE).read_text())
        card = render_card("federation_model.md", repo_id=repo, config=config, manifest=manifest.to_dict(),
                           summary=result.to_dict(), expert_name=_expert_name)
        atomic_write_text(folder / "README.md", card)
        api.create_repo(repo, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo, folder_path=folder,
                                   commit_message=f"Product of {len(result.experts)} experts for manifest "
                                                  f"{result.manifest_hash[:12]}")
    return {"repo": repo, "revision": commit.oid}
