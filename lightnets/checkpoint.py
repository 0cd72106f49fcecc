"""Checkpoints on disk: model weights (the converter's) and training runs (the trainer's).

A weights directory holds `lightnets.json` (the variant and its class count) and `state/`, an
orbax checkpoint of the parameters and BatchNorm statistics:

    checkpoint.save_weights(model, "/ckpt/mobilenet_v2_100")
    model = checkpoint.load_weights("/ckpt/mobilenet_v2_100")   # eval mode

A run directory (`<workdir>/checkpoints`) holds the trainer's steps, written by an orbax
`CheckpointManager` (`RunCheckpoints`): each step has the whole `TrainState` (parameters,
optimiser state, EMA, step, RNG), the data iterator's position and the run's metadata. Saves are
asynchronous and atomic: orbax writes into a temporary directory and renames it when complete,
so a save cut off half way is never restored (and is deleted at the next start). Each step also
records a sha256 of every array, of the data iterator's state and of the metadata (`checksums/`),
computed in orbax's background thread; a restore verifies them. A step that cannot be read or
verified is reported, set aside as `<step>.corrupt-<n>` (never deleted; orbax no longer sees it)
and the next older one is tried. The trainer holds `<workdir>/lightnets.lock` (`WorkdirLock`)
for the run's life, so that two runs never write to one workdir. `load_run` reads the weights of
a run's newest intact step for inference and evaluation, without the trainer's optimiser.

Weights holding a nan or an inf are neither saved nor loaded (`nonfinite` names the arrays) unless
asked for with `allow_nonfinite=True`: they make every prediction nan, and say so only then.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import hashlib
import json
import os
import pathlib
import re
import socket
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from lightnets import preprocessing
from lightnets.models.registry import create_model

METADATA = "lightnets.json"
LOCK = "lightnets.lock"  # in a trainer workdir
_WEIGHTS = (nnx.Param, nnx.BatchStat)


class NonFiniteError(ValueError):
    """Weights hold a nan or an inf; the message names the arrays."""


def nonfinite(tree: Any, *, kinds: bool = False) -> list[str]:
    """The paths (`blocks.0.0.bn1.var`, `features.0.0.weight`) of the floating-point arrays of
    `tree` that hold a nan or an inf; [] if none do. With `kinds`, each says which it holds:
    "blocks.0.0.bn1.var: inf" (those arrays alone are then fetched to the host).

    Arrays on devices are checked where they are, in one jitted call, and only one boolean per
    array comes back to the host; numpy arrays are checked on the host.
    """
    leaves = [
        (jax.tree_util.keystr(path, simple=True, separator=".").removesuffix(".value"), x)
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    on_device = iter(jax.device_get(_all_finite([x for _, x in leaves if isinstance(x, jax.Array)])))
    finite = [bool(next(on_device)) if isinstance(x, jax.Array) else bool(np.isfinite(x).all()) for _, x in leaves]
    bad = [(name, x) for (name, x), ok in zip(leaves, finite, strict=True) if not ok]
    if kinds:
        return [f"{name}: {', '.join(_nonfinite_kinds(np.asarray(x)))}" for name, x in bad]
    return [name for name, _ in bad]


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


def check_destination(
    path: str | os.PathLike, *, overwrite: bool = False, directory: bool = True, sidecars: tuple[str, ...] = ()
) -> pathlib.Path:
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


def save_weights(
    model: nnx.Module,
    directory: str | os.PathLike,
    *,
    overwrite: bool = False,
    allow_nonfinite: bool = False,
    mean=None,
    std=None,
) -> None:
    """Writes a model built by `create_model` (or `convert.from_torch`) to `directory`.

    `mean`/`std` are the normalisation the weights were trained with, recorded for whoever
    fine-tunes, evaluates, predicts or exports them; by default the reference's (converted weights).
    Refuses weights holding a nan or an inf (NonFiniteError) unless `allow_nonfinite`.
    """
    if not hasattr(model, "variant"):
        raise ValueError("the model has no `variant`: build it with lightnets.create_model")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither for the reference's")
    if mean is None:
        ref = preprocessing.reference(model.variant)
        mean, std = ref.mean, ref.std
    norm = preprocessing.Normalize(mean, std)  # checked before anything is written
    state = nnx.state(model, _WEIGHTS)
    if not allow_nonfinite:
        check_finite(state, f"the {model.variant} weights")
    directory = check_destination(directory, overwrite=overwrite)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / METADATA).unlink(missing_ok=True)  # an overwrite cut off half way must not look complete
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "state", state, force=True)
        checkpointer.wait_until_finished()
    metadata = {"model": model.variant, "num_classes": model.num_classes, "format": 1, **norm.to_dict()}
    # Written last: a directory without it is an interrupted save, never loaded.
    (directory / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    path = pathlib.Path(directory) / METADATA
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a lightnets weights directory (no {METADATA})")
    return json.loads(path.read_text())


def load_weights(
    directory: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs | None = None,
    allow_nonfinite: bool = False,
):
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


def _nonfinite_kinds(a: np.ndarray) -> list[str]:
    return [kind for kind, test in (("nan", np.isnan), ("inf", np.isinf)) if test(a).any()]


def _name(path: tuple) -> str:
    """A leaf path as orbax names it on disk, e.g. `params.blocks.4.1.conv_pw.kernel.value`."""
    return jax.tree_util.keystr(path, simple=True, separator=".")


class DamagedCheckpoint(ValueError):
    """A step that cannot be read, or whose contents differ from the checksums recorded when it was written."""


# --- integrity: checksums written with every step, verified by every restore -------------------


def _host(tree: Any) -> dict[str, np.ndarray]:
    """Leaf name -> this process's numpy copy of the whole array (split arrays are gathered)."""
    leaves = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if isinstance(x, jax.Array):
            x = x.addressable_data(0) if x.is_fully_replicated else multihost_utils.process_allgather(x, tiled=True)
            x.copy_to_host_async()  # all transfers in flight at once
        leaves[_name(path)] = x
    host = {}
    for name, x in leaves.items():
        a = np.asarray(x)
        # On the CPU backend that may be the device buffer itself, which the next (donating) step reuses.
        cpu = isinstance(x, jax.Array) and next(iter(x.devices())).platform == "cpu"
        host[name] = a.copy() if cpu else a
    return host


