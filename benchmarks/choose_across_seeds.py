#!/usr/bin/env python
"""Choose one classifier setting for a table row from its validation scores at every seed.

A row's settings are one choice for all its seeds, made on the validation split. This script gathers each
candidate's real-validation accuracy (or, with `--metric balanced_accuracy`, mean per-class recall) per seed from the files that measured it, and keeps the candidate with the
best mean (ties to the earlier candidate on the command line). Two sources are read:

* `selection_signal.py` JSON (`--signal SEED=FILE`): one training run per seed, scored on real validation after
  every epoch; the epoch each data-free rule keeps gives the candidates `rule:synthetic_accuracy_ties_later`
  (the aggregator's rule, `selection_metric=accuracy`) and `rule:synthetic_loss` (`selection_metric=loss`);
  `rule:last_epoch` is reported beside them;
* `classifier_sweep.py` JSON (`--sweep SEED=FILE`): a candidate per setting it trained or was given.

The test split is not read: this only chooses. Reading test once per seed for the chosen setting is
`classifier_sweep.py ... --final-test` with that setting alone.

    python benchmarks/choose_across_seeds.py --candidates rule:synthetic_accuracy_ties_later rule:synthetic_loss \\
        ema0.99 --signal 0=.../seed0-epochs.json --sweep 0=.../seed0-ema-validation.json ... --out choice.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pairs(items: list[str], flag: str) -> dict[int, Path]:
    out = {}
    for item in items:
        seed, sep, path = item.partition("=")
        if not sep or not seed.isdigit() or not Path(path).is_file():
            raise SystemExit(f"{flag} {item!r}: expected SEED=FILE naming an existing file")
        out[int(seed)] = Path(path)
    return out


def scores_per_seed(signals: dict[int, Path], sweeps: dict[int, Path], metric: str = "accuracy"
                    ) -> dict[str, dict[int, float]]:
    """candidate -> seed -> real validation ``metric`` ("accuracy" or "balanced_accuracy")."""
    table: dict[str, dict[int, float]] = {}
    for seed, path in signals.items():
        record = json.loads(path.read_text())
        if record.get("test_split_read") is not False:
            raise SystemExit(f"{path}: not a selection_signal.py record that left test unread")
        for rule, row in record["rules"].items():
            if f"real_validation_{metric}" not in row:  # (older records: a candidate without it is refused below)
                continue
            table.setdefault(f"rule:{rule}", {})[seed] = row[f"real_validation_{metric}"]
    for seed, path in sweeps.items():
        record = json.loads(path.read_text())
        if record.get("selection_split") != "validation":
            raise SystemExit(f"{path}: not a classifier_sweep.py record scored on validation")
        for row in record["results"]:
            table.setdefault(row["name"], {})[seed] = row["validation"][metric]
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", nargs="+", required=True, help="the names competing, in tie-break order")
    parser.add_argument("--signal", nargs="*", default=[], metavar="SEED=FILE")
    parser.add_argument("--sweep", nargs="*", default=[], metavar="SEED=FILE")
    parser.add_argument("--metric", choices=("accuracy", "balanced_accuracy"), default="accuracy",
                        help="the real validation score that chooses (the row's headline metric)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from federated_factory.atomic import atomic_write_json

    table = scores_per_seed(pairs(args.signal, "--signal"), pairs(args.sweep, "--sweep"), args.metric)
    seeds = sorted({seed for scores in table.values() for seed in scores})
    missing = {name: [s for s in seeds if s not in table.get(name, {})] for name in args.candidates}
    missing = {name: where for name, where in missing.items() if where}
    if missing:
        raise SystemExit(f"candidates without a validation score at every seed {seeds}: {missing}")
    means = {name: statistics.mean(table[name][s] for s in seeds) for name in args.candidates}
    chosen = max(args.candidates, key=lambda name: (means[name], -args.candidates.index(name)))
    record = {"command": "python benchmarks/choose_across_seeds.py " + " ".join(sys.argv[1:]),
              "selection_split": "validation", "metric": args.metric, "test_split_read": False, "seeds": seeds,
              "candidates": {name: {"per_seed": {str(s): table[name][s] for s in seeds}, "mean": means[name]}
                             for name in args.candidates},
              "reported_beside": {name: {"per_seed": {str(s): v for s, v in scores.items()},
                                         "mean": statistics.mean(scores.values())}
                                  for name, scores in table.items() if name not in args.candidates},
              "chosen": chosen}
    atomic_write_json(args.out, record)
    for name in args.candidates:
        per_seed = "  ".join(f"{100 * table[name][s]:.2f}" for s in seeds)
        print(f"{name:40s} {per_seed}   mean {100 * means[name]:.2f}{'   <- chosen' if name == chosen else ''}")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
