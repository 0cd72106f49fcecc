"""Does Python show in the trainer's step time? Times the same compiled train step three ways.

    PYTHONPATH=. python benchmarks/step_overhead.py [--model mobilenet_v2_100] [--batch 256] [--size 224] [--steps 30]

1. device: the jitted step called back to back on one batch already on the devices (what the
   accelerator needs per step);
2. loop: the trainer's loop body as `trainer.train_and_evaluate` runs it: next batch from the
   grain iterator (synthetic data), host -> device transfer, the step;
3. host: the Python time of one loop iteration alone, split into taking the next batch from the
   iterator (the input pipeline's share) and the trainer's own work: transfer and dispatch (the
   step runs asynchronously, so this hides behind the device while it is shorter).

If loop is no slower than device, the Python overhead does not show. Results in docs/benchmarks.md.
"""

import argparse
import time

import jax
import numpy as np

from configs import default
from input_pipeline import datasets
from lightnets.training import trainer
from lightnets.training.steps import build_steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="mobilenet_v2_100")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()

    config = default.get_config()
    config.update(
        model=args.model,
        dataset=f"synthetic:{args.batch * (args.steps + 5)}",
        image_size=args.size,
        batch_size=args.batch,
        num_epochs=1.0,
        dtype=args.dtype,
    )
    s = trainer.setup(config)
    steps = build_steps(config, s.model, s.mesh, s.steps_per_epoch)  # the trainer's own step
    state, step = steps.state, steps.train_step
    data = datasets.train_iterator(s.train_source, global_batch_size=args.batch, seed=0)

    batch = trainer._global(s.mesh, next(data))
    state, metrics = step(state, batch["image"], batch["label"])  # compile
    jax.block_until_ready(metrics)

    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = step(state, batch["image"], batch["label"])
    jax.block_until_ready(metrics)
    device = (time.perf_counter() - start) / args.steps

    fetch, dispatch, start = [], [], time.perf_counter()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        local = next(data)
        t1 = time.perf_counter()
        b = trainer._global(s.mesh, local)
        state, metrics = step(state, b["image"], b["label"])
        fetch.append(t1 - t0)
        dispatch.append(time.perf_counter() - t1)
    jax.block_until_ready(metrics)
    loop = (time.perf_counter() - start) / args.steps

    print(
        f"{args.model} batch {args.batch} at {args.size} px, {args.dtype}, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}"
    )
    print(
        f"device {1e3 * device:.1f} ms/step | loop {1e3 * loop:.1f} ms/step ({100 * (loop - device) / device:+.1f} %)"
        f" | host, median: next batch {1e3 * np.median(fetch):.2f} ms, transfer + dispatch "
        f"{1e3 * np.median(dispatch):.2f} ms"
    )


if __name__ == "__main__":
    main()
