"""Does Python show in the trainer's step time? Times the same compiled train step two ways, alternated.

    PYTHONPATH=. python benchmarks/step_overhead.py [--model mobilenet_v2_100] [--batch 256] [--size 224] \\
        [--steps 30] [--rounds 5]

1. device: the jitted step called back to back on one batch already on the devices (what the
   accelerator needs per step);
2. loop: the trainer's loop body as `trainer.train_and_evaluate` runs it: next batch from the
   grain iterator (synthetic data), host -> device transfer, the step;
3. host: the Python time of one loop iteration alone, split into taking the next batch from the
   iterator (the input pipeline's share) and the trainer's own work: transfer and dispatch (the
   step runs asynchronously, so this hides behind the device while it is shorter).

One framework and one compiled step, so one process (the loop is the trainer's, around the step
it compiled): windows of `--steps` steps alternate device, loop, device, loop ... for `--rounds`
rounds, and the loop's cost is the ratio loop / device taken round by round, as
`benchmarks/measure.py` takes its ratios: median and min-max; a spread that includes 1.0 is "no
difference". If the loop is no slower than the device, the Python overhead does not show.
Results in docs/benchmarks.md.
"""

import argparse
import time

import jax
import measure  # beside this script
import numpy as np

from configs import default
from input_pipeline import datasets
from lightnets import cli
from lightnets.training import trainer
from lightnets.training.steps import build_steps


def main():
    cli.prepare_cpu()  # as main.py does, before the backend starts
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="mobilenet_v2_100")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30, help="steps per window")
    parser.add_argument("--rounds", type=int, default=5, help="device and loop windows, alternated")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()

    config = default.get_config()
    config.update(
        model=args.model,
        dataset=f"synthetic:{args.batch * (2 * args.steps * args.rounds + 5)}",
        image_size=args.size,
        batch_size=args.batch,
        num_epochs=1.0,
        dtype=args.dtype,
    )
    s = trainer.setup(config)
    steps = build_steps(config, s.model, s.mesh, s.steps_per_epoch)  # the trainer's own step
    state, step = steps.state, steps.train_step
    data = datasets.train_iterator(s.train_source, global_batch_size=args.batch, seed=0)

    def next_batch():  # the iterator's batch less its count of skipped (unreadable) images, as the trainer takes it
        local = next(data)
        local.pop("skipped")
        return local

    batch = trainer._global(s.mesh, next_batch())
    state, metrics = step(state, batch["image"], batch["label"])  # compile
    for _ in range(2):  # warm-up, apart from the windows
        state, metrics = step(state, batch["image"], batch["label"])
    jax.block_until_ready(metrics)

    device, loop, fetch, dispatch = [], [], [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, batch["image"], batch["label"])
        jax.block_until_ready(metrics)
        device.append((time.perf_counter() - start) / args.steps)

        start = time.perf_counter()
        for _ in range(args.steps):
            t0 = time.perf_counter()
            local = next_batch()
            t1 = time.perf_counter()
            b = trainer._global(s.mesh, local)
            state, metrics = step(state, b["image"], b["label"])
            fetch.append(t1 - t0)
            dispatch.append(time.perf_counter() - t1)
        jax.block_until_ready(metrics)
        loop.append((time.perf_counter() - start) / args.steps)

    ratios = [b / a for a, b in zip(device, loop, strict=True)]
    verdict = measure.verdict(ratios, of="times")
    verdict = f"the loop is {verdict}" if verdict in ("faster", "slower") else verdict
    ms = [f"{1e3 * np.median(x):.1f} ms/step ({1e3 * min(x):.1f}-{1e3 * max(x):.1f})" for x in (device, loop)]
    print(
        f"{args.model} batch {args.batch} at {args.size} px, {args.dtype}, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}; {args.rounds} rounds of {args.steps} steps, "
        "median (min-max)"
    )
    print(
        f"device {ms[0]} | loop {ms[1]} | loop / device {np.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}):"
        f" {verdict} | host, median: next batch {1e3 * np.median(fetch):.2f} ms, transfer + "
        f"dispatch {1e3 * np.median(dispatch):.2f} ms"
    )


if __name__ == "__main__":
    main()
