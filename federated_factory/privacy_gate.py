"""The aggregator's privacy gate: judge each factory's own privacy audit against the manifest's policy.

A hospital audits its factory before publishing (`federated_factory.client.audit_privacy`) and writes the
result into ``factory.json["privacy_audit"]``. The aggregator does not trust that the hospital refused a
failing factory: before any compute it reads every audit and refuses a factory whose audit

- is missing, or says it did not pass;
- found a worst-class copy rate above ``privacy.max_copy_rate`` (the pooled rate can hide one memorized
  class inside a multi-class factory, so the gate reads the worst class);
- drew fewer samples per class than ``privacy.min_audit_samples_per_class``, or used a looser copy rule
  than ``privacy.min_copy_quantile`` / ``privacy.min_copy_factor``;
- was not flip-invariant although the factory was trained with flips (``require_flip_invariant``);
- has no result for one of the classes the factory declares.

A factory named under ``privacy.overrides`` with a reason is accepted anyway; the verdict, its problems and
the reason are recorded in the results and the cards. Audits written before the worst-class fields existed
are read through their ``per_class`` table.
"""

from __future__ import annotations

import re

from .hub.manifest import PrivacyPolicy

_COPY_RULE_RE = re.compile(r"<\s*([0-9.]+)\s*x\s*q([0-9.]+)")
_EPS = 1e-12


def worst_class(audit: dict) -> tuple[str | None, float | None]:
    """The class with the highest copy rate and that rate (``worst_copy_rate`` when the audit records it)."""
    per_class = audit.get("per_class") or {}
    rates = {name: float(v["copy_rate"]) for name, v in per_class.items() if isinstance(v, dict) and "copy_rate" in v}
    if audit.get("worst_copy_rate") is not None:
        name = audit.get("worst_class") or (max(rates, key=rates.get) if rates else None)
        return name, float(audit["worst_copy_rate"])
    if rates:
        name = max(rates, key=rates.get)
        return name, rates[name]
    if audit.get("copy_rate") is not None:
        return None, float(audit["copy_rate"])
    return None, None


def copy_rule(audit: dict) -> tuple[float | None, float | None]:
    """``(copy_quantile, copy_factor)`` of the audit's copy rule, read from its fields or its ``copy_rule`` text."""
    quantile, factor = audit.get("copy_quantile"), audit.get("copy_factor")
    if quantile is None or factor is None:
        match = _COPY_RULE_RE.search(str(audit.get("copy_rule", "")))
        if match:
            factor = float(match.group(1)) if factor is None else factor
            quantile = float(match.group(2)) / 100 if quantile is None else quantile
    return (None if quantile is None else float(quantile)), (None if factor is None else float(factor))


def audit_problems(metadata: dict, policy: PrivacyPolicy) -> list[str]:
    """Every reason the factory described by ``metadata`` (its factory.json) fails ``policy``; empty if none."""
    audit = metadata.get("privacy_audit")
    if not isinstance(audit, dict) or not audit:
        return ["carries no privacy audit (factory.json has no 'privacy_audit')"]
    problems = []
    name, worst = worst_class(audit)
    where = f" (class {name!r})" if name is not None else ""
    if audit.get("passed") is not True:
        allowed = " and was published with --allow-copies" if audit.get("allowed_copies") else ""
        rate = f": worst-class copy rate {worst:.1%}{where}" if worst is not None else ""
        problems.append(f"its privacy audit did not pass{rate}{allowed}")
    if worst is None:
        problems.append("its privacy audit records no copy rate")
    elif worst > policy.max_copy_rate + _EPS:
        problems.append(f"worst-class copy rate {worst:.1%}{where} exceeds the manifest's max_copy_rate "
                        f"{policy.max_copy_rate:.1%}")
    per_class = audit.get("per_class") or {}
    samples = [int(v["samples"]) for v in per_class.values() if isinstance(v, dict) and "samples" in v]
    n = min(samples) if samples else audit.get("samples_per_class")
    if n is None:
        problems.append("its privacy audit does not say how many samples it drew")
    elif int(n) < policy.min_audit_samples_per_class:
        problems.append(f"its audit drew {int(n)} samples per class, the manifest demands at least "
                        f"{policy.min_audit_samples_per_class} (privacy.min_audit_samples_per_class)")
    quantile, factor = copy_rule(audit)
    if quantile is None or factor is None:
        problems.append("its privacy audit does not state its copy rule (copy_quantile, copy_factor)")
    else:
        if quantile + _EPS < policy.min_copy_quantile:
            problems.append(f"its audit's copy rule uses quantile {quantile:g}, looser than the manifest's "
                            f"min_copy_quantile {policy.min_copy_quantile:g}")
        if factor + _EPS < policy.min_copy_factor:
            problems.append(f"its audit's copy rule uses factor {factor:g}, looser than the manifest's "
                            f"min_copy_factor {policy.min_copy_factor:g}")
    flip = str((metadata.get("config") or {}).get("flip", "none") or "none")
    if flip != "none" and policy.require_flip_invariant and audit.get("flip_invariant") is not True:
        problems.append(f"it was trained with flips (flip={flip!r}) but its audit is not flip-invariant "
                        "(a flipped copy of a training image would not be counted)")
    unaudited = [c for c in metadata.get("classes", []) if per_class and c not in per_class]
    if unaudited:
        problems.append(f"its audit has no result for class(es) {unaudited}")
    return problems


def gate_factory(repo: str, revision: str, metadata: dict, policy: PrivacyPolicy) -> dict:
    """The gate's record for one factory: ``verdict`` is ``accepted``, ``overridden`` or ``refused``."""
    audit = metadata.get("privacy_audit") if isinstance(metadata.get("privacy_audit"), dict) else {}
    problems = audit_problems(metadata, policy)
    override = policy.override_for(repo)
    name, worst = worst_class(audit or {})
    quantile, factor = copy_rule(audit or {})
    return {
        "repo": repo,
        "revision": revision,
        "verdict": "accepted" if not problems else ("overridden" if override else "refused"),
        "problems": problems,
        "override_reason": override.reason if override else None,
        "audit_passed": audit.get("passed"),
        "copy_rate": audit.get("copy_rate"),
        "worst_class": name,
        "worst_copy_rate": worst,
        "samples_per_class": audit.get("samples_per_class"),
        "copy_quantile": quantile,
        "copy_factor": factor,
        "flip": str((metadata.get("config") or {}).get("flip", "none") or "none"),
        "flip_invariant": audit.get("flip_invariant"),
        "allowed_copies": audit.get("allowed_copies"),
    }


def policy_summary(policy: PrivacyPolicy) -> dict:
    """The gate's settings, as recorded beside the verdicts."""
    return {
        "metric": "worst-class copy rate of the factory's own audit (a sample is a copy when it is closer to a "
                  "training image than copy_factor x the copy_quantile quantile of held-out images' distances)",
        "max_copy_rate": policy.max_copy_rate,
        "min_audit_samples_per_class": policy.min_audit_samples_per_class,
        "min_copy_quantile": policy.min_copy_quantile,
        "min_copy_factor": policy.min_copy_factor,
        "require_flip_invariant": policy.require_flip_invariant,
    }
