"""Random-access sources of encoded images: TFDS, image folders, and our prepared ArrayRecord copies.

Each is what grain wants, `len(source)` and `source[i]` -> {"image": encoded bytes, "label": int},
plus `num_classes` and `class_names`. Decoding happens later, in the pipeline's transforms, so
that it can decode JPEGs at a reduced size and skip a corrupt file instead of failing.

Every constructor checks what it can cheaply (the path exists, the split exists, no class folder
is empty) and raises an error naming the path, before anything is compiled.

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
