"""The GPU check of issue 19 in one command: lightnets against PyTorch eager and torch.compile, within a deadline.

    python benchmarks/gpu_check.py OUT_DIR [--wheels DIR] [--budget_s 480]    # on a GPU machine
    python benchmarks/gpu_check.py OUT_DIR --tiny                              # the CPU dry run (CI)

For MobileNetV1 1.0, MobileNetV2 1.0 and ShuffleNetV2 x1.0 at 224 px and EfficientNetV2 rw_t at
288 px, batch 256, bfloat16: training and inference images/s of lightnets (the trainer's own
step) and of PyTorch eager (channels_last, bf16 autocast) and `torch.compile`, each in its own
process (`benchmarks/measure.py`), with peak device memory. For each lightnets train step: its
optimised HLO's convolutions by form (every one should be a cuDNN call, with no transpose or copy
feeding it or fed by it) and a profile of a few steps by op category (`benchmarks/step_anatomy.py`).
All of it goes to OUT_DIR/gpu_check.md and OUT_DIR/gpu_check.json (the environment first); the
profiler traces stay in OUT_DIR/traces/ for TensorBoard or Perfetto.

The order makes the most of a short slot: round 1 of lightnets and PyTorch eager for every model
(lightnets' process also analyses its step), then torch.compile for every model (its C++/triton
compilation takes minutes), then more rounds of lightnets and eager for the spread. The deadline
(`--budget_s`, 8 minutes by default, measured from the start) is enforced: a process still
running at the deadline is stopped, and whatever does not fit is listed as skipped in the report.
Every finished measurement is appended to OUT_DIR/results.jsonl as it arrives, and the
compilation caches live in OUT_DIR/cache: running the same command again into the same OUT_DIR
keeps what was measured and measures only what is missing, with warm caches.

Needs jax (with CUDA), flax, optax, orbax-checkpoint, ml_collections, torch, torchvision and timm;
not grain, clu, TensorFlow or simplejpeg (synthetic data). ml_collections is pure Python: where it
is missing, `--wheels DIR` puts its wheel from DIR (`pip download ml_collections==1.1.0 --no-deps
-d DIR` on a machine with the internet) on the measuring processes' path; nothing is installed.
`--tiny` runs the same path on CPU at 32 px, batch 2, on the smallest variant of each family,
with torch.compile for one model's inference only, and through dynamo and AOTAutograd without
inductor (`aot_eager`): inductor's C++ compile takes most of a minute for one small inference
graph on a 2-core CPU, and the path under test is ours, not PyTorch's compiler.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import measure  # noqa: E402

# The models at their resolutions, and the smallest variant of each family for the dry run.
FULL_MODELS = {"mobilenet_v1_100": 224, "mobilenet_v2_100": 224, "shufflenet_v2_x1_0": 224, "efficientnet_v2_rw_t": 288}
TINY_MODELS = {"mobilenet_v1_025": 32, "mobilenet_v2_035": 32, "shufflenet_v2_x0_5": 32, "efficientnet_v2_b0_tf": 32}
FULL = {"models": FULL_MODELS, "batch_size": 256, "steps": 20, "windows": 3, "warmup": 5, "rounds": 3}
TINY = {"models": TINY_MODELS, "batch_size": 2, "steps": 1, "windows": 2, "warmup": 1, "rounds": 1}
# The dry run's torch.compile (see above): inductor's C++ compile took 46 s of its 108 s here.
TINY_TORCH_COMPILE_BACKEND = "aot_eager"
# Before the first of its kind has run, the seconds a process is assumed to need on a GPU (a first,
# cold compilation of the train step at batch 256, cuDNN autotuning included); later, the longest seen.
FIRST_ESTIMATE_S = {"lightnets": 90.0, "torch": 30.0, "torch.compile": 150.0}
REQUIRED = {
    "lightnets": ("jax", "flax", "optax", "orbax.checkpoint", "ml_collections", "absl"),
    "torch": ("torch", "torchvision", "timm"),
}
PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda12-plugin",
    "jax-cuda13-plugin",
    "flax",
    "optax",
    "orbax-checkpoint",
    "ml_collections",
    "torch",
    "torchvision",
    "timm",
    "triton",
    "numpy",
)
REPORT_RESERVE_S = 10.0  # kept back from the budget for writing the report


@dataclasses.dataclass
class Planned:
    job: measure.Job
    round: int


def plan(settings: dict, frameworks: list[str], tiny: bool, rounds: int) -> list[Planned]:
    """Round 1 of lightnets (analysing its step) and eager per model, then torch.compile, then the other rounds."""

    common = {k: settings[k] for k in ("batch_size", "steps", "windows", "warmup")}

    def job(model, framework, modes, **options):
        return measure.Job(model, framework, modes, image_size=settings["models"][model], **options, **common)

    both = ("infer", "train")  # inference first: its peak memory is not the training's
    first, compiled, later = [], [], []
    for i, model in enumerate(settings["models"]):
        if "lightnets" in frameworks:
            first.append(Planned(job(model, "lightnets", both, analyse=True), 0))
            later += [Planned(job(model, "lightnets", both), r) for r in range(1, rounds)]
        if "torch" in frameworks:
            first.append(Planned(job(model, "torch", both), 0))
            later += [Planned(job(model, "torch", both), r) for r in range(1, rounds)]
        if "torch.compile" in frameworks and not (tiny and i > 0):
            options = {"torch_compile_backend": TINY_TORCH_COMPILE_BACKEND} if tiny else {}
            compiled.append(Planned(job(model, "torch.compile", ("infer",) if tiny else both, **options), 0))
    later.sort(key=lambda p: p.round)  # round by round, each alternating its models' frameworks
    return first + compiled + later


def _key(job: dict, round_: int) -> str:
    return json.dumps([job, round_], sort_keys=True)


def _load_earlier(path: pathlib.Path) -> dict[str, dict]:
    """Finished measurements of an earlier invocation into the same directory, by job and round."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                result = json.loads(line)
            except json.JSONDecodeError:  # a line cut short when a run was killed
                continue
            if "error" not in result:
                done[_key(result["job"], result["round"])] = result
    return done


