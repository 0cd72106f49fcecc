"""Times the convolution formulations that `lightnets.models.layers.Conv2d` chooses between on CPU.

    PYTHONPATH=. python benchmarks/conv_formulations.py [--batch 16] [--rounds 5] [--dtypes float32,bfloat16]

For each layer below, forward and forward+backward (the output and the gradients of the input
and the kernel; of the kernel alone for a stem, whose input is the image) of each formulation,
on the default JAX backend. Measured as `measure.py` measures: every (layer, dtype, formulation)
in a fresh process pinned to the same cores, compilation and a warm-up apart, then `--windows`
windows of `--calls` calls (the process's figure is their median); the formulations of a layer
alternate, A B A B, for `--rounds` rounds. A row is the median of its rounds with their min-max,
and the comparison with the formulation `Conv2d` uses on CPU is taken round by round (ms of this
one over ms of that one, measured next to each other); a spread that includes 1.0 is "no
difference".

The layers are the shapes of a training step at batch 16 and 128 px (the CPU comparison's): a
depthwise 3x3 and a 1x1 of MobileNetV2's 144-channel stage, a stem (3 channels in), and a dense
3x3 of EfficientNetV2's Fused-MBConv stage (48 -> 192). Results in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import measure  # noqa: E402

# name: (input height = width, channels in, channels out, kernel, stride, groups, formulations);
# the first formulation is the one `Conv2d` uses on CPU, the baseline of the comparison.
LAYERS = {
    "depthwise 3x3": (32, 144, 144, 3, 1, 144, ("shifted taps", "grouped conv")),
    "pointwise 1x1": (32, 144, 48, 1, 1, 1, ("matmul", "conv")),
    "stem 3x3 / 2 (3 channels)": (128, 3, 32, 3, 2, 1, ("patches + matmul", "conv")),
    "dense 3x3 (48 channels)": (32, 48, 192, 3, 1, 1, ("conv", "patches + matmul")),
}


def _child(spec: dict) -> dict:
    os.sched_setaffinity(0, spec["cores"])  # before XLA sizes its thread pool from it
    import jax
    import jax.numpy as jnp
    from jax import lax

    from lightnets.models import layers

    size, c_in, c_out, k, s, groups, _ = LAYERS[spec["layer"]]
    dtype = jnp.dtype(spec["dtype"])
    pads = ((k - 1) // 2,) * 2, ((k - 1) // 2,) * 2
    x = jax.random.normal(jax.random.key(0), (spec["batch"], size, size, c_in), dtype)
    kernel = jax.random.normal(jax.random.key(1), (k, k, c_in // groups, c_out), dtype) * 0.1

    def conv(x, kernel):
        return lax.conv_general_dilated(
            x, kernel, (s, s), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
        )

    formulations = {
        "conv": conv,
        "grouped conv": conv,
        "shifted taps": lambda x, kernel: layers._depthwise_taps(x, kernel, s, pads),
        "matmul": lambda x, kernel: layers._matmul(x, kernel[0, 0]),
        "patches + matmul": lambda x, kernel: layers._matmul(
            layers._patches(x, k, s, pads), kernel.reshape(k * k * c_in, c_out)
        ),
    }
    forward = formulations[spec["formulation"]]
    # The output's gradient as a network's would be: an argument (the ones of a plain sum would
    # be folded into the backward pass), and the output returned too (else, the convolution being
    # linear, XLA drops the forward pass). A stem's input is the image: no gradient for it.
    g = jax.random.normal(jax.random.key(2), jax.eval_shape(forward, x, kernel).shape, dtype)
    input_gradient = c_in > layers.PATCHES_MAX_CHANNELS

    def forward_backward(x, kernel, g):
        if input_gradient:
            y, vjp = jax.vjp(forward, x, kernel)
            return y, *vjp(g)
        y, vjp = jax.vjp(lambda kernel: forward(x, kernel), kernel)
        return y, *vjp(g)

    out = {}
    passes = (
        ("forward", jax.jit(lambda x, kernel, g: forward(x, kernel))),
        ("forward+backward", jax.jit(forward_backward)),
    )
    for name, fn in passes:
        start = time.perf_counter()
        jax.block_until_ready(fn(x, kernel, g))  # compiles
        compile_s = time.perf_counter() - start
        jax.block_until_ready(fn(x, kernel, g))  # warm-up
        windows = []
        for _ in range(spec["windows"]):
            start = time.perf_counter()
            for _ in range(spec["calls"]):
                result = fn(x, kernel, g)
            jax.block_until_ready(result)
            windows.append((time.perf_counter() - start) / spec["calls"] * 1e3)
        out[name] = {"ms": statistics.median(windows), "compile_s": compile_s}
    out["env"] = {"jax": jax.__version__, "device": jax.devices()[0].device_kind}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--layers", default=",".join(LAYERS), help="comma-separated names from LAYERS")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5, help="calls per window")
    parser.add_argument("--cores", default="", help="comma-separated cores to pin to (default: all of this process's)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(measure.RESULT + json.dumps(_child(json.loads(args.child))), flush=True)
        return

    cores = [int(c) for c in args.cores.split(",")] if args.cores else measure.default_cores()
    cache = measure.new_cache_dir()
    env = measure.child_env(cache)
    names = [n.strip() for n in args.layers.split(",")]
    unknown = [n for n in names if n not in LAYERS]
    if unknown:
        parser.error(f"unknown layer(s) {unknown}; choose from {list(LAYERS)}")
    cases = [(layer, dtype) for layer in names for dtype in args.dtypes.split(",")]
    ms = {}  # (layer, dtype, formulation, pass) -> round -> ms
    loads, versions = [], {}
    try:
        for r in range(args.rounds):
            for layer, dtype in cases:
                for formulation in LAYERS[layer][-1]:
                    spec = {"layer": layer, "dtype": dtype, "formulation": formulation, "cores": cores}
                    spec |= {"batch": args.batch, "windows": args.windows, "calls": args.calls}
                    loads.append(os.getloadavg()[0])
                    argv = [sys.executable, __file__, "--child", json.dumps(spec)]
                    result = measure.child_result(argv, env, f"{layer} {formulation}", timeout=900)
                    versions = result.pop("env")
                    for name, figures in result.items():
                        ms.setdefault((layer, dtype, formulation, name), {})[r] = figures["ms"]
                    print(f"round {r + 1}/{args.rounds}: {layer} {dtype} {formulation}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    print(
        f"jax {versions.get('jax')}, {versions.get('device')}, cores {cores}, batch {args.batch}; each figure the "
        f"median of {args.windows} windows of {args.calls} calls in a fresh process; {args.rounds} rounds alternated; "
        f"1-minute load {min(loads):.1f}-{max(loads):.1f}"
    )
    print(
        "| layer | input | dtype | formulation | forward ms, median (min-max) | forward+backward ms | "
        "forward+backward / Conv2d's, paired | verdict |"
    )
    print("| --- | --- | --- | --- | ---: | ---: | ---: | --- |")
    for layer, dtype in cases:
        size, c_in, c_out, _, s, _, formulations = LAYERS[layer]
        shape = f"{args.batch}x{size}x{size}x{c_in} -> {c_out}" + (f", stride {s}" if s > 1 else "")
        chosen = ms[(layer, dtype, formulations[0], "forward+backward")]
        for formulation in formulations:
            cells = []
            for name in ("forward", "forward+backward"):
                f = list(ms[(layer, dtype, formulation, name)].values())
                cells.append(f"{statistics.median(f):.1f} ({min(f):.1f}-{max(f):.1f})")
            ratio, judged = "Conv2d's choice", ""
            if formulation != formulations[0]:
                mine = ms[(layer, dtype, formulation, "forward+backward")]
                rs = [mine[r] / chosen[r] for r in mine if r in chosen]
                ratio = f"{statistics.median(rs):.2f}x ({min(rs):.2f}-{max(rs):.2f})"
                judged = measure.verdict(rs, of="times")
            print(f"| {layer} | {shape} | {dtype} | {formulation} | {cells[0]} | {cells[1]} | {ratio} | {judged} |")


if __name__ == "__main__":
    main()
