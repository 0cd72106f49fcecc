"""What a config builds for training, short of the data: the model, the optimiser and its
schedule, the on-device batch augmentation and the jitted train and eval steps.

    model = steps.build_model(config, num_classes)
    built = steps.build_steps(config, model, train.make_mesh(), steps_per_epoch)
    state, metrics = built.train_step(built.state, images, labels)   # uint8 NHWC, sharded over the mesh

`trainer.train_and_evaluate` trains with these, `benchmarks/` time them. This module imports no
input pipeline (grain, TensorFlow, clu, simplejpeg): a benchmark builds the trainer's own step on
a machine that has only JAX, Flax, optax, orbax and ml_collections (tests/test_layout.py checks it).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from flax import nnx

from lightnets import checkpoint, preprocessing
from lightnets.models.registry import create_model
from lightnets.training import augment, loss_scale, optim, train

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nnx.Module:
    """The configured network, initialised from `config.seed` or from the weights in `init_from`."""
    options = {k: config[k] for k in ("dropout", "drop_path_rate") if config[k] is not None}
    try:
        model = create_model(
            config.model, num_classes=num_classes, dtype=DTYPES[config.dtype], rngs=nnx.Rngs(config.seed), **options
        )
    except TypeError as e:
        raise ValueError(f"{config.model} does not take the options {options}: {e}") from None
    if config.init_from:
        _load_initial_weights(model, config.init_from)
    return model


def _load_initial_weights(model: nnx.Module, directory: str) -> None:
    """Fine-tuning: weights from a converter (or `save_weights`) directory; a new head if the class count differs."""
    source = checkpoint.load_weights(directory)
    if source.variant != model.variant:
        raise ValueError(f"init_from={directory} holds {source.variant}, but the config trains {model.variant}")
    weights = nnx.to_flat_state(nnx.state(source, (nnx.Param, nnx.BatchStat)))
    if source.num_classes != model.num_classes:
        logging.info(
            "init_from: %d classes in %s, %d here: the classifier starts fresh",
            source.num_classes,
            directory,
            model.num_classes,
        )
        weights = [(path, v) for path, v in weights if not model.is_head(path)]
    nnx.update(model, nnx.from_flat_state(weights))


@dataclasses.dataclass
class Steps:
    """The jitted steps of a run, and the state they start from, placed on the mesh."""

    state: train.TrainState
    graphdefs: train.GraphDefs
    train_step: Any
    eval_step: Any
    schedule: optax.Schedule
    normalize: preprocessing.Normalize  # what both steps apply to the uint8 batches
    tx: optax.GradientTransformation
    scaling: loss_scale.LossScale | None  # float16's loss scaling


def build_steps(config: ml_collections.ConfigDict, model: nnx.Module, mesh, steps_per_epoch: int) -> Steps:
    """The optimiser, the initial state and the jitted train and eval steps that `config` asks for."""
    tx = optimizer(config, steps_per_epoch, params=nnx.state(model, nnx.Param))
    scaling = loss_scale.from_config(config.loss_scale, config.dtype)
    state, graphdefs = train.create_train_state(model, tx, scaling)
    state = train.put(state, train.state_sharding(mesh, state, fsdp=config.fsdp))
    normalize = preprocessing.normalization(config)
    preprocess = functools.partial(normalize.on_device, dtype=DTYPES[config.dtype])
    eval_step = train.make_eval_step(graphdefs, preprocess=preprocess, ema=config.ema_decay > 0)
    steps = Steps(
        state=state,
        graphdefs=graphdefs,
        train_step=None,
        eval_step=train.jit_eval_step(eval_step, mesh, state, fsdp=config.fsdp),
        schedule=schedule(config, steps_per_epoch),
        normalize=normalize,
        tx=tx,
        scaling=scaling,
    )
    steps.train_step = train_step_of(config, train.graph_defs(model), steps, mesh)
    return steps


def train_step_of(config: ml_collections.ConfigDict, graphdefs: train.GraphDefs, steps: Steps, mesh) -> Any:
    """The jitted train step of `config` (a progressive stage's: its Mixup, CutMix and, in
    `graphdefs`, its dropout), on `steps`' optimiser and state; it compiles at its first call."""
    preprocess = functools.partial(steps.normalize.on_device, dtype=DTYPES[config.dtype])
    step_fn = train.make_train_step(
        graphdefs,
        steps.tx,
        label_smoothing=config.label_smoothing,
        ema_decay=config.ema_decay,
        preprocess=preprocess,
        batch_augment=batch_augment(config, mesh),
        seed=config.seed,
        fsdp_mesh=mesh if config.fsdp else None,
        loss_scale=steps.scaling,
    )
    return train.jit_train_step(step_fn, mesh, steps.state, fsdp=config.fsdp)


def schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate the config asks for, per optimiser step."""
    total = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
    return optim.create_schedule(
        config.schedule,
        optim.scaled_lr(config.lr, config.batch_size, config.lr_base_batch_size),
        total,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        warmup_lr=config.warmup_lr,
        min_lr=config.min_lr,
        decay_epochs=config.decay_epochs,
        decay_rate=config.decay_rate,
    )


def optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, params: Any) -> optax.GradientTransformation:
    """The optimiser the config asks for; `params` (or their shapes) decide what weight decay spares."""
    mask = None if config.weight_decay_norm_and_bias else optim.decay_mask(params)
    return optim.create_optimizer(
        config.optimizer,
        schedule(config, steps_per_epoch),
        weight_decay=config.weight_decay,
        decay_mask=mask,
        momentum=config.momentum,
        nesterov=config.nesterov,
        eps=config.opt_eps,
        b1=config.b1,
        b2=config.b2,
        rmsprop_decay=config.rmsprop_decay,
        grad_clip_norm=config.grad_clip_norm,
    )


def batch_augment(config: ml_collections.ConfigDict, mesh) -> augment.BatchAugment | None:
    """The on-device augmentations (random erasing, Mixup, CutMix) the config asks for, or None."""
    aug = augment.BatchAugment(
        mixup_alpha=config.mixup,
        cutmix_alpha=config.cutmix,
        prob=config.mixup_prob,
        switch_prob=config.mixup_switch_prob,
        erase_prob=config.reprob,
        groups=mesh.size,
    )
    return aug if aug.mixes or aug.erase_prob > 0 else None
