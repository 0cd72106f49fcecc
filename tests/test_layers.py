"""The shared layers: each formulation and convention checked against its definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from lightnets.models.layers import (
    BatchNorm,
    Conv2d,
    Dropout,
    _depthwise_taps,
    _depthwise_taps_plain,
    _matmul,
    _matmul_plain,
    channel_shuffle,
    make_divisible,
)


def _conv(in_chs, out_chs, k, *, stride=1, groups=1, padding="symmetric", impl="auto", bias=False):
    return Conv2d(
        in_chs,
        out_chs,
        k,
        stride=stride,
        groups=groups,
        padding=padding,
        use_bias=bias,
        conv_impl=impl,
        dtype=jnp.float32,
        key=jax.random.key(0),
    )


def _reference_conv(x, conv, padding):
    return lax.conv_general_dilated(
        x,
        conv.kernel[...],
        (conv.stride,) * 2,
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=conv.groups,
    )


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_depthwise_taps_equal_xla_convolution(size, stride, kernel, padding):
    x = jax.random.normal(jax.random.key(1), (2, size, size, 16))
    taps = _conv(16, 16, kernel, stride=stride, groups=16, padding=padding, impl="taps")
    np.testing.assert_allclose(taps(x), _as_xla(taps)(x), rtol=1e-5, atol=1e-5)


# float32's unit round-off. A sum of m rounded products is within (m + 1) * U * sum(|terms|) of
# the exact value, whatever the order (Higham, "Accuracy and Stability of Numerical Algorithms",
# 3.1); two orders differ by at most twice that. sum(|terms|) is the same gradient taken at |x|,
# |kernel| and |g|, where every term is non-negative.
U = 2.0**-24


def _vjp(fn, x, kernel, g):
    return jax.vjp(fn, x, kernel)[1](g)


def _assert_same_gradients(written, plain, x, kernel, g, terms):
    """`written`'s gradients against autodiff of `plain`, to float32 summation round-off."""
    got = _vjp(written, x, kernel, g)
    want = _vjp(plain, x, kernel, g)
    magnitude = _vjp(plain, jnp.abs(x), jnp.abs(kernel), jnp.abs(g))
    for name, a, b, size, m in zip(("input", "kernel"), got, want, magnitude, terms, strict=True):
        assert a.dtype == b.dtype, name
        bound = 2 * (m + 1) * U * np.asarray(size) + np.finfo(np.float32).tiny
        excess = np.abs(np.asarray(a) - np.asarray(b)) - bound
        assert excess.max() <= 0, f"{name} gradient off by {excess.max():.3g} beyond round-off"


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_depthwise_taps_gradient_is_autodiff_of_the_taps(size, stride, kernel, padding):
    conv = _conv(16, 16, kernel, stride=stride, groups=16, padding=padding, impl="taps")
    pads = conv._pads(size, size)
    x = jax.random.normal(jax.random.key(1), (3, size, size, 16))
    w = jax.random.normal(jax.random.key(2), (kernel, kernel, 1, 16))
    y = _depthwise_taps_plain(x, w, stride, pads)
    g = jax.random.normal(jax.random.key(3), y.shape)

    def written(x, w):
        return _depthwise_taps(x, w, stride, pads)

    def plain(x, w):
        return _depthwise_taps_plain(x, w, stride, pads)

    # An input pixel receives at most kernel**2 terms; a kernel tap sums one per output pixel.
    _assert_same_gradients(written, plain, x, w, g, terms=(kernel**2, y.size // y.shape[-1]))


def _as_xla(conv: Conv2d) -> Conv2d:
    """The same convolution, same parameters, computed by XLA's convolution."""
    xla = nnx.clone(conv)
    xla.conv_impl = "xla"
    return xla


def _grads(conv: Conv2d, x):
    """The gradients of sum(conv(x) ** 2) with respect to conv's parameters and x."""
    graphdef, params = nnx.split(conv)
    return jax.grad(lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) ** 2), argnums=(0, 1))(params, x)


