"""Behaviour of the aggregator's classifier: training, determinism, selection, metrics, save/load."""

from __future__ import annotations

import json
import socket

import datasets
import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from federated_factory import classifier as clf
from federated_factory.classifier import (
    ClassifierConfig,
    build_classifier,
    evaluate_classifier,
    load_classifier,
    predict_logits,
    save_classifier,
    train_classifier,
)
from federated_factory.errors import ClassifierError
from federated_factory.metrics import load_metric

SIZE = 12




def pattern_image(c: int, rng: np.random.Generator, size: int = SIZE, rgb: bool = False) -> Image.Image:
    """Noise plus a bright class-dependent shape: 0 = left bar, 1 = top bar, 2 = centre square, 3 = diagonal."""
    a = rng.uniform(0, 60, (size, size))
    t = size // 3
    if c == 0:
        a[:, :t] += 180
    elif c == 1:
        a[:t, :] += 180
    elif c == 2:
        a[t : 2 * t, t : 2 * t] += 180
    else:
        idx = np.arange(size)
        a[idx, idx] += 180
        a[idx[1:], idx[:-1]] += 180
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
    return img.convert("RGB") if rgb else img


def pattern_dataset(n_per_class: int, classes=(0, 1, 2), seed: int = 0, names=None, rgb: bool = False):
    names = names or [f"c{i}" for i in range(max(classes) + 1)]
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in classes:
        for _ in range(n_per_class):
            images.append(pattern_image(c, rng, rgb=rgb))
            labels.append(c)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


FAST = dict(epochs=6, batch_size=8, lr=3e-3)


@pytest.fixture(scope="module")
def trained():
    train = pattern_dataset(40, seed=0)
    result = train_classifier(train, ClassifierConfig(**FAST, seed=0), progress=False)
    return result


def test_training_learns_separable_patterns(trained):
    test = pattern_dataset(20, seed=1)
    metrics = evaluate_classifier(trained.model, test, trained.label_names)
    assert metrics["accuracy"] >= 0.9  # chance is 1/3
    assert metrics["n"] == 60
    assert trained.num_val == 12 and trained.num_train == 108  # 10% of each class held out
    assert len(trained.history) == FAST["epochs"]
    assert trained.wall_time_s > 0 and trained.images_per_s > 0


