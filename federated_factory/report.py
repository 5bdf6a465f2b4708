"""`report.md` and its charts, rendered from a demo's `results.json` (`federated-factory report DIR`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import atomic_write_text
from .errors import ReportError

if TYPE_CHECKING:
    from .demo import DemoResults

METHODS = [
    ("federated_factory", "FederatedFactory (server)"),
    ("network", "FederatedFactory (network, product of experts)"),
    ("fedavg", "FedAvg"),
    ("fedprox", "FedProx"),
    ("scaffold", "SCAFFOLD"),  # only in runs made with --scaffold
    ("centralized", "Centralized"),
]


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def _comm(results: DemoResults, key: str) -> tuple[float, float]:
    """(bytes uploaded per client on average, total bytes exchanged) for one method."""
    if key in ("federated_factory", "network"):
        c = results.methods()[key]["communication"]
        uploads = list(c["per_client_upload_bytes"].values())
        return sum(uploads) / len(uploads), c["total_bytes"]
    if key == "centralized":
        return float("nan"), float("nan")
    c = results.methods()[key]["communication"]
    return c.get("uploaded_bytes_per_client", float("nan")), c.get("total_bytes", float("nan"))


def _federated_baselines_sentence(results: DemoResults) -> str:
    """What the FedAvg family ran, or which baselines the run left out (``--baselines``)."""
    cfg = results.config
    ran = [name for name, row in (("FedAvg", results.fedavg), ("FedProx", results.fedprox),
                                  ("SCAFFOLD", results.scaffold)) if row is not None]
    left_out = [name for name, row in (("centralized", results.centralized), ("FedAvg", results.fedavg),
                                       ("FedProx", results.fedprox)) if row is None]
    sentence = ""
    if ran:
        details = [f"FedProx mu={results.fedprox['mu']}"] if results.fedprox is not None else []
        if results.scaffold is not None:
            details.append(f"SCAFFOLD local SGD at lr {results.scaffold['local_lr']}, control variates")
        sentence = (f"{' and '.join(ran)} ran {cfg['fl_rounds']} rounds of {cfg['fl_local_epochs']} local epoch(s)"
                    + (f" ({'; '.join(details)})" if details else "")
                    + "; their reported round was chosen on the clients' validation slices, never on the test set. ")
    if left_out:
        sentence += (f"Not run here (`--baselines {cfg.get('baselines', '')}`): {', '.join(left_out)}"
                     + ("; the accuracy-vs-centralized column is therefore empty" if results.centralized is None
                        else "") + ".")
    return sentence.strip()


def render_report(results_dir: str | Path) -> Path:
    """Write ``report.md`` (and the charts derived from ``results.json``) into ``results_dir``."""
    from .plots import bar_chart

    from .demo import DemoResults

    out = Path(results_dir)
    if not (out / "results.json").is_file():
        raise ReportError(f"{out}: no results.json here; pass the output folder of `federated-factory demo`")
    results = DemoResults.load(out)
    cfg = results.config
    split = cfg.get("evaluation_split", "test")
    central = results.central_accuracy()
    scores = results.methods()
    methods = [(key, label) for key, label in METHODS if key in scores]

    bar_chart({label: {m: scores[key][m] for m in ("accuracy", "macro_f1", "auroc")} for key, label in methods},
              out / "methods.png", title=f"{cfg['dataset']}, {cfg['partition']} partition: real {split} set")
    unlearning = results.unlearning
    if unlearning and unlearning.get("per_class_recall_before"):
        before, after = unlearning["per_class_recall_before"], unlearning["per_class_recall_after"]
        _recall_chart(before, after, out / "unlearning_recall.png")

    lines = [
        f"# FederatedFactory demo: {cfg['dataset']}, {cfg['partition']} partition",
        "",
        f"{results.partition['num_clients']} hospitals, each publishing a diffusion factory to its own private Hub "
        f"repo; one aggregator; one round. Machine: {results.machine['cpu_count']} CPU cores "
        f"({results.machine['platform']}), torch {results.machine['torch']}, CUDA: {results.machine['cuda']}. "
        f"Total wall time: **{results.timings['total_seconds'] / 60:.1f} min**.",
        "",
        f"## Results on the real {split} set",
        "",
        "| method | accuracy | macro-F1 | AUROC | accuracy vs centralized | uploaded per client | total exchanged | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    stage_time = {
        "federated_factory": results.timings["clients_seconds"] + results.timings.get("aggregation_seconds", 0.0),
        "network": results.timings["clients_seconds"] + results.timings.get("network_seconds", 0.0),
        **{key: results.timings.get(f"{key}_seconds", float("nan")) for key in ("fedavg", "fedprox", "scaffold",
                                                                                   "centralized")},
    }
    for key, label in methods:
        r = scores[key]
        up, total = _comm(results, key)
        up_s = "—" if up != up else _mb(up)
        total_s = "— (data pooled)" if total != total else _mb(total)
        versus = f"{r['accuracy'] / central:.1%}" if central else "— (not run)"
        lines.append(f"| {label} | {r['accuracy']:.2%} | {r['macro_f1']:.4f} | {r['auroc']:.4f} | "
                     f"{versus} | {up_s} | {total_s} | {stage_time[key]:.0f} s |")
    ff = results.federated_factory
    lines += [
        "",
        "![methods](methods.png)",
        "",
        (f"FederatedFactory's server mode trained one classifier on synthetic data only "
         f"({ff['synthesis']['images_generated']} images generated at "
         f"{ff['synthesis']['images_per_second']:.0f} images/s, "
         f"{ff['synthesis']['network_evaluations_per_image']} network evaluations per image). " if ff else "")
        + (f"In network mode every hospital trained its own expert ({results.network['expert_epochs']} epochs) on its "
           f"own images plus synthetic images of the classes it lacks ({results.network['chunks_generated']} new "
           f"chunks generated{': the rest came from the aggregator' + chr(39) + 's cache' if ff else ''}); the federation "
           f"predicts with their product. "
           if results.network else "")
        + _federated_baselines_sentence(results),
        "",
    ]
    if results.network:
        lines += _expert_table(results.network, split)
    lines += [
        "## Partition",
        "",
        "![clients x classes](partition_heatmap.png)",
        "",
        "```",
        results.partition["table"],
        "```",
        "",
        "## Factories",
        "",
        "| hospital | repo@revision | classes | training images/s | train time | privacy copy rate | upload |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in results.clients:
        resumed = " (earlier run)" if c.get("resumed") else ""
        lines.append(f"| {c['name']} | `{c['repo']}@{c['revision'][:10]}` | {', '.join(c['classes'])} | "
                     f"{c['train_images_per_second']:.0f} | {c['train_seconds']:.0f} s{resumed} | "
                     f"{c['privacy_copy_rate']:.1%} ({'pass' if c['privacy_passed'] else 'FAIL'}) | "
                     f"{_mb(c['upload_bytes'])} |")
    lines.append("")
    if any(c.get("resumed") for c in results.clients):
        lines += ["Factories marked *earlier run* were trained by an earlier run of this command and republished "
                  "unchanged by this one (`--resume`); their rate and train time are the earlier run's.", ""]
    if (out / "aggregate" / "synthetic_samples.png").exists():
        lines += ["Synthetic samples (one row per class, what the classifier was trained on):", "",
                  "![synthetic](aggregate/synthetic_samples.png)", ""]
    if (out / "real_vs_synthetic.png").exists():
        lines += ["Real training images (left) next to synthetic ones (right), per class:", "",
                  "![real vs synthetic](real_vs_synthetic.png)", ""]
    if (out / "aggregate" / "confusion_matrix.png").exists():
        lines += ["## FederatedFactory confusion matrix (server mode)", "", "![confusion](aggregate/confusion_matrix.png)", ""]
    if (out / "network" / "federation" / "confusion_matrix.png").exists():
        lines += ["## Product of experts confusion matrix (network mode)", "",
                  "![network confusion](network/federation/confusion_matrix.png)", ""]
    lines += [
        "## Wall time per stage",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    for key, value in results.timings.items():
        lines.append(f"| {key.replace('_seconds', '').replace('_', ' ')} | {value:.1f} |")
    if unlearning:
        lines += [
            "",
            f"## Unlearning {unlearning['removed']['repo']}",
            "",
            "| check | result |",
            "|---|---|",
            f"| removed | `{unlearning['removed']['repo']}@{unlearning['removed']['revision']}` |",
            f"| manifest hash before → after | `{unlearning['manifest_hash_before'][:16]}` → `{unlearning['manifest_hash_after'][:16]}` |",
            f"| examples from the removed factory | {unlearning['examples_from_removed']} of {unlearning['examples_total']} |",
            f"| classes that left the label space | {', '.join(unlearning['classes_removed']) or 'none'} |",
            f"| synthetic chunks regenerated | {unlearning['chunks_regenerated']} |",
            f"| from-scratch rebuild of the reduced manifest | {unlearning['from_scratch_check']} |",
            f"| accuracy before → after (whole test set) | {_pct(unlearning.get('accuracy_before'))} → {_pct(unlearning.get('accuracy_after'))} |",
            f"| mean recall on the remaining classes before → after | {_pct(unlearning.get('remaining_classes_mean_recall_before'))} → {_pct(unlearning.get('remaining_classes_mean_recall_after'))} |",
            f"| unlearning wall time vs full aggregation | {unlearning['unlearning_seconds']:.0f} s vs {unlearning.get('full_aggregation_seconds') or float('nan'):.0f} s |",
            "",
        ]
        if (out / "unlearning_recall.png").exists():
            lines += ["![recall before and after](unlearning_recall.png)", ""]
    lines += ["All numbers come from `results.json` in this folder; `federated-factory report DIR` re-renders this page.", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _expert_table(network: dict, split: str = "test") -> list[str]:
    """Network mode: each hospital's expert (own classes, own-validation accuracy and accuracy on the real
    evaluation ``split``) next to the product."""
    lines = [
        "## Network mode: experts and their product",
        "",
        f"Federation model: `{network['federation_model']}`. Own-validation accuracy is each expert's model-selection "
        f"split of its own real and synthetic rows; {split} accuracy is on the real {split} set, like the product's.",
        "",
        f"| expert | own classes | own-validation accuracy | {split} accuracy | {split} macro-F1 |",
        "|---|---|---|---|---|",
    ]
    for row in network["experts"]:
        lines.append(f"| {row['hospital']} | {', '.join(row['own_classes'])} | {_pct(row['own_validation_accuracy'])} | "
                     f"{_pct(row['test_accuracy'])} | {_num(row['test_macro_f1'])} |")
    lines += [f"| **product of experts** | all | — | **{_pct(network['accuracy'])}** | {_num(network['macro_f1'])} |", ""]
    return lines


def _num(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def _pct(value) -> str:
    return "—" if value is None else f"{value:.2%}"


def _recall_chart(before: dict, after: dict, path: Path) -> None:
    """Per-class recall before and after unlearning, side by side."""
    import numpy as np

    from .plots import new_figure, save_figure

    names = list(before)
    x = np.arange(len(names))
    fig = new_figure((max(5, 0.6 * len(names) + 2), 3.2))
    ax = fig.add_subplot()
    ax.bar(x - 0.2, [before[n] for n in names], 0.4, label="before")
    ax.bar(x + 0.2, [after.get(n, 0.0) for n in names], 0.4, label="after unlearning")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall")
    ax.set_title("Per-class recall before and after unlearning")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    save_figure(fig, path)
