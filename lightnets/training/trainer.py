"""The training loop: config -> data -> model -> train step -> checkpoints and metrics.

    trainer.train_and_evaluate(config, workdir)   # what `python main.py` runs
    trainer.evaluate(config, workdir, checkpoint=None)

One path, top to bottom: `train_and_evaluate` checks the config (before anything compiles),
builds the mesh, the data, the model and the optimiser, restores the latest checkpoint of the
workdir if there is one, then loops over the jitted train step. Around the step: console progress
with an ETA, clu metric writers (TensorBoard in the workdir), evaluation of the raw and EMA weights
every `eval_every_epochs`, asynchronous checkpoints, a profiler trace on request, and a clean stop
on SIGTERM. The model, optimiser and jitted steps come from `lightnets.training.steps`, the step
itself is the pure function of `lightnets.training.train`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from input_pipeline import datasets, transforms
from lightnets import checkpoint, preprocessing
from lightnets.models.registry import model_info
from lightnets.training import loss_scale, optim, progressive, train
from lightnets.training.steps import DTYPES, Steps, build_model, build_steps, train_step_of


class TrainingDiverged(RuntimeError):
    """The loss or the gradients stopped being finite."""


@dataclasses.dataclass
class Setup:
    """What the loop needs, built from the config before anything is compiled."""

    mesh: jax.sharding.Mesh
    model: nnx.Module
    train_source: Any
    eval_source: Any
    steps_per_epoch: int
    num_train_steps: int
    train_transform: Any  # transforms.TrainTransform or PadCropTransform, of the first stage
    eval_transform: transforms.EvalTransform
    stages: list[progressive.Stage]  # one, holding the whole run, without progressive learning


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises a ValueError for a config that cannot train, naming the field and what would work.

    Everything here is checked before anything is built or compiled, so that a bad value fails in
    the first second rather than at the first evaluation, hours into a run.
    """
    from configs import default

    expected, given = _fields(default.get_config()), _fields(config)
    missing = sorted(expected - given)
    if missing:
        raise ValueError(f"the config lacks the fields {missing}: build it from configs/default.py's get_config()")
    unknown = sorted(given - expected)
    if unknown:
        raise ValueError(f"the config has fields that configs/default.py does not define: {unknown}")
    model_info(config.model)  # unknown names raise with close matches
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype {config.dtype!r} is not one of {list(DTYPES)}")
    if config.optimizer not in optim.OPTIMIZERS:
        raise ValueError(f"optimizer {config.optimizer!r} is not one of {list(optim.OPTIMIZERS)}")
    if config.schedule not in optim.SCHEDULES:
        raise ValueError(f"schedule {config.schedule!r} is not one of {list(optim.SCHEDULES)}")
    for field, ok, allowed in _RANGES:
        value = config[field]
        if value is not None and not (_is_number(value) and ok(value)):
            raise ValueError(f"{field}={value!r} is out of range: it must be {allowed}")
    for field in ("crop_scale", "crop_ratio"):
        value = tuple(config[field])
        if not (len(value) == 2 and all(_is_number(v) for v in value) and 0 < value[0] <= value[1]):
            raise ValueError(f"{field}={value!r} must be (low, high) with 0 < low <= high")
    if config.crop_scale[1] > 1:
        raise ValueError(f"crop_scale={tuple(config.crop_scale)!r}: an area fraction is at most 1")
    loss_scale.from_config(config.loss_scale, config.dtype)  # "dynamic" or a number
    datasets.local_batch_size(config.batch_size)  # must divide over the devices
    if config.eval_batch_size:
        datasets.local_batch_size(config.eval_batch_size)
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        raise ValueError("set num_epochs or num_train_steps to a positive number")
    data_transforms(config)  # a bad RandAugment string or interpolation, mean or std, init_from
    progressive.check(config)


