"""Data sources chosen by one string, `config.dataset`, and the trainer's batch iterators.

    source = datasets.create_source("digits", "train", image_size=32)
    it = datasets.train_iterator(source, global_batch_size=64, seed=0)
    batch = next(it)   # {"image": uint8 (local_batch, H, W, 3), "label": int32 (local_batch,)}

Sources are random-access (`len`, `[i]` -> {"image": uint8 HWC RGB, "label": int}), as grain
wants them. Available now:

- `digits`: scikit-learn's 1,797 handwritten digits (8x8, shipped inside scikit-learn, no
  download), upsampled to `image_size`, as RGB; a fixed stratified held-out split of 20 %.
- `synthetic`: random images with random labels, generated from the index (benchmarks).

The train iterator shuffles with a new permutation every epoch (grain), gives each JAX process
its own slice of every global batch, and has a state (`get_state`/`set_state`) that is saved
with each checkpoint, so a resumed run continues with exactly the next batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import grain
import jax
import numpy as np
from PIL import Image

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


def create_source(dataset: str, split: str, *, image_size: int, num_classes: int | None = None):
    """The source named by `dataset` (see the module docstring) for `split` (train or validation).

    Raises a ValueError naming what is wrong before anything is compiled.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    kind, _, argument = dataset.partition(":")
    if kind == "digits":
        return _digits(split, image_size)
    if kind == "synthetic":
        size = int(argument) if argument else (10_000 if split == "train" else 1_000)
        return SyntheticSource(size, image_size, num_classes or 1000, seed=0 if split == "train" else 1)
    raise ValueError(
        f"unknown dataset {dataset!r}: lightnets reads 'digits' and 'synthetic[:N]' "
        "(TFDS and image folders arrive with the input-pipeline work)"
    )


def local_batch_size(global_batch_size: int) -> int:
    """This process's share of a global batch; it must divide over processes and devices."""
    devices, processes = jax.device_count(), jax.process_count()
    if global_batch_size <= 0 or global_batch_size % devices:
        raise ValueError(
            f"batch_size {global_batch_size} does not divide over the {devices} devices; use a multiple of {devices}"
        )
    return global_batch_size // processes


def train_iterator(source, *, global_batch_size: int, seed: int) -> grain.DatasetIterator:
    """Endless batches of this process's share, reshuffled every epoch; checkpointable."""
    local = local_batch_size(global_batch_size)
    if len(source) < global_batch_size:
        raise ValueError(f"the training set has {len(source)} examples, fewer than one batch of {global_batch_size}")
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
    # Every global batch is `global_batch_size` consecutive examples of the shuffled stream;
    # process p takes every process_count-th of them.
    ds = ds[jax.process_index() :: jax.process_count()]
    ds = ds.batch(local, drop_remainder=True, batch_fn=_stack)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=4)))


def _stack(examples) -> dict[str, np.ndarray]:
    return {
        "image": np.stack([e["image"] for e in examples]),
        "label": np.asarray([e["label"] for e in examples], np.int32),
    }


def eval_batches(source, *, global_batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, in order, as this process's share of global batches.

    The last batch is padded to the full size; `valid` marks the real examples.
    """
    local = local_batch_size(global_batch_size)
    n, p, count = len(source), jax.process_index(), jax.process_count()
    for start in range(0, n, global_batch_size):
        indices = np.arange(start, start + global_batch_size)[p::count]
        valid = indices < n
        batch = _stack([source[int(i) if ok else n - 1] for i, ok in zip(indices, valid, strict=True)])
        batch["valid"] = valid.astype(np.float32)
        assert len(batch["label"]) == local
        yield batch