def _digest(a: np.ndarray) -> str:
    digest = hashlib.sha256(f"{a.dtype} {a.shape} ".encode())
    digest.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return digest.hexdigest()


def _json_digest(value: Any) -> str:
    """Of a JSON value, as it reads back (tuples are lists)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _data_state(data_iterator: Any) -> Any:
    state = data_iterator.get_state()
    return json.loads(state) if isinstance(state, bytes) else state


def _checksums_file(process: int, count: int) -> str:
    return f"process_{process}-of-{count}.json"


@dataclasses.dataclass
class _ChecksumsSave(ocp.args.CheckpointArgs):
    state: Any
    data_iterator: Any
    run: dict


class _ChecksumsHandler(ocp.AsyncCheckpointHandler):
    """Writes `checksums/process_<i>-of-<n>.json`: process 0's holds a sha256 (with dtype and shape)
    of every state array and of the metadata, every process's that of its data iterator's state."""

    def _prepare(self, directory, args: _ChecksumsSave):
        """Takes what it hashes now, in the save's blocking part (the train step that follows donates
        the state's buffers, the iterator moves on); returns the hashing and writing, for later."""
        primary = jax.process_index() == 0
        host = _host(args.state)
        data = _data_state(args.data_iterator)

        def write():
            record = {"data": _json_digest(data)}
            if primary:
                record["run"] = _json_digest(args.run)
                record["state"] = {k: [str(a.dtype), list(a.shape), _digest(a)] for k, a in host.items()}
            path = directory / _checksums_file(jax.process_index(), jax.process_count())
            path.write_text(json.dumps(record, indent=1))

        return write

    async def async_save(self, directory, args: _ChecksumsSave):
        write = self._prepare(directory, args)

        async def commit():  # in orbax's background thread
            write()

        return [ocp.future.CommitFutureAwaitingContractedSignals(commit(), name="lightnets_checksums")]

    def save(self, directory, args: _ChecksumsSave):
        self._prepare(directory, args)()

    def restore(self, directory, args=None):
        raise NotImplementedError("RunCheckpoints reads the checksums itself")


