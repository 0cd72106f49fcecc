"""Random-access sources: TFDS, image folders, our prepared ArrayRecord copies, and CIFAR-10's binary batches.

Each is what grain wants, `len(source)` and `source[i]` -> {"image": encoded bytes, "label": int},
plus `num_classes` and `class_names`. Decoding happens later, in the pipeline's transforms, so
that it can decode JPEGs at a reduced size and skip a corrupt file instead of failing.

CIFAR-10's binary batches (`cifar10:PATH`) are decoded records already: uint8 arrays, not bytes.

Every constructor checks what it can cheaply (the path exists, the split exists, no class folder
is empty, a CIFAR-10 file holds whole records with valid labels) and raises an error naming the
path, before anything is compiled.

Class folders are listed, not walked: a subfolder, or a link to a folder (one back to a parent
included), is not part of its class and is ignored. An entry whose kind cannot be told (a
symbolic link that loops back to itself, one without permission) is an error naming it: skipping
it would silently shrink its class.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import struct
import tempfile

import numpy as np

# torchvision's ImageFolder extensions (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Split directory names, in the order we look for them (the seeds use train/ and val/).
FOLDER_SPLITS = {"train": ("train",), "validation": ("val", "validation")}


def cache_dir() -> pathlib.Path:
    """Where folder indexes are cached: $LIGHTNETS_CACHE_DIR, else ~/.cache/lightnets."""
    return pathlib.Path(os.environ.get("LIGHTNETS_CACHE_DIR") or pathlib.Path.home() / ".cache" / "lightnets")


def _split_dir(root: pathlib.Path, split: str) -> pathlib.Path:
    for name in FOLDER_SPLITS[split]:
        if (root / name).is_dir():
            return root / name
    present = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise FileNotFoundError(
        f"folder:{root} has no {split} split: expected one of {[str(root / n) for n in FOLDER_SPLITS[split]]} "
        f"(found {present or 'no subfolders'}); the layout is root/train/<class>/*.JPEG and root/val/<class>/*"
    )


def _is(entry: os.DirEntry, kind: str) -> bool:
    """Whether `entry` (links followed) is a "file" or a "dir"; a ValueError naming it if that cannot be told."""
    try:
        return entry.is_file() if kind == "file" else entry.is_dir()
    except OSError as e:  # ELOOP: a link to itself, or links that lead to each other
        hint = " (a symbolic link that loops)" if e.errno == errno.ELOOP else ""
        raise ValueError(f"cannot read {entry.path}: {e.strerror}{hint}; remove or repair it") from None


def _class_dirs(split_dir: pathlib.Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(split_dir) if _is(entry, "dir"))


def _list_class(directory: pathlib.Path) -> list[str]:
    names = [e.name for e in os.scandir(directory) if e.name.lower().endswith(IMAGE_EXTENSIONS) and _is(e, "file")]
    return sorted(names)


def folder_index(split_dir: pathlib.Path, classes: list[str]) -> dict[str, list[str]]:
    """File names per class folder, read from a cache when no class folder changed since.

    Listing 1.28 M files takes from seconds to many minutes (network file systems); adding or
    removing a file changes its folder's modification time, so one `stat` per class folder
    tells whether the cached listing still holds.
    """
    mtimes = {c: (split_dir / c).stat().st_mtime_ns for c in classes}
    key = hashlib.sha256(str(split_dir.resolve()).encode()).hexdigest()[:24]
    path = cache_dir() / "folder-index" / f"{key}.json"
    try:
        cached = json.loads(path.read_text())
        if cached["root"] == str(split_dir.resolve()) and cached["mtimes"] == mtimes:
            return cached["files"]
    except (OSError, ValueError, KeyError):
        pass
    files = {c: _list_class(split_dir / c) for c in classes}
    try:  # a read-only home only costs the next start a listing
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump({"root": str(split_dir.resolve()), "mtimes": mtimes, "files": files}, f)
        os.replace(f.name, path)
    except OSError:
        pass
    return files


class ImageFolderSource:
    """`root/train/<class>/*` and `root/val/<class>/*`; class index = sorted folder name of train/.

    That is torchvision's ImageFolder order, so converted checkpoints keep their class order.
    Both splits use train/'s classes when it exists, so a class missing from val/ cannot shift
    the labels.
    """

    def __init__(self, root: str, split: str):
        root_path = pathlib.Path(root).expanduser()
        if not root_path.is_dir():
            raise FileNotFoundError(f"folder:{root}: no such directory")
        split_dir = _split_dir(root_path, split)
        class_root = root_path / "train" if (root_path / "train").is_dir() else split_dir
        self.class_names = _class_dirs(class_root)
        if not self.class_names:
            raise FileNotFoundError(f"folder:{root}: {class_root} holds no class folders")
        present = _class_dirs(split_dir)
        unknown = sorted(set(present) - set(self.class_names))
        if unknown:
            raise ValueError(f"folder:{root}: {split_dir} has classes that {class_root} lacks: {unknown[:10]}")
        files = folder_index(split_dir, present)
        empty = [c for c in present if not files[c]]
        if empty:
            raise ValueError(
                f"folder:{root}: class folders with no images ({', '.join(IMAGE_EXTENSIONS)}): "
                f"{[str(split_dir / c) for c in empty[:10]]}"
            )
        label = {c: i for i, c in enumerate(self.class_names)}
        self.root = str(split_dir)
        self.paths = [f"{c}/{name}" for c in present for name in files[c]]
        self.labels = np.asarray([label[c] for c in present for _ in files[c]], np.int32)
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = os.path.join(self.root, self.paths[index])
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:  # removed since it was listed: skipped like a corrupt file
            data = b""
        return {"image": data, "label": self.labels[index], "name": path}


class TfdsSource:
    """A prepared TFDS image-classification data set (ArrayRecord), read through `tfds.data_source`.

    Images stay encoded (`SkipDecoding`), for the pipeline's faster decoder.
    """

    def __init__(self, name: str, split: str, data_dir: str | None = None):
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as e:  # DatasetNotFoundError, bad version, ...
            raise ValueError(f"tfds:{name}: {e}") from None
        where = builder.data_dir
        if not builder.is_prepared():
            raise FileNotFoundError(
                f"tfds:{name} is not prepared in {where} (data_dir={data_dir or 'TFDS default'}): build it as "
                "the README's 'Preparing ImageNet' says (tfds build ... --file_format array_record), or set "
                "--config.data_dir to where it is"
            )
        splits = list(builder.info.splits)
        wanted = {"train": ("train",), "validation": ("validation", "test")}[split]
        tfds_split = next((s for s in wanted if s in splits), None)
        if tfds_split is None:
            raise FileNotFoundError(f"tfds:{name} in {where} has no {split} split (it has {splits})")
        features = builder.info.features
        if "image" not in features or "label" not in features:
            raise ValueError(f"tfds:{name} is not an image classification set: features {list(features)}")
        self._source = tfds.data_source(
            name, split=tfds_split, data_dir=data_dir, download=False, decoders={"image": tfds.decode.SkipDecoding()}
        )
        self.num_classes = features["label"].num_classes
        self.class_names = list(features["label"].names)
        self.name = f"tfds:{name}/{tfds_split}"

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        record = self._source[index]
        return {"image": record["image"], "label": np.int32(record["label"]), "name": f"{self.name}[{index}]"}


# --- Prepared copies: `python -m input_pipeline.prepare` writes them, `prepared:DIR` reads them --------

INFO_FILE = "info.json"
_LABEL = struct.Struct("<i")


def encode_record(label: int, image: bytes) -> bytes:
    """One prepared example: the label (int32, little endian) followed by the encoded image."""
    return _LABEL.pack(label) + image


def decode_record(record: bytes) -> tuple[int, bytes]:
    return _LABEL.unpack_from(record)[0], record[_LABEL.size :]


class PreparedSource:
    """A data set re-encoded by `python -m input_pipeline.prepare` (ArrayRecord, shorter side capped)."""

    def __init__(self, directory: str, split: str):
        root = pathlib.Path(directory).expanduser()
        info_path = root / INFO_FILE
        if not info_path.is_file():
            raise FileNotFoundError(f"prepared:{directory}: no {info_path} (input_pipeline.prepare writes it)")
        info = json.loads(info_path.read_text())
        if split not in info["splits"]:
            raise FileNotFoundError(f"prepared:{directory} has no {split} split (it has {list(info['splits'])})")
        import grain

        self.files = [str(root / f) for f in info["splits"][split]["files"]]
        missing = [f for f in self.files if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"prepared:{directory}: missing shards {missing[:5]}")
        self._source = grain.sources.ArrayRecordDataSource(self.files)
        self.class_names = info["class_names"]
        self.num_classes = len(self.class_names)
        self.info = info
        self.name = f"prepared:{directory}/{split}"

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        label, image = decode_record(self._source[index])
        return {"image": image, "label": np.int32(label), "name": f"{self.name}[{index}]"}


# --- CIFAR-10, the binary distribution (cifar-10-binary.tar.gz) that the MindSpore seed reads -------

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_EVAL_FILE = "test_batch.bin"
CIFAR10_BATCHES_DIR = "cifar-10-batches-bin"
# The seed's README keeps the evaluation batch in a folder of its own, beside the training one.
CIFAR10_VERIFY_DIR = "cifar-10-verify-bin"
_CIFAR_SIDE = 32
CIFAR10_RECORD = 1 + 3 * _CIFAR_SIDE * _CIFAR_SIDE  # a label byte, then the R, G and B planes, row-major


def _cifar10_dirs(root: pathlib.Path) -> tuple[pathlib.Path, list[pathlib.Path]]:
    """The training folder, and the folders that may hold test_batch.bin, in the order tried."""
    if (root / CIFAR10_BATCHES_DIR).is_dir() and not (root / CIFAR10_TRAIN_FILES[0]).exists():
        root = root / CIFAR10_BATCHES_DIR  # PATH is the folder above, as the seed's README lays it out
    return root, [root, root.parent / CIFAR10_VERIFY_DIR]


def _cifar10_layout_hint(root: pathlib.Path) -> str:
    if (root / "data_batch_1").exists() or (root / "cifar-10-batches-py").is_dir():
        return "; this is the Python (pickle) version: use the binary one, cifar-10-binary.tar.gz"
    if (root / "train.bin").exists() or (root / "cifar-100-binary").is_dir():
        return "; this looks like CIFAR-100, which has another record layout"
    return ""


class Cifar10Source:
    """CIFAR-10's binary batches: `data_batch_1..5.bin` train, `test_batch.bin` evaluates.

    PATH is `cifar-10-batches-bin/` itself or the folder above it. The evaluation batch is read
    from that folder, else from a `cifar-10-verify-bin/` beside it, where the seed's README puts
    it. Class names come from `batches.meta.txt` when it is there.

    Every file is checked when the source is made (its size is a whole number of 3,073-byte
    records, every label is 0..9), so a damaged download fails before anything compiles. Records
    are read through a memory map, opened again in each worker process rather than pickled.
    """

    def __init__(self, path: str, split: str):
        given = pathlib.Path(path).expanduser()
        if not given.is_dir():
            raise FileNotFoundError(f"cifar10:{path}: no such directory")
        root, eval_dirs = _cifar10_dirs(given)
        if split == "train":
            files = [root / name for name in CIFAR10_TRAIN_FILES]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"cifar10:{path}: missing {', '.join(missing)}; expected CIFAR-10's binary batches "
                    f"{CIFAR10_BATCHES_DIR}/data_batch_1..5.bin{_cifar10_layout_hint(root)}"
                )
        else:
            found = next((d / CIFAR10_EVAL_FILE for d in eval_dirs if (d / CIFAR10_EVAL_FILE).is_file()), None)
            if found is None:
                raise FileNotFoundError(
                    f"cifar10:{path}: no {CIFAR10_EVAL_FILE} for evaluation in any of "
                    f"{[str(d) for d in eval_dirs]}{_cifar10_layout_hint(root)}"
                )
            files = [found]
        self.files = [str(f) for f in files]
        counts = []
        for f in self.files:
            size = os.path.getsize(f)
            if size == 0 or size % CIFAR10_RECORD:
                whole, rest = divmod(size, CIFAR10_RECORD)
                raise ValueError(
                    f"cifar10: {f} is {size} bytes, not a whole number of {CIFAR10_RECORD}-byte records "
                    f"({whole} and {rest} bytes over): truncated, or not a CIFAR-10 binary batch"
                    f"{_cifar10_layout_hint(root)}"
                )
            counts.append(size // CIFAR10_RECORD)
        self.class_names = self._class_names(root)
        self.num_classes = len(self.class_names)
        labels = []
        for f, n in zip(self.files, counts, strict=True):
            with open(f, "rb") as handle:  # one read; the label bytes are one column of it
                file_labels = np.frombuffer(handle.read(), np.uint8).reshape(n, CIFAR10_RECORD)[:, 0].copy()
            bad = np.flatnonzero(file_labels >= self.num_classes)
            if bad.size:
                raise ValueError(
                    f"cifar10: {f} record {bad[0]} has label {file_labels[bad[0]]}, not a class "
                    f"0..{self.num_classes - 1} "
                    f"({bad.size} such records): not a CIFAR-10 binary batch{_cifar10_layout_hint(root)}"
                )
            labels.append(file_labels)
        self.labels = np.concatenate(labels).astype(np.int32)
        self._offsets = np.cumsum([0, *counts])
        self._maps = None
        self.name = f"cifar10:{path}/{split}"

    @staticmethod
    def _class_names(root: pathlib.Path) -> list[str]:
        meta = root / "batches.meta.txt"
        if not meta.is_file():
            return list(CIFAR10_CLASSES)
        names = [line.strip() for line in meta.read_text(errors="replace").splitlines() if line.strip()]
        if len(names) != len(CIFAR10_CLASSES):
            raise ValueError(f"cifar10: {meta} names {len(names)} classes, CIFAR-10 has {len(CIFAR10_CLASSES)}")
        return names

    def __getstate__(self) -> dict:  # grain's worker processes map the files themselves
        return {**self.__dict__, "_maps": None}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} records")
        if self._maps is None:
            self._maps = [np.memmap(f, np.uint8, "r").reshape(-1, CIFAR10_RECORD) for f in self.files]
        file = int(np.searchsorted(self._offsets, index, side="right")) - 1
        record = self._maps[file][index - self._offsets[file]]
        planes = record[1:].reshape(3, _CIFAR_SIDE, _CIFAR_SIDE)
        return {
            "image": np.ascontiguousarray(planes.transpose(1, 2, 0)),
            "label": self.labels[index],
            "name": f"{self.files[file]}[{index - self._offsets[file]}]",
        }
