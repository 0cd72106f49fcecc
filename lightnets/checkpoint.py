"""Checkpoints on disk: model weights (the converter's) and training runs (the trainer's).

A weights directory holds `lightnets.json` (the variant and its class count) and `state/`, an
orbax checkpoint of the parameters and BatchNorm statistics:

    checkpoint.save_weights(model, "/ckpt/mobilenet_v2_100")
    model = checkpoint.load_weights("/ckpt/mobilenet_v2_100")   # eval mode

A run directory (`<workdir>/checkpoints`) holds the trainer's steps, written by an orbax
`CheckpointManager` (`RunCheckpoints`): each step has the whole `TrainState` (parameters,
optimiser state, EMA, step, RNG), the data iterator's position and the run's metadata. Saves are
asynchronous and atomic: orbax writes into a temporary directory and renames it when complete,
so a save cut off half way is never restored (and is deleted at the next start).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from lightnets.registry import create_model

METADATA = "lightnets.json"
_WEIGHTS = (nnx.Param, nnx.BatchStat)


def is_head(path: tuple) -> bool:
    """Whether a state path belongs to the classifier (its size is the class count)."""
    return path[0] in ("classifier", "fc")


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


class RunCheckpoints:
    """The trainer's checkpoints: keeps the last `keep` steps and the `keep_best` best by `best_metric`.

    Steps saved with `metrics` (after an evaluation) compete for best; the others are kept only
    while they are among the last `keep`.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, keep_best: int = 1, best_metric: str = "top1"):
        self.directory = pathlib.Path(directory).absolute()
        if jax.default_backend() == "cpu":
            # orbax splits replicated arrays across replicas to write them in parallel, which
            # compiles a slice per array shape (10 s at the first save on 2 cores) and gains
            # nothing where all devices share the host's memory.
            handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
            ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
        policies = [LatestN(n=keep)]
        if keep_best:
            best = BestN(get_metric_fn=lambda m: m[best_metric], n=keep_best, keep_checkpoints_without_metrics=False)
            policies.append(best)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=AnyPreservationPolicy(policies),
            cleanup_tmp_directories=True,  # an interrupted save is removed, never restored
            enable_async_checkpointing=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "run"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state: Any, data_iterator: Any, run: dict, metrics: dict | None = None) -> None:
        """Starts an asynchronous save of `step`; it becomes visible once complete."""
        import grain

        items = {
            "state": ocp.args.StandardSave(state),
            "data": grain.checkpoint.CheckpointSave(data_iterator),
            "run": ocp.args.JsonSave(run),
        }
        metrics = {k: float(v) for k, v in metrics.items()} if metrics else None
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

    def read_run(self, step: int) -> dict:
        """The metadata saved with `step` (the model and the config of the run)."""
        return self.manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore())).run

    def restore(self, step: int, like: Any, data_iterator: Any = None) -> Any:
        """The state saved at `step`, shaped and sharded as `like`; moves `data_iterator` to its position."""
        import grain

        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items)).state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