def test_same_seed_gives_bit_identical_weights_other_seed_differs(trained):
    train = pattern_dataset(40, seed=0)
    again = train_classifier(train, ClassifierConfig(**FAST, seed=0), progress=False)
    other = train_classifier(train, ClassifierConfig(**FAST, seed=1), progress=False)
    a, b, c = (r.model.state_dict() for r in (trained, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    assert trained.history == [dict(h, seconds=h0["seconds"]) for h, h0 in zip(again.history, trained.history)]


def test_training_does_not_disturb_callers_global_rng(trained):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    config = ClassifierConfig(epochs=1, batch_size=8, val_fraction=0.0)
    train_classifier(pattern_dataset(8, seed=0), config, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_model_selection_uses_the_validation_split():
    train = pattern_dataset(40, seed=0)
    # a validation set whose labels are rotated: the better the model learns, the worse it scores here,
    # so the selected epoch must be an early one, and the returned weights must be that epoch's
    val = pattern_dataset(10, seed=2)
    val = val.map(lambda ex: {"label": (ex["label"] + 1) % 3})
    result = train_classifier(train, ClassifierConfig(**FAST, seed=0), val_ds=val, progress=False)
    accs = [h["val_accuracy"] for h in result.history]
    best = max(accs)
    assert result.best_epoch == max(i + 1 for i, a in enumerate(accs) if a == best)  # ties → later epoch
    assert result.best_val_accuracy == best
    x, y = clf.dataset_to_tensors(val, 1)
    assert clf.accuracy_on(result.model, x, y) == pytest.approx(best)
    assert result.num_val == len(val) and result.num_train == len(train)  # val_ds given: nothing held out


def test_selection_by_loss_keeps_the_epoch_with_the_lowest_held_out_cross_entropy():
    train = pattern_dataset(40, seed=0)
    val = pattern_dataset(10, seed=2).map(lambda ex: {"label": (ex["label"] + 1) % 3})  # rotated labels, as above
    result = train_classifier(train, ClassifierConfig(**FAST, seed=0, selection_metric="loss"), val_ds=val,
                              progress=False)
    losses = [h["val_loss"] for h in result.history]
    lowest = min(losses)
    assert result.best_epoch == max(i + 1 for i, v in enumerate(losses) if v == lowest)  # ties → later epoch
    x, y = clf.dataset_to_tensors(val, 1)
    assert clf.held_out_scores(result.model, x, y)["loss"] == pytest.approx(lowest)  # that epoch's weights
    by_accuracy = train_classifier(train, ClassifierConfig(**FAST, seed=0), val_ds=val, progress=False)
    assert [h["val_loss"] for h in by_accuracy.history] == losses  # the rule chooses; it does not change training
    record = result.summary()["selection"]
    assert record["rule"] == "lowest held-out cross-entropy, ties to the later epoch"
    assert f"{lowest:.4f}" in record["note"] and "lowest" in record["note"]


def test_a_watched_set_is_scored_every_epoch_and_never_chooses(trained):
    train = pattern_dataset(40, seed=0)
    watched = pattern_dataset(10, seed=2).map(lambda ex: {"label": (ex["label"] + 1) % 3})  # scores badly
    result = train_classifier(train, ClassifierConfig(**FAST, seed=0), watch={"real": watched}, progress=False)
    # the same selection and the same weights as without the watched set (same process, same kernels)
    assert result.best_epoch == trained.best_epoch
    for name, value in trained.model.state_dict().items():
        assert torch.equal(result.model.state_dict()[name], value), name
    assert len(result.history) == FAST["epochs"]
    for h in result.history:
        assert set(h["watched"]) == {"real"} and 0.0 <= h["watched"]["real"]["accuracy"] <= 1.0
        assert h["watched"]["real"]["loss"] > 0 and h["val_loss"] > 0  # cross-entropy of the synthetic slice too
    x, y = clf.dataset_to_tensors(watched, 1)
    kept = result.history[result.best_epoch - 1]["watched"]["real"]
    assert clf.held_out_scores(result.model, x, y) == pytest.approx(kept)  # recorded for the kept weights
    assert kept["loss"] == pytest.approx(nn.functional.cross_entropy(predict_logits(result.model, x), y).item())
    with pytest.raises(ClassifierError, match="watch set 'other'"):
        train_classifier(train, ClassifierConfig(**FAST), watch={"other": pattern_dataset(2, names=list("xyz"))},
                         progress=False)


def test_the_selection_record_says_when_the_held_out_slice_did_not_choose():
    def history(accs):
        return [{"epoch": i + 1, "val_accuracy": a} for i, a in enumerate(accs)]

    saturated = clf.describe_selection(history([0.8, 1.0, 0.9, 1.0]), best_epoch=4, num_val=40)
    assert saturated["kept_epoch"] == 4 and saturated["reached_at_epoch"] == 2
    assert "did not choose" in saturated["note"] and "epoch 2" in saturated["note"]
    earlier = clf.describe_selection(history([0.8, 1.0, 0.9]), best_epoch=2, num_val=40)
    assert earlier["kept_epoch"] == 2 and "Epoch 2 of 3 is kept" in earlier["note"]
    at_last = clf.describe_selection(history([0.8, 0.9, 0.95]), best_epoch=3, num_val=40)
    assert at_last["reached_at_epoch"] == 3 and "did not choose" not in at_last["note"]
    none = clf.describe_selection([{"epoch": 1, "val_accuracy": None}], best_epoch=1, num_val=0)
    assert none["rule"] == "last epoch" and none["held_out_rows"] == 0


def test_stratified_split_holds_out_each_class_deterministically():
    labels = torch.tensor([0] * 50 + [1] * 20 + [2] * 3)
    tr, va = clf.stratified_split(labels, 0.1, seed=0)
    tr2, va2 = clf.stratified_split(labels, 0.1, seed=0)
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    assert set(tr.tolist()).isdisjoint(va.tolist()) and len(tr) + len(va) == len(labels)
    assert torch.bincount(labels[va]).tolist() == [5, 2, 1]


class LookupModel(nn.Module):
    """Returns a fixed logit row per image: the row index is stored as the image's top-left pixel value."""

    def __init__(self, logits: np.ndarray):
        super().__init__()
        self.table = nn.Parameter(torch.tensor(logits, dtype=torch.float32), requires_grad=False)
        self.in_chans = 1

    def forward(self, x):
        return self.table[(x[:, 0, 0, 0] * 255).round().long()]


def lookup_dataset(labels, names):
    images = [Image.fromarray(np.full((4, 4), i, dtype=np.uint8), "L") for i in range(len(labels))]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": images, "label": list(labels)}, features=features)


def test_evaluation_metrics_match_sklearn_on_hand_made_case(tmp_path):
    rng = np.random.default_rng(0)
    y_true = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 0, 1])
    logits = rng.normal(size=(len(y_true), 3))
    logits[np.arange(len(y_true)), y_true] += 1.0  # better than chance, not perfect
    names = ["a", "b", "c"]
    metrics = evaluate_classifier(LookupModel(logits), lookup_dataset(y_true, names), names)
    probs = torch.tensor(logits).softmax(1).numpy()
    y_pred = logits.argmax(1)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert metrics["auroc"] == pytest.approx(roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))
    assert metrics["confusion_matrix"] == confusion_matrix(y_true, y_pred).tolist()
    cm = confusion_matrix(y_true, y_pred)
    assert metrics["per_class_recall"] == pytest.approx({n: cm[i, i] / cm[i].sum() for i, n in enumerate(names)})
    assert metrics["n"] == len(y_true) and metrics["unknown_classes"] == []
    assert clf.plot_confusion_matrix(metrics["confusion_matrix"], names, tmp_path / "cm.png").stat().st_size > 0
    history = [{"epoch": 1, "loss": 1.0, "val_accuracy": 0.5}, {"epoch": 2, "loss": 0.5, "val_accuracy": 0.7}]
    assert clf.plot_history(history, tmp_path / "h.png").stat().st_size > 0


