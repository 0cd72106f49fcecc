"""How lightnets measures speed: every figure from a fresh process, the frameworks alternated round by round.

A `Job` is one measurement: a model, a framework (`lightnets`, `torch` eager or `torch.compile`)
and its modes (`train`, `infer`; with a data set also `fed` and `pipeline`) at one batch size,
resolution and dtype. `run_job` runs it as a child process of its own,

    python benchmarks/measure.py '{"job": {...}, "cores": [0, 1], "profile_dir": ""}'

pinned to the given cores, which builds the model, compiles (timed apart), runs `warmup` steps
(timed apart), then times `windows` windows of `steps` steps and prints one line of JSON
(`RESULT {...}`): images/s per window, compile and warm-up seconds, peak memory, the threads it
ran on and its environment. `alternate` runs a list of jobs round after round, A B A B ..., and
`summarise` turns the rounds into rows: the median of the per-round figures with their min-max
spread, and each framework's ratio to PyTorch eager taken round by round (the figures of one
round were measured next to each other in time, so a slow minute of the machine moves both).
A ratio whose min-max spread includes 1.0 is "no difference".

Why: XLA's and PyTorch's thread pools in one process fight over the same cores, and a shared
machine's speed drifts from minute to minute (issue 19: in one same-process run PyTorch eager's
training windows ranged from 15 to 112 images/s).

Threads: the child pins itself (`os.sched_setaffinity`) before importing either framework. XLA's
CPU client sizes its intra-op pool (`tf_XLAEigen` threads) from the affinity mask (checked here:
one core pinned gives one such thread), and PyTorch gets `torch.set_num_threads(len(cores))`; the
child reports the counts it ran with. OpenMP threads wait passively (`child_env` says why).
Compilation caches (JAX's persistent cache, inductor's and
triton's) live in the parent's `cache_dir`, shared by the rounds: the first round's compile
seconds are a cold compilation, later rounds' a cache hit; the rates never include compilation.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
FRAMEWORKS = ("lightnets", "torch", "torch.compile")
LABELS = {"lightnets": "lightnets", "torch": "torch eager", "torch.compile": "torch.compile"}
BASELINE = "torch"  # ratios are taken over PyTorch eager's figure of the same round
RESULT = "RESULT "


@dataclasses.dataclass(frozen=True)
class Job:
    model: str
    framework: str  # one of FRAMEWORKS
    modes: tuple[str, ...]  # measured in this order, in one process
    batch_size: int  # per device
    image_size: int
    dtype: str = "bfloat16"
    steps: int = 2  # per timed window
    windows: int = 3
    warmup: int = 1
    analyse: bool = False  # lightnets' train step: HLO convolution counts and a profile by op category
    profile_steps: int = 3
    data: str = ""  # `fed`/`pipeline` modes: a dataset spec (e.g. folder:PATH)
    data_workers: int = 0
    data_threads: int = 2
    torch_compile_backend: str = "inductor"  # torch.compile's; the CPU dry run's "aot_eager" skips the C++ compile

    @property
    def label(self) -> str:
        return LABELS[self.framework]


# ---------------------------------------------------------------------------------------------
# The parent: one child process per job, rounds alternated
# ---------------------------------------------------------------------------------------------


def child_env(
    cache_dir: str | os.PathLike, extra_pythonpath: tuple[str, ...] = (), omp_wait_policy: str = "PASSIVE"
) -> dict[str, str]:
    """The environment of a child: this checkout first on the path, the shared compilation caches.

    A CPU is measured as one XLA device: a forced host device count (the tests' 8 devices) would
    split the same cores into devices that compete for them. OpenMP threads (PyTorch's on CPU)
    wait passively by default: libgomp's spinning threads, on a machine where other processes
    take a core now and then, wait a time slice at every op for a descheduled peer. Measured
    here under a load of 5 on 2 cores, PyTorch eager's MobileNetV2 inference (batch 16, 128 px)
    ranged 6-427 images/s spinning and 77-170 passive, training 4.6-11 and 18-22. XLA's pool
    does not use OpenMP. "" leaves the policy to the environment (libgomp spins by default).
    """
    env = dict(os.environ)
    path = [str(ROOT), *extra_pythonpath, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(path)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    cache = pathlib.Path(cache_dir)
    env.update(
        JAX_COMPILATION_CACHE_DIR=str(cache / "jax"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"),
        TRITON_CACHE_DIR=str(cache / "triton"),
        TF_CPP_MIN_LOG_LEVEL=env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    )
    if omp_wait_policy:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    return env


def run_job(job: Job, *, cores, env: dict[str, str], timeout: float | None = None, profile_dir: str = "") -> dict:
    """Runs `job` in a fresh process pinned to `cores`; its result, or {"error": ...} if it failed.

    The child starts a session of its own so that a timeout ends it with everything it started
    (torch.compile's compile workers).
    """
    payload = json.dumps({"job": dataclasses.asdict(job), "cores": sorted(cores), "profile_dir": profile_dir})
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "measure.py"), payload],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"job": dataclasses.asdict(job), "error": f"timed out after {timeout:.0f} s", "wall_s": timeout}
    except BaseException:  # Ctrl-C: a child in a session of its own would not get it
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    wall = time.monotonic() - start
    lines = [line for line in out.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(err.strip().splitlines()[-15:])
        return {"job": dataclasses.asdict(job), "error": f"exit status {proc.returncode}:\n{tail}", "wall_s": wall}
    result = json.loads(lines[-1][len(RESULT) :])
    result["wall_s"] = wall
    return result


FILL_ROUND = -1  # `alternate`'s cache-filling processes: their compile seconds are reported, never their rates


def alternate(jobs: list[Job], rounds: int, run, on_result=None, fill_caches: bool = True) -> list[dict]:
    """Runs every job once per round, in the given order each round (A B A B ...).

    `run(job)` measures one job (`run_job` with its cores and environment bound); each result
    gets its round number and goes to `on_result` (progress, a results file) as it arrives.
    With `fill_caches`, every job that compiles (lightnets, torch.compile) first runs once, one
    step, as round `FILL_ROUND`: its process compiles cold into the shared caches, so that round
    1's process reads them as later rounds' do. Without it, round 1's lightnets training figure,
    the process that compiled cold, was the lowest of five in all 9 training comparisons of
    2026-12-03 (in none of the 3 inference ones).
    """
    results = []
    for job in jobs if fill_caches else ():
        if job.framework != BASELINE:  # PyTorch eager compiles nothing
            result = run(dataclasses.replace(job, steps=1, windows=1, warmup=0))
            result["round"] = FILL_ROUND
            results.append(result)
            if on_result is not None:
                on_result(result)
    for r in range(rounds):
        for job in jobs:
            result = run(job)
            result["round"] = r
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


@dataclasses.dataclass
class Row:
    """One (model, framework, mode) over the rounds."""

    model: str
    framework: str
    mode: str
    figures: dict[int, float]  # round -> the child's median images/s per device
    compile_s: float | None  # the first process's (cold caches: the cache-filling one's, or round 1's)
    warmup_s: float | None  # round 1's
    peak_mb: float | None
    peak_kind: str  # "device" or "host RSS"
    ratios: dict[int, float] = dataclasses.field(default_factory=dict)  # round -> figure / torch eager's
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.figures.values()) if self.figures else float("nan")

    @property
    def spread(self) -> tuple[float, float]:
        return (min(self.figures.values()), max(self.figures.values())) if self.figures else (float("nan"),) * 2

    @property
    def rates(self) -> list[float]:
        return [self.figures[r] for r in sorted(self.figures)]

    @property
    def label(self) -> str:
        return LABELS.get(self.framework, self.framework)


def verdict(ratios, of: str = "rates") -> str:
    """'faster', 'slower' or 'no difference' (the min-max spread of the paired ratios includes 1.0).

    `of`: "rates" (images/s over images/s: above 1 is faster) or "times" (ms over ms: above 1 is slower).
    """
    ratios = list(ratios)
    if len(ratios) < 2:
        return "one pair: no spread"
    if min(ratios) <= 1.0 <= max(ratios):
        return "no difference"
    above = {"rates": "faster", "times": "slower"}[of]
    return above if min(ratios) > 1.0 else {"faster": "slower", "slower": "faster"}[above]


def child_result(argv: list[str], env: dict[str, str], what: str, timeout: float | None = None) -> dict:
    """Runs a measuring child (`argv`) and returns the JSON of its last `RESULT` line; a child that
    fails ends the benchmark with `what` and the tail of its stderr."""
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode or not lines:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT) :])


def summarise(results: list[dict]) -> list[Row]:
    """Rows in the order first measured; ratios to PyTorch eager round by round where both ran."""
    rows: dict[tuple[str, str, str], Row] = {}
    for result in results:
        job = result["job"]
        modes = result.get("modes", {})
        for mode in job["modes"]:
            key = (job["model"], job["framework"], mode)
            row = rows.setdefault(key, Row(*key, {}, None, None, None, ""))
            round_ = result.get("round", 0)
            if "error" in result or mode not in modes:
                which = "filling the caches" if round_ == FILL_ROUND else f"round {round_ + 1}"
                row.failures.append(f"{which}: {result.get('error', 'no result')}")
                continue
            m = modes[mode]
            if row.compile_s is None:  # the first process's: a cold compilation
                row.compile_s = m.get("compile_s")
            if round_ == FILL_ROUND:
                continue
            row.figures[round_] = statistics.median(m["rates"])
            if row.warmup_s is None:
                row.warmup_s = m.get("warmup_s")
            if m.get("peak_mb") is not None:
                row.peak_mb = max(row.peak_mb or 0.0, m["peak_mb"])
                row.peak_kind = m["peak_kind"]
    for (model, framework, mode), row in rows.items():
        base = rows.get((model, BASELINE, mode))
        if framework != BASELINE and base is not None:
            row.ratios = {r: f / base.figures[r] for r, f in row.figures.items() if r in base.figures}
    return list(rows.values())


def _fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def markdown(rows: list[Row]) -> str:
    """The rows as a Markdown table (spreads are min-max over the rounds)."""
    lines = [
        "| model | framework | mode | images/s, median | min-max | rounds | compile s (cold) "
        "| warm-up s (round 1) | peak MB | vs torch eager, paired: median (min-max) | verdict |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        lo, hi = row.spread
        peak = f"{row.peak_mb:.0f} ({row.peak_kind})" if row.peak_mb is not None else "n/a"
        if row.ratios:
            r = list(row.ratios.values())
            ratio, judged = f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})", verdict(r)
        else:
            ratio, judged = "", ""
        if row.failures:
            judged = (judged + "; " if judged else "") + f"{len(row.failures)} failed"
        lines.append(
            f"| {row.model} | {row.label} | {row.mode} | {_fmt(row.median)} | {_fmt(lo)}-{_fmt(hi)} | "
            f"{len(row.figures)} | {_fmt(row.compile_s)} | {_fmt(row.warmup_s)} | {peak} | {ratio} | {judged} |"
        )
    return "\n".join(lines)


def conditions(results: list[dict]) -> str:
    """One line on what the children ran with: versions, device, cores and thread counts."""
    env, threads = {}, {}
    for result in results:
        if "error" in result:
            continue
        env.update(result.get("env", {}))
        for key, value in result.get("threads", {}).items():
            threads.setdefault(key, set()).add(str(value))
    parts = [f"{k} {v}" for k, v in sorted(env.items())]
    parts += [f"{k}: {'/'.join(sorted(v))}" for k, v in sorted(threads.items())]
    loads = [r["load"] for r in results if "load" in r]
    if loads:
        parts.append(f"1-minute load average as the processes started: {min(loads):.1f}-{max(loads):.1f}")
    return "; ".join(parts)


def busy_warning(results: list[dict], cores) -> str:
    """A warning when other work shared the machine: a process's own threads add about one to the
    load per core, so a median load above 1.5 per core means others ran too."""
    loads = sorted(r["load"] for r in results if "load" in r)
    if not loads or statistics.median(loads) <= 1.5 * len(cores):
        return ""
    return (
        f"WARNING: the machine was busy (median 1-minute load {statistics.median(loads):.1f} on {len(cores)} "
        "cores): other processes took the measured cores now and then; the spreads say how much that moved "
        "the figures; treat them as provisional"
    )


def default_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def new_cache_dir() -> str:
    """A fresh cache for one invocation: its first round compiles cold."""
    return tempfile.mkdtemp(prefix="lightnets-measure-cache-")


# ---------------------------------------------------------------------------------------------
# The child: one job in this process
# ---------------------------------------------------------------------------------------------


def _windows(run_steps, sync, job: Job, images_per_step: int, warmup: int) -> dict:
    """`warmup` steps timed apart, then images/s in each of `job.windows` windows of `job.steps` steps."""
    start = time.perf_counter()
    if warmup:  # none in a cache-filling process (`alternate`)
        run_steps(warmup)
        sync()
    warmup_s = time.perf_counter() - start
    rates = []
    for _ in range(job.windows):
        start = time.perf_counter()
        run_steps(job.steps)
        sync()
        rates.append(job.steps * images_per_step / (time.perf_counter() - start))
    return {"rates": rates, "warmup_s": warmup_s}


def _host_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _xla_threads() -> int:
    """XLA's CPU intra-op pool as the kernel sees it: its threads by name."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(pathlib.Path(f"/proc/self/task/{task}/comm").read_text().strip())
        except OSError:
            continue
    return sum(n.startswith("tf_XLAEigen") for n in names)


def _lightnets(job: Job, profile_dir: str) -> dict:
    from lightnets import cli

    cli.prepare_cpu()  # as main.py does, before the backend starts: a CPU step's freed memory stays mapped
    import jax
    import numpy as np
    from flax import nnx

    # Imported here, in the child: the parent imports no framework. None of these imports the input
    # pipeline (grain, TensorFlow), absent where a GPU machine only benchmarks.
    from lightnets.models.registry import model_info
    from lightnets.training import steps as training_steps
    from lightnets.training import train

    family = model_info(job.model).family  # e.g. "mobilenet_v2": configs/mobilenetv2.py has its recipe
    config = importlib.import_module(f"configs.{family.replace('_', '')}").get_config(
        job.model.removeprefix(family + "_")
    )
    devices = jax.device_count()
    config.update(dtype=job.dtype, image_size=job.image_size, batch_size=job.batch_size * devices)
    mesh = train.make_mesh()
    model = training_steps.build_model(config, num_classes=1000)
    steps = training_steps.build_steps(config, model, mesh, steps_per_epoch=1000)
    n = config.batch_size
    rng = np.random.default_rng(0)
    sharding = train.batch_sharding(mesh)
    images = jax.device_put(rng.integers(0, 256, (n, job.image_size, job.image_size, 3), np.uint8), sharding)
    labels = jax.device_put(rng.integers(0, 1000, n).astype(np.int32), sharding)
    holder = {"state": steps.state}
    compiled = {}
    modes, extra = {}, {}

    def peak() -> tuple[float, str]:
        stats = jax.devices()[0].memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2**20, "device"
        return _host_peak_mb(), "host RSS"

    def train_step():
        if "train" not in compiled:
            start = time.perf_counter()
            compiled["train"] = steps.train_step.lower(holder["state"], images, labels).compile()
            compiled["train_s"] = time.perf_counter() - start
        return compiled["train"]

    def run_train(k, step=None):
        step = step or compiled["train"]
        for _ in range(k):
            holder["state"], holder["metrics"] = step(holder["state"], images, labels)

    def sync_train():
        jax.block_until_ready(holder["metrics"])

    for mode in job.modes:
        if mode == "train":
            train_step()
            m = _windows(run_train, sync_train, job, n, job.warmup)
            m["compile_s"] = compiled["train_s"]
        elif mode == "infer":

            def forward(params, batch_stats, rngs, x):
                x = steps.normalize.on_device(x, training_steps.DTYPES[job.dtype])
                return nnx.merge(steps.graphdefs.eval, params, batch_stats, rngs, copy=True)(x)

            replicated = train.replicated(mesh)
            infer = jax.jit(forward, in_shardings=(replicated,) * 3 + (sharding,), out_shardings=sharding)
            state = holder["state"]
            start = time.perf_counter()
            compiled_infer = infer.lower(state.params, state.batch_stats, state.rngs, images).compile()
            compile_s = time.perf_counter() - start
            out = {}

            def run_infer(k, compiled_infer=compiled_infer, state=state, out=out):
                for _ in range(k):
                    out["logits"] = compiled_infer(state.params, state.batch_stats, state.rngs, images)

            m = _windows(run_infer, lambda out=out: jax.block_until_ready(out["logits"]), job, n, job.warmup)
            m["compile_s"] = compile_s
        elif mode in ("fed", "pipeline"):
            m = _data_mode(mode, job, config, mesh, train_step, holder)
        else:
            raise ValueError(f"mode {mode!r} is not one of train, infer, fed, pipeline")
        m["rates"] = [r / devices for r in m["rates"]]  # per device
        m["peak_mb"], m["peak_kind"] = peak()
        modes[mode] = m

    if job.analyse:
        try:  # the rates above stand whatever happens here
            extra.update(_analyse(job, train_step(), run_train, sync_train, profile_dir))
        except Exception as e:
            extra["analysis_error"] = f"{type(e).__name__}: {e}"
    import flax
    import jaxlib

    env = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "backend": jax.default_backend(),
        "lightnets devices": f"{devices} x {jax.devices()[0].device_kind}",
    }
    threads = {"XLA intra-op threads": _xla_threads()} if jax.default_backend() == "cpu" else {}
    return {"modes": modes, "env": env, "threads": threads, "devices": devices, **extra}


def _analyse(job: Job, compiled, run_train, sync_train, profile_dir: str) -> dict:
    """The train step's convolutions in its optimised HLO, and a profile of `profile_steps` steps by op category."""
    import jax
    import step_anatomy  # beside this file

    text = compiled.as_text()
    out = {"hlo": step_anatomy.convolutions(text)}
    trace_dir = profile_dir or tempfile.mkdtemp(prefix="lightnets-trace-")
    run_train(1)  # nothing left over from the timing inside the trace
    sync_train()
    jax.profiler.start_trace(trace_dir)
    start = time.perf_counter()
    run_train(job.profile_steps)
    sync_train()
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    out["profile"] = step_anatomy.time_by_category(trace_dir, text, job.profile_steps)
    out["profile"]["wall_ms_per_step"] = wall * 1e3 / job.profile_steps
    out["profile"]["trace_dir"] = trace_dir
    return out


def _data_mode(mode: str, job: Job, config, mesh, train_step, holder) -> dict:
    """`fed`: the train step fed by the trainer's input pipeline from `job.data`, as `main.py` feeds
    it. `pipeline`: that pipeline alone on one thread (how many host cores keep the devices fed)."""
    import jax

    if not job.data:
        raise ValueError(f"mode {mode} needs a data set (--data)")
    from input_pipeline import datasets
    from lightnets.training import trainer

    source = datasets.create_source(job.data, "train", image_size=job.image_size)
    transform = trainer.data_transforms(config)[0]
    n = config.batch_size
    if mode == "pipeline":
        one_core = datasets.train_iterator(source, global_batch_size=n, seed=1, transform=transform, threads=1)
        return _windows(lambda k: [next(one_core) for _ in range(k)], lambda: None, job, n, 1)
    step = train_step()
    data = datasets.train_iterator(
        source, global_batch_size=n, seed=0, transform=transform, workers=job.data_workers, threads=job.data_threads
    )

    def run_fed(k):
        for _ in range(k):
            batch = next(data)
            batch.pop("skipped")
            batch = trainer._global(mesh, batch)
            holder["state"], holder["metrics"] = step(holder["state"], batch["image"], batch["label"])

    m = _windows(run_fed, lambda: jax.block_until_ready(holder["metrics"]), job, n, job.warmup)
    if hasattr(data, "close"):
        data.close()
    m["compile_s"] = 0.0  # compiled for `train` (or just now, timed there)
    return m


def _torch(job: Job, cores) -> dict:
    """The torchvision or timm network at the same batch and resolution, with PyTorch's usual fast
    settings: channels_last, bf16 autocast for bfloat16, cuDNN autotuning on a GPU; SGD with
    momentum and label-smoothed cross-entropy for training."""
    os.environ["JAX_PLATFORMS"] = "cpu"  # lightnets.convert imports jax: it must not take GPU memory here
    import torch
    import torch.nn.functional as F

    from lightnets import convert

    torch.set_num_threads(len(cores))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    bf16 = job.dtype == "bfloat16"
    n = job.batch_size  # PyTorch runs on one device
    model = convert.reference_model(job.model).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(n, 3, job.image_size, job.image_size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (n,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    net = torch.compile(model, backend=job.torch_compile_backend) if job.framework == "torch.compile" else model

    def run_train(k):
        for _ in range(k):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def run_infer(k):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for _ in range(k):
                net(x)

    modes = {}
    for mode in job.modes:
        if mode not in ("train", "infer"):
            raise ValueError(f"PyTorch measures train and infer, not {mode!r}")
        model.train(mode == "train")
        run = run_train if mode == "train" else run_infer
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        run(1)  # torch.compile compiles here, cuDNN tunes: the first step is its compile time
        sync()
        compile_s = time.perf_counter() - start
        m = _windows(run, sync, job, n, job.warmup)  # then as many warm-up steps as lightnets gets
        m["compile_s"] = compile_s
        m["peak_mb"], m["peak_kind"] = (
            (torch.cuda.max_memory_allocated() / 2**20, "device") if cuda else (_host_peak_mb(), "host RSS")
        )
        modes[mode] = m
    env = {"torch": torch.__version__, "torch device": torch.cuda.get_device_name() if cuda else "cpu"}
    if cuda:
        env.update({"CUDA (torch)": torch.version.cuda, "cuDNN (torch)": str(torch.backends.cudnn.version())})
    threads = {} if cuda else {"torch intra-op threads": torch.get_num_threads()}
    threads["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "unset (libgomp spins)")
    return {"modes": modes, "env": env, "threads": threads, "devices": 1}


def child_main(payload: str) -> dict:
    spec = json.loads(payload)
    job = Job(**{**spec["job"], "modes": tuple(spec["job"]["modes"])})
    cores = spec["cores"]
    os.sched_setaffinity(0, cores)  # before either framework starts its threads
    load = os.getloadavg()[0]  # what else the machine was running
    start = time.perf_counter()
    result = _lightnets(job, spec["profile_dir"]) if job.framework == "lightnets" else _torch(job, cores)
    result.update(job=dataclasses.asdict(job), cores=cores, load=load, child_s=time.perf_counter() - start)
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="One measurement in this process, as benchmarks/throughput.py and gpu_check.py start it; "
        "prints one line, RESULT {json}."
    )
    parser.add_argument("spec", help='JSON: {"job": {the fields of measure.Job}, "cores": [0, 1], "profile_dir": ""}')
    print(RESULT + json.dumps(child_main(parser.parse_args().spec)), flush=True)
