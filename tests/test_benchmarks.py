"""The throughput benchmark runs on CPU in CI-sized settings and prints its rows; no time is asserted."""

import importlib.util
import pathlib
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
