#!/usr/bin/env python
"""The evidence table of issue 14: dataset × partition × seed × method, resumable, validation-only choices.

Every finished (row, stage) is one JSON file written atomically under `--out` (default
`benchmarks/results/evidence/`) and skipped when the driver runs again, so a run longer than a session
resumes where it stopped; commit the folder as stages finish. Each file records the wall time of every
sub-stage, the bytes exchanged, the machine (platform, cores, CPU kernels, torch threads, load average) and the command.

Layout: `<out>/<dataset>/<partition>/<method>/select-<name>.json` (one validation-scored candidate, seed 0)
and `<out>/<dataset>/<partition>/<method>/seed<k>.json` (the chosen setting at seed k: validation and
test metrics; the test split is read once, there). `TABLE.md` is rendered from these files. The choice is
made among every candidate scored for the row, by this command or an earlier one; when a candidate scored
later wins, each finished seed is measured again with it and its old record moves to `superseded/`.

Methods run here (library functions only):
* `fedcvae`: FedCVAE-Ens (`federated_factory.fedcvae.run_fedcvae`); the CVAE setting, and the images per
  class and classifier epochs when a candidate names them (`z32-b1-n1000-e15`), are chosen among `--cvae-grid`
  on the validation split at seed 0 and reused for every seed. Candidates that differ only in images per class
  or epochs reuse the clients' decoders kept under `--work`.
* `fedavg`, `fedprox`, `scaffold`: `federated_factory.baselines.run_fedavg / run_scaffold`, `--fl-rounds` ×
  `--fl-local-epochs` ≥ the classifier's epochs, the learning rate chosen among `--fl-lrs` on validation.
* `centralized`: `federated_factory.baselines.run_centralized` on the union of the clients' rows.
FederatedFactory rows come from a finished run's results JSON (`benchmarks/federation.py` or
`benchmarks/reaggregate.py`), recorded with the `import` command:

    python benchmarks/evidence.py run --datasets blood-cells-32 --partitions silos --seeds 0 --methods fedcvae
    python benchmarks/evidence.py import --dataset blood-cells-32 --partition silos --seed 0 \\
        --method ff-server --results runs/blood-cells-32-silos-cpu-s0/results.json
    python benchmarks/evidence.py import --dataset blood-cells-32 --partition silos --seed 1 \
        --method ff-server --results runs/blood-cells-32-silos-cpu-both-seed1/results.json --reuse-choice 0
    python benchmarks/evidence.py table

Partitions: `silos`, `dirichlet-<alpha>`, `pathological-<k>`, `iid-<n>` (partition seed `--partition-seed`,
the same for every method and seed: a seed changes training, synthesis and classifier, not the split).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "evidence"
DATA_ROOT = ROOT.parent / "shared" / "data"
DEFAULT_WORK = ROOT / "runs" / "evidence"  # candidates' classifiers (not committed), so any process can reuse them
# image size, channels, flips, headline metrics (the issue asks macro-AUROC and balanced accuracy for derma);
# the first is the one a row's methods are compared on (derma: nevi are 67%, so accuracy rewards "all nevi")
DATASETS = {
    "blood-cells-32": dict(image_size=32, channels=3, hflip=True, vflip=True, metrics=("accuracy",)),
    "derma-28": dict(image_size=28, channels=3, hflip=True, vflip=True,
                     metrics=("balanced_accuracy", "auroc", "accuracy")),
    "cifar10-32": dict(image_size=32, channels=3, hflip=True, vflip=False, metrics=("accuracy",)),
}
METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "auroc": "macro-AUROC",
                "macro_f1": "macro-F1"}


def metrics_of(dataset: str) -> tuple[str, ...]:
    """A dataset's headline metrics, the one its methods are compared on first."""
    return DATASETS.get(dataset, {}).get("metrics", ("accuracy",))


METHODS = ("ff-server", "ff-network", "fedcvae", "fedavg", "fedprox", "scaffold", "centralized")
COLUMNS = {"ff-server": "FederatedFactory (server)", "ff-network": "FederatedFactory (network)",
           "fedcvae": "FedCVAE-Ens", "fedavg": "FedAvg", "fedprox": "FedProx", "scaffold": "SCAFFOLD",
           "centralized": "centralized"}
# what the FederatedFactory paper reports for the same family of benchmark (not the same files; see README)
PAPER = {
    ("blood-cells-32", "silos"): "BloodMNIST: FF 91.17, centralized 91.23",
    ("cifar10-32", "silos"): "CIFAR-10: FedAvg 11.36, FF 84.30 server / 90.57 network",
    ("derma-28", "silos"): "ISIC2019 (AUROC): not the same dataset",
}
# FedCVAE-Ens candidates: name -> CVAEConfig overrides
CVAE_GRID = {
    "z16-b1": dict(latent_dim=16, beta=1.0),
    "z16-b0.25": dict(latent_dim=16, beta=0.25),
    "z32-b1": dict(latent_dim=32, beta=1.0),
    # about a factory's upload (4.81 vs 4.27 MB) and half its step time on this CPU: the compute-matched candidate
    "z32-w128-b1": dict(latent_dim=32, width=128, beta=1.0),
}


