"""Layers shared by every network: convolution, BatchNorm, stochastic depth, squeeze-excitation.

Everything is NHWC. Parameters are created in `param_dtype` (float32) and cast to `dtype`
(bfloat16 by default) for the computation; BatchNorm statistics stay in float32.

Parameter names follow timm (`conv`, `bn1`, `conv_reduce`, `conv_expand`) and every kernel is
HWIO, so a PyTorch weight converts with a rename and `transpose(2, 3, 1, 0)`. BatchNorm keeps
`scale`, `bias`, `mean`, `var` and `num_batches_tracked` (PyTorch's weight, bias, running_mean,
running_var, num_batches_tracked).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

Array = jax.Array
Dtype = Any

# Convolution formulations. "xla" is `lax.conv_general_dilated` everywhere; "taps" computes a
# depthwise convolution as k*k shifted multiply-adds, which XLA's CPU backend runs 25x faster
# than its grouped convolution (with the gradients too; benchmarks/conv_formulations.py), and a
# convolution of an input with few channels (a stem's RGB) as one matrix product over its k*k
# shifted windows, 1.7-2x faster than XLA's CPU convolution of 3 channels; "auto" uses taps on
# CPU only, where GPUs and TPUs have cuDNN / native kernels. 1x1 convolutions are a matrix
# product in every mode. The parameters are the same whichever formulation runs.
CONV_IMPLS = ("auto", "xla", "taps")
PATCHES_MAX_CHANNELS = 4  # "taps": inputs with this many channels or fewer go through `_patches`


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Rounds a channel count to a multiple of `divisor`, as torchvision and timm do.

    Never rounds down by more than `1 - round_limit` (10 % by default).
    """
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def normal(key: Array, shape: tuple[int, ...], std: float, dtype: Dtype) -> Array:
    """N(0, std^2) drawn on the host with numpy, seeded by `key`.

    XLA's CPU compiler spends 0.2-0.4 s on `jax.random.normal` for every distinct shape: a
    minute to initialise an EfficientNetV2-S. numpy draws the same parameters at once. Under a
    trace (`jax.jit`, `nnx.eval_shape`) the draw goes through `jax.pure_callback`, so a key gives
    the same values whether the model is built eagerly or inside `jit`.
    """

    def draw(key_data):
        rng = np.random.default_rng(np.asarray(key_data))
        return (std * rng.standard_normal(shape, dtype=np.float32)).astype(dtype)

    key_data = jax.random.key_data(key)
    if isinstance(key_data, jax.core.Tracer):
        return jax.pure_callback(draw, jax.ShapeDtypeStruct(shape, dtype), key_data)
    return jnp.asarray(draw(key_data))


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME': the extra pixel of an odd total goes at the end (bottom/right)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2d(nnx.Module):
    """A 2-D convolution over NHWC inputs with PyTorch's or TensorFlow's padding.

    Args:
      padding: "symmetric" pads (k - 1) // 2 on every side, as torchvision and timm do;
        "same" is TensorFlow's asymmetric padding, used by the `*_tf` EfficientNetV2 variants.
      groups: `groups == in_channels == out_channels` is a depthwise convolution.
      conv_impl: one of `CONV_IMPLS`, resolved when the call is traced.
      key: the initialisation key.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        padding: str = "symmetric",
        use_bias: bool = False,
        conv_impl: str = "auto",
        dtype: Dtype = jnp.bfloat16,
        param_dtype: Dtype = jnp.float32,
        key: Array,
    ):
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels} -> {out_channels} are not divisible by groups={groups}")
        if padding not in ("symmetric", "same"):
            raise ValueError(f"padding must be 'symmetric' or 'same', got {padding!r}")
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.groups = groups
        self.padding = padding
        self.conv_impl = conv_impl
        self.dtype = dtype
        # He-normal over fan-out, the initialisation of torchvision's and timm's convolutions.
        shape = (kernel_size, kernel_size, in_channels // groups, out_channels)
        std = math.sqrt(2.0 / (kernel_size * kernel_size * out_channels))
        self.kernel = nnx.Param(normal(key, shape, std, param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_channels,), param_dtype)) if use_bias else None

    def _pads(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        k, s = self.kernel_size, self.stride
        if self.padding == "same":
            return _same_padding(height, k, s), _same_padding(width, k, s)
        p = (k - 1) // 2
        return (p, p), (p, p)

    def __call__(self, x: Array) -> Array:
        x = x.astype(self.dtype)
        kernel = self.kernel[...].astype(self.dtype)
        k, s = self.kernel_size, self.stride
        depthwise = self.groups > 1 and self.groups == self.in_channels == self.out_channels
        impl = self.conv_impl
        if impl == "auto":
            impl = "taps" if jax.default_backend() == "cpu" else "xla"
        if k == 1 and s == 1 and self.groups == 1:
            y = _matmul(x, kernel[0, 0])
        elif depthwise and impl == "taps":
            y = _depthwise_taps(x, kernel, s, self._pads(*x.shape[1:3]))
        elif self.groups == 1 and self.in_channels <= PATCHES_MAX_CHANNELS and impl == "taps":
            patches = _patches(x, k, s, self._pads(*x.shape[1:3]))
            y = _matmul(patches, kernel.reshape(k * k * self.in_channels, self.out_channels))
        else:
            y = lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(s, s),
                padding=self._pads(*x.shape[1:3]),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.groups,
            )
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def _contract(a: Array, b: Array, a_axes, b_axes) -> Array:
    """a and b contracted over the given axes, products accumulated in float32."""
    return lax.dot_general(a, b, ((tuple(a_axes), tuple(b_axes)), ((), ())), preferred_element_type=jnp.float32)


def _matmul_plain(x: Array, kernel: Array) -> Array:
    """x (..., c) times kernel (c, d), accumulated in float32 and returned in x's dtype."""
    return _contract(x, kernel, [x.ndim - 1], [0]).astype(x.dtype)


