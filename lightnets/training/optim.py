"""Optimisers and learning-rate schedules of the seeds' recipes, with PyTorch's and timm's semantics.

    schedule = optim.create_schedule("cosine", 0.4, total_steps=112_590, steps_per_epoch=1251, warmup_steps=0,
                                     warmup_lr=0.0, min_lr=0.0, decay_epochs=2.4, decay_rate=0.97)
    tx = optim.create_optimizer("sgd", schedule, weight_decay=4e-5, momentum=0.9,
                                decay_mask=optim.decay_mask(nnx.state(model, nnx.Param)))

The trainer builds both from the config's fields (`steps.optimizer`, `steps.schedule`).

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

Weight decay is masked off BatchNorm parameters and biases (every 1-D parameter) by
`decay_mask` (unless `config.weight_decay_norm_and_bias`), as timm's `filter_bias_and_bn` does.

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


# Each optimiser's own epsilon, used when `config.opt_eps` is None: PyTorch's AdamW and timm's
# Lamb defaults; for rmsprop_tf the EfficientNet papers' 1e-3 (timm's `--opt-eps .001` recipes),
# not RMSpropTF's 1e-10, since the optimiser is there for those recipes. SGD has none.
EPSILON = {"rmsprop_tf": 1e-3, "adamw": 1e-8, "lamb": 1e-6}


def scaled_lr(lr: float, batch_size: int, base_batch_size: int) -> float:
    """The base learning rate at `batch_size` (linear scaling rule); `base_batch_size` 0: `lr` as it is."""
    return lr * batch_size / base_batch_size if base_batch_size > 0 else lr


def create_schedule(
    name: str,
    base_lr: float,
    total_steps: float,
    *,
    steps_per_epoch: int,
    warmup_steps: int,
    warmup_lr: float,
    min_lr: float,
    decay_epochs: float,
    decay_rate: float,
) -> optax.Schedule:
    """Learning rate as a function of the optimiser step (warm-up included)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
    base, warmup = base_lr, warmup_steps
    decay_steps = max(total_steps - warmup, 1)

    if name == "cosine":
        main = optax.cosine_decay_schedule(base, decay_steps, alpha=min_lr / base if base else 0.0)
    elif name == "linear":
        main = optax.linear_schedule(base, min_lr, decay_steps)
    elif name == "poly":
        main = optax.polynomial_schedule(base, min_lr, power=2, transition_steps=decay_steps)
    elif name == "exponential":
        main = optax.exponential_decay(base, round(decay_epochs * steps_per_epoch), decay_rate)
    elif name == "step":

        def main(step):
            # timm's StepLRScheduler: base * rate ** (epoch // decay_epochs), whole epochs.
            epoch = (step + warmup) // steps_per_epoch
            return base * decay_rate ** jnp.floor(epoch / decay_epochs)
    else:
        main = optax.constant_schedule(base)

    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(warmup_lr, base, warmup), main], boundaries=[warmup])


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


def create_optimizer(
    name: str,
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float,
    decay_mask: Any = None,
    momentum: float = 0.0,
    nesterov: bool = False,
    eps: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    rmsprop_decay: float = 0.9,
    grad_clip_norm: float = 0.0,
) -> optax.GradientTransformation:
    """Clipping, weight decay and the update rule `name` at `learning_rate`.

    `decay_mask` (a tree of booleans like the parameters, `decay_mask(params)`) spares the False
    ones from weight decay; None decays all. `eps` None: the optimiser's own (`EPSILON`). The
    keyword defaults are the update rules' textbook ones; the trainer passes every one from the
    config (configs/default.py is where a run's defaults live).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    lr, wd, mask = learning_rate, weight_decay, decay_mask
    eps = EPSILON.get(name) if eps is None else eps

    if name == "sgd":
        coupled = optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)
    elif name == "rmsprop_tf":
        coupled = rmsprop_tf(lr, decay=rmsprop_decay, eps=eps, momentum=momentum)
    elif name == "adamw":
        tx = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=mask)
        coupled = None
    else:
        # As timm's Lamb: parameters without weight decay (BatchNorm, biases) get no trust ratio.
        tx = optax.chain(
            optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
            optax.add_decayed_weights(wd, mask),
            optax.masked(optax.scale_by_trust_ratio(), mask) if mask is not None else optax.scale_by_trust_ratio(),
            optax.scale_by_learning_rate(lr),
        )
        coupled = None
    if coupled is not None:  # PyTorch's SGD and timm's RMSpropTF add the decay to the gradient
        tx = optax.chain(optax.add_decayed_weights(wd, mask) if wd else optax.identity(), coupled)
    if grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
    return tx


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Steps in one epoch of `num_examples` at a global `batch_size` (the last partial batch dropped)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return max(1, math.floor(num_examples / batch_size))
