"""The federation manifest: the single source of truth for what the global model may learn from.

A manifest is a YAML file::

    federation: mnist-silos              # a name, used in cards
    label_space: ["0", "1", ..., "9"]    # class NAMES; integer ids are derived from this order
    factories:                           # one entry per published factory, pinned to a commit
      - repo: hospital-0/factory
        revision: 3f2a...               # a 40-hex commit sha (a branch name is resolved and pinned)
        digest: 9c1e...                 # optional: the factory's content digest (recorded on pull, then checked)
    synthesis:
      samples_per_class: 500
      sampler: dpm++                     # ddpm | ddim | dpm++
      num_inference_steps: 20
      guidance_scale: 1.0
      batch_size: 250
      seed: 0
      precision: fp32                    # fp32 | bf16 (autocast for the UNet: ~2x faster on CPUs with bf16)
    classifier: {arch: timm/ff_cnn, epochs: 15, ...}   # ClassifierConfig fields
    evaluation: {dataset: mnist-5k, split: test, image_size: 16, channels: 1}
    output_dir: runs/aggregate
    publish: {classifier_repo: aggregator/classifier, dataset_repo: aggregator/synthetic, private: true}
    privacy:                             # the aggregator's privacy gate (these are the defaults)
      max_copy_rate: 0.1                 # worst class's copy rate allowed by the factory's audit
      min_audit_samples_per_class: 16
      min_copy_quantile: 0.05            # the audit's copy rule may not be looser than this ...
      min_copy_factor: 0.5               # ... and this
      require_flip_invariant: true       # factories trained with flips need a flip-invariant audit
      overrides:                         # factories accepted although they fail the gate
        - {repo: hospital-3/factory, reason: "reviewed by the ethics board, ticket 42"}

`load_manifest` checks the whole file and reports every problem at once in one `ManifestError`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from ..atomic import atomic_writer
from ..errors import ManifestError
from ..pipeline import SAMPLERS
from .ids import COMMIT_SHA_RE, SHA256_RE

SHA_RE = COMMIT_SHA_RE  # the one commit-id pattern, shared with the endpoint
DIGEST_RE = SHA256_RE
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass
class FactoryEntry:
    """One factory of the manifest: its repo, the revision pulled, and (once pulled) its content digest.

    The revision names what was pulled; the digest (see `federated_factory.synthesis.factory_digest`) names
    what it contains, and is what the synthetic data is derived from.
    """

    repo: str
    revision: str = "main"
    digest: str | None = None

    @property
    def pinned(self) -> bool:
        return bool(SHA_RE.match(self.revision))

    def __str__(self) -> str:
        return f"{self.repo}@{self.revision}"


@dataclass
class SynthesisConfig:
    samples_per_class: int = 500
    sampler: str = "dpm++"
    num_inference_steps: int = 20
    guidance_scale: float = 1.0
    batch_size: int = 250
    seed: int = 0
    precision: str = "fp32"  # "fp32" or "bf16": the UNet's forward pass under bf16 autocast


@dataclass
class PrivacyOverride:
    """A factory accepted although it fails the privacy gate; the reason is recorded in the cards."""

    repo: str
    reason: str


@dataclass
class PrivacyPolicy:
    """What the aggregator demands of each factory's privacy audit (`factory.json["privacy_audit"]`)."""

    max_copy_rate: float = 0.1  # the worst class's copy rate may not exceed this
    min_audit_samples_per_class: int = 16  # the audit must have drawn at least this many samples per class
    min_copy_quantile: float = 0.05  # the audit's copy rule: threshold = copy_factor x this quantile, at least
    min_copy_factor: float = 0.5
    require_flip_invariant: bool = True  # a factory trained with flips needs an audit that counts flipped copies
    overrides: list[PrivacyOverride] = field(default_factory=list)

    def override_for(self, repo: str) -> PrivacyOverride | None:
        return next((o for o in self.overrides if o.repo == repo), None)


