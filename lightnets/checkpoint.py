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

Weights holding a nan or an inf are neither saved nor loaded (`nonfinite` names the arrays) unless
asked for with `allow_nonfinite=True`: they make every prediction nan, and say so only then.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from lightnets.registry import create_model

METADATA = "lightnets.json"
_WEIGHTS = (nnx.Param, nnx.BatchStat)


def is_head(path: tuple) -> bool:
    """Whether a state path belongs to the classifier (its size is the class count)."""
    return path[0] in ("classifier", "fc")


class NonFiniteError(ValueError):
    """Weights hold a nan or an inf; the message names the arrays."""


def nonfinite(tree: Any) -> list[str]:
    """The paths (`blocks.0.0.bn1.var`, `features.0.0.weight`) of the floating-point arrays of
    `tree` that hold a nan or an inf; [] if none do.

    Arrays on devices are checked where they are, in one jitted call, and only one boolean per
    array comes back to the host; numpy arrays are checked on the host.
    """
    leaves = [(jax.tree_util.keystr(path, simple=True, separator=".").removesuffix(".value"), x)
              for path, x in jax.tree_util.tree_leaves_with_path(tree)
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]  # fmt: skip
    on_device = iter(jax.device_get(_all_finite([x for _, x in leaves if isinstance(x, jax.Array)])))
    finite = [bool(next(on_device)) if isinstance(x, jax.Array) else bool(np.isfinite(x).all()) for _, x in leaves]
    return [name for (name, _), ok in zip(leaves, finite, strict=True) if not ok]


@jax.jit
def _all_finite(arrays: list[jax.Array]) -> list[jax.Array]:
    return [jnp.isfinite(x).all() for x in arrays]


def check_finite(tree: Any, what: str) -> None:
    """Raises a NonFiniteError naming the arrays of `tree` that hold a nan or an inf; `what` says
    whose they are ("the weights in /ckpt/x")."""
    bad = nonfinite(tree)
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        counted = f"1 array of {what} holds" if len(bad) == 1 else f"{len(bad)} arrays of {what} hold"
        raise NonFiniteError(
            f"{counted} a nan or an inf, and would make every output nan: {shown}. "
            "allow_nonfinite=True (--allow_nonfinite) accepts them"
        )


def check_destination(path: str | os.PathLike, *, overwrite: bool = False, directory: bool = True,
                      sidecars: tuple[str, ...] = ()) -> pathlib.Path:  # fmt: skip
    """`path` made absolute, if a save may write there; else an OSError saying what is in the way.

    A directory (what `save_weights` writes) may already exist if empty, a file (`directory=False`;
    `sidecars`: suffixes of files written beside it, such as ".json") may not exist; either needs
    `overwrite` to replace what is there. No parent may be a file.
    """
    path = pathlib.Path(path).absolute()
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise NotADirectoryError(f"cannot write {path}: {blocking} is a file, not a directory")
    if directory and path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file; weights are saved as a directory: give another path")
    if not directory and path.is_dir():
        raise IsADirectoryError(f"{path} is a directory: give the name of the file to write")
    if directory:
        taken = [path] if path.exists() and any(path.iterdir()) else []
    else:
        taken = [p for p in (path, *(path.with_name(path.name + s) for s in sidecars)) if p.exists()]
    if taken and not overwrite:
        raise FileExistsError(
            f"{' and '.join(map(str, taken))} {'exist' if len(taken) > 1 else 'exists'}"
            f"{' and is not empty' if directory else ''}; pass overwrite=True (--overwrite) to replace it"
        )
    return path


def save_weights(model: nnx.Module, directory: str | os.PathLike, *, overwrite: bool = False,
                 allow_nonfinite: bool = False) -> None:  # fmt: skip
    """Writes a model built by `create_model` (or `convert.from_torch`) to `directory`.

    Refuses weights holding a nan or an inf (NonFiniteError) unless `allow_nonfinite`.
    """
    if not hasattr(model, "variant"):
        raise ValueError("the model has no `variant`: build it with lightnets.create_model")
    state = nnx.state(model, _WEIGHTS)
    if not allow_nonfinite:
        check_finite(state, f"the {model.variant} weights")
    directory = check_destination(directory, overwrite=overwrite)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / METADATA).unlink(missing_ok=True)  # an overwrite cut off half way must not look complete
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "state", state, force=True)
        checkpointer.wait_until_finished()
    metadata = {"model": model.variant, "num_classes": model.num_classes, "format": 1}
    # Written last: a directory without it is an interrupted save, never loaded.
    (directory / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    path = pathlib.Path(directory) / METADATA
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a lightnets weights directory (no {METADATA})")
    return json.loads(path.read_text())


def load_weights(directory: str | os.PathLike, *, dtype: Any = jnp.float32, rngs: nnx.Rngs | None = None,
                 allow_nonfinite: bool = False):  # fmt: skip
    """The model saved in `directory`, in eval mode, computing in `dtype`.

    Refuses weights holding a nan or an inf (NonFiniteError) unless `allow_nonfinite`.
    """
    directory = pathlib.Path(directory).absolute()
    metadata = read_metadata(directory)
    model = create_model(metadata["model"], num_classes=metadata["num_classes"], dtype=dtype, rngs=rngs)
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(directory / "state", nnx.state(model, _WEIGHTS))
    if not allow_nonfinite:
        check_finite(state, f"the weights in {directory}")
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
