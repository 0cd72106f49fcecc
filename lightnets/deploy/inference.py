"""A checkpoint ready for inference: the model, the preprocessing it expects and its class names.

    loaded = inference.load("/ckpt/run1")          # a trainer workdir or a weights directory
    pixels = loaded.preprocessing.read("cat.jpg")  # uint8 (size, size, 3), as the trainer evaluates
    logits = loaded.model(loaded.preprocessing.normalize(pixels[None]))

A weights directory (the converter's output, `checkpoint.save_weights`) expects its reference's
evaluation preprocessing (the registry's `resolution`, `crop_pct`, `interpolation`) with the
normalisation it records; a trainer workdir expects its run's (`image_size`, `crop_pct`,
`eval_interpolation`, `mean`, `std`): `lightnets.preprocessing`. `lightnets.predict` and
`lightnets.export` are built on this module.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re

import jax.numpy as jnp
from flax import nnx

from lightnets import checkpoint, preprocessing

WEIGHTS = ("auto", "raw", "ema")
_SYNSET = re.compile(r"n\d{8}")  # a WordNet id, what TFDS and ImageNet's folders name classes by


@dataclasses.dataclass
class Loaded:
    model: nnx.Module  # eval mode, float32
    preprocessing: preprocessing.Preprocessing
    class_names: list[str]
    description: str  # what was loaded, for messages
    config: dict | None = None  # a trainer run's config


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in label order (torchvision's list)."""
    text = (pathlib.Path(__file__).parent / "imagenet_classes.txt").read_text()
    return tuple(text.splitlines())


def class_names(num_classes: int, recorded: list[str] | None = None) -> list[str]:
    """Readable names: the recorded ones, ImageNet's for 1000 classes named by WordNet ids, else indices."""
    if num_classes == 1000 and (not recorded or all(_SYNSET.fullmatch(n) for n in recorded)):
        return list(imagenet_class_names())
    if recorded and len(recorded) == num_classes:
        return list(recorded)
    return [str(i) for i in range(num_classes)]


def load(checkpoint_dir: str | os.PathLike, *, weights: str = "auto") -> Loaded:
    """The model of a weights directory or of a trainer workdir's latest checkpoint, in float32.

    `weights` picks, for a trainer checkpoint, the raw or the EMA parameters; "auto" takes the EMA
    ones when the run kept an EMA (it then checkpoints the best by EMA accuracy), else the raw ones.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    target = pathlib.Path(checkpoint_dir).absolute()
    if not target.is_dir():
        raise FileNotFoundError(f"{target} is not a directory: give a weights directory or a trainer workdir")
    if (target / checkpoint.METADATA).exists():
        if weights == "ema":
            raise ValueError(f"{target} is a weights directory: it has no EMA weights (weights=raw or auto)")
        model = checkpoint.load_weights(target, dtype=jnp.float32)
        metadata = checkpoint.read_metadata(target)
        names = class_names(model.num_classes, metadata.get("class_names"))
        return Loaded(model, preprocessing.of_weights(metadata), names, f"{model.variant} from {target}")

    loaded = checkpoint.load_run(target)  # the weights alone: no optimiser, no training package
    model, step, config = loaded.model, loaded.step, loaded.run["config"]
    kept_ema = config.get("ema_decay", 0.0) > 0
    use_ema = kept_ema if weights == "auto" else weights == "ema"
    if use_ema and not kept_ema:
        raise ValueError(f"the run in {target} kept no EMA (ema_decay=0): use weights=raw")
    prefix, which = ("ema_", "EMA") if use_ema else ("", "raw")
    chosen = {part: loaded.weights[prefix + part] for part in ("params", "batch_stats")}
    # A run that diverged may have saved them: nothing is predicted or exported from nans.
    checkpoint.check_finite(chosen, f"the {which} weights of {target} step {step}")
    nnx.update(model, chosen["params"], chosen["batch_stats"])
    model.eval()
    names = class_names(model.num_classes, loaded.run.get("class_names"))
    description = f"{model.variant} from {target} step {step} ({which} weights)"
    return Loaded(model, preprocessing.of_run(config), names, description, config)