def test_depthwise_taps_gradient_equals_xla_convolution_gradient():
    x = jax.random.normal(jax.random.key(1), (2, 9, 9, 8))
    taps = _conv(8, 8, 3, stride=2, groups=8, impl="taps")
    (p_taps, x_taps), (p_xla, x_xla) = _grads(taps, x), _grads(_as_xla(taps), x)
    # float32 sums in another order: an input pixel's gradient sums at most 9 terms, a kernel tap's
    # 2 * 5 * 5 = 50, each term O(1-10) here, so round-off stays under 50 * 10 * 2**-24 = 3e-5 and
    # mostly far below; a wrong tap, stride phase or pad moves a value by O(1).
    np.testing.assert_allclose(x_taps, x_xla, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p_taps["kernel"][...], p_xla["kernel"][...], rtol=1e-5, atol=1e-5)


def test_matmul_gradient_is_autodiff_of_the_product():
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 16))
    w = jax.random.normal(jax.random.key(2), (16, 24))
    g = jax.random.normal(jax.random.key(3), (2, 5, 5, 24))
    # An input channel sums one term per output channel; a weight one per pixel.
    _assert_same_gradients(_matmul, _matmul_plain, x, w, g, terms=(24, 2 * 5 * 5))


def test_matmul_in_bfloat16_rounds_once_from_float32():
    # bfloat16 operands, float32 products and sums, one rounding of the result: what the float32
    # computation on the same (bfloat16) values gives, to within bfloat16's unit round-off (2**-8:
    # 8 significant bits).
    x = jax.random.normal(jax.random.key(1), (4, 3, 3, 32)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(2), (32, 8)).astype(jnp.bfloat16)
    g = jax.random.normal(jax.random.key(3), (4, 3, 3, 8)).astype(jnp.bfloat16)
    y, pullback = jax.vjp(_matmul, x, w)
    dx, dw = pullback(g)
    f32 = [a.astype(jnp.float32) for a in (x, w, g)]
    y32, pullback32 = jax.vjp(_matmul_plain, f32[0], f32[1])
    dx32, dw32 = pullback32(f32[2])
    for got, want in ((y, y32), (dx, dx32), (dw, dw32)):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2.0**-8 + 1e-6, atol=1e-6)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_few_channel_patches_equal_xla_convolution(stride, kernel, padding):
    # A stem's RGB input: one product over the k*k windows, values and gradients as XLA's.
    x = jax.random.normal(jax.random.key(1), (2, 9, 9, 3))
    patches = _conv(3, 8, kernel, stride=stride, padding=padding, impl="taps")
    xla = _as_xla(patches)
    np.testing.assert_allclose(patches(x), xla(x), rtol=1e-5, atol=1e-5)
    (p_patches, x_patches), (p_xla, x_xla) = _grads(patches, x), _grads(xla, x)
    # As above: the kernel's gradient sums up to 2 * 9 * 9 = 162 terms of O(1-10), whose round-off
    # in another order can reach 162 * 10 * 2**-24 = 1e-4; an input pixel's, 8 channels x 25 taps.
    np.testing.assert_allclose(x_patches, x_xla, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p_patches["kernel"][...], p_xla["kernel"][...], rtol=1e-5, atol=1e-4)


def test_pointwise_matmul_equals_convolution():
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 16))
    conv = _conv(16, 24, 1, bias=True)
    conv.bias[...] = jnp.arange(24.0)
    expected = _reference_conv(x, conv, "VALID") + conv.bias[...]
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [7, 8, 9])
def test_same_padding_is_tensorflow_same(size):
    x = jax.random.normal(jax.random.key(1), (1, size, size, 4))
    for groups in (1, 4):
        conv = _conv(4, 4, 3, stride=2, groups=groups, padding="same", impl="xla")
        np.testing.assert_allclose(conv(x), _reference_conv(x, conv, "SAME"), rtol=1e-5, atol=1e-5)