@dataclass
class Manifest:
    label_space: list[str]
    factories: list[FactoryEntry]
    federation: str = "federation"
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    classifier: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    output_dir: str = "runs/aggregate"
    publish: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # unlearning records, oldest first
    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)

    def to_dict(self) -> dict:
        data = asdict(self)
        # a factory's digest is written once known; manifests without digests keep their hash
        data["factories"] = [{k: v for k, v in asdict(f).items() if k != "digest" or v} for f in self.factories]
        if not data["history"]:
            data.pop("history")
        if data["synthesis"]["precision"] == "fp32":
            # the default is left out, so manifests written before the field existed keep their hash
            data["synthesis"].pop("precision")
        return data

    def content_hash(self) -> str:
        """sha256 of what defines the federation's model (label space, factories, synthesis, classifier)."""
        core = {k: v for k, v in self.to_dict().items() if k in ("label_space", "factories", "synthesis", "classifier")}
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the manifest as YAML, atomically (a temp file renamed over the target)."""
        path = Path(path)
        with atomic_writer(path, "w") as handle:
            yaml.safe_dump(self.to_dict(), handle, sort_keys=False)
        return path

    def without(self, repo: str) -> Manifest:
        """A copy of the manifest with the factory ``repo`` removed (history is the caller's business)."""
        reduced = copy.deepcopy(self)
        reduced.factories = [f for f in reduced.factories if f.repo != repo]
        reduced.privacy.overrides = [o for o in reduced.privacy.overrides if o.repo != repo]
        return reduced


def parse_manifest(data: dict, source: str = "<manifest>") -> Manifest:
    """Validate a manifest dict; every problem is collected and raised together as one `ManifestError`."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: a manifest must be a YAML mapping, got {type(data).__name__}")
    known = {"federation", "label_space", "factories", "synthesis", "classifier", "evaluation", "output_dir", "publish",
             "history", "privacy"}
    for key in sorted(set(data) - known):
        problems.append(f"unknown field {key!r} (known: {sorted(known)})")

    label_space = data.get("label_space")
    if not isinstance(label_space, list) or not label_space:
        problems.append("label_space: must be a non-empty list of class names")
        label_space = []
    else:
        label_space = [str(name) for name in label_space]
        duplicates = sorted({n for n in label_space if label_space.count(n) > 1})
        if duplicates:
            problems.append(f"label_space: duplicate class names {duplicates}")

    factories: list[FactoryEntry] = []
    raw_factories = data.get("factories")
    if not isinstance(raw_factories, list) or not raw_factories:
        problems.append("factories: the manifest lists no factories (need at least one repo)")
        raw_factories = []
    seen = set()
    for i, entry in enumerate(raw_factories):
        where = f"factories[{i}]"
        if isinstance(entry, str):  # "org/name@sha" shorthand
            repo, _, revision = entry.partition("@")
            entry = {"repo": repo, "revision": revision or "main"}
        if not isinstance(entry, dict) or "repo" not in entry:
            problems.append(f"{where}: must be a mapping with 'repo' and 'revision' (or 'org/name@sha')")
            continue
        extra = set(entry) - {"repo", "revision", "digest"}
        if extra:
            problems.append(f"{where} ({entry.get('repo')}): unknown field(s) {sorted(extra)}")
        repo, revision = str(entry["repo"]), str(entry.get("revision") or "main")
        digest = entry.get("digest")
        if not REPO_RE.match(repo) or ".." in repo:
            problems.append(f"{where}: {repo!r} is not a valid repo id (expected 'namespace/name')")
        if repo in seen:
            problems.append(f"{where}: {repo} is listed twice")
        if digest is not None and not DIGEST_RE.match(str(digest)):
            problems.append(f"{where} ({repo}): digest must be 64 lowercase hex digits (a sha256), got {digest!r}")
        seen.add(repo)
        factories.append(FactoryEntry(repo=repo, revision=revision, digest=str(digest) if digest else None))

    synthesis = SynthesisConfig()
    raw_synthesis = data.get("synthesis") or {}
    if not isinstance(raw_synthesis, dict):
        problems.append("synthesis: must be a mapping")
        raw_synthesis = {}
    for key, value in raw_synthesis.items():
        if not hasattr(synthesis, key):
            problems.append(f"synthesis.{key}: unknown field (known: {sorted(asdict(synthesis))})")
            continue
        expected = type(getattr(synthesis, key))
        try:
            setattr(synthesis, key, expected(value))
        except (TypeError, ValueError):
            problems.append(f"synthesis.{key}: expected {expected.__name__}, got {value!r}")
    if synthesis.sampler not in SAMPLERS:
        problems.append(f"synthesis.sampler: {synthesis.sampler!r} is not one of {sorted(SAMPLERS)}")
    if synthesis.precision not in ("fp32", "bf16"):
        problems.append(f"synthesis.precision: {synthesis.precision!r} is not one of ['bf16', 'fp32']")
    for key in ("samples_per_class", "num_inference_steps", "batch_size"):
        if getattr(synthesis, key) < 1:
            problems.append(f"synthesis.{key}: must be at least 1")

    classifier = data.get("classifier") or {}
    if not isinstance(classifier, dict):
        problems.append("classifier: must be a mapping of ClassifierConfig fields")
        classifier = {}
    else:
        from ..classifier import ClassifierConfig

        try:
            ClassifierConfig.from_dict(classifier)
        except (TypeError, ValueError) as err:
            problems.append(f"classifier: {err}")

    for key in ("evaluation", "publish"):
        if not isinstance(data.get(key) or {}, dict):
            problems.append(f"{key}: must be a mapping")

    privacy = _parse_privacy(data.get("privacy"), seen, problems)

    if problems:
        raise ManifestError(f"{source} has {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    return Manifest(
        label_space=label_space,
        factories=factories,
        federation=str(data.get("federation") or "federation"),
        synthesis=synthesis,
        classifier=dict(classifier),
        evaluation=dict(data.get("evaluation") or {}),
        output_dir=str(data.get("output_dir") or "runs/aggregate"),
        publish=dict(data.get("publish") or {}),
        history=list(data.get("history") or []),
        privacy=privacy,
    )


def _parse_privacy(raw, factory_repos: set[str], problems: list[str]) -> PrivacyPolicy:
    """The manifest's ``privacy`` section (defaults when absent); problems are appended to ``problems``."""
    policy = PrivacyPolicy()
    if raw is None:
        return policy
    if not isinstance(raw, dict):
        problems.append("privacy: must be a mapping")
        return policy
    settings = {k: v for k, v in asdict(policy).items() if k != "overrides"}
    for key, value in raw.items():
        if key == "overrides":
            continue
        if key not in settings:
            problems.append(f"privacy.{key}: unknown field (known: {sorted([*settings, 'overrides'])})")
            continue
        expected = type(settings[key])
        if expected is bool:
            if not isinstance(value, bool):
                problems.append(f"privacy.{key}: expected true or false, got {value!r}")
                continue
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or (expected is int and value != int(value)):
            problems.append(f"privacy.{key}: expected {expected.__name__}, got {value!r}")
            continue
        setattr(policy, key, expected(value))
    for key in ("max_copy_rate", "min_copy_quantile"):
        if not 0.0 <= getattr(policy, key) <= 1.0:
            problems.append(f"privacy.{key}: must be between 0 and 1, got {getattr(policy, key)}")
    if policy.min_copy_factor < 0:
        problems.append(f"privacy.min_copy_factor: must be at least 0, got {policy.min_copy_factor}")
    if policy.min_audit_samples_per_class < 1:
        problems.append("privacy.min_audit_samples_per_class: must be at least 1")

    raw_overrides = raw.get("overrides") or []
    if not isinstance(raw_overrides, list):
        problems.append("privacy.overrides: must be a list of {repo, reason}")
        raw_overrides = []
    listed: set[str] = set()
    for i, item in enumerate(raw_overrides):
        where = f"privacy.overrides[{i}]"
        if not isinstance(item, dict) or "repo" not in item:
            problems.append(f"{where}: must be a mapping with 'repo' and 'reason'")
            continue
        repo, reason = str(item["repo"]), item.get("reason")
        extra = set(item) - {"repo", "reason"}
        if extra:
            problems.append(f"{where} ({repo}): unknown field(s) {sorted(extra)}")
        if not isinstance(reason, str) or not reason.strip():
            problems.append(f"{where} ({repo}): an override needs a non-empty 'reason' (it is written into the cards)")
        if repo not in factory_repos:
            problems.append(f"{where}: {repo} is not one of the manifest's factories")
        if repo in listed:
            problems.append(f"{where}: {repo} is overridden twice")
        listed.add(repo)
        policy.overrides.append(PrivacyOverride(repo=repo, reason=str(reason or "").strip()))
    return policy


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML ({err})") from None
    return parse_manifest(data, source=str(path))
