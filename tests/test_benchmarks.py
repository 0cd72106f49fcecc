"""The benchmarks run on CPU in CI-sized settings and print their rows; no time is asserted."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_throughput_measures_the_trainers_step_beside_pytorch(capsys):
    throughput = _load("throughput")
    results = throughput.main(
        [
            "--model=mobilenet_v1_025",
            "--batch_size=2",
            "--image_size=32",
            "--steps=1",
            "--windows=2",
            "--warmup=1",
            "--compare_torch",
        ]
    )
    out = capsys.readouterr().out
    rows = {(row.framework, row.mode): row for _, row in results}
    assert set(rows) == {
        ("lightnets", "train"),
        ("lightnets", "infer"),
        ("torch eager", "train"),
        ("torch eager", "infer"),
    }
    assert all(len(row.rates) == 2 and min(row.rates) > 0 for row in rows.values())
    assert "| mobilenet_v1_025 | lightnets | train |" in out and "| mobilenet_v1_025 | torch eager | infer |" in out
    assert "8 x cpu" in out.lower()  # the 8-device CPU mesh of the tests


def test_data_pipeline_compares_with_torchvisions_dataloader(tmp_path):
    # The command the docs' figures come from, CI-sized: tiny images, one pair of processes per
    # row, half a second each. Its rows and the equivalence checks are asserted, never a speed.
    argv = [
        sys.executable,
        "benchmarks/data_pipeline.py",
        "--compare_torch",
        "--pairs=1",
        "--compare_workers=1",
        "--images=24",
        "--image_size=32",
        "--batch_size=4",
        "--seconds=0.5",
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