@dataclasses.dataclass
class _ChecksumsRestore(ocp.args.CheckpointArgs):  # orbax's registry wants one; never used
    pass


ocp.args.register_with_handler(_ChecksumsHandler, for_save=True)(_ChecksumsSave)
ocp.args.register_with_handler(_ChecksumsHandler, for_restore=True)(_ChecksumsRestore)


# --- one run per workdir -------------------------------------------------------------------------


class WorkdirLock:
    """`<workdir>/lightnets.lock`: an exclusive `flock` held for a run's life, the holder's host,
    pid and start time in the file.

    The OS releases the flock when its process dies, even by SIGKILL, so no lock outlives its run;
    the file's contents then stay, and the next run takes over from them with a message. A file
    that names a live process of this host although its flock is free (a file system that ignores
    flock) still refuses.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.path = pathlib.Path(workdir).absolute() / LOCK
        self._file = None

    def acquire(self) -> None:
        """Takes the lock, or raises FileExistsError naming the run that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")  # held until release
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(file)
            file.close()
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise OSError(f"cannot lock {self.path} ({e.strerror}): does this file system support flock?") from None
            raise FileExistsError(
                f"{self.path.parent} is in use by {_describe(holder)} ({self.path}): wait for it to end or use "
                "another --workdir"
            ) from None
        previous = _read_holder(file)
        if previous and previous.get("host") == socket.gethostname() and previous.get("pid") != os.getpid():
            if _alive(previous.get("pid")):
                file.close()
                raise FileExistsError(
                    f"{self.path.parent} is in use by {_describe(previous)}, which is running although its lock is "
                    f"free (a file system without flock?); if that process is no lightnets run, delete {self.path}"
                )
        if previous and previous.get("pid") != os.getpid():
            logging.warning("Taking over %s from %s, which no longer runs", self.path, _describe(previous))
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        file.seek(0)
        file.truncate()
        file.write(json.dumps(holder) + "\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is None:
            return
        self._file.truncate(0)  # released cleanly: nothing to take over (the file stays: see acquire)
        self._file.close()  # releases the flock
        self._file = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _read_holder(file) -> dict | None:
    file.seek(0)
    try:
        return json.loads(file.read() or "null")
    except json.JSONDecodeError:
        return None


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another run"
    return f"the run of pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# --- a run's checkpoints -------------------------------------------------------------------------


class RunCheckpoints:
    """The trainer's checkpoints: keeps the last `keep` steps and the `keep_best` best by `best_metric`.

    Steps saved with `metrics` (after an evaluation) compete for best; the others are kept only
    while they are among the last `keep`. `lock` takes the workdir's `WorkdirLock` (the parent of
    `directory`) until `close`, on process 0: the trainer does, readers do not.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        keep_best: int = 1,
        best_metric: str = "top1",
        lock: bool = False,
    ):
        self.directory = pathlib.Path(directory).absolute()
        self._lock = WorkdirLock(self.directory.parent) if lock and jax.process_index() == 0 else None
        if self._lock is not None:
            self._lock.acquire()  # before orbax, which removes unfinished saves (another run's?) at start
        self._good: set[int] = set()  # steps this object wrote or verified
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
        try:
            self.manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "data", "run", "checksums")
            )
        except BaseException:
            self.release_lock()
            raise

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any, run: dict, metrics: dict | None = None) -> None:
        """Starts an asynchronous save of `step`; it becomes visible once complete."""
        import grain

        items = {
            "state": ocp.args.StandardSave(state),
            "data": grain.checkpoint.CheckpointSave(data_iterator),
            "run": ocp.args.JsonSave(run),
            "checksums": _ChecksumsSave(state, data_iterator, run),
        }
        metrics = {k: float(v) for k, v in metrics.items()} if metrics else None
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
        self._good.add(step)

    def _checksums(self, step: int, process: int | None = None) -> dict | None:
        """The checksums recorded by `process` (0: the state's) when `step` was written; None if it predates them."""
        directory = self.directory / str(step) / "checksums"
        if not directory.exists():
            return None
        name = "process_0-of-*.json" if process is None else _checksums_file(process, jax.process_count())
        paths = list(directory.glob(name))
        if not paths:
            raise DamagedCheckpoint(f"{directory} lacks {name}")
        try:
            return json.loads(paths[0].read_text())
        except (OSError, ValueError) as e:
            raise DamagedCheckpoint(f"cannot read {paths[0]}: {e}") from None

    def read_run(self, step: int) -> dict:
        """The metadata saved with `step` (the model and the config of the run), verified."""
        try:
            run = self.manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore())).run
        except Exception as e:
            raise DamagedCheckpoint(f"cannot read its metadata: {_short(e)}") from None
        recorded = self._checksums(step)
        if recorded is not None and recorded["run"] != _json_digest(run):
            raise DamagedCheckpoint(f"its metadata ({self.directory / str(step) / 'run'}) differs from its checksum")
        return run

    def restore(self, step: int, like: Any, data_iterator: Any = None) -> Any:
        """The state saved at `step`, shaped and sharded as `like`, verified; moves `data_iterator` to its position.

        `like` None reads the state as it was saved (nested dicts), on this process's first device.
        Raises DamagedCheckpoint for a step that cannot be read or differs from its checksums, and
        ValueError for an intact one that does not fit `like` or `data_iterator`.
        """
        recorded = self._checksums(step)
        if recorded is not None and like is not None:
            _check_fits(recorded["state"], like, f"step {step} of {self.directory}")
        try:
            abstract = self._as_saved(step) if like is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
            state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
        except Exception as e:
            if _out_of_memory(e):  # the files may be intact: never set aside for this (one line, cli.run)
                raise ValueError(
                    f"step {step} of {self.directory} does not fit in memory here ({_short(e)}): it is left as it "
                    "is; restore it where it fits, or with fewer arrays per device (more devices)"
                ) from None
            raise DamagedCheckpoint(f"cannot read its state: {_short(e)}") from None
        if recorded is None:
            logging.warning(
                "Step %d of %s has no checksums (written before lightnets recorded them): not verified",
                step,
                self.directory,
            )
        else:
            for name, a in _host(state).items():
                if _digest(a) != recorded["state"][name][2]:
                    raise DamagedCheckpoint(f"{name} differs from its checksum")
            self._good.add(step)
        if data_iterator is not None:
            self._restore_data(step, data_iterator, recorded is not None)
        return state

    def _as_saved(self, step: int) -> Any:
        """The state's tree as orbax's metadata records it, every array placed on this process's
        first device: a target that reads a step whatever the devices it was saved from (without
        one, orbax refuses a step saved on another topology)."""
        handler = ocp.StandardCheckpointHandler()
        try:
            saved = handler.metadata(self.directory / str(step) / "state")
        finally:
            handler.close()
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)

    def _restore_data(self, step: int, data_iterator: Any, verify: bool) -> None:
        import grain

        path = self.directory / str(step) / "data" / _checksums_file(jax.process_index(), jax.process_count())
        if verify:
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise DamagedCheckpoint(f"cannot read the data iterator's state {path}: {e}") from None
            if _json_digest(saved) != self._checksums(step, jax.process_index())["data"]:
                raise DamagedCheckpoint(f"the data iterator's state {path} differs from its checksum")
        try:
            self.manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iterator)))
        except Exception as e:
            if not verify:
                raise DamagedCheckpoint(f"cannot read the data iterator's state: {_short(e)}") from None
            # Intact, so it does not fit this iterator (grain needs the same data_workers, processes).
            raise ValueError(
                f"the data iterator's position in step {step} of {self.directory} does not fit this "
                f"input pipeline (same data_workers and processes?): {_short(e)}"
            ) from None

    def restore_latest(self, like: Any, data_iterator: Any = None, check_run=None) -> tuple[int | None, Any, Any]:
        """The newest intact step: (step, state shaped and sharded as `like`, its metadata), or (None, like, None).

        A damaged step is reported in one line and set aside, and the next older one is tried.
        `like` may be a function of the step's metadata that returns it. `check_run(metadata)` may
        refuse a step that does not fit (raise ValueError): that is no damage, and propagates.
        `data_iterator` moves to the restored step's position.
        """
        initial = data_iterator.get_state() if data_iterator is not None else None
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                run = self._agreed(self.read_run, step)
                if check_run is not None:
                    check_run(run)
                target = like(run) if callable(like) else like
                return step, self._agreed(self.restore, step, target, data_iterator), run
            except DamagedCheckpoint as e:
                self._set_aside(step, str(e))
        if initial is not None:  # a damaged step may have moved it
            data_iterator.set_state(initial)
        return None, None if callable(like) else like, None

    def _agreed(self, fn, *args):
        """`fn(*args)`, raising DamagedCheckpoint on every process if it did on any (all fall back alike)."""
        try:
            result, problem = fn(*args), None
        except DamagedCheckpoint as e:
            result, problem = None, e
        if jax.process_count() > 1:
            damaged = multihost_utils.process_allgather(np.asarray(problem is not None)).any()
            if damaged and problem is None:
                problem = DamagedCheckpoint("damaged as another process read it")
        if problem is not None:
            raise problem
        return result

    def _set_aside(self, step: int, problem: str) -> None:
        """Renames a damaged step `<step>.corrupt-<n>`: kept for a look, out of orbax's sight."""
        path = self.directory / str(step)
        n = 1
        while path.with_name(f"{step}.corrupt-{n}").exists():
            n += 1
        target = path.with_name(f"{step}.corrupt-{n}")
        done = "set aside as " + target.name
        if jax.process_index() == 0:
            try:
                if self._lock is not None:
                    path.rename(target)
                else:  # a reader (evaluation, inference): never under a training run's feet
                    with WorkdirLock(self.directory.parent):
                        path.rename(target)
            except FileExistsError:
                done = "left in place while a run holds the workdir"
            except OSError as e:
                done = f"left in place ({e.strerror})"
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("lightnets: set aside a damaged step")
        logging.warning(
            "Checkpoint step %d in %s is damaged (%s): %s; trying the previous one", step, self.directory, problem, done
        )
        self.manager.reload()

    def last_good_step(self) -> int | None:
        """The newest step that this object wrote or verified and that is on disk (saves in flight completed)."""
        self.wait()
        return max(self._good & set(self.manager.all_steps()), default=None)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def close(self) -> None:
        try:
            self.manager.close()
        finally:
            self.release_lock()


