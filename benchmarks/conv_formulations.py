"""Times the convolution formulations that `lightnets.models.layers.Conv2d` chooses between.

    python benchmarks/conv_formulations.py [--batch 32] [--size 56] [--channels 144]

Forward and forward+backward of a depthwise 3x3 (grouped `lax.conv_general_dilated` against
nine shifted multiply-adds) and of a 1x1 convolution (`lax.conv_general_dilated` against a
matrix product), in float32 and bfloat16, on the default JAX backend.
"""

import argparse
import time

import jax
import jax.numpy as jnp
from flax import nnx

from lightnets.models.layers import Conv2d


def _time(fn, *args, repeats=5):
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) / repeats * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--channels", type=int, default=144)
    args = parser.parse_args()
    c = args.channels
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0].device_kind}")
    print(f"input ({args.batch}, {args.size}, {args.size}, {c}); times in ms, mean of 5 after a warm-up")
    print("| layer | dtype | formulation | forward | forward+backward |")
    print("| --- | --- | --- | ---: | ---: |")
    for dtype in (jnp.float32, jnp.bfloat16):
        x = jax.random.normal(jax.random.key(0), (args.batch, args.size, args.size, c), dtype)
        cases = [
            ("depthwise 3x3", "grouped conv", {"groups": c, "out": c, "k": 3, "impl": "xla"}),
            ("depthwise 3x3", "shifted taps", {"groups": c, "out": c, "k": 3, "impl": "taps"}),
            ("pointwise 1x1", "matmul", {"groups": 1, "out": c // 3, "k": 1, "impl": "auto"}),
        ]
        for layer, label, o in cases:
            conv = Conv2d(
                c, o["out"], o["k"], groups=o["groups"], conv_impl=o["impl"], dtype=dtype, key=jax.random.key(1)
            )
            graphdef, params = nnx.split(conv)

            def fwd(params, x, graphdef=graphdef):
                return nnx.merge(graphdef, params)(x)

            def loss(params, x, fwd=fwd):
                return fwd(params, x).astype(jnp.float32).sum()

            f = _time(fwd, params, x)
            b = _time(jax.grad(loss, argnums=(0, 1)), params, x)
            print(f"| {layer} | {jnp.dtype(dtype).name} | {label} | {f:.1f} | {b:.1f} |")
        # The 1x1 baseline: XLA's own convolution on the same kernel.
        w = jax.random.normal(jax.random.key(2), (1, 1, c, c // 3), dtype)

        def conv1x1(w, x):
            return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

        f = _time(conv1x1, w, x)
        b = _time(jax.grad(lambda w, x: conv1x1(w, x).astype(jnp.float32).sum(), argnums=(0, 1)), w, x)
        print(f"| pointwise 1x1 | {jnp.dtype(dtype).name} | conv | {f:.1f} | {b:.1f} |")


if __name__ == "__main__":
    main()
