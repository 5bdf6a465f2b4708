"""The one copy of each shared mechanism: LR schedule, flip/shift augmentation, and global state that is
only changed inside context managers (threads, seeds, denormals, environment, library progress bars)."""

from __future__ import annotations

import math
import os

import torch

from federated_factory.augment import random_flips, random_shifts
from federated_factory.runtime import cpu_threads, environment, flush_denormals, library_progress_bars, seeded
from federated_factory.schedules import warmup_cosine


def test_warmup_cosine_starts_at_one_warmup_step_and_decays_to_zero():
    f = warmup_cosine(4, 14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and math.isclose(f(9), 0.5) and f(14) == 0.0 and f(100) == 0.0
    plain = warmup_cosine(0, 10)  # no warm-up: the baselines' per-round cosine
    assert plain(0) == 1.0 and math.isclose(plain(5), 0.5)


def test_flips_and_shifts_follow_the_generator_and_keep_pixels():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    a = random_flips(x, torch.Generator().manual_seed(3), horizontal=True, vertical=True)
    b = random_flips(x, torch.Generator().manual_seed(3), horizontal=True, vertical=True)
    assert torch.equal(a, b)
    for img, out in zip(x, a):  # each image is itself, or flipped along the last two axes
        candidates = [img, img.flip(-1), img.flip(-2), img.flip(-1).flip(-2)]
        assert any(torch.equal(out, c) for c in candidates)
    assert torch.equal(random_flips(x, torch.Generator(), horizontal=False, vertical=False), x)
    shifted = random_shifts(x, 1, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape and set(shifted.unique().tolist()) <= set(x.unique().tolist())
    assert random_shifts(x, 0, torch.Generator()) is x


def test_context_managers_restore_global_state():
    from huggingface_hub import utils as hub_utils

    threads = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads

    state = torch.get_rng_state()
    with seeded(123):
        first = torch.rand(1)
    with seeded(123):
        assert torch.equal(torch.rand(1), first)
    assert torch.equal(torch.get_rng_state(), state)

    os.environ.pop("FF_TEST_VAR", None)
    with environment({"FF_TEST_VAR": "1", "HOME": None}):
        assert os.environ["FF_TEST_VAR"] == "1" and "HOME" not in os.environ
    assert "FF_TEST_VAR" not in os.environ and "HOME" in os.environ

    with flush_denormals():
        assert torch.tensor([1e-40]).mul(1.0).item() in (0.0, 1e-40)  # flushed where the CPU supports it
    assert torch.tensor([1e-40]).mul(1.0).item() != 0.0

    import datasets

    datasets.enable_progress_bars()
    hub_before = hub_utils.are_progress_bars_disabled()  # HF_HUB_DISABLE_PROGRESS_BARS may pin this one
    with library_progress_bars(False):
        assert not datasets.is_progress_bar_enabled() and hub_utils.are_progress_bars_disabled()
    assert datasets.is_progress_bar_enabled() and hub_utils.are_progress_bars_disabled() is hub_before


def test_the_network_expert_table_names_the_split_it_was_evaluated_on():
    """A run scored on validation (`--evaluation-split validation`) must not call its expert numbers test numbers."""
    from federated_factory.report import _expert_table

    network = {"federation_model": "agg/federation-model@1", "accuracy": 0.9, "macro_f1": 0.8,
               "experts": [{"hospital": "hospital-00", "own_classes": ["a"], "own_validation_accuracy": 0.95,
                            "test_accuracy": 0.7, "test_macro_f1": 0.6}]}
    text = "\n".join(_expert_table(network, "validation"))
    assert "| validation accuracy | validation macro-F1 |" in text and "test" not in text
    assert "| test accuracy |" in "\n".join(_expert_table(network))
