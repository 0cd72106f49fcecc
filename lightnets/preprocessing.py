"""The one preprocessing contract: what a network's input is, for every path that feeds it.

    norm = preprocessing.Normalize(mean, std)
    x = norm(pixels)                       # numpy, uint8 or float pixels in [0, 255] -> float32
    x = norm.on_device(batch, jnp.bfloat16)  # the same, in the train and eval steps
    scale, shift = norm.folded()           # x = pixels * scale + shift, what exports compute
    prep = preprocessing.of_run(config)    # a run's evaluation preprocessing (predict, export, eval)

A network computes on RGB in [0, 1], minus a per-channel mean, divided by a per-channel std. Which
mean and std is a property of the weights: torchvision's and most of timm's use ImageNet's, the
TensorFlow-trained ones (timm `mobilenetv1_*`, `tf_efficientnetv2_b3..xl`) 0.5/0.5. A run trains
with `config.mean`/`config.std`, resolved once by `normalization(config)` (the config's own, else
the `init_from` weights', else the model's reference) and recorded in the run's config, so that
evaluation, `init_from` of its weights, predict and export all feed the network what it was trained
on. Weights directories record theirs (`checkpoint.save_weights`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

# torchvision's and timm's ImageNet normalisation (RGB in [0, 1]), and the Inception one that
# TensorFlow-trained weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)


def _triple(name: str, value: Any) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        triple = ()
    if len(triple) != 3 or not all(np.isfinite(triple)):
        raise ValueError(f"{name}={value!r} must be three finite numbers, one per RGB channel, e.g. {IMAGENET_MEAN}")
    return triple


@dataclasses.dataclass(frozen=True)
class Normalize:
    """RGB pixels in [0, 255] -> `(pixels / 255 - mean) / std`, float32."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std))
        if min(self.std) <= 0:
            raise ValueError(f"std={self.std} must be positive in every channel")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """On the host: (..., H, W, 3) uint8 or float pixels -> float32."""
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return (np.asarray(images).astype(np.float32) / 255.0 - mean) / std

    def on_device(self, images, dtype: Any = None):
        """In a jitted step: uint8 batches as they cross to the device -> normalised `dtype` (float32 by default)."""
        import jax.numpy as jnp

        x = images.astype(jnp.float32) / 255.0
        x = (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)
        return x.astype(dtype or jnp.float32)

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift), float32 per channel, with `pixels * scale + shift` the normalised input."""
        std = np.asarray(self.std, np.float32)
        scale = (1.0 / (255.0 * std)).astype(np.float32)
        shift = (-np.asarray(self.mean, np.float32) / std).astype(np.float32)
        return scale, shift

    @property
    def fill(self) -> tuple[int, int, int]:
        """The mean as uint8 pixels: what RandAugment fills uncovered areas with (timm's rule)."""
        return tuple(min(255, round(255 * m)) for m in self.mean)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


IMAGENET = Normalize(IMAGENET_MEAN, IMAGENET_STD)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Evaluation: resize the shorter side to `image_size / crop_pct`, centre crop, normalise."""

    image_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @functools.cached_property
    def normalize(self) -> Normalize:
        return Normalize(self.mean, self.std)

    @functools.cached_property
    def transform(self):
        from input_pipeline import transforms

        return transforms.EvalTransform(self.image_size, crop_pct=self.crop_pct, interpolation=self.interpolation)

    def read(self, path: str | os.PathLike) -> np.ndarray:
        """An image file as the model's uint8 RGB input; `transforms.CorruptImage` if unreadable."""
        return self.transform(pathlib.Path(path).read_bytes())

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def reference(variant: str, image_size: int | None = None) -> Preprocessing:
    """The evaluation preprocessing of `variant`'s reference weights (timm's or torchvision's)."""
    from lightnets.models.registry import model_info

    info = model_info(variant)
    return Preprocessing(image_size or info.resolution, info.crop_pct, info.interpolation, info.mean, info.std)


def of_weights(metadata: Mapping[str, Any]) -> Preprocessing:
    """What a weights directory's network expects: its recorded normalisation, at the reference's resolution.

    Directories written before weights recorded theirs hold converted reference weights: the reference's.
    """
    ref = reference(metadata["model"])
    if "mean" not in metadata:
        return ref
    return dataclasses.replace(ref, mean=_triple("mean", metadata["mean"]), std=_triple("std", metadata["std"]))


def of_run(config: Mapping[str, Any]) -> Preprocessing:
    """A trainer run's evaluation preprocessing, from its saved config.

    Runs saved before the config had `mean`/`std` were all trained on ImageNet's normalisation.
    """
    mean, std = config.get("mean"), config.get("std")
    return Preprocessing(
        config["image_size"],
        config["crop_pct"],
        config["eval_interpolation"],
        _triple("mean", mean) if mean is not None else IMAGENET_MEAN,
        _triple("std", std) if std is not None else IMAGENET_STD,
    )


def normalization(config) -> Normalize:
    """The normalisation a run trains with: the config's `mean`/`std` where set, else the `init_from`
    weights' (what they were trained on), else the model's reference weights'."""
    if (config.mean is None) != (config.std is None):
        raise ValueError("set both mean and std (or neither, for the model's own)")
    if config.mean is not None:
        return Normalize(config.mean, config.std)
    if config.init_from:
        from lightnets import checkpoint

        prep = of_weights(checkpoint.read_metadata(config.init_from))
    else:
        prep = reference(config.model)
    return Normalize(prep.mean, prep.std)