def test_model_with_fewer_classes_evaluates_on_a_test_set_with_more():
    # the model unlearned "b" and orders its two classes differently from the test set
    y_true = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    model_names = ["c", "a"]
    logits = np.array([[0.1, 2.0], [1.0, 0.0], [2.0, 0.5], [0.0, 1.0], [3.0, 0.0], [0.2, 0.1], [-1.0, 1.0], [0.0, 0.3]])
    metrics = evaluate_classifier(LookupModel(logits), lookup_dataset(y_true, ["a", "b", "c"]), model_names)
    pred_names = np.array(model_names)[logits.argmax(1)]
    true_names = np.array(["a", "b", "c"])[y_true]
    assert metrics["accuracy"] == pytest.approx(np.mean(pred_names == true_names))  # "b" images are errors
    assert metrics["unknown_classes"] == ["b"]
    assert metrics["per_class_recall"]["b"] == 0.0
    assert metrics["per_class_recall"]["a"] == pytest.approx(2 / 3)
    probs = torch.tensor(logits).softmax(1).numpy()
    expected = np.mean([roc_auc_score(true_names == n, probs[:, k]) for k, n in enumerate(model_names)])
    assert metrics["auroc"] == pytest.approx(expected)
    assert set(metrics["per_class_auroc"]) == {"a", "c"}
    expected_f1 = f1_score(true_names, pred_names, labels=["a", "b", "c"], average="macro")
    assert metrics["macro_f1"] == pytest.approx(expected_f1)
    assert np.sum(metrics["confusion_matrix"]) == len(y_true) and metrics["confusion_labels"] == ["a", "b", "c"]


