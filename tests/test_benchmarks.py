"""The benchmarks run on CPU in CI-sized settings and produce their rows and reports; no speed is asserted."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there; throughput imports measure
    spec.loader.exec_module(module)
    return module


measure = _load("measure")
step_anatomy = _load("step_anatomy")


def _result(model, framework, mode, round_, rate):
    job = {"model": model, "framework": framework, "modes": [mode]}
    modes = {mode: {"rates": [rate * 0.9, rate, rate * 1.1], "compile_s": 1.0, "warmup_s": 0.1, "peak_mb": None}}
    return {"job": job, "round": round_, "modes": modes}


def test_ratios_are_paired_round_by_round_and_a_spread_across_one_is_no_difference():
    # lightnets 10, 20, 30 against eager 11, 19, 31 in the same rounds: the rounds' drift moves
    # both, and the paired ratios (0.91, 1.05, 0.97) straddle 1.0 although every median differs.
    rates = {"lightnets": [10, 20, 30], "torch": [11, 19, 31]}
    results = [_result("m", fw, "train", r, rates[fw][r]) for r in range(3) for fw in ("lightnets", "torch")]
    rows = {row.framework: row for row in measure.summarise(results)}
    assert rows["lightnets"].rates == [10, 20, 30]  # each round's figure is its process's median window
    assert rows["lightnets"].spread == (10, 30)
    assert rows["lightnets"].ratios == pytest.approx({0: 10 / 11, 1: 20 / 19, 2: 30 / 31})
    assert rows["torch"].ratios == {}
    assert measure.verdict(rows["lightnets"].ratios.values()) == "no difference"
    assert measure.verdict([0.4, 0.5, 0.45]) == "slower"
    assert measure.verdict([1.2, 1.1, 1.3]) == "faster"
    assert measure.verdict([1.2, 1.1, 1.3], of="times") == "slower"  # ms over ms (conv_formulations, step_overhead)
    table = measure.markdown(list(rows.values()))
    assert "| m | lightnets | train | 20.0 | 10.0-30.0 | 3 |" in table and "| no difference |" in table


def test_a_failed_round_is_reported_and_left_out_of_the_pairs():
    results = [_result("m", fw, "infer", r, 10.0) for r in range(2) for fw in ("lightnets", "torch")]
    results[3] = {"job": results[3]["job"], "round": 1, "error": "exit status 1:\nboom"}
    rows = {row.framework: row for row in measure.summarise(results)}
    assert rows["torch"].failures == ["round 2: exit status 1:\nboom"]
    assert list(rows["lightnets"].ratios) == [0]  # only the round where both ran
    assert "1 failed" in measure.markdown(list(rows.values()))


def test_a_cache_filling_process_precedes_round_one_and_gives_only_the_compile_time():
    jobs = [measure.Job("m", fw, ("train",), batch_size=2, image_size=32, steps=4) for fw in measure.FRAMEWORKS]
    ran = []

    def run(job):
        ran.append(job)
        fill = len(ran) <= 2
        result = _result("m", job.framework, "train", 0, 5.0 if fill else 10.0)
        result["modes"]["train"]["compile_s"] = 9.0 if fill else 1.0
        return result

    results = measure.alternate(jobs, 2, run)
    # One step in one window for lightnets and torch.compile (eager compiles nothing), then A B C A B C.
    assert [(j.framework, j.steps, j.windows, j.warmup) for j in ran[:2]] == [
        ("lightnets", 1, 1, 0),
        ("torch.compile", 1, 1, 0),
    ]
    assert ran[2:] == jobs + jobs
    assert [r["round"] for r in results] == [measure.FILL_ROUND] * 2 + [0] * 3 + [1] * 3
    rows = {row.framework: row for row in measure.summarise(results)}
    assert rows["lightnets"].figures == {0: 10.0, 1: 10.0}  # the filling process's rate is not a figure
    assert rows["lightnets"].compile_s == 9.0 and rows["torch"].compile_s == 1.0  # the cold compilation
    assert rows["lightnets"].ratios == {0: 1.0, 1: 1.0}


# A GPU-shaped optimised module (its form as XLA prints it): a cuDNN convolution fed by a transposed
# kernel and consumed through its tuple by a copy, a Triton GEMM fusion, a plain convolution, and a
# while loop whose body's ops run as ops of their own.
GPU_HLO = """HloModule step, entry_computation_layout={(bf16[8,8]{1,0})->bf16[8,8]{1,0}}