def _fields(config, prefix: str = "") -> set[str]:
    """The field names of a config, nested ones dotted (`progressive.stages`)."""
    names = set()
    for key in config.keys():
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            names |= _fields(value, f"{prefix}{key}.")
        else:
            names.add(prefix + key)
    return names


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A checked copy of `config` with what it leaves to the model made explicit: `mean` and `std`
    (`preprocessing.normalization`). The run records this copy, so that everything that later reads
    the run (resuming, evaluation, predict, export) uses the values it trained with."""
    check_config(config)
    config = config.copy_and_resolve_references()
    norm = preprocessing.normalization(config)
    config.mean, config.std = norm.mean, norm.std
    return config


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


def _fraction(v):  # a probability
    return 0 <= v <= 1


def _below_one(v):  # a decay or smoothing factor: 1 would stop learning
    return 0 <= v < 1


# (field, test, what would work); None is allowed where the default is a placeholder.
_RANGES = (
    ("image_size", _positive, "a positive number of pixels"),
    ("batch_size", _positive, "a positive number of images"),
    ("eval_batch_size", _non_negative, "a positive number of images, or 0 for batch_size"),
    ("num_classes", _non_negative, "a positive class count, or 0 for the data set's"),
    ("num_epochs", lambda v: True, "a number"),
    ("num_train_steps", lambda v: True, "a whole number (> 0 overrides num_epochs)"),
    ("seed", lambda v: True, "a whole number"),
    ("dropout", _below_one, "in [0, 1)"),
    ("drop_path_rate", _below_one, "in [0, 1)"),
    ("lr", _positive, "positive and finite"),
    ("lr_base_batch_size", _non_negative, "a positive number of images, or 0 for no scaling"),
    ("momentum", _below_one, "in [0, 1)"),
    ("weight_decay", _non_negative, ">= 0"),
    ("opt_eps", _positive, "positive"),
    ("b1", _below_one, "in [0, 1)"),
    ("b2", _below_one, "in [0, 1)"),
    ("rmsprop_decay", _below_one, "in [0, 1)"),
    ("grad_clip_norm", _non_negative, ">= 0 (0: no clipping)"),
    ("warmup_epochs", _non_negative, ">= 0"),
    ("warmup_lr", _non_negative, ">= 0"),
    ("min_lr", _non_negative, ">= 0"),
    ("decay_epochs", _positive, "a positive number of epochs"),
    ("decay_rate", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("label_smoothing", _below_one, "in [0, 1)"),
    ("ema_decay", _below_one, "in [0, 1) (0: no EMA)"),
    ("data_workers", lambda v: v >= -1, "a number of processes, 0 for threads or -1 for one per core"),
    ("data_threads", _positive, "a positive number of threads"),
    ("hflip", _fraction, "a probability in [0, 1]"),
    ("crop_padding", lambda v: v >= 0 and v == int(v), "a whole number of pixels >= 0"),
    ("crop_pct", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("reprob", _fraction, "a probability in [0, 1]"),
    ("mixup", _non_negative, "a Beta alpha >= 0 (0: off)"),
    ("cutmix", _non_negative, "a Beta alpha >= 0 (0: off)"),
    ("mixup_prob", _fraction, "a probability in [0, 1]"),
    ("mixup_switch_prob", _fraction, "a probability in [0, 1]"),
    ("log_every_steps", _positive, "a positive number of steps"),
    ("eval_every_epochs", _non_negative, "a positive number of epochs, or 0 for only at the end"),
    ("checkpoint_every_steps", _non_negative, "a positive number of steps, or 0 for at every evaluation"),
    ("keep_checkpoints", _positive, "at least 1"),
    ("profile_steps", _non_negative, ">= 0 (0: no trace)"),
)


def setup(config: ml_collections.ConfigDict) -> Setup:
    """Data, model and mesh for training; every error here comes before any compilation."""
    check_config(config)
    _, eval_transform = data_transforms(config)
    train_source = _source(config, "train")
    eval_source = _source(config, "validation")
    num_classes = config.num_classes or train_source.num_classes
    if num_classes < train_source.num_classes:
        raise ValueError(f"num_classes={num_classes} but {config.dataset} has {train_source.num_classes} classes")
    if len(train_source) < config.batch_size:
        raise ValueError(f"{config.dataset} has {len(train_source)} training examples, fewer than batch_size")
    steps_per_epoch = optim.steps_per_epoch(len(train_source), config.batch_size)
    total = config.num_train_steps if config.num_train_steps > 0 else math.ceil(config.num_epochs * steps_per_epoch)
    stages = progressive.stages(config.progressive, total)
    progressive.check_lengths(stages, steps_per_epoch)
    first = progressive.stage_config(config, stages[0])  # the model and the data as the first stage trains
    model = build_model(first, num_classes)
    if "dropout" in stages[0].values:
        progressive.set_dropout(model, stages[0].values["dropout"])  # a model without dropout is refused
    return Setup(
        train.make_mesh(),
        model,
        train_source,
        eval_source,
        steps_per_epoch,
        total,
        data_transforms(first)[0],
        eval_transform,
        stages,
    )


def data_transforms(config: ml_collections.ConfigDict) -> tuple[Any, transforms.EvalTransform]:
    """The host-side training and evaluation transforms the config asks for (bad values raise here)."""
    if config.train_transform not in transforms.TRAIN_TRANSFORMS:
        choices = list(transforms.TRAIN_TRANSFORMS)
        raise ValueError(f"train_transform {config.train_transform!r} is not one of {choices}")
    fill = preprocessing.normalization(config).fill  # RandAugment's, timm's rule
    if config.train_transform == "pad_crop":
        train_transform = transforms.PadCropTransform(
            config.image_size,
            padding=config.crop_padding,
            hflip=config.hflip,
            randaugment=config.randaugment,
            interpolation=config.train_interpolation,
            fill=fill,
        )
    else:
        train_transform = transforms.TrainTransform(
            config.image_size,
            scale=config.crop_scale,
            ratio=config.crop_ratio,
            hflip=config.hflip,
            randaugment=config.randaugment,
            interpolation=config.train_interpolation,
            draft=config.jpeg_draft,
            fill=fill,
        )
    eval_transform = transforms.EvalTransform(
        config.image_size, crop_pct=config.crop_pct, interpolation=config.eval_interpolation, draft=config.jpeg_draft
    )
    return train_transform, eval_transform


def _source(config: ml_collections.ConfigDict, split: str):
    return datasets.create_source(
        config.dataset, split, image_size=config.image_size, num_classes=config.num_classes, data_dir=config.data_dir
    )


def _workers(config: ml_collections.ConfigDict) -> int:
    """Data worker processes for this host: -1 is one per core."""
    workers = config.data_workers
    return (os.cpu_count() or 1) if workers < 0 else workers


def _global(mesh, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's share of a batch -> global arrays sharded over the data axis."""
    sharding = train.batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def _run_metadata(config: ml_collections.ConfigDict, model: nnx.Module, class_names: list[str]) -> dict:
    # The class names let `lightnets.predict` name what it sees without the data set at hand.
    # `evaluations` (every evaluation's step and metrics) gives a resumed run its closing summary.
    return {
        "model": model.variant,
        "num_classes": model.num_classes,
        "config": config.to_dict(),
        "class_names": list(class_names),
        "evaluations": [],
    }