def test_model_class_missing_from_test_set_gets_its_own_confusion_column(tmp_path):
    y_true = np.array([0, 0, 1, 1])
    logits = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0], [0, 1.0, 0]])
    metrics = evaluate_classifier(LookupModel(logits), lookup_dataset(y_true, ["a", "b"]), ["a", "b", "extra"])
    assert metrics["confusion_labels"] == ["a", "b", "extra"]
    assert metrics["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    assert metrics["accuracy"] == 0.75 and set(metrics["per_class_recall"]) == {"a", "b"}
    png = clf.plot_confusion_matrix(metrics["confusion_matrix"], metrics["confusion_labels"], tmp_path / "cm.png")
    assert png.stat().st_size > 0
    with pytest.raises(ValueError, match="does not match"):
        clf.plot_confusion_matrix(metrics["confusion_matrix"], ["a", "b"], tmp_path / "bad.png")


def test_metric_modules_load_from_the_package_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    load_metric.cache_clear()
    for name in ("accuracy", "f1", "roc_auc", "confusion_matrix"):
        module = load_metric(name)
        assert module.name == name
    y_true = [0, 1, 1, 2]
    logits = np.eye(3)[[0, 1, 2, 2]]
    metrics = evaluate_classifier(LookupModel(logits), lookup_dataset(y_true, ["a", "b", "c"]), ["a", "b", "c"])
    assert metrics["accuracy"] == 0.75


def test_save_load_round_trip_gives_identical_logits(trained, tmp_path):
    out = save_classifier(trained.model, tmp_path / "clf", label_names=trained.label_names, config=trained.config)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "ff_cnn" and cfg["label_names"] == trained.label_names
    assert cfg["pretrained_cfg"]["input_size"] == [1, SIZE, SIZE] and cfg["pretrained_cfg"]["mean"] == [0.0]
    x = torch.rand(5, 1, SIZE, SIZE)
    expected = predict_logits(trained.model, x)
    loaded = load_classifier(out)
    assert torch.equal(predict_logits(loaded.model, x), expected)
    assert loaded.label_names == trained.label_names and loaded.config == trained.config
    assert loaded.arch == "timm/ff_cnn"
    # what a Hub user does (hf-hub:<repo> reads the same config.json)
    timm_model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert torch.equal(predict_logits(timm_model, x), expected)
    assert timm_model.pretrained_cfg["label_names"] == trained.label_names


def test_published_classifier_loads_through_timm_hf_hub_prefix(trained, tmp_path, monkeypatch, hub):
    """Upload the saved folder to a private repo on the project's Hub endpoint, then
    ``timm.create_model("hf-hub:<repo>", pretrained=True)`` rebuilds the same model (real client, real HTTP)."""
    repo = save_classifier(trained.model, tmp_path / "repo", label_names=trained.label_names, config=trained.config)
    repo_id = hub.repo_id("alice", "classifier")
    api = hub.api("alice")
    api.create_repo(repo_id, private=True)
    api.upload_folder(repo_id=repo_id, folder_path=repo)
    monkeypatch.setenv("HF_TOKEN", hub.token("alice"))  # timm.create_model takes no token argument
    x = torch.rand(3, 1, SIZE, SIZE)
    model = timm.create_model(f"hf-hub:{repo_id}", pretrained=True)
    assert torch.equal(predict_logits(model, x), predict_logits(trained.model, x))
    assert model.pretrained_cfg["label_names"] == trained.label_names
    loaded = load_classifier(repo_id)
    assert torch.equal(predict_logits(loaded.model, x), predict_logits(trained.model, x))
    assert loaded.label_names == trained.label_names


def test_resnet18_small_stem_and_hf_round_trip(tmp_path):
    torch.manual_seed(0)
    resnet = build_classifier("timm/resnet18", num_classes=4, in_chans=3, image_size=16)
    assert resnet.conv1.stride == (1, 1) and resnet.conv1.kernel_size == (3, 3)
    assert isinstance(resnet.maxpool, nn.Identity)
    assert resnet.forward_features(torch.zeros(1, 3, 16, 16)).shape[-1] == 2  # 16 → 2 after three stride-2 stages
    x = torch.rand(2, 3, 16, 16)
    out = save_classifier(resnet.eval(), tmp_path / "r18", label_names=list("wxyz"), arch="timm/resnet18")
    assert torch.equal(predict_logits(load_classifier(out).model, x), predict_logits(resnet, x))

    vit = build_classifier("hf/vit-tiny", num_classes=3, in_chans=1, image_size=8)
    assert vit.hf_model.config.patch_size == 2 and vit.hf_model.config.hidden_size == 192
    out = save_classifier(vit.eval(), tmp_path / "vit", label_names=["a", "b", "c"], arch="hf/vit-tiny")
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.bin"))
    loaded = load_classifier(out)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(predict_logits(loaded.model, x), predict_logits(vit, x))
    assert loaded.label_names == ["a", "b", "c"] and loaded.arch == "hf/vit-tiny"


def test_build_classifier_rejects_unknown_or_unsuitable_archs():
    with pytest.raises(ValueError, match="no model"):
        build_classifier("timm/not_a_model", 3, 1, 16)
    with pytest.raises(ValueError, match="cannot classify"):
        build_classifier("timm/convnext_atto", 3, 1, 16)  # stride-32 model on 16 px inputs
    with pytest.raises(ValueError, match="expected"):
        build_classifier("keras/foo", 3, 1, 16)


def test_augmentation_shifts_and_flips_only_when_asked():
    x = torch.rand(6, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(clf.augment_batch(x, ClassifierConfig(augment=False), g), x)
    assert torch.equal(clf.augment_batch(x, ClassifierConfig(shift_px=0), g), x)  # no flips by default
    flipped = clf.augment_batch(x, ClassifierConfig(shift_px=0, hflip=True), torch.Generator().manual_seed(0))
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(-1)) for f, i in zip(flipped, x))
    shifted = clf.augment_batch(x, ClassifierConfig(shift_px=2), g)
    assert shifted.shape == x.shape and not torch.equal(shifted, x)
    # every shifted image is a crop of the replicate-padded original
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for s, p in zip(shifted, padded):
        assert any(torch.equal(s, p[:, dy : dy + 8, dx : dx + 8]) for dy in range(5) for dx in range(5))