# A 1x1 convolution or a linear layer, with its gradient written out. Asked for a bfloat16
# product, XLA's CPU backend widens both operands to float32 in separate passes and multiplies
# in float32; asked for bfloat16 operands with a float32 result, it multiplies them as they are
# (about 2x faster here). Autodiff of that would hand the backward products a float32 cotangent
# and widen again, so the two backward products are written out with the same operand dtypes.
_matmul = jax.custom_vjp(_matmul_plain)


def _matmul_fwd(x, kernel):
    return _matmul_plain(x, kernel), (x, kernel)


def _matmul_bwd(residuals, g):
    x, kernel = residuals
    dx = _contract(g, kernel, [g.ndim - 1], [1]).astype(x.dtype)
    batch_axes = list(range(x.ndim - 1))
    dkernel = _contract(x, g, batch_axes, batch_axes).astype(kernel.dtype)
    return dx, dkernel


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _pad(x: Array, pads) -> Array:
    (top, bottom), (left, right) = pads
    return jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


def _window(xp: Array, i: int, j: int, stride: int, out_h: int, out_w: int) -> Array:
    """xp[:, i + stride * h, j + stride * w, :] for every output pixel (h, w): tap (i, j)'s view."""
    limit = (xp.shape[0], i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, xp.shape[3])
    return lax.slice(xp, (0, i, j, 0), limit, (1, stride, stride, 1))


def _out_size(padded: int, kernel: int, stride: int) -> int:
    return (padded - kernel) // stride + 1


def _patches(x: Array, k: int, stride: int, pads) -> Array:
    """The k*k windows of x side by side on the channel axis, tap (i, j) at channels
    (i * k + j) * C...: the order of an HWIO kernel reshaped to (k * k * C, out)."""
    xp = _pad(x, pads)
    out_h, out_w = _out_size(xp.shape[1], k, stride), _out_size(xp.shape[2], k, stride)
    return jnp.concatenate([_window(xp, i, j, stride, out_h, out_w) for i in range(k) for j in range(k)], axis=-1)


def _shifted_sum(xp: Array, kernel: Array, stride: int, out_h: int, out_w: int) -> Array:
    """sum over taps (i, j) of xp[:, i + stride * h, j + stride * w, :] * kernel[i, j, 0], in float32."""
    acc = None
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            window = _window(xp, i, j, stride, out_h, out_w)
            term = window.astype(jnp.float32) * kernel[i, j, 0].astype(jnp.float32)
            acc = term if acc is None else acc + term
    return acc


