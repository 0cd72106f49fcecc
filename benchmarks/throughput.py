"""Training and inference images/s of the trainer's own step, optionally against PyTorch, measured as `measure.py` says.

    PYTHONPATH=. python benchmarks/throughput.py --model=mobilenet_v2_100 --batch_size=256 \\
        --image_size=224 --dtype=bfloat16 [--compare_torch] [--torch_compile] [--rounds=5]

For each model: the train step that `main.py` runs (`lightnets.training.steps.build_steps`: the family config's
optimiser, label smoothing, EMA, on-device augmentations, jitted over a mesh of all devices with
the batch sharded over them) and the inference forward pass (eval mode), on synthetic uint8
images already on the devices. `--batch_size` is per device; images/s are per device.

Every figure comes from a fresh process (`benchmarks/measure.py`) pinned to `--cores` (default:
all of this process's), one per (model, framework, mode), and the frameworks alternate, A B A B,
for `--rounds` rounds. Within a process compilation and `--warmup` steps are timed apart, then
`--windows` windows of `--steps` steps; the process's figure is the median of its windows. A
row is the median of its rounds' figures with their min-max spread; the ratio to PyTorch eager is
taken round by round (each lightnets figure over the eager figure measured right after it), and
a ratio whose min-max includes 1.0 is reported as "no difference".

With `--compare_torch`, the same network from torchvision or timm (`convert.reference_model`), on
the same device kind, batch and resolution, with PyTorch's usual fast settings: channels_last,
bf16 autocast when `--dtype=bfloat16`, cuDNN autotuning, SGD with momentum and label-smoothed
cross-entropy; `--torch_compile` adds `torch.compile` rows. With `--data`, the trainer's input
pipeline feeds the step (`fed`), and the pipeline alone on one thread (`pipeline`) says how many
host cores keep the devices fed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # measure.py beside this file, also when loaded by path (the tests)
    sys.path.insert(0, str(HERE))

import measure  # noqa: E402


def jobs(args) -> list:
    """One round's jobs, in the order they alternate: per model and mode, lightnets then PyTorch."""
    frameworks = ["lightnets"]
    if args.compare_torch:
        frameworks += ["torch"] + (["torch.compile"] if args.torch_compile else [])
    names = ("batch_size", "image_size", "dtype", "steps", "windows", "warmup", "data", "data_workers", "data_threads")
    common = {name: getattr(args, name) for name in names}
    out = []
    for model in args.model.split(","):
        for mode in args.modes.split(","):
            for framework in frameworks:
                fed = args.data and mode == "train" and framework == "lightnets"  # the same compiled step, fed
                out.append(measure.Job(model, framework, ("train", "fed", "pipeline") if fed else (mode,), **common))
    return out


def _progress(result: dict, rounds: int) -> None:
    job = result["job"]
    which = "filling the caches" if result["round"] == measure.FILL_ROUND else f"round {result['round'] + 1}/{rounds}"
    name = f"{which} {job['model']} {measure.LABELS[job['framework']]}"
    if "error" in result:
        print(f"# {name}: FAILED, {result['error']}", file=sys.stderr, flush=True)
        return
    rates = ", ".join(f"{mode} {statistics.median(m['rates']):.1f}" for mode, m in result["modes"].items())
    print(f"# {name}: {rates} images/s ({result['wall_s']:.0f} s)", file=sys.stderr, flush=True)


def main(argv=None) -> list[measure.Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mobilenet_v2_100", help="registry names, comma-separated")
    parser.add_argument("--batch_size", type=int, default=256, help="per device")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows per process")
    parser.add_argument("--warmup", type=int, default=3, help="steps after compilation, before the windows")
    parser.add_argument("--modes", default="train,infer", help="train, infer or both")
    parser.add_argument("--rounds", type=int, default=5, help="alternations: one process per job per round")
    parser.add_argument("--compare_torch", action="store_true")
    parser.add_argument("--torch_compile", action="store_true", help="with --compare_torch: torch.compile rows")
    parser.add_argument("--cores", default="", help="CPU cores for every process, e.g. 0,1 (default: all of ours)")
    parser.add_argument("--cache_dir", default="", help="compilation caches (default: a fresh one, removed after)")
    parser.add_argument(
        "--no_fill_caches",
        action="store_true",
        help="no cache-filling process per compiling job before round 1 (round 1 then compiles cold)",
    )
    parser.add_argument(
        "--omp_wait_policy",
        default="passive",
        choices=["passive", "default"],
        help="PyTorch's OpenMP threads: passive (robust on a shared machine) or libgomp's default spinning",
    )
    parser.add_argument("--timeout_s", type=float, default=None, help="per process")
    parser.add_argument("--json", default="", help="also write every process's result to this file")
    parser.add_argument("--data", default="", help="end to end: a dataset (e.g. folder:PATH) feeding the train step")
    parser.add_argument("--data_workers", type=int, default=0, help="with --data: grain worker processes")
    parser.add_argument("--data_threads", type=int, default=2, help="with --data: decoding threads per worker")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.windows < 1 or args.steps < 1:
        parser.error("--rounds, --windows and --steps must be at least 1")
    if not args.modes or not set(args.modes.split(",")) <= {"train", "infer"}:
        parser.error(f"--modes={args.modes}: give train, infer or train,infer")
    if args.torch_compile and not args.compare_torch:
        parser.error("--torch_compile needs --compare_torch")

    cores = [int(c) for c in args.cores.split(",")] if args.cores else measure.default_cores()
    cache_dir = args.cache_dir or measure.new_cache_dir()
    env = measure.child_env(cache_dir, omp_wait_policy="" if args.omp_wait_policy == "default" else "PASSIVE")
    try:
        results = measure.alternate(
            jobs(args),
            args.rounds,
            lambda job: measure.run_job(job, cores=cores, env=env, timeout=args.timeout_s),
            on_result=lambda result: _progress(result, args.rounds),
            fill_caches=not args.no_fill_caches,
        )
    finally:
        if not args.cache_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))

    rows = measure.summarise(results)
    print(
        f"# {measure.conditions(results)}; cores {','.join(map(str, cores))}\n"
        f"# batch {args.batch_size} per device, {args.image_size} px, {args.dtype}; each process: compilation and "
        f"{args.warmup} warm-up steps apart, median of {args.windows} windows of {args.steps} steps; "
        f"{args.rounds} rounds alternating the frameworks, each in its own process; images/s per device, "
        "median and min-max over the rounds; ratios paired round by round"
    )
    print(measure.markdown(rows))
    warning = measure.busy_warning(results, cores)
    if warning:
        print(f"# {warning}")
    by_key = {(r.model, r.mode, r.framework): r for r in rows}
    for row in rows:
        if row.mode == "pipeline" and row.figures:
            train = by_key.get((row.model, "train", "lightnets"))
            if train and train.figures:
                print(
                    f"# {row.model}: {train.median / row.median:.1f} host cores of decoding keep this host's devices "
                    f"fed at {train.median:.0f} images/s per device (synthetic data)"
                )
    for row in rows:
        for failure in row.failures:
            print(f"# FAILED {row.model} {row.label} {row.mode} {failure}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    sys.exit(1 if any(row.failures for row in main()) else 0)