def test_symmetric_padding_is_pytorch_padding():
    # PyTorch pads (1, 1) at stride 2 where TensorFlow's SAME pads (0, 1) on an even input.
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 4))
    conv = _conv(4, 4, 3, stride=2, impl="xla")
    np.testing.assert_allclose(conv(x), _reference_conv(x, conv, ((1, 1), (1, 1))), rtol=1e-5, atol=1e-5)
    assert not np.allclose(conv(x), _reference_conv(x, conv, "SAME"), atol=1e-3)


def test_conv_rejects_bad_arguments():
    with pytest.raises(ValueError, match="divisible by groups"):
        _conv(6, 8, 3, groups=4)
    with pytest.raises(ValueError, match="padding must be"):
        _conv(4, 4, 3, padding="valid")


def test_batchnorm_follows_pytorch_semantics():
    # torch.nn.BatchNorm2d(momentum=0.1) in training: normalise with the biased batch variance,
    # update running_var with the unbiased one.
    x = np.random.default_rng(0).normal(3.0, 2.0, (4, 5, 5, 6)).astype(np.float32)
    bn = BatchNorm(6, eps=1e-3, momentum=0.1, dtype=jnp.float32)
    y = bn(jnp.asarray(x))
    n = 4 * 5 * 5
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.mean[...], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)

    bn.use_running_average = True
    running_mean, running_var = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
    y = bn(jnp.asarray(x))
    np.testing.assert_allclose(y, (x - running_mean) / np.sqrt(running_var + 1e-3), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(bn.mean[...], running_mean)


def test_batchnorm_keeps_float32_statistics_under_bfloat16():
    bn = BatchNorm(3, dtype=jnp.bfloat16)
    y = bn(jnp.ones((2, 4, 4, 3), jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    assert bn.mean[...].dtype == bn.var[...].dtype == bn.scale[...].dtype == jnp.float32


def test_stochastic_depth_drops_whole_samples():
    drop = Dropout(0.5, per_sample=True, rng=nnx.Rngs(0)["dropout"])
    x = jnp.ones((64, 4, 4, 8))
    y = np.asarray(drop(x))
    per_sample = y.reshape(64, -1)
    assert set(np.unique(per_sample)) == {0.0, 2.0}
    assert all(len(np.unique(row)) == 1 for row in per_sample)  # a sample is kept or dropped whole
    assert 10 < (per_sample[:, 0] == 0).sum() < 54
    assert not np.array_equal(y, np.asarray(drop(x)))  # a new mask each call
    drop.deterministic = True
    np.testing.assert_array_equal(drop(x), x)


def test_dropout_is_elementwise():
    drop = Dropout(0.5, rng=nnx.Rngs(0)["dropout"])
    y = np.asarray(drop(jnp.ones((4, 256))))
    assert all(0 < (row == 0).sum() < 256 for row in y)


def test_channel_shuffle_matches_torchvision():
    # torchvision: view(n, groups, c // groups, h, w).transpose(1, 2).flatten over NCHW.
    x = np.arange(2 * 3 * 3 * 12, dtype=np.float32).reshape(2, 3, 3, 12)
    nchw = x.transpose(0, 3, 1, 2)
    expected = nchw.reshape(2, 2, 6, 3, 3).transpose(0, 2, 1, 3, 4).reshape(2, 12, 3, 3).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(channel_shuffle(jnp.asarray(x), 2), expected)


def test_make_divisible_rounds_like_torchvision():
    # torchvision's _make_divisible: nearest multiple of 8, never more than 10 % down.
    assert make_divisible(32 * 0.35) == 16
    assert make_divisible(16 * 0.35) == 8
    assert make_divisible(96 * 0.75) == 72
    assert make_divisible(24 * 0.8) == 24  # 16 would lose more than 10 %
    assert make_divisible(24 * 0.8, round_limit=0.0) == 16