def run_evaluation(eval_step, state, source, config, mesh, transform) -> dict[str, float]:
    """Loss, top-1 and top-5 over the whole evaluation split, for the raw and the EMA weights.

    `skipped` counts the unreadable images, left out of the averages.
    """
    totals, skipped = None, 0
    batch_size = config.eval_batch_size or config.batch_size
    batches = datasets.eval_batches(
        source, global_batch_size=batch_size, transform=transform, workers=_workers(config), threads=config.data_threads
    )
    for batch in batches:
        skipped += int(batch.pop("skipped"))
        b = _global(mesh, batch)
        sums = eval_step(state, b["image"], b["label"], b["valid"])
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = _fetch(totals)
    count = float(totals.pop("count"))  # the EMA's metrics are there only when the run keeps an EMA
    metrics = {k: float(v) / count for k, v in totals.items()}
    metrics["skipped"] = _sum_over_processes(skipped)
    return metrics


def _sum_over_processes(count: int) -> int:
    if jax.process_count() == 1:
        return count
    return int(multihost_utils.process_allgather(np.asarray(count, np.int64)).sum())


# --- the loop: restore or init, the steps with their periodic actions, evaluate and save ---------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> train.TrainState:
    """Trains as `config` says, resuming from `workdir` when it holds a checkpoint; returns the final state."""
    workdir = pathlib.Path(workdir).absolute()
    config = resolve_config(config)
    r = _restore_or_init(config, workdir)
    s, ema = r.s, config.ema_decay > 0
    if r.step >= s.num_train_steps:
        logging.info(
            "%s is complete: step %d of %d was trained already; nothing to do (raise "
            "--config.num_epochs or --config.num_train_steps to train further)",
            workdir,
            r.step,
            s.num_train_steps,
        )
        r.ckpts.close()
        _close(r.data)
        _summary(workdir, r.ckpts.directory, r.metadata["evaluations"], ema=ema, seconds=None)
        return r.state

    writer = _metric_writer(workdir)
    if r.step == 0:
        writer.write_hparams(_flat_hparams(config))
    fsdp = " (FSDP)" if config.fsdp else ""
    devices = f"{jax.device_count()} device{'s' if jax.device_count() > 1 else ''}{fsdp}"
    logging.info(
        "Training %s on %s: %d steps of %d images (%d per epoch) on %s",
        config.model,
        config.dataset,
        s.num_train_steps,
        config.batch_size,
        s.steps_per_epoch,
        devices,
    )
    profiler = _Profiler(workdir / "profile", r.step + 5, config.profile_steps)  # after compilation and warm-up
    stop = _StopRequest()
    started = time.perf_counter()
    try:
        _loop(r, writer, profiler, stop, devices)
        logging.info(
            "Parameters at step %d: fingerprint %s (process %d)",
            r.step,
            fingerprint(r.state.params),
            jax.process_index(),
        )
        if r.step >= s.num_train_steps:
            r.ckpts.wait()
            _summary(
                workdir, r.ckpts.directory, r.metadata["evaluations"], ema=ema, seconds=time.perf_counter() - started
            )
    finally:
        profiler.close()
        r.ckpts.wait()  # an asynchronous save in flight completes before we leave
        r.ckpts.close()
        _close(r.data)
        writer.close()
        stop.restore()
    return r.state