def test_config_round_trips_and_rejects_unknown_fields():
    config = ClassifierConfig(arch="timm/resnet18", epochs=3, hflip=True, seed=7)
    assert ClassifierConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown field"):
        ClassifierConfig.from_dict({"epochs": 3, "momentum": 0.9})
    with pytest.raises(ValueError):
        ClassifierConfig(val_fraction=1.0)


def test_rgb_images_train_with_flips():
    train = pattern_dataset(12, seed=0, rgb=True)
    config = ClassifierConfig(epochs=1, batch_size=8, hflip=True, vflip=True)
    result = train_classifier(train, config, progress=False)
    assert result.model.in_chans == 3 and len(result.history) == 1


def test_init_from_a_saved_classifier_starts_from_its_weights(trained, tmp_path):
    """Fine-tuning: with ``init_from`` and a zero learning rate, the trained weights are exactly the loaded ones."""
    saved = save_classifier(trained.model, tmp_path / "start", label_names=trained.label_names, config=trained.config)
    train = pattern_dataset(40, seed=1)
    config = ClassifierConfig(**{**FAST, "lr": 0.0, "weight_decay": 0.0, "init_from": str(saved), "seed": 3})
    result = train_classifier(train, config, progress=False)
    start = dict(trained.model.named_parameters())
    for name, param in result.model.named_parameters():
        assert torch.equal(param, start[name]), name
    with pytest.raises(ValueError, match="init_from"):
        train_classifier(train, ClassifierConfig(**{**FAST, "arch": "timm/resnet18", "init_from": str(saved)}),
                         progress=False)