%gemm (p0: bf16[8,8], p1: bf16[8,8]) -> bf16[8,8] {
  %p0 = bf16[8,8]{1,0} parameter(0)
  %p1 = bf16[8,8]{1,0} parameter(1)
  ROOT %dot.1 = bf16[8,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%transposed (p: bf16[3,3,4,8]) -> bf16[8,3,3,4] {
  %p = bf16[3,3,4,8]{3,2,1,0} parameter(0)
  ROOT %transpose.1 = bf16[8,3,3,4]{3,2,1,0} transpose(%p), dimensions={3,0,1,2}
}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%body (s: bf16[2,8,8,4]) -> bf16[2,8,8,4] {
  %s = bf16[2,8,8,4]{3,2,1,0} parameter(0)
  %w2 = bf16[1,1,4,4]{3,2,1,0} constant({...})
  ROOT %convolution.2 = bf16[2,8,8,4]{3,2,1,0} convolution(%s, %w2), window={size=1x1}, dim_labels=b01f_01io->b01f
}

ENTRY %main (x: bf16[2,8,8,4], w: bf16[3,3,4,8], m: bf16[8,8]) -> bf16[2,8,8,8] {
  %x = bf16[2,8,8,4]{3,2,1,0} parameter(0)
  %w = bf16[3,3,4,8]{3,2,1,0} parameter(1)
  %m = bf16[8,8]{1,0} parameter(2)
  %gemm_fusion = bf16[8,8]{1,0} fusion(%m, %m), kind=kCustom, calls=%gemm, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}
  %wrapped_transpose = bf16[8,3,3,4]{3,2,1,0} fusion(%w), kind=kInput, calls=%transposed
  %cudnn-conv.1 = (bf16[2,8,8,8]{3,2,1,0}, u8[0]{0}) custom-call(%x, %wrapped_transpose), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %get-tuple-element.1 = bf16[2,8,8,8]{3,2,1,0} get-tuple-element(%cudnn-conv.1), index=0
  %loop = bf16[2,8,8,4]{3,2,1,0} while(%x), condition=%body, body=%body
  %all-reduce.1 = f32[] all-reduce(%m), to_apply=%add
  ROOT %copy.1 = bf16[2,8,8,8]{0,3,2,1} copy(%get-tuple-element.1)
}
"""  # noqa: E501 (one instruction a line, as XLA prints it)


def test_the_hlo_analysis_counts_convolutions_by_form_and_the_layout_changes_beside_them():
    counts = step_anatomy.convolutions(GPU_HLO)
    assert counts["library"] == {"__cudnn$convForward": 1}
    assert counts["xla_convolution"] == 1  # the loop body's, which runs as an op of its own
    assert counts["dot"] == 1  # inside the GEMM fusion
    assert counts["layout_in"] == 1  # the transposed kernel; the bare parameter is no layout change
    assert counts["layout_out"] == 1  # the copy, reached through the tuple element
    computations = step_anatomy.parse(GPU_HLO)
    top = step_anatomy._top_level(computations)
    assert "sum" not in top and "dot.1" not in top  # a reducer's and a fusion's insides are not ops
    categories = {name: step_anatomy.category(i, computations) for name, i in top.items()}
    assert categories == {
        "x": None,
        "w": None,
        "m": None,
        "s": None,
        "w2": None,
        "get-tuple-element.1": None,
        "gemm_fusion": "matmul",
        "wrapped_transpose": "copy/transpose",
        "cudnn-conv.1": "convolution",
        "loop": "other",
        "all-reduce.1": "collective",
        "copy.1": "copy/transpose",
        "convolution.2": "convolution",
    }


def test_profile_time_nested_in_an_op_is_counted_once():
    totals = dict.fromkeys(step_anatomy.CATEGORIES, 0.0)
    # A 10-unit loop holding two body ops of 3 and 4 units, then a 5-unit copy.
    spans = [(0, 10, "other"), (1, 4, "convolution"), (5, 9, "matmul"), (12, 17, "copy/transpose")]
    step_anatomy._add_self_times(spans, totals)
    assert totals["other"] == 3 and totals["convolution"] == 3 and totals["matmul"] == 4
    assert totals["copy/transpose"] == 5


def test_throughput_alternates_the_frameworks_in_processes_of_their_own(capsys):
    throughput = _load("throughput")
    # Inference only: the train step's processes are the GPU check's dry run's (below).
    argv = "--model=mobilenet_v1_025 --batch_size=2 --image_size=32 --steps=1 --windows=2 --warmup=1 --rounds=2"
    rows = throughput.main([*argv.split(), "--modes=infer", "--compare_torch"])  # with a cache-filling process
    out = capsys.readouterr().out
    by_key = {(row.framework, row.mode): row for row in rows}
    assert set(by_key) == {("lightnets", "infer"), ("torch", "infer")}
    assert all(not row.failures and list(row.figures) == [0, 1] for row in rows)
    assert all(min(row.rates) > 0 for row in rows)
    assert list(by_key["lightnets", "infer"].ratios) == [0, 1]  # one ratio per round
    assert "| mobilenet_v1_025 | lightnets | infer |" in out and "| mobilenet_v1_025 | torch eager | infer |" in out
    assert "lightnets devices 1 x cpu" in out  # one XLA device, not the tests' 8
    assert "XLA intra-op threads: 2" in out or len(os.sched_getaffinity(0)) != 2  # threads stated, equal
    assert f"torch intra-op threads: {len(os.sched_getaffinity(0))}" in out


# What the GPU machine lacks, made absent in every process of the check (sitecustomize runs at
# start-up): each import finder is wrapped so that these packages are not found, as where they are
# not installed. A finder that raised instead would break PyTorch, whose torch.compile probes for
# TensorFlow with importlib.util.find_spec.
BLOCKER = """
import sys

NOT_ON_THE_GPU_MACHINE = {"grain", "clu", "simplejpeg", "tensorflow", "tensorflow_datasets"}


class _Absent:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in NOT_ON_THE_GPU_MACHINE:
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attribute):
        return getattr(self._finder, attribute)