# ------------------------------------------------------------------------------------------------------
# records


def machine() -> dict:
    from federated_factory.runtime import machine as described

    return {**described(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average": list(os.getloadavg())}


def _machine_line(record: dict) -> str:
    """Where a record's number was measured: the run's machine for an imported run, else the driver's."""
    m = record.get("source_machine") or record["machine"]
    line = f"{m['platform']}, {m['cpu_count']} cores" + (f" ({m['cpu_capability']})" if m.get("cpu_capability") else "")
    return line + (f", load {m['load_average'][0]:.1f}" if m.get("load_average") else "")


def scores(metrics: dict) -> dict:
    """accuracy, balanced accuracy (mean per-class recall), macro-F1, macro-AUROC from `evaluate_classifier`."""
    recall = list(metrics["per_class_recall"].values())
    return {"accuracy": metrics["accuracy"], "balanced_accuracy": sum(recall) / len(recall),
            "macro_f1": metrics["macro_f1"], "auroc": metrics["auroc"],
            "per_class_recall": metrics["per_class_recall"]}


def stage_path(out: Path, dataset: str, partition: str, method: str, stage: str) -> Path:
    return out / dataset / partition / method / f"{stage}.json"


def save_stage(path: Path, record: dict) -> None:
    from federated_factory.atomic import atomic_write_json

    record = {**record, "machine": machine(), "command": "python benchmarks/evidence.py " + " ".join(sys.argv[1:]),
              "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    print(f"saved {path}", flush=True)


# ------------------------------------------------------------------------------------------------------
# data


class Data:
    """One dataset's splits and one partition of its train split, loaded once per (dataset, partition)."""

    def __init__(self, data_root: Path, dataset: str, partition: str, partition_seed: int):
        from federated_factory.data import load_image_dataset
        from federated_factory.partition import partition_dataset

        if dataset not in DATASETS:
            raise SystemExit(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
        self.name, self.spec, self.partition_name = dataset, DATASETS[dataset], partition
        source = str(data_root / dataset)
        opts = dict(image_size=self.spec["image_size"], channels=self.spec["channels"])
        self.train = load_image_dataset(source, "train", **opts)
        self.validation = load_image_dataset(source, "validation", **opts)
        self._source, self._opts = source, opts
        scheme, _, value = partition.partition("-")
        kwargs = {"dirichlet": lambda v: dict(alpha=float(v)), "pathological": lambda v: dict(classes_per_client=int(v)),
                  "iid": lambda v: dict(num_clients=int(v)), "silos": lambda v: {}}
        if scheme not in kwargs or (scheme != "silos" and not value):
            raise SystemExit(f"unknown partition {partition!r}: use silos, dirichlet-A, pathological-K or iid-N")
        extra = kwargs[scheme](value)
        if scheme in ("dirichlet", "pathological"):
            extra["num_clients"] = len(self.train.features["label"].names)
        self.partition = partition_dataset(self.train, scheme, seed=partition_seed, **extra)

    def test(self):
        """The test split; call only for the chosen setting's final number."""
        from federated_factory.data import load_image_dataset

        return load_image_dataset(self._source, "test", **self._opts)

    def clients(self) -> list:
        return [self.partition.client_dataset(self.train, i) for i in range(self.partition.num_clients)]


def classifier_config(args, data: Data, seed: int, **overrides):
    from federated_factory.classifier import ClassifierConfig

    return ClassifierConfig(**{"epochs": args.classifier_epochs, "hflip": data.spec["hflip"],
                               "vflip": data.spec["vflip"], "seed": seed, **overrides})


# ------------------------------------------------------------------------------------------------------
# methods: each returns (record, model-or-None); the record holds validation metrics


def fedcvae_once(args, data: Data, setting: dict, seed: int) -> tuple[dict, object]:
    """One FedCVAE-Ens run. ``setting``: CVAEConfig overrides, and the images per class and classifier epochs
    when the candidate names them (else ``--samples-per-class`` and ``--classifier-epochs``). With ``--work``
    the clients' decoders are kept per (CVAE setting, seed) and reused by every candidate that differs only in
    images per class or epochs: a decoder depends on its client's rows, its setting and the seed."""
    from federated_factory.classifier import evaluate_classifier
    from federated_factory.fedcvae import CVAEConfig, load_uploads, run_fedcvae, save_uploads

    overrides = dict(setting)
    samples_per_class = overrides.pop("samples_per_class", args.samples_per_class)
    epochs = overrides.pop("classifier_epochs", args.classifier_epochs)
    lr = {"lr": overrides.pop("classifier_lr")} if "classifier_lr" in overrides else {}
    cvae = CVAEConfig(train_steps=args.cvae_steps, batch_size=args.cvae_batch_size, **overrides)
    work = Path(args.work) / data.name / getattr(data, "partition_name", "partition") / "fedcvae" \
        if getattr(args, "work", None) else None
    tag = "-".join(f"{k}{v}" for k, v in sorted(overrides.items()))
    kept = work / f"decoders-{tag}-steps{cvae.train_steps}x{cvae.batch_size}-seed{seed}" if work else None
    uploads = load_uploads(kept) if kept is not None and kept.is_dir() else None
    result = run_fedcvae(data.train, data.partition, cvae=cvae, classifier=classifier_config(args, data, seed, epochs=epochs, **lr),
                         samples_per_class=samples_per_class, seed=seed, channels=data.spec["channels"],
                         progress=True, uploads=uploads)
    if work is not None:  # kept (not committed): the decoders for other candidates, the set for generator_samples.py
        if uploads is None:
            save_uploads(result.uploads, kept)
        result.synthetic.save_to_disk(str(work / f"synthetic-{tag}-n{samples_per_class}-seed{seed}"))
    t0 = time.perf_counter()
    validation = scores(evaluate_classifier(result.trained.model, data.validation, result.trained.label_names))
    timings = {**result.timings, "validation_seconds": time.perf_counter() - t0}
    classifier = result.trained.summary()
    record = {"cvae": dataclasses.replace(cvae, seed=seed).to_dict(), "validation": validation, "timings": timings,
              "bytes": {"upload": result.upload_bytes, "download": 0},
              "clients": [u.summary() for u in result.uploads], "classifier": classifier,
              "samples_per_class": samples_per_class, "classifier_epochs": epochs, "classifier_lr": classifier["config"]["lr"],
              "decoders_reused": str(kept) if result.decoders_reused else None}
    return record, (result.trained.model, result.trained.label_names)


def cvae_candidate(name: str) -> dict:
    """``<grid name>[-n<images per class>][-e<classifier epochs>][-lr<classifier learning rate>]`` -> its
    setting, e.g. ``z32-b1-n1000-e15-lr0.001``: FedCVAE-Ens gets the same images-per-class, epoch and learning-rate
    candidates as FederatedFactory's server mode."""
    tokens, extra = name.split("-"), {}
    while tokens:
        last = tokens[-1]
        if last.startswith("lr"):
            key, raw = "classifier_lr", last[2:]
            try:
                value = float(raw)
            except ValueError:
                value = 0.0
        elif last[:1] in ("n", "e") and last[1:].isdigit():
            key = "samples_per_class" if last[0] == "n" else "classifier_epochs"
            value = int(last[1:])
        else:
            break
        if key in extra or not value > 0:
            raise SystemExit(f"--cvae-grid entry {name!r}: give each of -n<images per class>, -e<epochs> and "
                             "-lr<learning rate> once, > 0")
        extra[key] = value
        tokens.pop()
    base = "-".join(tokens)
    if base not in CVAE_GRID:
        raise SystemExit(f"unknown --cvae-grid entry {name!r}: use one of {sorted(CVAE_GRID)}, optionally followed "
                         "by -n<images per class>, -e<classifier epochs> and -lr<classifier learning rate>")
    return {**CVAE_GRID[base], **extra}


def fl_once(args, data: Data, method: str, lr: float, seed: int) -> tuple[dict, object]:
    from federated_factory.baselines import run_fedavg, run_scaffold

    config = dataclasses.replace(classifier_config(args, data, seed), lr=lr)
    common = dict(rounds=args.fl_rounds, local_epochs=args.fl_local_epochs, seed=seed, progress=True,
                  return_model=True)
    t0 = time.perf_counter()
    if method == "scaffold":  # local SGD: lr is SCAFFOLD's local learning rate
        out = run_scaffold(data.clients(), data.validation, config, local_lr=lr, **common)
    else:
        out = run_fedavg(data.clients(), data.validation, config, mu=args.fedprox_mu if method == "fedprox" else 0.0,
                         **common)
    model = out.pop("model")
    record = {"lr": lr, "validation": scores(out), "timings": {"train_seconds": time.perf_counter() - t0},
              "bytes": out.get("communication"), "selected_round": out.get("selected_round"),
              "rounds": args.fl_rounds, "local_epochs": args.fl_local_epochs}
    return record, (model, list(data.train.features["label"].names))


def centralized_once(args, data: Data, setting: dict, seed: int) -> tuple[dict, object]:
    from federated_factory.baselines import run_centralized

    out = run_centralized(data.clients(), data.validation, classifier_config(args, data, seed, **setting),
                          progress=False, return_model=True)
    model = out.pop("model")
    record = {"validation": scores(out), "timings": {"train_seconds": out["wall_time_s"]},
              "bytes": {"upload": 0, "download": 0, "note": "all data pooled: not a federated method"},
              "best_epoch": out.get("best_epoch")}
    return record, (model, out["label_names"])


def save_model(work: Path, model_and_names, name: str) -> None:
    """Keep a candidate's classifier (safetensors folder) so that a later process can report it on test."""
    import shutil

    from federated_factory.classifier import save_classifier

    model, label_names = model_and_names
    target = work / name
    partial = work / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    save_classifier(model, partial, label_names=label_names, image_size=getattr(model, "ff_image_size", None))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def load_model(work: Path, name: str):
    from federated_factory.classifier import load_classifier

    if not (work / name / "model.safetensors").exists() and not (work / name / "config.json").exists():
        return None
    loaded = load_classifier(work / name)
    return loaded.model, loaded.label_names


def candidates(args, method: str) -> dict[str, dict]:
    if method == "fedcvae":
        return {g: cvae_candidate(g) for g in args.cvae_grid}
    if method in ("fedavg", "fedprox", "scaffold"):
        lrs = args.scaffold_lrs if method == "scaffold" else args.fl_lrs
        return {f"lr{lr:g}": {"lr": lr} for lr in lrs}
    # centralized trains on the pooled real rows, as imbalanced as the dataset (derma: 67% nevi); whether to
    # weight its loss by class, which held-out score picks its epoch, and its learning rate are settings like any
    # other, chosen on validation. Candidates at the earlier defaults keep their earlier names ("none",
    # "balanced-epoch-by-balanced_accuracy"); another learning rate adds "-lr<value>".
    from federated_factory.classifier import ClassifierConfig

    default_lr, grid = ClassifierConfig().lr, {}
    for lr in getattr(args, "centralized_lrs", None) or [default_lr]:
        for w in args.centralized_weighting:
            for s in args.centralized_selection:
                name = (w if s == "accuracy" else f"{w}-epoch-by-{s}") + ("" if lr == default_lr else f"-lr{lr:g}")
                grid[name] = {"class_weighting": w, "selection_metric": s, **({} if lr == default_lr else {"lr": lr})}
    return grid


def once(args, data: Data, method: str, setting: dict, seed: int):
    if method == "fedcvae":
        return fedcvae_once(args, data, setting, seed)
    if method in ("fedavg", "fedprox", "scaffold"):
        return fl_once(args, data, method, setting["lr"], seed)
    return centralized_once(args, data, setting, seed)


def set_aside(path: Path, label: str) -> Path:
    """Move a replaced final record to `superseded/<stem>-<label>.json` (kept readable, not in the table)."""
    aside = path.parent / "superseded" / f"{path.stem}-{label}.json"
    aside.parent.mkdir(exist_ok=True)
    path.replace(aside)
    return aside


def announce(data: Data, partition: str, method: str, what: str, seed: int) -> None:
    print(f"{time.strftime('%H:%M:%S')} {data.name} / {partition} / {method} {what} seed {seed}: training",
          flush=True)


def choose(folder: Path, order: list[str], args) -> tuple[str, dict, list[str]]:
    """The best candidate on validation among EVERY candidate scored for this row at the selection seed (this
    command's grid and any scored by earlier commands), so that a run with part of a grid never overrides a
    choice made on more. Ties go to this command's order, then to name order. Returns (name, setting, the names
    of all candidates considered)."""
    scored = {}
    for path in sorted(folder.glob("select-*.json")):
        record = json.loads(path.read_text())
        if record.get("seed", args.select_seed) == args.select_seed:
            scored[path.stem.removeprefix("select-")] = record
    best = None
    for name in [n for n in order if n in scored] + [n for n in scored if n not in order]:
        value = scored[name]["validation"][args.metric]
        if best is None or (value is not None and value > best[1]):
            best = (name, value)
    return best[0], scored[best[0]].get("setting", {}), sorted(scored)


def run_method(args, data: Data, partition: str, method: str, seeds: list[int]) -> None:
    """Select on validation (seed 0, one file per candidate), then one file per seed with the test number."""
    from federated_factory.classifier import evaluate_classifier

    out = Path(args.out)
    work = Path(getattr(args, "work", None) or DEFAULT_WORK) / data.name / partition / method
    grid, kept = candidates(args, method), {}
    chosen, chosen_setting, considered = None, {}, []
    if grid:
        for name, setting in grid.items():  # score the candidates of this command not scored yet
            path = stage_path(out, data.name, partition, method, f"select-{name}")
            if not path.exists():
                announce(data, partition, method, f"candidate {name}", args.select_seed)
                record, model = once(args, data, method, setting, args.select_seed)
                record = {**record, "setting": setting, "seed": args.select_seed, "stage": "select"}
                if getattr(args, "keep_models", True):
                    save_model(work, model, f"select-{name}")
                save_stage(path, record)
                kept[name] = model  # reused below if this candidate is chosen (same seed, same result)
        chosen, chosen_setting, considered = choose(out / data.name / partition / method, list(grid), args)
    if getattr(args, "select_only", False):
        return
    for seed in seeds:
        path = stage_path(out, data.name, partition, method, f"seed{seed}")
        if path.exists():
            previous = json.loads(path.read_text()).get("chosen")
            if previous == chosen:
                print(f"skip {path} (done)", flush=True)
                continue
            aside = set_aside(path, previous)  # a candidate scored since then won on validation
            print(f"{path}: validation now chooses {chosen}, not {previous}; measuring again (old record: {aside})",
                  flush=True)
        t0 = time.perf_counter()
        reuse = None
        if chosen is not None and seed == args.select_seed:
            reuse = kept.get(chosen) or load_model(work, f"select-{chosen}")
        if reuse is not None:
            record = json.loads(stage_path(out, data.name, partition, method, f"select-{chosen}").read_text())
            model, label_names = reuse
            record["reused_from"] = f"select-{chosen}"
        else:
            announce(data, partition, method, f"chosen {chosen}" if chosen else "", seed)
            record, (model, label_names) = once(args, data, method, chosen_setting, seed)
        t1 = time.perf_counter()
        test = scores(evaluate_classifier(model, data.test(), label_names))  # the one read of test for this number
        record = {**record, "stage": "final", "seed": seed, "chosen": chosen, "metric": args.metric,
                  "candidates": considered, "test": test,
                  "timings": {**record.get("timings", {}), "test_seconds": time.perf_counter() - t1,
                              "stage_seconds": t1 - t0}}
        save_stage(path, record)


# ------------------------------------------------------------------------------------------------------
# FederatedFactory rows from a finished run


# what a reader needs to check that a FederatedFactory run used the setting its record says was chosen
RUN_SETTINGS = ("preset", "train_steps", "samples_per_class", "sampler", "num_inference_steps", "synthesis_precision",
                "classifier_epochs", "expert_epochs", "seed")


def import_ff(args) -> None:
    """Record a FederatedFactory number from a federation.py results.json or a reaggregate.py JSON; with
    ``--sweep``, the server mode's test metrics are those of the classifier setting chosen on validation
    (classifier_sweep.py's ``final_test``), and the run gives the rest (timings, bytes, machine)."""
    if args.sweep and args.method != "ff-server":
        raise SystemExit("--sweep chooses the server mode's classifier: use it with --method ff-server")
    if args.sweep and args.reuse_choice is not None:
        raise SystemExit("give --sweep (a choice made on this run) or --reuse-choice (one made at another seed)")
    data = json.loads(Path(args.results).read_text())
    mode = "network" if args.method == "ff-network" else "federated_factory"  # results.json keys of the two modes
    row = data.get(mode) or ({} if mode == "network" else data)  # a reaggregate.py JSON is the server row itself
    if "accuracy" not in row:
        raise SystemExit(f"{args.results}: no FederatedFactory {mode.replace('federated_factory', 'server')} "
                         "mode accuracy found")
    metrics, selection = row, None
    split = row.get("evaluation_split") or (data.get("config") or {}).get("evaluation_split", "test")
    if not args.sweep and split != "test":
        raise SystemExit(f"{args.results}: scored on {split!r}, not on test: a candidate, not a result; record it "
                         "through the classifier_sweep.py that chose it (--sweep)")
    if args.sweep:  # the classifier setting chosen on validation by classifier_sweep.py on this run's synthetic set
        sweep = json.loads(Path(args.sweep).read_text())
        if sweep.get("selection_split") != "validation" or "final_test" not in sweep:
            raise SystemExit(f"{args.sweep}: not a classifier_sweep.py result chosen on validation and read once on "
                             "test (--final-test)")
        metrics = sweep["final_test"]
        selection = {"sweep": str(args.sweep), "chosen": sweep["chosen"], "metric": sweep["metric"],
                     "candidates": {row["name"]: row["validation"][sweep["metric"]] for row in sweep["results"]}}
    if args.reuse_choice is not None:  # the setting chosen on validation at another seed, run again at this one
        chosen_at = stage_path(Path(args.out), args.dataset, args.partition, args.method, f"seed{args.reuse_choice}")
        earlier = json.loads(chosen_at.read_text()) if chosen_at.is_file() else {}
        if not earlier.get("selection"):
            raise SystemExit(f"--reuse-choice {args.reuse_choice}: {chosen_at} records no choice made on validation")
        selection = {**earlier["selection"], "reused_from_seed": args.reuse_choice}
    recall = metrics.get("per_class_recall") or {}
    test = {"accuracy": metrics["accuracy"], "auroc": metrics.get("auroc"), "macro_f1": metrics.get("macro_f1"),
            "balanced_accuracy": sum(recall.values()) / len(recall) if recall else None, "per_class_recall": recall}
    timings = {**(data.get("timings") or {}), **(row.get("timings") or {})}
    factories = [c for c in data.get("clients") or [] if "train_seconds" in c]
    if factories:  # a resumed run's clients_seconds is only its republishing: the factories' own training is here
        timings["factory_train_seconds_max"] = max(c["train_seconds"] for c in factories)
        timings["factory_images_per_second_min"] = min(c["train_images_per_second"] for c in factories)
    # bytes exchanged, never the synthesis counters (a reaggregate.py JSON carries its run's communication)
    record = {"stage": "final", "seed": args.seed, "test": test, "timings": timings, "bytes": row.get("communication"),
              "synthesis": row.get("synthesis_stats") or row.get("synthesis"),
              "source": str(args.results), "source_command": data.get("command"),
              "source_machine": data.get("machine"), "selection": selection, "note": args.note,
              # a sweep's chosen setting (say, another images-per-class count) is not the run's: its name is the record
              "run_settings": None if args.sweep else {k: (data.get("config") or {}).get(k) for k in RUN_SETTINGS}}
    path = stage_path(Path(args.out), args.dataset, args.partition, args.method, f"seed{args.seed}")
    if path.exists():  # a new choice (say, a sweep over more candidates) replaces the number; the old one stays readable
        previous = json.loads(path.read_text())
        label = (previous.get("selection") or {}).get("chosen") or previous.get("finished_utc", "earlier").replace(":", "")
        print(f"{path} replaced; the previous record is {set_aside(path, label)}", flush=True)
    save_stage(path, record)


# ------------------------------------------------------------------------------------------------------
# table


def fmt(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{100 * values[0]:.2f} (1 seed)"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f} ({len(values)} seeds)"


def finished_rows(out: Path) -> dict[tuple[str, str], dict[str, list[dict]]]:
    """(dataset, partition) -> method -> the final records of its seeds.

    Centralized trains on the union of the clients' rows, and every partition scheme hands out every training
    row, so its number does not depend on the partition: a row without its own centralized records shows the
    dataset's (silos first), each copy marked with ``shared_from`` (the partition it was measured on)."""
    rows: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for path in sorted(out.glob("*/*/*/seed*.json")):
        dataset, partition, method = path.parts[-4:-1]
        rows.setdefault((dataset, partition), {}).setdefault(method, []).append(json.loads(path.read_text()))
    for (dataset, partition), methods in rows.items():
        if "centralized" in methods:
            continue
        measured = sorted((p != "silos", p) for (d, p), m in rows.items() if d == dataset and "centralized" in m
                          and not any(r.get("shared_from") for r in m["centralized"]))
        if measured:
            source = measured[0][1]
            methods["centralized"] = [{**r, "shared_from": source} for r in rows[(dataset, source)]["centralized"]]
    return rows


def plot_table(out: Path) -> Path | None:
    """TABLE.png: one group of bars per (dataset, partition), one bar per method: the mean test value of the
    row's first headline metric over seeds, the sample std as an error bar, the seed count under the bar."""
    from federated_factory.plots import new_figure, save_figure

    rows = finished_rows(out)
    if not rows:
        return None
    groups = sorted(rows)
    methods = [m for m in COLUMNS if any(m in rows[g] for g in groups)]
    width = 0.84 / len(methods)
    fig = new_figure((max(7.0, 2.0 + 0.45 * len(methods) * len(groups)), 4.6))
    ax = fig.add_subplot()
    for k, method in enumerate(methods):
        for i, group in enumerate(groups):
            metric = metrics_of(group[0])[0]
            values = [r["test"].get(metric) for r in rows[group].get(method, []) if r["test"].get(metric) is not None]
            if not values:
                continue
            x = i + (k - (len(methods) - 1) / 2) * width
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.bar(x, statistics.mean(values), width, yerr=std, capsize=2, color=f"C{list(COLUMNS).index(method)}",
                   label=COLUMNS[method] if i == groups.index(next(g for g in groups if method in rows[g])) else None)
            ax.text(x, statistics.mean(values) + std + 0.01, f"{100 * statistics.mean(values):.1f}\n({len(values)})",
                    ha="center", va="bottom", fontsize=6)
    ax.set_ylim(0, 1.15)
    headline = {d: METRIC_NAMES[metrics_of(d)[0]] for d, _ in groups}
    ax.set_xticks(range(len(groups)), [f"{d}\n{p}\n({headline[d]})" for d, p in groups])
    ax.set_ylabel("test headline metric (mean over seeds)")
    ax.set_title("Evidence table (issue 14): each row's headline metric on test, mean over seeds "
                 "(seed count in brackets)", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.24), ncol=4, frameon=False)
    return save_figure(fig, out / "TABLE.png")


def headline_and_others(dataset: str) -> tuple[str, tuple[str, ...]]:
    metrics = metrics_of(dataset)
    return metrics[0], tuple(metrics[1:])


def comparison(methods: dict[str, list[dict]], metric: str, also: tuple[str, ...] = ()) -> str:
    """One sentence per row: does a FedAvg-family method beat FederatedFactory's best mode (said plainly when it
    does), and the server mode's ratio to centralized, on ``metric`` and then on each of ``also`` (a ratio on one
    metric alone can flatter: derma's unweighted centralized classifier is weak on balanced accuracy and strong
    on AUROC). Empty when the row has no FederatedFactory number."""
    def mean(method, on=metric):
        values = [r["test"].get(on) for r in methods.get(method, []) if r["test"].get(on) is not None]
        return (statistics.mean(values), len(values)) if values else None

    ff = {m: mean(m) for m in ("ff-server", "ff-network") if mean(m)}
    if not ff:
        return ""
    best_ff = max(ff, key=lambda m: ff[m][0])
    fl = {m: mean(m) for m in ("fedavg", "fedprox", "scaffold") if mean(m)}
    parts = []
    if fl:
        best_fl = max(fl, key=lambda m: fl[m][0])
        gap = 100 * (fl[best_fl][0] - ff[best_ff][0])
        verdict = (f"**{COLUMNS[best_fl]} beats FederatedFactory** by {gap:.2f} points of {METRIC_NAMES[metric]}"
                   if gap > 0
                   else f"no FedAvg-family method beats FederatedFactory (the best, {COLUMNS[best_fl]}, is "
                        f"{-gap:.2f} points below, on {METRIC_NAMES[metric]})")
        parts.append(f"{verdict}: {COLUMNS[best_fl]} {100 * fl[best_fl][0]:.2f} vs {COLUMNS[best_ff]} "
                     f"{100 * ff[best_ff][0]:.2f}")
    central = mean("centralized")
    if central and "ff-server" in ff:
        ratio, seeds = ff["ff-server"][0] / central[0], ff["ff-server"][1]
        parts.append(f"server mode {ratio:.3f} × centralized ({'meets' if ratio >= 0.95 else 'below'} 0.95; "
                     f"{seeds} server seed{'s' if seeds != 1 else ''})")
        for other in also:
            server, reference = mean("ff-server", other), mean("centralized", other)
            if server and reference:
                ratio = server[0] / reference[0]
                parts.append(f"on {METRIC_NAMES[other]} {ratio:.3f} × ({'meets' if ratio >= 0.95 else 'below'} 0.95)")
    factory_seconds = [r["timings"]["factory_train_seconds_max"] for r in methods.get("ff-server", [])
                       if "factory_train_seconds_max" in (r.get("timings") or {})]
    if factory_seconds:  # the target's budget: one CPU-hour of factory training per client
        parts.append(f"the longest factory training {max(factory_seconds) / 60:.0f} min on one core "
                     f"(budget 60; {len(factory_seconds)} seed{'s' if len(factory_seconds) != 1 else ''} recorded)")
    return "; ".join(parts) + "."


def render_table(out: Path) -> str:
    rows = finished_rows(out)
    lines = ["# Evidence table (issue 14)", "",
             "Rendered by `python benchmarks/evidence.py table` from the stage files in this folder. Cells: test "
             "metric in %, mean ± sample std over seeds (the number of seeds in brackets). Every setting was "
             "chosen on the validation split; test was read once per cell entry. derma-28 cells: balanced "
             "accuracy / macro-AUROC / accuracy (nevi are 67% of its test split: calling every lesion a nevus "
             "scores 66.9% accuracy and 14.3% balanced accuracy). Empty cells: not run yet.", "",
             "| dataset | partition | " + " | ".join(COLUMNS.values()) + " | paper (reference) |",
             "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for (dataset, partition), methods in sorted(rows.items()):
        metrics = metrics_of(dataset)
        cells = []
        for method in COLUMNS:
            records = methods.get(method, [])
            shared = f" [the {records[0]['shared_from']} row's: the same pooled rows]" \
                if records and records[0].get("shared_from") else ""
            cells.append(" / ".join(fmt([r["test"].get(m) for r in records]) for m in metrics) + shared
                         if records else "")
        lines.append(f"| {dataset} | {partition} | " + " | ".join(cells) + f" | {PAPER.get((dataset, partition), '')} |")
    lines += ["", "## FederatedFactory against the FedAvg family and centralized", "",
              "Means over the seeds run, on each row's headline metric (its first: balanced accuracy for derma-28, "
              "accuracy elsewhere); the issue's target is server mode ≥ 0.95 × "
              "centralized (mean of 3 seeds).", ""]
    lines += [f"- {dataset} / {partition}: {sentence}" for (dataset, partition), methods in sorted(rows.items())
              if (sentence := comparison(methods, *headline_and_others(dataset)))]
    lines += ["", "## Per-row details", ""]
    for (dataset, partition), methods in sorted(rows.items()):
        for method, records in sorted(methods.items()):
            for r in sorted(records, key=lambda r: r["seed"]):
                if r.get("shared_from"):  # listed under the row it was measured on
                    continue
                timing = ", ".join(f"{k} {v:.0f}{'' if k.endswith('per_second_min') else ' s'}"
                                   for k, v in (r.get("timings") or {}).items() if isinstance(v, (int, float)))
                lines.append(f"- {dataset} / {partition} / {method} / seed {r['seed']}: test "
                             + ", ".join(f"{METRIC_NAMES[m]} {100 * r['test'][m]:.2f}%"
                                         for m in metrics_of(dataset)
                                         if r["test"].get(m) is not None)
                             + (f", chosen `{r['chosen']}` by validation {r.get('metric')}" if r.get("chosen") else "")
                             + f"; bytes {json.dumps(r.get('bytes'), default=str)}; {timing}; machine "
                             + _machine_line(r))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) rows")
    run.add_argument("--data-root", default=str(DATA_ROOT))
    run.add_argument("--datasets", nargs="+", default=["blood-cells-32"])
    run.add_argument("--partitions", nargs="+", default=["silos"])
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    run.add_argument("--methods", nargs="+", default=["fedcvae"], choices=[m for m in METHODS if not m.startswith("ff")])
    run.add_argument("--partition-seed", type=int, default=0)
    run.add_argument("--work", default=str(DEFAULT_WORK), help="where candidates' classifiers are kept (not committed)")
    run.add_argument("--select-seed", type=int, default=0, help="the seed at which candidates are scored")
    run.add_argument("--metric", default="accuracy", choices=("accuracy", "balanced_accuracy", "auroc", "macro_f1"))
    run.add_argument("--classifier-epochs", type=int, default=30)
    run.add_argument("--samples-per-class", type=int, default=500)
    run.add_argument("--cvae-grid", nargs="+", default=list(CVAE_GRID),
                     help=f"FedCVAE-Ens candidates: {', '.join(CVAE_GRID)}, each optionally followed by "
                          "-n<images per class>, -e<classifier epochs> and -lr<classifier learning rate> (default "
                          "--samples-per-class, --classifier-epochs, ClassifierConfig's rate), e.g. z32-b1-n1000-e15-lr0.001")
    run.add_argument("--select-only", action="store_true",
                     help="score the candidates given and stop (to spread a grid over processes; no test read)")
    run.add_argument("--cvae-steps", type=int, default=1200, help="CVAE steps per client (× batch = images seen)")
    run.add_argument("--cvae-batch-size", type=int, default=64)
    run.add_argument("--fl-rounds", type=int, default=30)
    run.add_argument("--fl-local-epochs", type=int, default=1)
    run.add_argument("--fl-lrs", nargs="+", type=float, default=[1e-3, 3e-3, 1e-2])
    run.add_argument("--scaffold-lrs", nargs="+", type=float, default=[0.01, 0.05, 0.1])
    run.add_argument("--centralized-weighting", nargs="+", default=["none", "balanced"], choices=("none", "balanced"),
                     help="centralized's candidates: plain or class-balanced cross-entropy, chosen on validation")
    run.add_argument("--centralized-selection", nargs="+", default=["accuracy", "balanced_accuracy"],
                     choices=("accuracy", "balanced_accuracy"),
                     help="centralized's candidates: the score on its held-out slice of the training rows that picks "
                          "the epoch (the slice is as imbalanced as the data), chosen on validation")
    run.add_argument("--centralized-lrs", nargs="+", type=float, default=None,
                     help="centralized's candidates: learning rates (default: ClassifierConfig's, 3e-3, alone), "
                          "e.g. the FedAvg family's grid 3e-3 1e-3 1e-2, chosen on validation")
    run.add_argument("--fedprox-mu", type=float, default=0.01)
    imp = sub.add_parser("import", help="record a FederatedFactory row from a finished run's results JSON")
    imp.add_argument("--dataset", required=True)
    imp.add_argument("--partition", required=True)
    imp.add_argument("--seed", type=int, required=True)
    imp.add_argument("--method", required=True, choices=("ff-server", "ff-network"))
    imp.add_argument("--results", required=True)
    imp.add_argument("--sweep", help="ff-server: take the test metrics of the classifier setting that "
                     "classifier_sweep.py chose on validation for this run's synthetic set (its final_test)")
    imp.add_argument("--reuse-choice", type=int, metavar="SEED",
                     help="the run used the setting chosen on validation at seed SEED (its seed<SEED>.json, same "
                          "method): recorded as the selection, with the run's settings beside it")
    imp.add_argument("--note", default="")
    sub.add_parser("table", help="render TABLE.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.command == "run":
        if args.fl_rounds * args.fl_local_epochs < args.classifier_epochs:
            raise SystemExit("fair budget: --fl-rounds × --fl-local-epochs must be >= --classifier-epochs")
        for dataset in args.datasets:
            for partition in args.partitions:
                data = Data(Path(args.data_root), dataset, partition, args.partition_seed)
                for method in args.methods:
                    run_method(args, data, partition, method, args.seeds)
    elif args.command == "import":
        import_ff(args)
    from federated_factory.atomic import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "TABLE.md", render_table(out))
    plot_table(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
