"""Data sources chosen by one string, `config.dataset`, and the trainer's batch iterators.

    source = datasets.create_source("folder:/data/imagenet", "train", image_size=224)
    it = datasets.train_iterator(source, global_batch_size=1024, seed=0,
                                 transform=transforms.TrainTransform(224), workers=16)
    batch = next(it)   # {"image": uint8 (local_batch, 224, 224, 3), "label": int32, "skipped": int32}

Sources are random-access (`len`, `[i]` -> {"image": encoded bytes or uint8 HWC RGB, "label"}),
as grain wants them, with `num_classes` and `class_names`:

- `tfds:NAME`: a prepared TFDS image-classification set (ArrayRecord), e.g. `tfds:imagenet2012`;
  `config.data_dir` is TFDS's data_dir.
- `folder:PATH`: `PATH/train/<class>/*.JPEG`, `PATH/val/<class>/*` (the seeds' layout); class
  index = sorted folder name, as torchvision's ImageFolder; the file listing is cached.
- `prepared:PATH`: a re-encoded copy written by `python -m input_pipeline.prepare`.
- `cifar10:PATH`: CIFAR-10's binary batches, `PATH` = `cifar-10-batches-bin/` or the folder
  above it (the evaluation batch there or in `cifar-10-verify-bin/`, the MindSpore seed's layout).
- `digits`: scikit-learn's 1,797 handwritten digits (8x8, shipped inside scikit-learn, no
  download), upsampled to `image_size`, as RGB; a fixed stratified held-out split of 20 %.
- `synthetic[:N]`: random images with random labels, generated from the index (benchmarks).

The train iterator shuffles with a new permutation every epoch (grain), lets each JAX process read
only its own share of every global batch, decodes and augments in threads or worker processes,
leaves out (and counts) unreadable images (and stops with an error naming the source when
none can be read), and has a state (`get_state`/`set_state`) that is
saved with each checkpoint, so a resumed run continues with exactly the next batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import grain
import jax
import numpy as np
from absl import flags, logging
from PIL import Image

from input_pipeline import sources, transforms

SPLITS = ("train", "validation")


@dataclasses.dataclass
class ArraySource:
    """An in-memory random-access source over uint8 images and integer labels."""

    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int32
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"image": self.images[index], "label": self.labels[index]}

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(self.num_classes)]


@dataclasses.dataclass
class SyntheticSource:
    """Random images and labels, the same for the same index; nothing is held in memory."""

    size: int
    image_size: int
    num_classes: int
    seed: int = 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, int(index)))
        image = rng.integers(0, 256, (self.image_size, self.image_size, 3), dtype=np.uint8)
        return {"image": image, "label": np.int32(rng.integers(self.num_classes))}

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(self.num_classes)]


def _digits(split: str, image_size: int) -> ArraySource:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Fixed, stratified 80/20 split: every 5th example of each class (in a seeded order) is held out.
    order = np.random.default_rng(0).permutation(len(digits.target))
    held_out = np.zeros(len(order), bool)
    for c in range(10):
        members = order[digits.target[order] == c]
        held_out[members[::5]] = True
    keep = held_out if split == "validation" else ~held_out
    pixels = (digits.images[keep] * (255 / 16)).round().astype(np.uint8)  # values are 0..16
    images = np.stack([np.asarray(Image.fromarray(p).resize((image_size, image_size), Image.BILINEAR)) for p in pixels])
    images = np.repeat(images[..., None], 3, axis=-1)
    return ArraySource(images, digits.target[keep].astype(np.int32), num_classes=10)


def create_source(
    dataset: str, split: str, *, image_size: int, num_classes: int | None = None, data_dir: str | None = None
):
    """The source named by `dataset` (see the module docstring) for `split` (train or validation).

    Raises an error naming what is wrong (and the path, for files) before anything is compiled.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    kind, _, argument = dataset.partition(":")
    if kind == "digits":
        return _digits(split, image_size)
    if kind == "synthetic":
        size = int(argument) if argument else (10_000 if split == "train" else 1_000)
        return SyntheticSource(size, image_size, num_classes or 1000, seed=0 if split == "train" else 1)
    if kind == "folder" and argument:
        return sources.ImageFolderSource(argument, split)
    if kind == "tfds" and argument:
        return sources.TfdsSource(argument, split, data_dir=data_dir or None)
    if kind == "prepared" and argument:
        return sources.PreparedSource(argument, split)
    if kind == "cifar10" and argument:
        return sources.Cifar10Source(argument, split)
    raise ValueError(
        f"unknown dataset {dataset!r}: choose digits, synthetic[:N], tfds:NAME (e.g. tfds:imagenet2012), "
        "folder:PATH (PATH/train/<class>/*, PATH/val/<class>/*), prepared:PATH (python -m input_pipeline.prepare) "
        "or cifar10:PATH (PATH/cifar-10-batches-bin/*.bin)"
    )