def ensure_ml_collections(wheels: str) -> list[str]:
    """Extra PYTHONPATH entries that make ml_collections importable ([] if it already is): its
    wheel itself, since Python imports pure-Python packages from a zip; nothing is installed."""
    if importlib.util.find_spec("ml_collections") is not None:
        return []
    found = sorted(pathlib.Path(wheels).glob("ml_collections-*.whl")) if wheels else []
    if not found:
        where = f"--wheels {wheels} holds no ml_collections-*.whl" if wheels else "ml_collections is not installed"
        sys.exit(
            f"gpu_check: {where} (the family configs need it); run `pip download ml_collections==1.1.0 --no-deps "
            "-d DIR` where there is internet, then pass --wheels DIR"
        )
    return [str(found[-1].resolve())]


def _missing(frameworks: list[str], extra_path: list[str]) -> list[str]:
    sys.path[:0] = extra_path
    try:
        names = [n for f in frameworks for n in REQUIRED["lightnets" if f == "lightnets" else "torch"]]
        return sorted({n for n in names if importlib.util.find_spec(n) is None})
    finally:
        del sys.path[: len(extra_path)]


def environment() -> dict:
    """What the report is about: the machine, the GPU and driver, the package versions."""
    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu cores (affinity)": len(os.sched_getaffinity(0)),
    }
    try:
        cpu = next(line for line in open("/proc/cpuinfo") if line.startswith("model name"))
        env["cpu"] = cpu.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        smi = subprocess.run(query, capture_output=True, text=True)
        env["gpus (nvidia-smi)"] = smi.stdout.strip().splitlines() or smi.stderr.strip()
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
        cuda = [part for part in header.split("|") if "CUDA Version" in part]
        if cuda:
            env["CUDA (driver)"] = cuda[0].split("CUDA Version:")[1].strip()
    else:
        env["gpus (nvidia-smi)"] = "no nvidia-smi: no NVIDIA GPU here"
    for name in PACKAGES:
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    env["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
    return env


def report(out: pathlib.Path, command: str, args, settings, env, results, skipped, earlier: int, elapsed: float) -> str:
    """OUT/gpu_check.md and OUT/gpu_check.json; returns the Markdown."""
    rows = measure.summarise(results)
    sizes = ", ".join(f"{model} at {size} px" for model, size in settings["models"].items())
    warning = measure.busy_warning(results, measure.default_cores())
    md = [
        f"# GPU check ({'tiny CPU dry run' if args.tiny else 'issue 19'}), {env['date']}",
        "",
        f"`{command}`: {elapsed:.0f} s of a {args.budget_s:.0f} s budget; {len(results)} measurements"
        + (f" ({earlier} from an earlier invocation into this directory)" if earlier else "")
        + f", {len(skipped)} skipped.",
        "",
        "## Environment",
        "",
        *[f"- {k}: {v}" for k, v in env.items()],
        f"- from the measuring processes: {measure.conditions(results)}",
        *([f"- {warning}"] if warning else []),
        "",
        "## Throughput",
        "",
        f"Batch {settings['batch_size']} per device, bfloat16; {sizes}. "
        f"Each row's processes: compilation and {settings['warmup']} warm-up steps apart, then the median of "
        f"{settings['windows']} windows of {settings['steps']} steps; across rounds the median and min-max. Ratios "
        "are over PyTorch eager's figure of the same round; one pair gives no spread. Peak memory: the "
        "device allocator's peak (JAX's `peak_bytes_in_use`, PyTorch's `max_memory_allocated`), else the "
        "process's peak RSS. Compile s: the first step for PyTorch (cuDNN autotuning, torch.compile)."
        + (f" torch.compile's backend: {TINY_TORCH_COMPILE_BACKEND} (no inductor)." if args.tiny else ""),
        "",
        measure.markdown(rows),
        "",
        "## lightnets' train step: convolutions in the optimised HLO",
        "",
        "Library: convolutions handed to a library, custom calls by target and library fusions holding a "
        "convolution by kind (on a GPU every convolution should be `__cudnn$...`; XLA:CPU hands some to YNNPACK, "
        "`__ynn_fusion`); XLA convolution: `convolution` ops XLA's own emitter runs; dot: matrix products; "
        "layout in/out: convolution operands produced by, and results consumed by, a transpose, a copy or a "
        "fusion ending in one (bitcasts and tuple elements followed through).",
        "",
        "| model | library | XLA convolution | dot | layout in | layout out | top-level ops |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    analysed = [r for r in results if "hlo" in r]
    analysed_failed = [r for r in results if "analysis_error" in r]
    for r in analysed:
        h = r["hlo"]
        library = ", ".join(f"`{k}` {v}" for k, v in sorted(h["library"].items())) or "none"
        md.append(
            f"| {r['job']['model']} | {library} | {h['xla_convolution']} | {h['dot']} | {h['layout_in']} | "
            f"{h['layout_out']} | {h['top_level_ops']} |"
        )
    md += ["", "## lightnets' train step: where the time goes", ""]
    for r in analysed:
        p = r["profile"]
        md += [
            f"{r['job']['model']}: {p['source']} over {p['steps']} steps, {p['total_ms_per_step']:.2f} ms per step "
            f"(the step's wall time {p['wall_ms_per_step']:.2f} ms; {p['unmatched_ms_per_step']:.2f} ms of events "
            f"classed by name only); trace in `{os.path.relpath(p['trace_dir'], out)}`",
            "",
            "| category | ms per step | share |",
            "| --- | ---: | ---: |",
            *[
                f"| {cat} | {v['ms_per_step']:.3f} | {100 * v['share']:.1f} % |"
                for cat, v in sorted(p["categories"].items(), key=lambda kv: -kv[1]["share"])
            ],
            "",
        ]
    problems = [f"- {s}" for s in skipped]
    problems += [f"- {r['job']['model']}: its analysis failed: {r['analysis_error']}" for r in analysed_failed]
    problems += [f"- {row.model} {row.label} {row.mode}: {f}" for row in rows for f in row.failures]
    md += ["## Skipped or failed", "", *(problems or ["- nothing"])]
    text = "\n".join(md) + "\n"
    (out / "gpu_check.md").write_text(text)
    summary = {
        "environment": env,
        "settings": settings,
        "rows": [dataclasses.asdict(r) | {"median": r.median, "label": r.label} for r in rows],
        "analysis": [{"model": r["job"]["model"], "hlo": r["hlo"], "profile": r["profile"]} for r in analysed],
        "skipped": skipped,
        "elapsed_s": elapsed,
    }
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
    return text


def main(argv=None) -> int:
    start = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="directory for the report, the traces, the caches and the raw results")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: 32 px, batch 2, smallest variants")
    parser.add_argument("--budget_s", type=float, default=480.0, help="the deadline, from the start")
    parser.add_argument("--rounds", type=int, default=None, help="alternations (default: 3, or 1 with --tiny)")
    parser.add_argument("--models", default="", help="comma-separated subset of the models")
    parser.add_argument("--frameworks", default="lightnets,torch,torch.compile")
    parser.add_argument("--wheels", default="", help="a folder with an ml_collections wheel, used if it is missing")
    args = parser.parse_args(argv)
    settings = json.loads(json.dumps(TINY if args.tiny else FULL))
    if args.models:
        unknown = sorted(set(args.models.split(",")) - set(settings["models"]))
        if unknown:
            parser.error(f"--models {unknown} are not among {list(settings['models'])}")
        settings["models"] = {m: s for m, s in settings["models"].items() if m in args.models.split(",")}
    frameworks = args.frameworks.split(",")
    if not set(frameworks) <= set(measure.FRAMEWORKS):
        parser.error(f"--frameworks must be among {list(measure.FRAMEWORKS)}")
    rounds = args.rounds or settings["rounds"]
    settings["rounds"] = rounds

    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    extra_path = ensure_ml_collections(args.wheels)
    missing = _missing(frameworks, extra_path)
    if missing:
        sys.exit(f"gpu_check: {missing} not installed; --frameworks without the ones that need them runs the rest")
    env_vars = measure.child_env(out / "cache", tuple(extra_path))
    env = environment()
    cores = measure.default_cores()
    deadline = start + args.budget_s - REPORT_RESERVE_S
    results_file = out / "results.jsonl"
    earlier = _load_earlier(results_file)
    results, skipped, longest = [], [], {}
    reused = 0
    for p in plan(settings, frameworks, args.tiny, rounds):
        job = p.job
        name = f"round {p.round + 1} {job.model} {job.label} {'+'.join(job.modes)}"
        key = _key(dataclasses.asdict(job), p.round)
        if key in earlier:
            results.append(earlier[key])
            reused += 1
            continue
        kind = (job.framework, job.analyse)
        needed = longest.get(kind, 0.0 if args.tiny else FIRST_ESTIMATE_S[job.framework])
        left = deadline - time.monotonic()
        if left < needed:
            skipped.append(f"{name}: {left:.0f} s left before the deadline, such a process needs about {needed:.0f} s")
            continue
        print(f"# {name} ({left:.0f} s left)", file=sys.stderr, flush=True)
        profile_dir = str(out / "traces" / job.model) if job.analyse else ""
        result = measure.run_job(job, cores=cores, env=env_vars, timeout=max(left, 1.0), profile_dir=profile_dir)
        result["round"] = p.round
        longest[kind] = max(longest.get(kind, 0.0), result["wall_s"])
        if "error" in result and result["error"].startswith("timed out"):
            skipped.append(f"{name}: stopped at the deadline after {result['wall_s']:.0f} s")
            continue
        if "error" in result:
            print(f"# {name}: {result['error']}", file=sys.stderr, flush=True)
        else:
            with results_file.open("a") as f:
                f.write(json.dumps(result) + "\n")
        results.append(result)
    command = " ".join(["python benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    text = report(out, command, args, settings, env, results, skipped, reused, time.monotonic() - start)
    print(text)
    failed = [r for r in results if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