def test_every_public_name_still_imports_from_the_package():
    """The split into classifier/{models,config,training,evaluation,io}.py kept the package's import surface."""
    import federated_factory.classifier as package

    names = ["ClassifierConfig", "build_classifier", "parse_arch", "train_classifier", "train_on_tensors",
             "evaluate_classifier", "save_classifier", "load_classifier", "LoadedClassifier", "predict_logits",
             "accuracy_on", "plot_confusion_matrix", "plot_history", "initialize_from", "label_names_of",
             "image_channels_of", "stratified_split", "augment_batch", "deterministic", "cpu_threads", "TrainResult",
             "resolve_precision", "autocast_for", "DEFAULT_ARCH", "FFCNN", "SmallStemResNet", "HFImageClassifier"]
    assert set(names) <= set(package.__all__)
    assert all(getattr(package, name) is not None for name in package.__all__)
    assert timm.is_model("ff_cnn") and timm.is_model("ff_resnet18")  # registered on import


def test_classifier_errors_are_project_errors_and_value_errors():
    from federated_factory.errors import ClassifierError, FederatedFactoryError

    for bad in (lambda: ClassifierConfig(epochs=0), lambda: clf.parse_arch("keras/x"),
                lambda: build_classifier("timm/not_a_model_at_all", 3, 1, SIZE)):
        with pytest.raises(ClassifierError) as info:
            bad()
        assert isinstance(info.value, FederatedFactoryError) and isinstance(info.value, ValueError)


def test_balanced_class_weighting_weighs_each_class_as_if_the_rows_were_balanced():
    from federated_factory.classifier.training import balanced_class_weights

    y = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)  # 10 rows, 3 classes present, a 4th absent
    weights = balanced_class_weights(y, 4)
    assert weights.tolist() == pytest.approx([10 / (4 * 6), 10 / (4 * 3), 10 / (4 * 1), 0.0])
    assert (weights[y].sum() / len(y)).item() == pytest.approx(3 / 4)  # each present class carries 10/4 in all
    with pytest.raises(ClassifierError, match="class_weighting must be 'none' or 'balanced', got 'inverse'"):
        ClassifierConfig(class_weighting="inverse")