@dataclasses.dataclass
class RunWeights:
    """A trainer run's weights at one step."""

    model: nnx.Module  # the run's network (variant, class count), as created: its weights are not set
    weights: dict[str, nnx.State]  # "params", "batch_stats", "ema_params", "ema_batch_stats"
    step: int
    run: dict  # the run's metadata: model, config, class names, evaluations


def load_run(workdir: str | os.PathLike, *, dtype: Any = jnp.float32) -> RunWeights:
    """The weights of the newest intact step of a trainer workdir, on this process's first device.

    The step's state is read as it was saved (`RunCheckpoints.restore` without `like`: no
    optimiser is built to shape it), from any number of devices, and every array is verified
    against the step's checksums: a damaged step is reported and set aside (left in place while a
    run holds the workdir), and the next older one is used. The caller picks the raw or the EMA
    weights, and checks that they are finite, before setting any on `model`. A workdir without
    checkpoints is a FileNotFoundError, and is left as it was.
    """
    workdir = pathlib.Path(workdir).absolute()
    missing = FileNotFoundError(f"{workdir} holds no checkpoint: neither {METADATA} nor checkpoints/")
    if not (workdir / "checkpoints").is_dir():
        raise missing
    ckpts = RunCheckpoints(workdir / "checkpoints")
    try:
        if ckpts.latest_step() is None:
            raise missing
        step, state, run = ckpts.restore_latest(None)
        if step is None:
            raise FileNotFoundError(f"{workdir} holds no intact checkpoint (the damaged ones are reported above)")
    finally:
        ckpts.close()
    model = create_model(run["model"], num_classes=run["num_classes"], dtype=dtype)
    _, params, batch_stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    like = {"params": params, "batch_stats": batch_stats, "ema_params": params, "ema_batch_stats": batch_stats}
    arrays = {_name(path): x for path, x in jax.tree_util.tree_flatten_with_path(state)[0]}
    shapes = {name: [str(x.dtype), list(x.shape)] for name, x in arrays.items()}
    _check_fits(shapes, like, f"step {step} of {ckpts.directory}", partial=True)
    weights = jax.tree_util.tree_map_with_path(lambda path, _: arrays[_name(path)], like)
    return RunWeights(model, weights, step, run)


