"""Exports of trained checkpoints: agreement with JAX, file size and CPU latency in each runtime.

    PYTHONPATH=. python benchmarks/export.py --checkpoint /tmp/quickstart [--checkpoint ...] \\
        [--threads 1] [--runs 50]

For each checkpoint: float32 ONNX, TFLite and StableHLO, float16 TFLite and int8 TFLite
(calibrated on 256 training images of the run's data set), each written and checked by
`lightnets.export.export` (max |difference| over max |logit| and top-1 agreement with the JAX
model on the shipped photos, four views each), then timed at batch 1 in its own runtime on the
CPU: the median of `--runs` calls after 5 warm-up calls, with `--threads` intra-op threads.
Results for the docs: docs/benchmarks.md, "Export".
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np

EXPORTS = (("onnx", "none"), ("tflite", "none"), ("stablehlo", "none"), ("tflite", "float16"), ("tflite", "int8"))


def latency(fmt: str, path: pathlib.Path, pixels: np.ndarray, runs: int, threads: int) -> float:
    """Median seconds per call at batch 1."""
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))

        def call():
            session.run(None, {"pixels": x})
    elif fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        index = interpreter.get_input_details()[0]["index"]

        def call():
            interpreter.set_tensor(index, pixels)
            interpreter.invoke()
    else:
        import jax

        exported = jax.export.deserialize(bytearray(path.read_bytes()))
        fn = jax.jit(exported.call)

        def call():
            jax.block_until_ready(fn(pixels))

    for _ in range(5):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="trainer workdir or weights directory")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="runtime intra-op threads (1: a phone core)")
    args = parser.parse_args(argv)

    from lightnets import export
    from lightnets.deploy import inference

    print(
        "| model | format | check | max abs diff / max abs logit | top-1 agreement | size (MB) | export (s) "
        "| batch-1 latency (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for checkpoint in args.checkpoint:
        loaded = inference.load(checkpoint)
        pixels = export.verification_pixels(loaded.preprocessing.image_size)[:1]
        with tempfile.TemporaryDirectory() as tmp:
            for fmt, quantize in EXPORTS:
                calibration = None
                if quantize == "int8":
                    dataset = (loaded.config or {}).get("dataset")
                    calibration = export.calibration_images(dataset, loaded.preprocessing, 256)
                output = pathlib.Path(tmp) / f"model.{fmt}"
                start = time.perf_counter()
                result = export.export(loaded, fmt, output, quantize=quantize, calibration=calibration)
                seconds = time.perf_counter() - start
                path = output if result.passed else output.with_name(output.name + ".failed")
                ms = 1000 * latency(fmt, path, pixels, args.runs, args.threads)
                name = f"{fmt} {quantize}" if quantize != "none" else fmt
                print(
                    f"| {loaded.model.variant} | {name} | {'pass' if result.passed else 'FAIL'} | "
                    f"{result.relative:.1e} | {result.top1_agreement:.1%} | {path.stat().st_size / 1e6:.2f} | "
                    f"{seconds:.0f} | {ms:.2f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