def _depthwise_taps_plain(x: Array, kernel: Array, stride: int, pads) -> Array:
    """Depthwise convolution as k*k shifted multiply-adds, accumulated in float32."""
    k = kernel.shape[0]
    xp = _pad(x, pads)
    out_h, out_w = _out_size(xp.shape[1], k, stride), _out_size(xp.shape[2], k, stride)
    return _shifted_sum(xp, kernel, stride, out_h, out_w).astype(x.dtype)


# The same function with its gradient written out. Differentiating the shifted multiply-adds
# leaves XLA the transpose of each strided slice (a pad with interior zeros) and makes it keep a
# float32 copy of every shifted window for the kernel's gradient; on CPU that backward took
# 10-20x the forward's time. Written out, both gradients are shifted multiply-adds again.
_depthwise_taps = jax.custom_vjp(_depthwise_taps_plain, nondiff_argnums=(2, 3))


def _depthwise_taps_fwd(x, kernel, stride, pads):
    return _depthwise_taps_plain(x, kernel, stride, pads), (x, kernel)


def _tap_offsets(stride: int, kernel: int, pad_before: int) -> list[list[tuple[int, int]]]:
    """For each phase r of an input axis (positions r, r + s, r + 2s, ...): the taps i that read
    it and the output offset d such that input position q * s + r feeds output q + d through i."""
    return [
        [(i, (r + pad_before - i) // stride) for i in range(kernel) if (r + pad_before - i) % stride == 0]
        for r in range(stride)
    ]


def _depthwise_taps_bwd(stride, pads, residuals, g):
    x, kernel = residuals
    n, h, w, c = x.shape
    k, s = kernel.shape[0], stride
    (top, _), (left, _) = pads
    out_h, out_w = g.shape[1], g.shape[2]
    gf = g.astype(jnp.float32)

    # The kernel's gradient: per tap, the shifted input times g, summed over space by one
    # reduction with k*k outputs, then over the batch. Reduced tap by tap, XLA's CPU backend wrote
    # each tap's product out first (36-39 against 6 ms, (16, 32, 32, 144) float32). The batch apart:
    # under a mesh it is sharded, and a variadic reduction over it would gather the products.
    xp = _pad(x, pads)
    products = [_window(xp, i, j, s, out_h, out_w).astype(jnp.float32) * gf for i in range(k) for j in range(k)]
    zeros = [jnp.zeros((), jnp.float32)] * len(products)
    per_example = lax.reduce(products, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b, strict=True)), (1, 2))
    dkernel = jnp.stack(per_example).sum(axis=1).reshape(k, k, 1, c).astype(kernel.dtype)

    # The input's gradient: input row q * s + r receives g[q + d] * kernel[i] from each tap i of
    # its phase r (`_tap_offsets`), so each of the s * s phases is a stride-1 shifted sum over g;
    # the phases interleave into the input's grid. At stride 1 this is the transposed
    # (flipped-kernel) convolution.
    q_h, q_w = -(-h // s), -(-w // s)  # rows and columns per phase, rounded up
    rows, cols = _tap_offsets(s, k, top), _tap_offsets(s, k, left)
    d_h = [d for phase in rows for _, d in phase]
    d_w = [d for phase in cols for _, d in phase]
    lo_h, lo_w = max(0, -min(d_h)), max(0, -min(d_w))
    hi_h, hi_w = max(0, q_h + max(d_h) - out_h), max(0, q_w + max(d_w) - out_w)
    gp = jnp.pad(g, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
    phases = []
    for row_taps in rows:
        for col_taps in cols:
            acc = jnp.zeros((n, q_h, q_w, c), jnp.float32)
            for i, dh in row_taps:
                for j, dw in col_taps:
                    start = (0, lo_h + dh, lo_w + dw, 0)
                    window = lax.slice(gp, start, (n, start[1] + q_h, start[2] + q_w, c))
                    acc = acc + window.astype(jnp.float32) * kernel[i, j, 0].astype(jnp.float32)
            phases.append(acc)
    dx = jnp.stack(phases, axis=3).reshape(n, q_h, q_w, s, s, c)  # (..., phase row, phase column, c)
    dx = dx.transpose(0, 1, 3, 2, 4, 5).reshape(n, q_h * s, q_w * s, c)[:, :h, :w]
    return dx.astype(x.dtype), dkernel


_depthwise_taps.defvjp(_depthwise_taps_fwd, _depthwise_taps_bwd)


class BatchNorm(nnx.Module):
    """BatchNorm over the last (channel) axis with PyTorch's semantics.

    `momentum` is PyTorch's, the weight of the new batch in the running statistics (flax's
    momentum is `1 - momentum`), and the running variance is updated with the unbiased batch
    variance, as `torch.nn.BatchNorm2d` does. Statistics are computed and kept in float32.
    Under `jax.jit` with the batch sharded over a mesh, they cover the global batch.
    """

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
        use_running_average: bool = False,
        dtype: Dtype = jnp.bfloat16,
        param_dtype: Dtype = jnp.float32,
    ):
        self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        # PyTorch's counter of training batches, kept so that weights round-trip exactly.
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))
        self.eps = eps
        self.momentum = momentum
        self.use_running_average = use_running_average
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean = xf.mean(axes)
            # One pass over x, as flax's BatchNorm does; clipped at 0 against round-off.
            var = jnp.maximum(jnp.square(xf).mean(axes) - jnp.square(mean), 0.0)
            n = x.size // x.shape[-1]
            m = self.momentum
            # set_value, not `[...] =`: flax 0.12 probes the sharding of a value assigned by
            # index, which makes tracing quadratic in depth under jax 0.10.
            self.mean.set_value((1 - m) * self.mean[...] + m * mean)
            self.var.set_value((1 - m) * self.var[...] + m * var * (n / max(n - 1, 1)))
            self.num_batches_tracked.set_value(self.num_batches_tracked[...] + 1)
        # In float32, cast once at the end: folding the statistics into a bfloat16 multiply-add
        # cancels digits when |mean| >> std, and costs no extra memory traffic in a fused kernel.
        mul = self.scale[...] * lax.rsqrt(var + self.eps)
        return ((x.astype(jnp.float32) - mean) * mul + self.bias[...]).astype(self.dtype)


