"""Training and inference images/s of the trainer's own step, optionally beside PyTorch in the same run.

    PYTHONPATH=. python benchmarks/throughput.py --model=mobilenet_v2_100 --batch_size=256 \\
        --image_size=224 --dtype=bfloat16 [--compare_torch] [--torch_compile]

For each model: the train step that `main.py` runs (`lightnets.training.steps.build_steps`: the family config's
optimiser, label smoothing, EMA, on-device augmentations, jitted over a mesh of all devices with
the batch sharded over them) and the inference forward pass (eval mode), on synthetic uint8
images already on the devices. Compilation and `--warmup` steps are timed apart from the rate;
the rate is the median (and best) of `--windows` windows of `--steps` steps; peak device memory
where the backend reports it. `--batch_size` is per device.

With `--compare_torch`, the same network from torchvision or timm (`convert.reference_model`), in
the same process, on the same device kind, the same batch and resolution, with PyTorch's usual
fast settings: channels_last, bf16 autocast when `--dtype=bfloat16`, SGD with momentum and
label-smoothed cross-entropy, and with `--torch_compile` a second row through `torch.compile`.
The last column is lightnets' rate over PyTorch eager's.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import time

import jax
import numpy as np


@dataclasses.dataclass
class Row:
    framework: str
    mode: str
    rates: list[float]
    compile_s: float
    peak_mb: float | None

    @property
    def median(self) -> float:
        return float(np.median(self.rates))


def _windows(run_steps, sync, args, *, images_per_step: int, warmup: int) -> list[float]:
    """`warmup` steps untimed, then images/s in each of `args.windows` windows of `args.steps` steps."""
    run_steps(warmup)
    sync()
    rates = []
    for _ in range(args.windows):
        start = time.perf_counter()
        run_steps(args.steps)
        sync()
        rates.append(args.steps * images_per_step / (time.perf_counter() - start))
    return rates


def _peak_mb() -> float | None:
    stats = jax.devices()[0].memory_stats()
    return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None


def lightnets_rows(model_name: str, args) -> list[Row]:
    from flax import nnx

    from lightnets.models.registry import model_info
    from lightnets.training import train
    from lightnets.training.steps import DTYPES, build_model, build_steps

    family = model_info(model_name).family  # e.g. "mobilenet_v2": configs/mobilenetv2.py has its recipe
    module = importlib.import_module(f"configs.{family.replace('_', '')}")
    config = module.get_config(model_name.removeprefix(family + "_"))
    config.update(dtype=args.dtype, image_size=args.image_size, batch_size=args.batch_size * jax.device_count())
    mesh = train.make_mesh()
    model = build_model(config, num_classes=1000)
    steps = build_steps(config, model, mesh, steps_per_epoch=1000)
    n = config.batch_size
    rng = np.random.default_rng(0)
    sharding = train.batch_sharding(mesh)
    images = jax.device_put(rng.integers(0, 256, (n, args.image_size, args.image_size, 3), np.uint8), sharding)
    labels = jax.device_put(rng.integers(0, 1000, n).astype(np.int32), sharding)
    rows = []

    # Training: the trainer's jitted step, compiled ahead of the timing.
    start = time.perf_counter()
    compiled = steps.train_step.lower(steps.state, images, labels).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": steps.state}

    def run_train(k):
        for _ in range(k):
            holder["state"], holder["metrics"] = compiled(holder["state"], images, labels)

    def sync_train():
        jax.block_until_ready(holder["metrics"])

    rates = _windows(run_train, sync_train, args, images_per_step=n, warmup=args.warmup)
    rows.append(Row("lightnets", "train", rates, compile_s, _peak_mb()))

    if args.data:  # end to end: the trainer's input pipeline feeds the same step
        rows += end_to_end_rows(config, args, compiled, holder, mesh, n)

    # Inference: the eval-mode network on the same batch.
    graphdefs, state = steps.graphdefs, holder["state"]

    def forward(params, batch_stats, rngs, x):
        x = steps.normalize.on_device(x, DTYPES[args.dtype])
        return nnx.merge(graphdefs.eval, params, batch_stats, rngs, copy=True)(x)

    replicated = train.replicated(mesh)
    infer = jax.jit(forward, in_shardings=(replicated, replicated, replicated, sharding), out_shardings=sharding)
    start = time.perf_counter()
    compiled_infer = infer.lower(state.params, state.batch_stats, state.rngs, images).compile()
    compile_s = time.perf_counter() - start
    out = {}

    def run_infer(k):
        for _ in range(k):
            out["logits"] = compiled_infer(state.params, state.batch_stats, state.rngs, images)

    def sync_infer():
        jax.block_until_ready(out["logits"])

    rates = _windows(run_infer, sync_infer, args, images_per_step=n, warmup=args.warmup)
    rows.append(Row("lightnets", "infer", rates, compile_s, _peak_mb()))
    return rows


def end_to_end_rows(config, args, compiled, holder, mesh, n: int) -> list[Row]:
    """The step fed by `datasets.train_iterator` from `--data` (as `main.py` feeds it), and the
    pipeline alone on one thread, which says how many host cores keep the device fed."""
    from input_pipeline import datasets
    from lightnets.training import trainer

    source = datasets.create_source(args.data, "train", image_size=args.image_size)
    transform = trainer.data_transforms(config)[0]
    workers = args.data_workers if args.data_workers >= 0 else 0
    data = datasets.train_iterator(
        source, global_batch_size=n, seed=0, transform=transform, workers=workers, threads=args.data_threads
    )

    def run_fed(k):
        for _ in range(k):
            batch = next(data)
            batch.pop("skipped")
            batch = trainer._global(mesh, batch)
            holder["state"], holder["metrics"] = compiled(holder["state"], batch["image"], batch["label"])

    def sync():
        jax.block_until_ready(holder["metrics"])

    fed = _windows(run_fed, sync, args, images_per_step=n, warmup=args.warmup)
    if hasattr(data, "close"):
        data.close()

    one_core = datasets.train_iterator(source, global_batch_size=n, seed=1, transform=transform, threads=1)
    alone = _windows(lambda k: [next(one_core) for _ in range(k)], lambda: None, args, images_per_step=n, warmup=1)
    return [Row("lightnets + data", "train", fed, 0.0, None), Row("input pipeline, 1 core", "train", alone, 0.0, None)]


def torch_rows(model_name: str, args, *, compiled: bool) -> list[Row]:
    import torch
    import torch.nn.functional as F

    from lightnets import convert

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    bf16 = args.dtype == "bfloat16"
    n = args.batch_size  # PyTorch runs on one device
    model = convert.reference_model(model_name).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(n, 3, args.image_size, args.image_size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (n,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    net = torch.compile(model) if compiled else model
    name = "torch.compile" if compiled else "torch eager"
    rows = []

    def run_train(k):
        for _ in range(k):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def peak():
        return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None

    model.train()
    start = time.perf_counter()
    run_train(max(args.warmup, 1))  # the first steps compile (torch.compile) and tune (cuDNN)
    sync()
    compile_s = time.perf_counter() - start
    rates = _windows(run_train, sync, args, images_per_step=n, warmup=0)
    rows.append(Row(name, "train", rates, compile_s, peak()))

    model.eval()

    def run_infer(k):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for _ in range(k):
                net(x)

    start = time.perf_counter()
    run_infer(max(args.warmup, 1))
    sync()
    compile_s = time.perf_counter() - start
    rates = _windows(run_infer, sync, args, images_per_step=n, warmup=0)
    rows.append(Row(name, "infer", rates, compile_s, peak()))
    return rows


def environment() -> str:
    import flax

    parts = [
        f"jax {jax.__version__}",
        f"flax {flax.__version__}",
        f"backend {jax.default_backend()}",
        f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    ]
    if "torch" in sys.modules:
        import torch

        parts.append(f"torch {torch.__version__} ({'cuda' if torch.cuda.is_available() else 'cpu'})")
    return ", ".join(parts)


def main(argv=None) -> list[tuple[str, Row]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mobilenet_v2_100", help="registry names, comma-separated")
    parser.add_argument("--batch_size", type=int, default=256, help="per device")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compare_torch", action="store_true")
    parser.add_argument("--torch_compile", action="store_true", help="with --compare_torch: a torch.compile row")
    parser.add_argument("--data", default="", help="end to end: a dataset (e.g. folder:PATH) feeding the train step")
    parser.add_argument("--data_workers", type=int, default=0, help="with --data: grain worker processes")
    parser.add_argument("--data_threads", type=int, default=2, help="with --data: decoding threads per worker")
    args = parser.parse_args(argv)

    results = []
    for name in args.model.split(","):
        rows = lightnets_rows(name, args)
        if args.compare_torch:
            rows += torch_rows(name, args, compiled=False)
            if args.torch_compile:
                rows += torch_rows(name, args, compiled=True)
        results += [(name, row) for row in rows]

    print(
        f"# {environment()}; batch {args.batch_size} per device, {args.image_size} px, {args.dtype}; "
        f"{args.windows} windows of {args.steps} steps, images/s per device"
    )
    header = "| model | framework | mode | images/s (median) | best | compile or warm-up s | peak MB | vs torch eager |"
    print(header)
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    per_device = jax.device_count()
    for name, row in results:
        scale = per_device if row.framework.startswith("lightnets") else 1
        eager = next((r for n, r in results if n == name and r.framework == "torch eager" and r.mode == row.mode), None)
        ratio = f"{(row.median / scale) / eager.median:.2f}x" if eager is not None else ""
        peak = f"{row.peak_mb:.0f}" if row.peak_mb is not None else "n/a"
        print(
            f"| {name} | {row.framework} | {row.mode} | {row.median / scale:.1f} | {max(row.rates) / scale:.1f} | "
            f"{row.compile_s:.1f} | {peak} | {ratio} |"
        )
    for name, row in results:
        if row.framework == "input pipeline, 1 core":
            synthetic = next(r for n, r in results if n == name and r.framework == "lightnets" and r.mode == "train")
            print(
                f"# {name}: {synthetic.median / row.median:.1f} host cores of decoding keep the devices of this host "
                f"fed at {synthetic.median:.0f} images/s (synthetic data)"
            )
    return results


if __name__ == "__main__":
    main()