def test_balanced_class_weighting_changes_what_an_imbalanced_set_trains():
    # 20 rows of c0 and c2, 2 of c1: the weighted loss gives c1 ten times c0's weight, so the weights differ
    kept = datasets.concatenate_datasets([pattern_dataset(20, classes=(0, 2), names=["c0", "c1", "c2"]),
                                          pattern_dataset(2, classes=(1,), seed=1, names=["c0", "c1", "c2"])])
    config = dict(epochs=1, batch_size=8, val_fraction=0, seed=0)
    plain = train_classifier(kept, ClassifierConfig(**config), progress=False)
    weighted = train_classifier(kept, ClassifierConfig(**config, class_weighting="balanced"), progress=False)
    again = train_classifier(kept, ClassifierConfig(**config, class_weighting="balanced"), progress=False)
    pairs = list(zip(plain.model.state_dict().values(), weighted.model.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in pairs)
    assert all(torch.equal(a, b) for a, b in zip(weighted.model.state_dict().values(),
                                                 again.model.state_dict().values()))  # still deterministic


def test_held_out_balanced_accuracy_is_the_mean_recall_of_the_classes_present(trained):
    from sklearn.metrics import balanced_accuracy_score

    # 30 / 5 / 1 rows of the three classes, labels of the last two rotated so that recall differs by class
    val = datasets.concatenate_datasets([pattern_dataset(30, classes=(0,), seed=3, names=["c0", "c1", "c2"]),
                                         pattern_dataset(5, classes=(1,), seed=4, names=["c0", "c1", "c2"]),
                                         pattern_dataset(1, classes=(2,), seed=5, names=["c0", "c1", "c2"])])
    x, y = clf.dataset_to_tensors(val, 1)
    y = torch.where(y == 2, 0, y)  # class 2 absent from y: balanced accuracy averages over c0 and c1 only
    predicted = predict_logits(trained.model, x).argmax(1)
    scores = clf.held_out_scores(trained.model, x, y)
    assert scores["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y.numpy(), predicted.numpy()))
    assert scores["accuracy"] == pytest.approx((predicted == y).float().mean().item())


def test_the_epoch_can_be_chosen_on_held_out_balanced_accuracy():
    # an imbalanced training set (40 / 40 / 4): the stratified held-out slice is imbalanced too
    train = datasets.concatenate_datasets([pattern_dataset(40, classes=(0, 1), names=["c0", "c1", "c2"]),
                                           pattern_dataset(4, classes=(2,), seed=1, names=["c0", "c1", "c2"])])
    config = ClassifierConfig(**FAST, seed=0, val_fraction=0.25, selection_metric="balanced_accuracy")
    result = train_classifier(train, config, progress=False)
    balanced = [h["val_balanced_accuracy"] for h in result.history]
    assert result.best_epoch == max(i + 1 for i, b in enumerate(balanced) if b == max(balanced))  # ties → later
    assert result.best_val_accuracy == result.history[result.best_epoch - 1]["val_accuracy"]  # the kept epoch's
    selection = result.summary()["selection"]
    assert selection["metric"] == "balanced_accuracy" and "balanced accuracy" in selection["rule"]
    assert selection["held_out_balanced_accuracy"] == max(balanced)
    with pytest.raises(ClassifierError, match="selection_metric must be one of .*got 'auroc'"):
        ClassifierConfig(selection_metric="auroc")


def test_ema_returns_the_moving_average_of_the_weights_it_trained(monkeypatch):
    """With ema_decay the model handed back (and scored every epoch) is timm's average of the weights after each
    optimizer step: recomputed here from the raw weights, step by step, it matches; without it, the raw ones."""
    import federated_factory.classifier.training as training

    train = pattern_dataset(40, seed=0)
    config = ClassifierConfig(**FAST, seed=0, ema_decay=0.9, val_fraction=0.0)
    averages, raw = [], []
    real_ema = training.ModelEmaV3

    class Recording(real_ema):  # keeps our own running average of the weights timm sees, to compare with
        def update(self, model, step=None):
            super().update(model, step)
            current = {k: v.detach().clone() for k, v in model.state_dict().items()}
            raw.append(current)
            if not averages:
                averages.append({k: v.clone() for k, v in current.items()})  # (timm starts from the initial copy)
            averages[0] = {k: (0.9 * averages[0][k] + 0.1 * v) if v.is_floating_point() else v
                           for k, v in current.items()}

    monkeypatch.setattr(training, "ModelEmaV3", Recording)
    result = train_classifier(train, config, progress=False)
    assert result.history[-1]["val_accuracy"] is None  # no held-out slice: the last step's average is kept
    state = result.model.state_dict()
    last = raw[-1]
    assert any(not torch.equal(state[k], last[k]) for k in state if state[k].is_floating_point())  # not the raw
    # the first update blends into timm's copy of the *initial* weights; after 60+ steps at 0.9 that start weighs
    # 0.9^steps (< 1e-2), so our average, started from the first step's weights, agrees to that tolerance
    for k in state:
        if state[k].is_floating_point():
            assert torch.allclose(state[k], averages[0][k], atol=2e-2, rtol=0), k
    from federated_factory.tensors import dataset_to_tensors

    x, y = dataset_to_tensors(pattern_dataset(20, seed=3), 1)
    assert (predict_logits(result.model, x).argmax(1) == y).float().mean() >= 0.9  # the average still learned


def test_an_ema_decay_outside_zero_to_one_is_refused():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ClassifierError, match="ema_decay"):
            ClassifierConfig(ema_decay=bad)