def describe(source) -> str:
    """What a source reads, for messages: its folder (`folder:`), or its name."""
    return getattr(source, "root", None) or getattr(source, "name", None) or type(source).__name__


def local_batch_size(global_batch_size: int, process_count: int | None = None) -> int:
    """This process's share of a global batch; it must divide over processes and devices."""
    devices = jax.device_count()
    processes = jax.process_count() if process_count is None else process_count
    if global_batch_size <= 0 or global_batch_size % devices or global_batch_size % processes:
        raise ValueError(
            f"batch_size {global_batch_size} does not divide over the {devices} devices"
            f"{f' of {processes} processes' if processes > 1 else ''}; use a multiple of {max(devices, processes)}"
        )
    return global_batch_size // processes


class _Decode:
    """One example -> {"image": uint8 HWC, "label"}, or {"skipped": name} for an unreadable image."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, example: dict, rng: np.random.Generator | None = None) -> dict:
        image = example["image"]
        try:
            if self.transform is None:
                if not isinstance(image, np.ndarray):
                    raise TypeError("encoded images need a transform (decode, crop, resize)")
            else:
                image = self.transform(image) if rng is None else self.transform(image, rng)
        except transforms.CorruptImage as e:
            name = example.get("name", "an image")
            logging.warning("Skipping %s: not a readable image (%s)", name, e)
            return {"skipped": name, "reason": str(e)}
        return {"image": image, "label": example["label"]}


class _BatchSkipping(grain.IterDataset):
    """Batches of `batch_size` readable examples; unreadable ones are left out and counted.

    Each batch carries `skipped`, the number left out since the previous batch, for the metrics.
    `limit` unreadable images in a row stop the iteration with a ValueError naming `where`.
    The state is the parent's: it is saved between batches, when nothing is held back.
    """

    def __init__(self, parent: grain.IterDataset, batch_size: int, limit: int, where: str):
        super().__init__(parent)
        self.batch_size, self.limit, self.where = batch_size, limit, where

    def __iter__(self) -> grain.DatasetIterator:
        return _BatchSkippingIterator(self._parent.__iter__(), self.batch_size, self.limit, self.where)


class _BatchSkippingIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, batch_size: int, limit: int, where: str):
        super().__init__(parent)
        self.batch_size, self.limit, self.where = batch_size, limit, where

    def __next__(self) -> dict[str, np.ndarray]:
        examples, skipped = [], 0
        while len(examples) < self.batch_size:
            example = next(self._parent)
            if "skipped" in example:
                skipped += 1
                if skipped >= self.limit and not examples:
                    raise ValueError(
                        f"cannot read the images of {self.where}: {skipped} in a row were unreadable, the last "
                        f"{example['skipped']} ({example['reason']})"
                    )
            else:
                examples.append(example)
        batch = _stack(examples)
        batch["skipped"] = np.int32(skipped)
        return batch

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


def _read_options(threads: int) -> grain.ReadOptions:
    # Decoding and resizing release the GIL (PIL), so threads decode in parallel.
    return grain.ReadOptions(num_threads=max(1, threads), prefetch_buffer_size=max(2 * threads, 4))


def _prefetch(ds: grain.IterDataset, workers: int) -> grain.IterDataset:
    if workers <= 0:
        return ds
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside main.py nobody parsed them
        flags.FLAGS.mark_as_parsed()
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))


def train_iterator(
    source,
    *,
    global_batch_size: int,
    seed: int,
    transform=None,
    workers: int = 0,
    threads: int = 4,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
    """Endless batches of this process's share, reshuffled every epoch; checkpointable.

    `transform(image, rng)` decodes and augments one image (`transforms.TrainTransform`); None
    passes uint8 arrays through. Batches hold `image` (uint8), `label` (int32) and `skipped` (the
    unreadable images left out). `workers` > 0 decodes in that many grain worker processes (a
    restored state needs the same count); `process_index`/`process_count` default to JAX's.
    """
    p = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    local = local_batch_size(global_batch_size, process_count=count)
    if len(source) < global_batch_size:
        raise ValueError(f"the training set has {len(source)} examples, fewer than one batch of {global_batch_size}")
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
    # The shuffled stream, cut in global batches of consecutive examples: process p reads only
    # every process_count-th example, its share of each.
    ds = ds[p::count].random_map(_Decode(transform), seed=seed)
    limit = max(1000, 10 * local)
    if count == 1:  # a run of two epochs holds a whole one: every image of the source was tried
        limit = min(limit, 2 * len(source))
    ds = _BatchSkipping(ds.to_iter_dataset(_read_options(threads)), local, limit, describe(source))
    return iter(_prefetch(ds, workers))


def _stack(examples) -> dict[str, np.ndarray]:
    return {
        "image": np.stack([e["image"] for e in examples]),
        "label": np.asarray([e["label"] for e in examples], np.int32),
    }


class _EvalExample:
    """Index -> the transformed example, with `valid` 0 for padding and for unreadable images."""

    def __init__(self, source, transform, image_size: int):
        self.source, self.decode, self.image_size = source, _Decode(transform), image_size

    def __call__(self, index: int) -> dict:
        n = len(self.source)
        if index < n:
            example = self.decode(self.source[int(index)])
            if "skipped" not in example:
                return {**example, "valid": np.float32(1), "skipped": np.int32(0)}
        blank = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        return {"image": blank, "label": np.int32(0), "valid": np.float32(0), "skipped": np.int32(index < n)}


def eval_batches(
    source,
    *,
    global_batch_size: int,
    transform=None,
    image_size: int | None = None,
    workers: int = 0,
    threads: int = 4,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, in order, as this process's share of global batches.

    The last batch is padded to the full size; `valid` marks the real, readable examples and
    `skipped` the unreadable ones; a ValueError naming the source ends the iteration if none of
    this process's examples could be read. `transform(image)` is `transforms.EvalTransform`; None
    passes uint8 arrays (of `image_size`) through.
    """
    local = local_batch_size(global_batch_size)
    if image_size is None:
        image_size = transform.size if transform is not None else source[0]["image"].shape[0]
    n, p, count = len(source), jax.process_index(), jax.process_count()
    padded = -(-n // global_batch_size) * global_batch_size
    ds = grain.MapDataset.range(padded)[p::count].map(_EvalExample(source, transform, image_size))
    ds = ds.batch(local, batch_fn=_stack_eval).to_iter_dataset(_read_options(threads))
    it = iter(_prefetch(ds, workers))
    read = skipped = 0
    try:
        for batch in it:
            read, skipped = read + int(batch["valid"].sum()), skipped + int(batch["skipped"])
            yield batch
        if skipped and not read:
            raise ValueError(
                f"cannot read the images of {describe(source)}: none of the {skipped} evaluated here "
                "was readable (each is logged above with its reason)"
            )
    finally:
        if hasattr(it, "close"):  # worker processes and their shared memory
            it.close()


def _stack_eval(examples) -> dict[str, np.ndarray]:
    batch = _stack(examples)
    batch["valid"] = np.asarray([e["valid"] for e in examples], np.float32)
    batch["skipped"] = np.int32(sum(int(e["skipped"]) for e in examples))
    return batch