@dataclasses.dataclass
class _Run:
    """A run as the loop holds it: what `setup` and `build_steps` made, the restored state and position."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    s: Setup
    steps: Steps
    ckpts: checkpoint.RunCheckpoints
    state: train.TrainState
    data: Any  # the train iterator, of `data_stage`'s transform
    data_stage: int
    metadata: dict  # saved with every checkpoint
    step: int


def _restore_or_init(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> _Run:
    """Builds everything the run needs and restores the newest intact checkpoint of `workdir` into it."""
    s = setup(config)
    steps = build_steps(config, s.model, s.mesh, s.steps_per_epoch)
    data = _train_data(config, s, s.train_transform)
    ckpts = checkpoint.RunCheckpoints(
        workdir / "checkpoints",
        keep=config.keep_checkpoints,
        best_metric="ema_top1" if config.ema_decay > 0 else "top1",
        lock=True,
    )
    try:
        state, metadata = _resume(
            ckpts, config, _run_metadata(config, s.model, s.train_source.class_names), steps.state, data
        )
    except BaseException:
        ckpts.close()  # and its lock: the loop's `finally` is not reached
        _close(data)
        raise
    return _Run(config, workdir, s, steps, ckpts, state, data, 0, metadata, int(_fetch(state.step)))


def _train_data(config: ml_collections.ConfigDict, s: Setup, transform):
    return datasets.train_iterator(
        s.train_source,
        global_batch_size=config.batch_size,
        seed=config.seed,
        transform=transform,
        workers=_workers(config),
        threads=config.data_threads,
    )


def _close(data) -> None:
    if hasattr(data, "close"):  # grain worker processes
        data.close()


def _loop(r: _Run, writer, profiler: _Profiler, stop: _StopRequest, devices: str) -> None:
    """Steps until the run is complete or asked to stop: a log line every `log_every_steps`, an
    evaluation every `eval_every_epochs`, a checkpoint at each and every `checkpoint_every_steps`."""
    config, s = r.config, r.s
    log_every = config.log_every_steps
    checkpoint_every = config.checkpoint_every_steps or s.steps_per_epoch
    eval_epochs = config.eval_every_epochs
    eval_every = max(1, round(eval_epochs * s.steps_per_epoch)) if eval_epochs > 0 else s.num_train_steps
    progress = _Progress(s.num_train_steps, config.batch_size, s.steps_per_epoch, eval_every)
    stage, train_step, pending = None, r.steps.train_step, []
    clock = _StageClock(s.steps_per_epoch)
    while r.step < s.num_train_steps:
        if stage is None or r.step == stage.end:  # a progressive stage starts (or the run does)
            if stage is not None:
                clock.report(stage, r.step)
            stage = progressive.stage_at(s.stages, r.step)
            if len(s.stages) > 1:
                train_step = _enter_stage(r, stage)
                logging.info("Progressive learning: %s", stage.describe())
            compiled = False
        profiler.before(r.step)
        batch = next(r.data)
        skipped = int(batch.pop("skipped"))
        progress.data_skipped += skipped
        batch = _global(s.mesh, batch)
        if not compiled:
            what = f"stage {stage.index + 1}'s train step" if len(s.stages) > 1 else "the train step"
            logging.info("Compiling %s for %s (the first step waits for it)", what, devices)
            compile_start = time.perf_counter()
        r.state, metrics = train_step(r.state, batch["image"], batch["label"])
        r.step += 1
        pending.append(metrics)
        if not compiled:  # keep compilation out of the throughput figures
            jax.block_until_ready(metrics)
            logging.info("Compiled and ran the first step in %.1f s", time.perf_counter() - compile_start)
            progress.restart(r.step)
            clock.start(r.step)
            compiled = True
        profiler.after(r.step, r.state)

        stopping = stop.requested(r.step, log_every)
        evaluate_now = r.step % eval_every == 0 or r.step == s.num_train_steps
        save_now = evaluate_now or r.step % checkpoint_every == 0 or stopping
        if r.step % log_every == 0 or save_now:
            _report(r, pending, progress, writer, stage)
            pending = []
        if save_now:
            paused = time.perf_counter()
            _evaluate_and_save(r, evaluate_now, progress, writer)
            clock.pause(time.perf_counter() - paused)
            progress.restart(r.step)
        if stopping:
            logging.warning("Stop requested (SIGTERM): saved step %d; run the same command to resume", r.step)
            return
    clock.report(stage, r.step)


def _enter_stage(r: _Run, stage: progressive.Stage) -> Any:
    """The train step of `stage`, and `r.data` switched to its transform at the same data position."""
    config = progressive.stage_config(r.config, stage)
    if "dropout" in stage.values:
        progressive.set_dropout(r.s.model, stage.values["dropout"])
    train_step = train_step_of(config, train.graph_defs(r.s.model), r.steps, r.s.mesh)
    if stage.index != r.data_stage:
        data = _train_data(config, r.s, data_transforms(config)[0])
        data.set_state(r.data.get_state())  # positions only: the random draws follow from seed and index
        _close(r.data)
        r.data, r.data_stage = data, stage.index
    return train_step


def _report(r: _Run, pending: list, progress: _Progress, writer, stage: progressive.Stage) -> None:
    """The console line and the TensorBoard scalars of the steps whose metrics are `pending`.

    Fetching syncs with the device; nothing diverged may be saved, so this comes first.
    """
    fetched = [_fetch(m) for m in pending]
    # A step that float16's loss scaling skipped changed nothing but the scale: its metrics are
    # left out. A scale below 1 is a divergence.
    applied = [m for m in fetched if not m.get("skipped")]
    means = (
        {k: float(np.mean([m[k] for m in applied])) for k in applied[0] if k not in ("skipped", "loss_scale")}
        if applied
        else {}
    )
    finite = {k: means.pop(f"finite_{k}", 1.0) for k in train.FINITE}
    collapsed = any(m.get("loss_scale", 1.0) < 1 for m in fetched)
    if collapsed or min(finite.values()) < 1 or not all(math.isfinite(v) for v in means.values()):
        raise TrainingDiverged(_divergence(fetched, r.state, r.step, r.ckpts))
    scalars = {f"train_{k}": v for k, v in means.items()}
    scaled = _fetch(r.state.loss_scale)
    # The optimiser's count, which the schedule follows, does not move at a skipped step.
    scalars["learning_rate"] = float(r.steps.schedule(r.step - 1 - int(scaled.skipped)))
    if "loss_scale" in fetched[0]:
        scalars.update(loss_scale=float(scaled.scale), skipped_steps=int(scaled.skipped))
    scalars["data_skipped"] = _sum_over_processes(progress.data_skipped)
    scalars.update(progress.tick(r.step))
    if len(r.s.stages) > 1:
        scalars.update(progressive.scalars(stage))
    writer.write_scalars(r.step, scalars)
    logging.info("%s", progress.line(r.step, scalars))


def _evaluate_and_save(r: _Run, evaluate_now: bool, progress: _Progress, writer) -> None:
    """An evaluation of the raw (and EMA) weights if due, then an asynchronous checkpoint."""
    eval_metrics = None
    if evaluate_now:
        eval_start = time.perf_counter()
        eval_metrics = run_evaluation(
            r.steps.eval_step, r.state, r.s.eval_source, r.config, r.s.mesh, r.s.eval_transform
        )
        progress.eval_seconds = time.perf_counter() - eval_start
        r.metadata["evaluations"].append({"step": r.step, **eval_metrics})
        writer.write_scalars(r.step, {f"eval_{k}": v for k, v in eval_metrics.items()})
        logging.info("step %d eval: %s", r.step, _eval_line(eval_metrics, r.config.ema_decay > 0))
    r.ckpts.save(r.step, r.state, r.data, r.metadata, metrics=eval_metrics)
    writer.flush()


# --- the periodic actions around the step ----------------------------------------------------------
# Ours rather than clu's `periodic_actions` (the flax ImageNet example's), each for what clu's lacks
# (clu 0.0.12, read and tried here):
# - `_Progress`, not `ReportProgress`: our console line (loss, top-1, learning rate, images/s),
#   throughput timed without the evaluations and saves, and an ETA that counts the evaluations
#   still to come; `ReportProgress` gives steps/s and an ETA of the steps alone, as work-unit notes
#   (an INFO line of their own on a local machine) and `steps_per_sec`/`uptime` scalars.
# - `_StageClock`: the training time of each progressive stage; clu has nothing like it.
# - `_Profiler`, not `Profile`: `Profile` leaves its trace running when the run ends or stops
#   inside the traced steps, so that trace is never written and the next run in the process cannot
#   start one; nor does it wait for the device before stopping, so the last traced step may be cut.
# - `_StopRequest`: SIGTERM, agreed between processes. `_metric_writer`: clu's writers, without
#   `create_default_writer`'s LoggingWriter, which would print every scalar to the console again.


class _Progress:
    """Console lines with throughput and an ETA; timing windows exclude evaluation and saving.

    The ETA adds the evaluations still to come at the duration of the last one (the first
    includes the eval step's compilation, so the estimate only improves).
    """

    def __init__(self, total_steps: int, batch_size: int, steps_per_epoch: int, eval_every: int):
        self.total, self.batch_size, self.steps_per_epoch = total_steps, batch_size, steps_per_epoch
        self.eval_every, self.eval_seconds = eval_every, 0.0
        self.data_skipped = 0  # unreadable training images left out, since this process started
        self.restart(0)

    def evaluations_left(self, step: int) -> int:
        left = self.total // self.eval_every - step // self.eval_every
        return left + (self.total % self.eval_every > 0 and step < self.total)

    def restart(self, step: int) -> None:
        self.window_start, self.window_step = time.perf_counter(), step

    def tick(self, step: int) -> dict[str, float]:
        """Throughput over the window that ends at `step` (the caller has synced the device)."""
        elapsed = time.perf_counter() - self.window_start
        steps = max(step - self.window_step, 1)
        self.restart(step)
        step_time = elapsed / steps
        return {"step_time_ms": 1000 * step_time, "images_per_sec": self.batch_size / step_time}

    def line(self, step: int, scalars: dict[str, float]) -> str:
        eta = (self.total - step) * scalars["step_time_ms"] / 1000 + self.evaluations_left(step) * self.eval_seconds
        return (
            f"step {step}/{self.total} (epoch {step / self.steps_per_epoch:.2f}) "
            + (
                f"loss {scalars['train_loss']:.4f} top1 {100 * scalars['train_top1']:.1f}% "
                if "train_loss" in scalars
                else "every step skipped (float16 overflow) "
            )
            + f"lr {scalars['learning_rate']:.4g} | "
            f"{scalars['images_per_sec']:.0f} img/s, {scalars['step_time_ms']:.1f} ms/step, ETA {_duration(eta)}"
            + (f" | {scalars['data_skipped']} unreadable images skipped" if scalars.get("data_skipped") else "")
            + (
                f" | loss scale {scalars['loss_scale']:g}, {scalars['skipped_steps']} steps skipped"
                if "loss_scale" in scalars
                else ""
            )
        )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class _StageClock:
    """Training time of a progressive stage (of the run, without one), less compilation, evaluations, saves."""

    def __init__(self, steps_per_epoch: int):
        self.steps_per_epoch, self.first, self.t0, self.paused = steps_per_epoch, None, 0.0, 0.0

    def start(self, step: int) -> None:
        self.first, self.t0, self.paused = step, time.perf_counter(), 0.0

    def pause(self, seconds: float) -> None:
        self.paused += seconds

    def report(self, stage: progressive.Stage, step: int) -> None:
        if self.first is None or step <= self.first:
            return
        seconds = time.perf_counter() - self.t0 - self.paused
        epochs = (step - self.first) / self.steps_per_epoch
        what = f"Progressive learning: stage {stage.index + 1}/{stage.count} trained" if stage.count > 1 else "Trained"
        logging.info(
            "%s %d steps in %.1f s (%.1f s per epoch, compilation, evaluation and saving left out)",
            what,
            step - self.first,
            seconds,
            seconds / epochs,
        )
        self.first = None


class _Profiler:
    """A profiler trace of `steps` steps (after `start`) in `directory`, for TensorBoard's profile tab."""

    def __init__(self, directory: pathlib.Path, start: int, steps: int):
        self.directory, self.start, self.end = directory, start, start + steps if steps else None
        self.running = False

    def before(self, step: int) -> None:
        if step == self.start and self.end is not None:
            # Without JAX's Python tracer (on by default): it hooks every function call of every
            # thread (the input pipeline's, the checkpointer's), so the host time it shows is
            # inflated, and it installs its hooks into threads while they run.
            options = jax.profiler.ProfileOptions()
            options.python_tracer_level = 0
            jax.profiler.start_trace(str(self.directory), profiler_options=options)
            self.running = True

    def after(self, step: int, state) -> None:
        if self.running and step == self.end:
            jax.block_until_ready(state)
            self.close()
            logging.info("Profiler trace of steps %d-%d in %s", self.start, step, self.directory)

    def close(self) -> None:
        if self.running:  # also when the run ends inside the traced steps
            jax.profiler.stop_trace()
            self.running = False


class _StopRequest:
    """SIGTERM (preemption, `kill`) asks the loop to save and leave at the next step boundary."""

    def __init__(self):
        self.event = threading.Event()
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())

    def requested(self, step: int, every: int) -> bool:
        if jax.process_count() == 1:
            return self.event.is_set()
        # Every process must stop at the same step, and agreeing costs a collective: ask every
        # `every` steps whether any process was asked to stop.
        if step % every:
            return False
        return bool(multihost_utils.process_allgather(np.asarray(self.event.is_set())).any())

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _metric_writer(workdir: pathlib.Path):
    """TensorBoard event files in `workdir`, written by process 0 (the console has its own lines)."""
    # TensorFlow (clu's writer) only writes summaries: with its default thread pools, their
    # spinning threads took a third of the CPU from XLA's step on 2 cores (quickstart 184 s -> 111 s).
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    from clu import metric_writers

    if jax.process_index() > 0:
        return metric_writers.MultiWriter([])
    return metric_writers.AsyncWriter(metric_writers.SummaryWriter(str(workdir)))


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
    flat = {}

    def visit(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                visit(f"{prefix}{k}.", v)
        else:
            flat[prefix[:-1]] = value if isinstance(value, (int, float, str, bool)) else str(value)

    visit("", config.to_dict())
    return flat


def fingerprint(params: Any) -> str:
    """A short hash of parameter values, to compare runs and hosts bit for bit."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(_fetch(params)):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()[:16]


def _fetch(tree: Any) -> Any:
    """Device values -> numpy on every host: a replicated array from this process's copy."""

    def fetch(x):
        if not isinstance(x, jax.Array):
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))  # e.g. FSDP-split parameters

    return jax.tree.map(fetch, tree)


