"""How long building a model takes on the host: `lightnets.create_model` eagerly, each build in a fresh process.

    PYTHONPATH=. python benchmarks/build.py [--models mobilenet_v2_100,efficientnet_v2_s] [--rounds 5]

Three ways, alternated round by round as `measure.py` alternates frameworks:
- "numpy draw": `create_model(name)` as it is (`layers.normal` draws every parameter with numpy);
- "jax.random per parameter": the same build with each parameter drawn by `jax.random.normal`
  (the obvious way, which `layers.normal` replaced: XLA compiles a random-number program for
  every distinct shape). Skipped for the models in `--numpy_only` (minutes each);
- "trace": `nnx.eval_shape` of the build (shapes only), as `jax.jit`-ed initialisation and the
  converter's checks trace it.
Wall seconds of the build alone (imports and the backend's start are before the clock), median
and min-max over the rounds. Results in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

import measure  # beside this script

WAYS = ("numpy draw", "jax.random per parameter", "trace")


def _child(spec: dict) -> dict:
    os.sched_setaffinity(0, spec["cores"])
    import jax
    from flax import nnx

    import lightnets
    from lightnets.models import layers

    jax.devices()  # the backend starts before the clock
    if spec["way"] == "jax.random per parameter":
        layers.normal = lambda key, shape, std, dtype: std * jax.random.normal(key, shape, dtype)
    start = time.perf_counter()
    if spec["way"] == "trace":
        nnx.eval_shape(lambda: lightnets.create_model(spec["model"]))
    else:
        model = lightnets.create_model(spec["model"])
        jax.block_until_ready(nnx.state(model))
    return {"s": time.perf_counter() - start, "jax": jax.__version__}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mobilenet_v2_100,efficientnet_v2_s,efficientnet_v2_xl_tf")
    parser.add_argument("--numpy_only", default="efficientnet_v2_xl_tf", help="models not built the slow way")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(measure.RESULT + json.dumps(_child(json.loads(args.child))), flush=True)
        return

    cores = measure.default_cores()
    cache = measure.new_cache_dir()  # empty: no build reads another's compiled programs
    env = measure.child_env(cache)
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    models = args.models.split(",")
    times, loads, version = {}, [], ""
    try:
        for r in range(args.rounds):
            for model in models:
                for way in WAYS:
                    if way == WAYS[1] and model in args.numpy_only.split(","):
                        continue
                    loads.append(os.getloadavg()[0])
                    spec = json.dumps({"model": model, "way": way, "cores": cores})
                    argv = [sys.executable, __file__, "--child", spec]
                    result = measure.child_result(argv, env, f"{model} ({way})")
                    times.setdefault((model, way), []).append(result["s"])
                    version = result["jax"]
                    print(f"round {r + 1}/{args.rounds}: {model} {way} {result['s']:.1f} s", file=sys.stderr)
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    print(
        f"jax {version}, cores {cores}, {args.rounds} rounds alternated, a fresh process per build, no "
        f"compilation cache; 1-minute load {min(loads):.1f}-{max(loads):.1f}; seconds, median (min-max)"
    )
    print("| model | " + " | ".join(WAYS) + " |")
    print("| --- |" + " ---: |" * len(WAYS))
    for model in models:
        cells = []
        for way in WAYS:
            t = times.get((model, way))
            cells.append(f"{statistics.median(t):.1f} ({min(t):.1f}-{max(t):.1f})" if t else "not run: minutes")
        print(f"| `{model}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