def _check_fits(recorded: dict, like: Any, what: str, *, partial: bool = False) -> None:
    """Refuses (ValueError) an intact checkpoint whose arrays are not those of `like` (names, dtypes,
    shapes); with `partial`, its arrays that `like` does not name are not compared."""
    expected = {}
    for path, x in jax.tree_util.tree_flatten_with_path(like)[0]:
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        expected[_name(path)] = [str(x.dtype), list(x.shape)]
    saved = {k: v[:2] for k, v in recorded.items() if not partial or k in expected}
    if saved != expected:
        names = sorted(saved.keys() | expected.keys())
        differ = [
            f"{k}: {saved.get(k, 'absent')} -> {expected.get(k, 'absent')}"
            for k in names
            if saved.get(k) != expected.get(k)
        ]
        unmatched = {k for k in names if saved.get(k) != expected.get(k)}
        if unmatched == {k for k in expected if k.startswith("loss_scale.") and k not in saved}:
            raise ValueError(
                f"{what} was written by a lightnets from before the train state held the float16 "
                "loss scale (2026-12-02): finish that run with the lightnets that began it, or "
                "start this one in another --workdir"
            )
        raise ValueError(
            f"{what} holds another state than this run's ({len(differ)} arrays differ, e.g. "
            f"{'; '.join(differ[:3])}): did the optimiser or the model change?"
        )


def _out_of_memory(e: BaseException) -> bool:
    """Whether reading failed for want of host or device memory (XLA's RESOURCE_EXHAUSTED), not damage."""
    return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e)


def _short(e: Exception) -> str:
    """One line from an exception, e.g. TensorStore's page-long one: its first line and the array it read."""
    text = str(e)
    arrays = re.findall(r"'path': '([^'/][^']*?)/?'", text)
    line = text.strip().splitlines()[0].split(" See full TensorStore details")[0] if text.strip() else type(e).__name__
    line = line if len(line) <= 160 else line[:157] + "..."
    return f"{arrays[-1]}: {line}" if arrays else line