def _summary(
    workdir: pathlib.Path, checkpoints: pathlib.Path, evaluations: list[dict], *, ema: bool, seconds: float | None
) -> None:
    """The closing lines: final and best top-1 (raw and EMA), wall time, where everything is."""
    if jax.process_index() > 0:
        return
    lines = []
    for prefix, label in (("", "top-1"), ("ema_", "EMA top-1")) if ema else (("", "top-1"),):
        scored = [e for e in evaluations if f"{prefix}top1" in e]
        if scored:
            best = max(scored, key=lambda e: e[f"{prefix}top1"])
            lines.append(
                f"{label} {100 * scored[-1][f'{prefix}top1']:.2f}% at the end (step {scored[-1]['step']}), "
                f"best {100 * best[f'{prefix}top1']:.2f}% (step {best['step']})"
            )
    if not lines:
        lines.append("no evaluation was run")
    if seconds is not None:
        lines.append(f"wall time {_duration(seconds)}")
    lines.append(f"checkpoints in {checkpoints}; TensorBoard: tensorboard --logdir={workdir}")
    logging.info("Done: %s", "; ".join(lines))


def _eval_line(m: dict[str, float], ema: bool) -> str:
    line = f"loss {m['loss']:.4f} top1 {100 * m['top1']:.2f}% top5 {100 * m['top5']:.2f}%"
    if ema:
        line += f" | EMA loss {m['ema_loss']:.4f} top1 {100 * m['ema_top1']:.2f}% top5 {100 * m['ema_top5']:.2f}%"
    return line


