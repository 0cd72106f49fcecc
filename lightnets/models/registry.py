"""The registry of named variants: `create_model(name)` and `list_models()`.

Each family file registers its variants with the reference implementation whose weights they
load and the resolution at which that reference reports its accuracy and cost.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lightnets.preprocessing import IMAGENET_MEAN, IMAGENET_STD


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of a variant.

    Attributes:
      name: the registered name, e.g. "mobilenet_v2_100".
      family: "mobilenet_v1", "mobilenet_v2", "shufflenet_v2" or "efficientnet_v2".
      builder: makes the network; takes `num_classes`, `dtype`, `param_dtype`, `rngs` and the
        family's own options (`dropout`, `drop_path_rate`, ...).
      resolution: the reference's input resolution (pixels, square).
      reference: the PyTorch model this variant reproduces, "library:name" with the builder's
        arguments, e.g. "torchvision:mobilenet_v2(width_mult=0.35)" or "timm:mobilenetv1_100";
        "mindspore:..." for a MindSpore model zoo network (its checkpoints: `convert.from_mindspore`).
      defaults: the options the builder gets unless the caller overrides them.
      crop_pct, interpolation, mean, std: the reference's evaluation preprocessing at
        `resolution` (resize the shorter side to `resolution / crop_pct`, centre crop, normalise),
        which converted weights expect (timm's pretrained config; torchvision's IMAGENET1K_V1
        weights); `lightnets.predict` and `lightnets.export` use it.
    """

    name: str
    family: str
    builder: Callable[..., nnx.Module]
    resolution: int
    reference: str
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    family: str,
    builder: Callable[..., nnx.Module],
    *,
    resolution: int,
    reference: str,
    crop_pct: float = 0.875,
    interpolation: str = "bilinear",
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    **defaults: Any,
) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    preprocessing = {"crop_pct": crop_pct, "interpolation": interpolation, "mean": mean, "std": std}
    _REGISTRY[name] = ModelInfo(name, family, builder, resolution, reference, defaults, **preprocessing)


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, e.g. `list_models("efficientnet_v2_*_tf")`.

    In registration order: family by family, smallest variant first.
    """
    return [n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern)]


def model_info(name: str) -> ModelInfo:
    """The registry entry of `name`; an unknown name raises a ValueError listing close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown model {name!r}.{hint} `lightnets.list_models()` lists all {len(_REGISTRY)} variants."
        ) from None


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    dtype: Any = jnp.bfloat16,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs | None = None,
    **kwargs: Any,
) -> nnx.Module:
    """Builds a registered network, in training mode (call `.eval()` for inference).

    The model's `variant` attribute is `name`.

    Args:
      name: a name from `list_models()`.
      num_classes: classifier size; 0 builds the network without a classifier, returning
        pooled features.
      dtype: the computation dtype; parameters and BatchNorm statistics stay in `param_dtype`.
      rngs: initialisation and dropout keys; `nnx.Rngs(0)` if not given.
      **kwargs: family options that override the variant's defaults, e.g. `dropout=0.3`,
        `drop_path_rate=0.2`.
    """
    info = model_info(name)
    options = {**info.defaults, **kwargs}
    model = info.builder(
        num_classes=num_classes,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs if rngs is not None else nnx.Rngs(0),
        **options,
    )
    model.variant = name  # what the converter and checkpoints identify the network by
    return model


@nnx.jit
def forward(model: nnx.Module, images: jax.Array) -> jax.Array:
    """`model(images)` as float32 logits, jitted: what summary, convert, predict, export and the
    tests run. The model is an argument, not a closure, so its weights are not compiled in as
    constants and one compilation serves every model of the same structure and input shape."""
    return model(images).astype(jnp.float32)
