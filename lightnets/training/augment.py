"""Batch augmentations on the device, inside the jitted train step: random erasing, Mixup, CutMix.

    aug = augment.BatchAugment(mixup_alpha=0.2, erase_prob=0.25, groups=jax.device_count())
    x, labels_b, lam = aug(key, x, labels)
    loss = lam * CE(logits, labels) + (1 - lam) * CE(logits, labels_b)

They are timm's (`RandomErasing(mode="pixel")`, `Mixup(mode="batch")`), done on the normalised
batch where they cost a few elementwise ops instead of per-example Python on the host. Mixup
and CutMix pair each example with its mirror in the batch, as timm does (`x.flip(0)`), but
within each device's share (`groups` = number of devices), so that no image crosses devices:
the step keeps its one gradient all-reduce. Mixing targets is linear, so the loss mixes the
two labels' cross-entropies (with label smoothing) by the same lambda.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class BatchAugment:
    """timm's defaults: Mixup/CutMix every batch (`prob`), CutMix chosen with `switch_prob`
    when both alphas are set; random erasing of one rectangle per image with `erase_prob`."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    erase_prob: float = 0.0
    groups: int = 1

    @property
    def mixes(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(self, key: jax.Array, x: jax.Array, labels: jax.Array):
        erase_key, mix_key = jax.random.split(key)
        if self.erase_prob > 0:
            x = random_erasing(erase_key, x, self.erase_prob)
        if not self.mixes:
            return x, labels, jnp.ones((), jnp.float32)
        return mixup_cutmix(mix_key, x, labels, self)


def _pair(tree: jax.Array, groups: int) -> jax.Array:
    """Each example's partner: the mirror within its group (device share) of the batch."""
    b = tree.shape[0]
    if b % groups:
        raise ValueError(f"a batch of {b} does not split into {groups} groups")
    return tree.reshape(groups, b // groups, *tree.shape[1:])[:, ::-1].reshape(tree.shape)


def mixup_cutmix(key: jax.Array, x: jax.Array, labels: jax.Array, cfg: BatchAugment):
    """timm's `Mixup` in batch mode: one lambda (and one CutMix box) for the whole batch."""
    k_apply, k_switch, k_mix, k_cut, k_y, k_x = jax.random.split(key, 6)
    apply = jax.random.uniform(k_apply) < cfg.prob
    if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch) < cfg.switch_prob
    else:
        use_cutmix = jnp.asarray(cfg.cutmix_alpha > 0)
    lam_mix = jax.random.beta(k_mix, cfg.mixup_alpha, cfg.mixup_alpha) if cfg.mixup_alpha > 0 else jnp.ones(())
    lam_cut = jax.random.beta(k_cut, cfg.cutmix_alpha, cfg.cutmix_alpha) if cfg.cutmix_alpha > 0 else jnp.ones(())

    # CutMix box (timm's rand_bbox with correct_lam): a box of (1 - lam) of the area, clipped at
    # the borders, and lambda corrected to the area actually pasted.
    h, w = x.shape[1], x.shape[2]
    cut = jnp.sqrt(1.0 - lam_cut)
    cut_h, cut_w = (h * cut).astype(jnp.int32), (w * cut).astype(jnp.int32)
    cy, cx = jax.random.randint(k_y, (), 0, h), jax.random.randint(k_x, (), 0, w)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
    lam_cut = 1.0 - ((y1 - y0) * (x1 - x0)) / (h * w)
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)

    partner = _pair(x, cfg.groups)
    lam = jnp.where(apply, jnp.where(use_cutmix, lam_cut, lam_mix), 1.0).astype(jnp.float32)
    mixed = lam.astype(x.dtype) * x + (1 - lam).astype(x.dtype) * partner
    pasted = jnp.where(box[None, :, :, None], partner, x)
    x = jnp.where(apply, jnp.where(use_cutmix, pasted, mixed), x)
    return x, _pair(labels, cfg.groups), lam


def random_erasing(
    key: jax.Array, x: jax.Array, prob: float, *, min_area=0.02, max_area=1 / 3, min_aspect=0.3, attempts: int = 10
) -> jax.Array:
    """timm's `RandomErasing(probability=prob, mode="pixel")` per image: with probability `prob`, one
    rectangle of 2-33 % of the area and aspect 0.3-3.3 (first of 10 tries that fits) becomes
    per-pixel normal noise (the batch is normalised, so noise is on the data's scale)."""
    b, h, w = x.shape[:3]
    k_apply, k_area, k_aspect, k_top, k_left, k_noise = jax.random.split(key, 6)
    area = jax.random.uniform(k_area, (b, attempts), minval=min_area, maxval=max_area) * (h * w)
    log_max = -math.log(min_aspect)
    aspect = jnp.exp(jax.random.uniform(k_aspect, (b, attempts), minval=-log_max, maxval=log_max))
    eh = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    ew = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (eh < h) & (ew < w)
    first = jnp.argmax(fits, axis=1)  # the first try that fits (0 if none, masked below)
    pick = lambda a: jnp.take_along_axis(a, first[:, None], axis=1)[:, 0]  # noqa: E731
    eh, ew = pick(eh), pick(ew)
    top = (jax.random.uniform(k_top, (b,)) * (h - eh + 1)).astype(jnp.int32)
    left = (jax.random.uniform(k_left, (b,)) * (w - ew + 1)).astype(jnp.int32)
    erase = (jax.random.uniform(k_apply, (b,)) < prob) & fits.any(axis=1)
    rows = jnp.arange(h)[None, :, None]
    cols = jnp.arange(w)[None, None, :]
    mask = (
        erase[:, None, None]
        & (rows >= top[:, None, None])
        & (rows < (top + eh)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + ew)[:, None, None])
    )
    noise = jax.random.normal(k_noise, x.shape, x.dtype)
    return jnp.where(mask[..., None], noise, x)