# Config fields a resumed run may change: how it is logged, checkpointed, evaluated and fed, and
# how long it goes on (to extend it). A difference in any other field changes what the run is.
RESUMABLE_FIELDS = (
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_every_epochs",
    "num_epochs",
    "num_train_steps",
    "data_workers",
    "data_threads",
    "profile_steps",
    "eval_batch_size",
    "data_dir",
    "allow_config_change",
)


# What a run saved before a field existed did in its place, where that is not the field's default:
# every run normalised with ImageNet's mean and std before `mean`/`std` were fields.
_BEFORE_THE_FIELD = {"mean": list(preprocessing.IMAGENET_MEAN), "std": list(preprocessing.IMAGENET_STD)}


def _as_saved(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(json.dumps(config.to_dict()))  # tuples become lists, as in the saved metadata


def saved_config(saved: dict) -> ml_collections.ConfigDict:
    """A run's config from its checkpoint metadata, with the fields it predates filled in as it ran."""
    from configs import default

    return ml_collections.ConfigDict({**_as_saved(default.get_config()), **_BEFORE_THE_FIELD, **saved["config"]})


def _effective(config: dict[str, Any]) -> dict[str, Any]:
    """A saved-style config with `opt_eps` as the optimiser uses it: SGD has none, None is the
    optimiser's own (runs from before opt_eps could be None saved 1e-3 whatever the optimiser)."""
    eps = config.get("opt_eps")
    if config.get("optimizer") == "sgd":
        eps = None
    elif eps is None:
        eps = optim.EPSILON.get(config.get("optimizer"))
    return {**config, "opt_eps": eps}


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """The fields whose values differ between a run's saved config and `config`: field -> (old, new).

    A field the saved run predates counts as what the run did without it (its default, or
    `_BEFORE_THE_FIELD`), so that adding a field to configs/default.py does not refuse old runs.
    """
    new, old = _effective(_as_saved(config)), _effective(_as_saved(saved_config({"config": saved})))
    absent = "(absent)"
    return {
        k: (old.get(k, absent), new.get(k, absent))
        for k in sorted(old.keys() | new.keys())
        if old.get(k, absent) != new.get(k, absent)
    }


def _resume(ckpts: checkpoint.RunCheckpoints, config, run: dict, state, data) -> tuple[train.TrainState, dict]:
    """The state of the newest intact checkpoint that fits `config` (or `state` if none), and the
    metadata to save from now on: `run`, with the history of the config changes it was resumed with.

    A checkpoint of another model or class count, or whose config differs from `config` in a
    field that changes what the run is, is refused (ValueError) unless `allow_config_change`.
    """
    workdir, changes = ckpts.directory.parent, {}

    def fits(saved: dict) -> None:
        if (saved["model"], saved["num_classes"]) != (run["model"], run["num_classes"]):
            raise ValueError(
                f"{workdir} holds a run of {saved['model']} with {saved['num_classes']} classes; this config trains "
                f"{run['model']} with {run['num_classes']}: use another --workdir"
            )
        changes.clear()
        changes.update(config_changes(saved["config"], config))
        refused = [k for k in changes if k not in RESUMABLE_FIELDS]
        if refused and not config.allow_config_change:
            listed = ", ".join(f"{k} {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
            raise ValueError(
                f"{workdir} holds a run with other settings: {listed}; resume with the run's own, use another "
                "--workdir, or accept the changes with --config.allow_config_change=True"
            )

    had_steps = ckpts.latest_step() is not None
    start, state, saved = ckpts.restore_latest(state, data, check_run=fits)
    if start is None:
        if had_steps:
            logging.warning("No intact checkpoint in %s: training from the start", ckpts.directory)
        return state, run
    listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
    accepted = [k for k in changes if k not in RESUMABLE_FIELDS]
    if accepted:
        logging.warning("Resuming with a changed config, as allow_config_change asks: %s", listed)
    elif changes:
        logging.info("Resuming with changes that keep the run what it is: %s", listed)
    history = saved.get("config_changes", [])
    if changes:
        history = [*history, {"step": start, "changes": changes, "accepted_by_allow_config_change": accepted}]
    logging.info("Resumed from %s at step %d", ckpts.directory / str(start), start)
    return state, {**run, "config_changes": history, "evaluations": saved.get("evaluations", [])}


def _divergence(fetched: list[dict], state: train.TrainState, step: int, ckpts: checkpoint.RunCheckpoints) -> str:
    """The message for a run that diverged in the steps whose metrics are `fetched`, ending at `step`.

    Names what stopped being finite first, from the step's flags, and where (from `state`).
    """
    first = step - len(fetched) + 1
    at, cause = step, "the training metrics are not finite"
    for i, m in enumerate(fetched):
        if m.get("loss_scale", 1.0) < 1:
            at = first + i
            skipped = int(_fetch(state.loss_scale.skipped))
            cause = (
                f"the float16 loss scale fell below 1 ({m['loss_scale']:g}; {skipped} steps skipped in all): "
                "the gradients are not finite even unscaled"
            )
            break
        if m.get("skipped"):  # a skipped step kept the state as it was
            continue
        bad = [k for k in train.FINITE if m[f"finite_{k}"] < 1]
        metrics = [k for k, v in m.items() if not k.startswith("finite_") and not np.isfinite(v)]
        if bad or metrics:
            at = first + i
            cause = "; ".join(_nonfinite_part(k, m, state) for k in bad) or ", ".join(f"{k} {m[k]}" for k in metrics)
            break
    good = ckpts.last_good_step()
    where = f"the last good checkpoint is step {good}" if good is not None else "no good checkpoint was saved"
    return (
        f"training diverged at step {at}: {cause}; {where} in {ckpts.directory}. Lower the learning rate "
        "(--config.lr), add warmup (--config.warmup_epochs) or clip (--config.grad_clip_norm)"
        + (", or train in bfloat16 (--config.dtype=bfloat16)." if "loss_scale" in fetched[0] else ".")
    )


_PARTS = {
    "batch_stats": "BatchNorm",
    "params": "parameter",
    "ema_params": "EMA parameter",
    "ema_batch_stats": "EMA BatchNorm",
}
_VARIABLES = {"var": "running variance", "mean": "running mean"}


def _nonfinite_part(part: str, m: dict, state: train.TrainState) -> str:
    """E.g. "BatchNorm running variance is inf in 17 layers", from the arrays of the state (fetched now)."""
    if part == "loss":
        return f"loss {m['loss']}"
    if part == "grads":
        return f"gradients not finite (norm {m['grad_norm']})"
    counts: dict[tuple[str, str], int] = {}
    for entry in checkpoint.nonfinite(_fetch(getattr(state, part)), kinds=True):
        path, kinds = entry.rsplit(": ", 1)
        variable = path.removesuffix(".value").rsplit(".", 1)[-1]
        key = (_VARIABLES.get(variable, variable), kinds.replace(", ", " and "))
        counts[key] = counts.get(key, 0) + 1
    if not counts:  # finite again by now: the flag is all there is
        return f"{_PARTS[part]} values not finite ({part})"
    found = ", ".join(f"{v} is {kinds} in {n} layer{'s' if n > 1 else ''}" for (v, kinds), n in counts.items())
    return f"{_PARTS[part]} {found} ({part})"


def evaluate(config: ml_collections.ConfigDict, workdir: str | None, checkpoint_dir: str | None = None) -> dict:
    """Evaluates a checkpoint on the config's validation split.

    `checkpoint_dir` is a weights directory (the converter's output) or a trainer workdir; by
    default the newest intact checkpoint of `workdir`. Returns the metrics (of the EMA weights too when the
    run kept them).
    """
    check_config(config)
    target = pathlib.Path(checkpoint_dir or workdir).absolute()
    mesh, dtype = train.make_mesh(), DTYPES[config.dtype]
    source = _source(config, "validation")
    if (target / checkpoint.METADATA).exists():  # a weights directory
        model = checkpoint.load_weights(target, dtype=dtype)
        state, graphdefs = train.create_train_state(model, optax.identity())
        what, ema = f"weights {target}", False
        normalize = preprocessing.of_weights(checkpoint.read_metadata(target)).normalize
    else:  # a trainer run: its raw and EMA weights, as inference reads them
        run = checkpoint.load_run(target, dtype=dtype)
        model, weights = run.model, run.weights
        nnx.update(model, weights["params"], weights["batch_stats"])
        state, graphdefs = train.create_train_state(model, optax.identity())
        state = state.replace(ema_params=weights["ema_params"], ema_batch_stats=weights["ema_batch_stats"])
        what, ema = f"{target} step {run.step}", saved_config(run.run).ema_decay > 0
        normalize = preprocessing.of_run(run.run["config"]).normalize
    state = train.put(state, train.state_sharding(mesh, state))
    if model.num_classes < source.num_classes:
        raise ValueError(f"{what} has {model.num_classes} classes, {config.dataset} has {source.num_classes}")
    # The network is fed what it was trained on, whatever this config's own mean and std.
    preprocess = functools.partial(normalize.on_device, dtype=dtype)
    eval_step = train.jit_eval_step(train.make_eval_step(graphdefs, preprocess=preprocess, ema=ema), mesh, state)
    metrics = run_evaluation(eval_step, state, source, config, mesh, data_transforms(config)[1])
    logging.info("Evaluated %s on %s (%d images): %s", what, config.dataset, len(source), _eval_line(metrics, ema))
    return metrics