class Linear(nnx.Module):
    """A fully connected layer; the kernel is (in, out), PyTorch's weight transposed."""

    def __init__(self, in_features: int, out_features: int, *, dtype: Dtype, param_dtype: Dtype, key: Array):
        # N(0, 0.01) as torchvision's MobileNetV2 classifier.
        self.kernel = nnx.Param(normal(key, (in_features, out_features), 0.01, param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype))
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        return _matmul(x.astype(self.dtype), self.kernel[...].astype(self.dtype)) + self.bias[...].astype(self.dtype)


class Dropout(nnx.Module):
    """Dropout, or stochastic depth with `per_sample=True`.

    Stochastic depth drops the whole residual branch of a sample with probability `rate` and
    scales the survivors by 1 / (1 - rate), as timm's `DropPath` and torchvision's
    `StochasticDepth(mode="row")` do. Off when `deterministic` (set by `model.eval()`).
    """

    def __init__(self, rate: float, *, per_sample: bool = False, deterministic: bool = False, rng: nnx.RngStream):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate = rate
        self.per_sample = per_sample
        self.deterministic = deterministic
        self.rng = rng

    def __call__(self, x: Array) -> Array:
        if self.deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1) if self.per_sample else x.shape
        mask = jax.random.bernoulli(self.rng(), keep, shape)
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


