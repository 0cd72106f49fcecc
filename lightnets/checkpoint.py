"""Model weights on disk: what the converter writes and what main.py evaluates or fine-tunes from.

A weights directory holds `lightnets.json` (the variant and its class count) and `state/`, an
orbax checkpoint of the parameters and BatchNorm statistics:

    checkpoint.save_weights(model, "/ckpt/mobilenet_v2_100")
    model = checkpoint.load_weights("/ckpt/mobilenet_v2_100")   # eval mode
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from lightnets.registry import create_model

METADATA = "lightnets.json"
_WEIGHTS = (nnx.Param, nnx.BatchStat)


def save_weights(model: nnx.Module, directory: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Writes a model built by `create_model` (or `convert.from_torch`) to `directory`."""
    if not hasattr(model, "variant"):
        raise ValueError("the model has no `variant`: build it with lightnets.create_model")
    directory = pathlib.Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} exists and is not empty; pass overwrite=True to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / METADATA).unlink(missing_ok=True)  # an overwrite cut off half way must not look complete
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "state", nnx.state(model, _WEIGHTS), force=True)
        checkpointer.wait_until_finished()
    metadata = {"model": model.variant, "num_classes": model.num_classes, "format": 1}
    # Written last: a directory without it is an interrupted save, never loaded.
    (directory / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    path = pathlib.Path(directory) / METADATA
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a lightnets weights directory (no {METADATA})")
    return json.loads(path.read_text())


def load_weights(directory: str | os.PathLike, *, dtype: Any = jnp.float32, rngs: nnx.Rngs | None = None):
    """The model saved in `directory`, in eval mode, computing in `dtype`."""
    directory = pathlib.Path(directory).absolute()
    metadata = read_metadata(directory)
    model = create_model(metadata["model"], num_classes=metadata["num_classes"], dtype=dtype, rngs=rngs)
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(directory / "state", nnx.state(model, _WEIGHTS))
    nnx.update(model, state)
    model.eval()
    return model
