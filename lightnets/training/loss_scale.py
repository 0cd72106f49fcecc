"""Loss scaling for float16 training: jmp's dynamic rule, or a fixed scale as MindSpore's seed uses.

    rule = loss_scale.from_config(config.loss_scale, config.dtype)   # None: no scaling
    scaled = rule.scale(state.loss_scale, loss)          # what is differentiated
    grads = rule.unscale(state.loss_scale, grads)         # the true gradients, float32
    new = rule.adjust(state.loss_scale, all_finite(grads)) # the step is applied only if finite

float16 has 5 exponent bits: a backward-pass value below 2**-24 (6e-8, its smallest subnormal)
becomes 0, silently. Multiplying the loss by S moves every cotangent S times up, into float16's
range; dividing the float32 gradients by S gives them back. Too large an S overflows to inf: that
step is skipped (parameters, optimiser state, BatchNorm statistics and EMA stay as they were).

The dynamic rule is jmp's `DynamicLossScale` (and PyTorch's `GradScaler`): start at 2**15, halve
at each non-finite gradient, double after `period` finite steps in a row. Unlike jmp we do not
floor the scale at 1: a scale below 1 means the gradients are not finite even unscaled, and the
trainer stops the run as diverged. A fixed scale never changes; a non-finite gradient still skips
the step, as MindSpore's `FixedLossScaleManager(drop_overflow_update=True)`, its default, does
(a fixed scale that overflows at every step is not stopped: its skipped steps show in the
console line and TensorBoard).
bfloat16 has float32's exponent range and needs no scale.
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp

INITIAL_SCALE = 2.0**15  # jmp's documented start; PyTorch's GradScaler starts at 2**16
PERIOD = 2000  # finite steps in a row before the scale doubles: jmp's and GradScaler's default
FACTOR = 2.0  # a power of two: scaling and unscaling are exact


@flax.struct.dataclass
class LossScaleState:
    """The part of the train state that the rule reads and writes (checkpointed with it)."""

    scale: jax.Array  # float32 scalar: what the next step multiplies the loss by
    good_steps: jax.Array  # int32: finite steps since the scale last changed
    skipped: jax.Array  # int32: steps skipped so far, their gradients not finite


def initial_state(scale: float = 1.0) -> LossScaleState:
    return LossScaleState(
        scale=jnp.asarray(scale, jnp.float32), good_steps=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32)
    )


@dataclasses.dataclass(frozen=True)
class LossScale:
    """A scaling rule: `dynamic` (jmp's) or fixed at `initial`."""

    dynamic: bool
    initial: float = INITIAL_SCALE
    period: int = PERIOD

    def init(self) -> LossScaleState:
        return initial_state(self.initial)

    def scale(self, state: LossScaleState, loss: jax.Array) -> jax.Array:
        return loss * state.scale

    def unscale(self, state: LossScaleState, grads):
        inverse = 1 / state.scale
        return jax.tree.map(lambda g: g * inverse.astype(g.dtype), grads)

    def adjust(self, state: LossScaleState, finite: jax.Array) -> LossScaleState:
        """The state after a step whose gradients were `finite` (a boolean scalar) or not."""
        skipped = state.skipped + jnp.logical_not(finite).astype(jnp.int32)
        if not self.dynamic:
            return state.replace(skipped=skipped)
        grow = finite & (state.good_steps == self.period - 1)
        grown = state.scale * FACTOR
        grown = jnp.where(jnp.isfinite(grown), grown, state.scale)  # float32 overflow: stay
        scale = jnp.where(finite, jnp.where(grow, grown, state.scale), state.scale / FACTOR)
        good_steps = jnp.where(finite, (state.good_steps + 1) % self.period, 0)
        return LossScaleState(scale=scale, good_steps=good_steps.astype(jnp.int32), skipped=skipped)


def select(keep: jax.Array, new, old):
    """`new` where `keep` (a boolean scalar), else `old`, leaf by leaf: a skipped step's state."""
    return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)


def from_config(loss_scale: str, dtype: str) -> LossScale | None:
    """The rule `config.loss_scale` asks for: "dynamic" or a number; None for bfloat16 and float32.

    Raises ValueError for anything else, naming what would work.
    """
    value = str(loss_scale).strip().lower()
    if value == "dynamic":
        rule = LossScale(dynamic=True)
    else:
        try:
            fixed = float(value)
        except ValueError:
            fixed = math.nan
        if not (math.isfinite(fixed) and fixed >= 1):
            raise ValueError(f"loss_scale={loss_scale!r}: use 'dynamic' or a fixed scale >= 1, e.g. 1024")
        rule = LossScale(dynamic=False, initial=fixed)
    return rule if dtype == "float16" else None