sys.meta_path[:] = [_Absent(finder) for finder in sys.meta_path]
"""


def _gpu_check(tmp_path, *args, timeout=900):
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_gpu_check_dry_run_writes_its_report_without_the_data_pipelines_packages(tmp_path):
    out = tmp_path / "report"
    done = _gpu_check(tmp_path, str(out), "--tiny", "--models=mobilenet_v1_025")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    markdown = (out / "gpu_check.md").read_text()
    rows = {(row["framework"], row["mode"]) for row in report["rows"]}
    expected = {(fw, mode) for fw in ("lightnets", "torch") for mode in ("train", "infer")}
    assert rows == expected | {("torch.compile", "infer")}  # --tiny compiles one model's inference
    assert all(row["figures"] and not row["failures"] for row in report["rows"])
    assert report["environment"]["jax"] and report["environment"]["torch"]
    (analysis,) = report["analysis"]
    assert analysis["hlo"]["dot"] > 0  # on CPU, pointwise convolutions are matrix products
    assert analysis["profile"]["total_ms_per_step"] > 0
    assert abs(sum(c["share"] for c in analysis["profile"]["categories"].values()) - 1) < 1e-6
    assert (out / analysis["profile"]["trace_dir"]).is_dir()
    for heading in ("## Environment", "## Throughput", "convolutions in the optimised HLO", "where the time goes"):
        assert heading in markdown
    assert "| mobilenet_v1_025 | torch.compile | infer |" in markdown
    assert len((out / "results.jsonl").read_text().splitlines()) == 3  # one line per finished process


def test_gpu_check_reports_what_did_not_fit_the_deadline_as_skipped(tmp_path):
    out = tmp_path / "report"
    done = _gpu_check(tmp_path, str(out), "--tiny", "--budget_s=1", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["rows"] == []
    # Every planned process is named: 4 models x (lightnets, eager), and one torch.compile.
    assert len(report["skipped"]) == 9
    assert all("left before the deadline" in s for s in report["skipped"])
    assert "round 1 efficientnet_v2_b0_tf lightnets infer+train" in (out / "gpu_check.md").read_text()


def test_data_pipeline_compares_with_torchvisions_dataloader(tmp_path):
    # The command the docs' figures come from, CI-sized: tiny images, one pair of processes per
    # row, measuring 0.05 s each (an evaluation pass restarts its worker, so a longer window costs
    # tens of seconds of start-ups). Its rows and the equivalence checks are asserted, never a speed.
    argv = [
        sys.executable,
        "benchmarks/data_pipeline.py",
        "--compare_torch",
        "--pairs=1",
        "--compare_workers=1",
        "--images=24",
        "--image_size=32",
        "--batch_size=4",
        "--seconds=0.05",
        "--prepared_sides=64",
        f"--workdir={tmp_path}",
    ]
    # A host pipeline: one CPU device, not the tests' 8 (batch 4 would not divide over them).
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "24 training JPEGs" in out and "kB on average" in out  # the set's mix, stated
    for row in ("decode only", "train path", "eval path", "prepared 64px", "workers "):
        assert row in out, row
    for stage in (
        "decode (+ crop)",
        "resize the crop (PIL, antialiased)",
        "to the batch's format",
        "the whole transform",
    ):
        assert re.search(rf"^{re.escape(stage)} +\d+\.\d+ +\d+\.\d+", out, re.M), stage  # ours, torchvision's
    assert "DCT reduction (jpeg_draft)" in out and out.count("PIL reducing_gap=") == 4
    for path, images in (("train", "mix"), ("train", "500 px"), ("eval", "mix")):
        for framework in ("lightnets", "torchvision"):
            assert re.search(rf"^{path} +{images} +1 {framework} +\d+ \(", out, re.M), (path, images, framework)
    assert out.count("ratio lightnets/torchvision per core, pair by pair") == 3
    checks = re.findall(r"^(ok  |FAIL) (.*)$", out, re.M)
    assert len(checks) == 11 and all(status == "ok  " for status, _ in checks), checks