@dataclasses.dataclass
class Layers:
    """How one network makes its layers: activation, padding convention, BatchNorm numerics, dtypes.

    One instance is shared by all blocks of a network, so a variant differs from another of its
    family only in these fields (e.g. the TensorFlow-ported EfficientNetV2s: `padding="same"`).
    `bn_momentum` is PyTorch's (weight of the new batch).

    Initialisation keys are folded from one draw of `rngs.params` rather than drawn from the
    stream layer by layer: every draw updates a Variable, which under `jax.jit` or
    `nnx.eval_shape` costs time proportional to the trace so far (quadratic in depth with
    jax 0.10), and made EfficientNetV2-L take 40 s to trace. Dropout layers share the
    `rngs.dropout` stream (or `rngs.default`).
    """

    rngs: nnx.Rngs
    act: Callable[[Array], Array] = jax.nn.relu
    padding: str = "symmetric"
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    dtype: Dtype = jnp.bfloat16
    param_dtype: Dtype = jnp.float32
    _base_key: Array = dataclasses.field(init=False, repr=False)
    _count: int = dataclasses.field(init=False, default=0, repr=False)

    def __post_init__(self):
        self._base_key = self.rngs.params()

    def next_key(self) -> Array:
        self._count += 1
        return jax.random.fold_in(self._base_key, self._count)

    def conv(self, in_chs: int, out_chs: int, kernel: int, *, stride: int = 1, groups: int = 1, bias: bool = False):
        return Conv2d(
            in_chs,
            out_chs,
            kernel,
            stride=stride,
            groups=groups,
            padding=self.padding,
            use_bias=bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            key=self.next_key(),
        )

    def norm(self, channels: int) -> BatchNorm:
        return BatchNorm(
            channels, eps=self.bn_eps, momentum=self.bn_momentum, dtype=self.dtype, param_dtype=self.param_dtype
        )

    def linear(self, in_features: int, out_features: int) -> Linear:
        return Linear(in_features, out_features, dtype=self.dtype, param_dtype=self.param_dtype, key=self.next_key())

    def drop_path(self, rate: float) -> Dropout:
        return Dropout(rate, per_sample=True, rng=self.rngs["dropout"])

    def dropout(self, rate: float) -> Dropout:
        return Dropout(rate, rng=self.rngs["dropout"])


class ConvBnAct(nnx.Module):
    """Convolution -> BatchNorm -> activation, optionally residual (timm's `ConvBnAct`).

    torchvision's `Conv2dNormActivation` is the same layer without the residual.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel: int = 3,
        *,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        residual: bool = False,
        drop_path_rate: float = 0.0,
        layers: Layers,
    ):
        self.conv = layers.conv(in_chs, out_chs, kernel, stride=stride, groups=groups)
        self.bn1 = layers.norm(out_chs)
        self.act = layers.act if act else None
        self.has_skip = residual and stride == 1 and in_chs == out_chs
        self.drop_path = layers.drop_path(drop_path_rate) if self.has_skip else None

    def __call__(self, x: Array) -> Array:
        y = self.bn1(self.conv(x))
        if self.act is not None:
            y = self.act(y)
        return self.drop_path(y) + x if self.has_skip else y


class SqueezeExcite(nnx.Module):
    """Squeeze-and-excitation: channel gates from the globally pooled input (timm naming)."""

    def __init__(
        self,
        channels: int,
        reduced: int,
        *,
        layers: Layers,
        act: Callable | None = None,
        gate: Callable[[Array], Array] = jax.nn.sigmoid,
    ):
        self.conv_reduce = layers.conv(channels, reduced, 1, bias=True)
        self.conv_expand = layers.conv(reduced, channels, 1, bias=True)
        self.act = act or layers.act  # EfficientNet: the network's; MobileNetV3: ReLU
        self.gate = gate  # MobileNetV3: hard sigmoid

    def __call__(self, x: Array) -> Array:
        s = x.mean(axis=(1, 2), keepdims=True)
        s = self.conv_expand(self.act(self.conv_reduce(s)))
        return x * self.gate(s)


def channel_shuffle(x: Array, groups: int) -> Array:
    """ShuffleNet's channel shuffle over NHWC: channel g * (C / groups) + i moves to i * groups + g."""
    n, h, w, c = x.shape
    return x.reshape(n, h, w, groups, c // groups).swapaxes(3, 4).reshape(n, h, w, c)


def global_avg_pool(x: Array) -> Array:
    """Mean over height and width, accumulated in float32."""
    return x.astype(jnp.float32).mean(axis=(1, 2)).astype(x.dtype)
