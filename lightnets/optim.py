"""Optimisers and learning-rate schedules of the seeds' recipes, with PyTorch's and timm's semantics.

    tx = optim.create_optimizer(config, steps_per_epoch=1251, params=nnx.state(model, nnx.Param))

Each optimiser does what the PyTorch one of the same name does, update for update (the tests run
both on the same problem):

- `sgd`: `torch.optim.SGD` with momentum and optional Nesterov; weight decay added to the
  gradient (coupled), as PyTorch does.
- `rmsprop_tf`: timm's `RMSpropTF`, the optimiser of the EfficientNet papers: epsilon inside the
  square root, the squared-gradient average starting at one, and the learning rate applied
  inside the momentum buffer, so that a change of learning rate does not rescale past steps.
- `adamw`: `torch.optim.AdamW` (decoupled weight decay).
- `lamb`: timm's `Lamb` without its gradient clipping (clip with `grad_clip_norm` instead);
  parameters without weight decay get no trust ratio, as in timm.

Weight decay is masked off BatchNorm parameters and biases (every 1-D parameter) when
`config.weight_decay_norm_and_bias` is False, as timm's `filter_bias_and_bn` does.

Schedules are functions of the step: a linear warm-up from `warmup_lr` over `warmup_epochs`,
then `cosine` (to `min_lr`), `step` (times `decay_rate` every `decay_epochs`: 0.97 every 2.4
epochs in the EfficientNet recipe, counted in whole epochs as timm counts them), `exponential`
(smooth, per step), `linear` (to `min_lr`) or `poly` (`min_lr + (base - min_lr) * (1 - t)^2`, t
the fraction of the steps after warm-up done: the MindSpore MobileNetV1 seed's CIFAR-10 "poly",
`src/lr_generator.py`, which ends at 0). The base rate scales linearly with the global batch:
`lr * batch_size / lr_base_batch_size`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "rmsprop_tf", "adamw", "lamb")
SCHEDULES = ("cosine", "step", "exponential", "linear", "poly", "constant")


def scaled_lr(config) -> float:
    """The base learning rate for the configured global batch size (linear scaling rule)."""
    if config.get("lr_base_batch_size", 0) > 0:
        return config.lr * config.batch_size / config.lr_base_batch_size
    return config.lr


def create_schedule(config, steps_per_epoch: int) -> optax.Schedule:
    """Learning rate as a function of the optimiser step (warm-up included)."""
    if config.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {config.schedule!r}; choose one of {SCHEDULES}")
    base = scaled_lr(config)
    total = config.num_train_steps if config.get("num_train_steps", 0) > 0 else config.num_epochs * steps_per_epoch
    warmup = round(config.get("warmup_epochs", 0) * steps_per_epoch)
    decay_steps = max(total - warmup, 1)
    min_lr = config.get("min_lr", 0.0)

    if config.schedule == "cosine":
        main = optax.cosine_decay_schedule(base, decay_steps, alpha=min_lr / base if base else 0.0)
    elif config.schedule == "linear":
        main = optax.linear_schedule(base, min_lr, decay_steps)
    elif config.schedule == "poly":
        main = optax.polynomial_schedule(base, min_lr, power=2, transition_steps=decay_steps)
    elif config.schedule == "exponential":
        main = optax.exponential_decay(base, round(config.decay_epochs * steps_per_epoch), config.decay_rate)
    elif config.schedule == "step":

        def main(step):
            # timm's StepLRScheduler: base * rate ** (epoch // decay_epochs), whole epochs.
            epoch = (step + warmup) // steps_per_epoch
            return base * config.decay_rate ** jnp.floor(epoch / config.decay_epochs)
    else:
        main = optax.constant_schedule(base)

    if warmup == 0:
        return main
    return optax.join_schedules(
        [optax.linear_schedule(config.get("warmup_lr", 0.0), base, warmup), main], boundaries=[warmup]
    )


def decay_mask(params: Any) -> Any:
    """True for the parameters weight decay applies to: kernels, not BatchNorm scales or biases."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def rmsprop_tf(
    learning_rate: optax.ScalarOrSchedule, decay: float = 0.9, eps: float = 1e-3, momentum: float = 0.9
) -> optax.GradientTransformation:
    """timm's RMSpropTF: sqrt(avg + eps), avg starting at 1, the rate inside the momentum buffer."""
    return optax.chain(
        optax.scale_by_rms(decay=decay, eps=eps, initial_scale=1.0, eps_in_sqrt=True),
        optax.scale_by_learning_rate(learning_rate),  # before the trace: lr_in_momentum
        optax.trace(decay=momentum) if momentum else optax.identity(),
    )


def create_optimizer(config, steps_per_epoch: int, params: Any = None) -> optax.GradientTransformation:
    """The optimiser of `config`: clipping, weight decay, the update rule and its schedule.

    `params` (or their shapes) decide the weight-decay mask; without them decay applies to all.
    """
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose one of {OPTIMIZERS}")
    lr = create_schedule(config, steps_per_epoch)
    wd = config.get("weight_decay", 0.0)
    mask = None
    if params is not None and not config.get("weight_decay_norm_and_bias", False):
        mask = decay_mask(params)
    momentum = config.get("momentum", 0.9)

    if config.optimizer == "sgd":
        coupled = optax.sgd(lr, momentum=momentum or None, nesterov=config.get("nesterov", False))
    elif config.optimizer == "rmsprop_tf":
        coupled = rmsprop_tf(
            lr, decay=config.get("rmsprop_decay", 0.9), eps=config.get("opt_eps", 1e-3), momentum=momentum
        )
    elif config.optimizer == "adamw":
        tx = optax.adamw(lr, b1=config.get("b1", 0.9), b2=config.get("b2", 0.999), eps=config.get("opt_eps", 1e-8),
                         weight_decay=wd, mask=mask)  # fmt: skip
        coupled = None
    else:
        # As timm's Lamb: parameters without weight decay (BatchNorm, biases) get no trust ratio.
        tx = optax.chain(
            optax.scale_by_adam(b1=config.get("b1", 0.9), b2=config.get("b2", 0.999), eps=config.get("opt_eps", 1e-6)),
            optax.add_decayed_weights(wd, mask),
            optax.masked(optax.scale_by_trust_ratio(), mask) if mask is not None else optax.scale_by_trust_ratio(),
            optax.scale_by_learning_rate(lr),
        )
        coupled = None
    if coupled is not None:  # PyTorch's SGD and timm's RMSpropTF add the decay to the gradient
        tx = optax.chain(optax.add_decayed_weights(wd, mask) if wd else optax.identity(), coupled)
    clip = config.get("grad_clip_norm", 0.0)
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Steps in one epoch of `num_examples` at a global `batch_size` (the last partial batch dropped)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return max(1, math.floor(num_examples / batch_size))
