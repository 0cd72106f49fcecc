"""Exports a checkpoint to ONNX, TFLite or StableHLO and checks the export against the JAX model.

    python -m lightnets.export --checkpoint /ckpt/run1 --format onnx --output model.onnx
    python -m lightnets.export --checkpoint /ckpt/run1 --format tflite --quantize int8 \\
        --calibration tfds:imagenet2012 --output model_int8.tflite
    python -m lightnets.export --checkpoint /ckpt/mobilenet_v2_100 --format stablehlo --output model.shlo

Every export takes RGB pixels, float32 in [0, 255], already resized and centre-cropped as its
preprocessing says (the sidecar `OUTPUT.json` gives the size, crop, interpolation and class
names); it normalises them itself and returns the logits. The batch dimension is dynamic in all
three formats. Layouts follow each runtime's convention: ONNX takes NCHW (`pixels[N, 3, H, W]`),
TFLite and StableHLO take NHWC (`pixels[N, H, W, 3]`).

After writing, the export runs in its own runtime (onnxruntime, the LiteRT/TFLite interpreter,
`jax.export.deserialize`) on the photos shipped with scikit-learn and scikit-image, and is
compared with the JAX model. A float32 export must agree to max |difference| <= 1e-4 x max
|logit|, a quantised one on the top-1 class for at least `--min_agreement` of the photos;
otherwise the file is left as `OUTPUT.failed` and the command fails. An existing OUTPUT or
OUTPUT.json is replaced only with `--overwrite`.

ONNX and TFLite go through our own lowering of the model's jaxpr: `lightnets/deploy/lowering.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from input_pipeline import photos
from lightnets import checkpoint, cli, preprocessing
from lightnets.deploy import inference, lowering
from lightnets.deploy.lowering import QUANTIZE
from lightnets.models.registry import forward

PROG = cli.prog("lightnets.export")
FORMATS = ("onnx", "tflite", "stablehlo")
FLOAT32_TOLERANCE = 1e-4  # of max |logit|


# --- the function every format exports ------------------------------------------------------------


def pixels_forward(model: nnx.Module, prep: preprocessing.Preprocessing) -> Callable[[jax.Array], jax.Array]:
    """pixels (N, H, W, 3) float32 in [0, 255] -> logits, with the model's weights as constants.

    Convolutions are `lax.conv_general_dilated` (`conv_impl="xla"`), which every runtime has a
    native kernel for; the normalisation is one multiply-add.
    """
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)  # new modules over the same arrays: `model` keeps its formulation
    copy.set_attributes(conv_impl="xla", raise_if_not_found=False)
    graphdef, state = nnx.split(copy)
    scale, shift = prep.normalize.folded()

    def forward(pixels):
        return nnx.merge(graphdef, state)(pixels * scale + shift).astype(jnp.float32)

    return forward


# --- StableHLO ------------------------------------------------------------------------------------


def to_stablehlo(forward: Callable, image_size: int) -> bytes:
    """`jax.export`'s serialisation of `forward`, lowered for CPU, CUDA and TPU."""
    exported = jax.export.export(jax.jit(forward), platforms=("cpu", "cuda", "tpu"))(lowering.input_spec(image_size))
    return bytes(exported.serialize())


# --- running an export ----------------------------------------------------------------------------


def run_onnx(path: str | os.PathLike, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"pixels": np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))})[0]


def run_tflite(path: str | os.PathLike, pixels: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], pixels.shape, strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], pixels.astype(np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def run_stablehlo(path: str | os.PathLike, pixels: np.ndarray) -> np.ndarray:
    exported = jax.export.deserialize(bytearray(pathlib.Path(path).read_bytes()))
    return np.asarray(exported.call(pixels.astype(np.float32)))


RUNNERS = {"onnx": run_onnx, "tflite": run_tflite, "stablehlo": run_stablehlo}


@dataclasses.dataclass
class Check:
    max_abs_diff: float
    max_abs_logit: float
    top1_agreement: float
    count: int
    passed: bool
    expected: np.ndarray = dataclasses.field(repr=False, default=None)  # the JAX model's logits
    actual: np.ndarray = dataclasses.field(repr=False, default=None)  # the export's
    error: str | None = None  # why the runtime could not run the export

    @property
    def relative(self) -> float:
        return self.max_abs_diff / max(self.max_abs_logit, 1e-30)

    def line(self) -> str:
        if self.error:
            return f"FAIL: the runtime cannot run it: {self.error}"
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict}: {self.count} photos, max |difference| {self.max_abs_diff:.3g} = {self.relative:.2g} x "
            f"max |logit| ({self.max_abs_logit:.3g}), top-1 agreement {self.top1_agreement:.1%}"
        )


def verification_pixels(image_size: int) -> np.ndarray:
    """The shipped photos (each: centre, mirrored, two corners), as float32 pixels."""
    return photos.sample_pixels(image_size, views=4).astype(np.float32)


def check(expected: np.ndarray, actual: np.ndarray, *, quantized: bool, min_agreement: float) -> Check:
    diff = float(np.max(np.abs(expected - actual)))
    scale = float(np.max(np.abs(expected)))
    agreement = float(np.mean(expected.argmax(-1) == actual.argmax(-1)))
    passed = agreement >= min_agreement if quantized else diff <= FLOAT32_TOLERANCE * scale
    passed = passed and bool(np.all(np.isfinite(actual)))
    return Check(diff, scale, agreement, len(expected), passed, expected, actual)


def calibration_images(
    dataset: str, prep: preprocessing.Preprocessing, count: int, *, data_dir: str | None = None, seed: int = 0
) -> Iterator[np.ndarray]:
    """`count` training images of `dataset` (any `config.dataset` form), preprocessed for evaluation."""
    from input_pipeline import datasets
    from input_pipeline.transforms import CorruptImage

    source = datasets.create_source(dataset, "train", image_size=prep.image_size, data_dir=data_dir)
    order = np.random.default_rng(seed).permutation(len(source))
    taken = 0
    for index in order:
        try:
            image = prep.transform(source[int(index)]["image"])
        except CorruptImage:
            continue
        yield image.astype(np.float32)
        taken += 1
        if taken == count:
            return


def export(
    loaded: inference.Loaded,
    fmt: str,
    output: str | os.PathLike,
    *,
    quantize: str = "none",
    calibration: Iterator[np.ndarray] | None = None,
    min_agreement: float = 0.9,
    image_size: int | None = None,
    overwrite: bool = False,
) -> Check:
    """Writes `loaded`'s model in `fmt` to `output`, runs it in its runtime and compares with JAX.

    `output` (and `output.json`, the preprocessing and class names) appear only if the check
    passes; otherwise the export is left as `output.failed`. Either replaces an existing file only
    with `overwrite`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if quantize != "none" and fmt != "tflite":
        raise ValueError(f"quantize={quantize} is for TFLite; {fmt} exports float32")
    output = checkpoint.check_destination(output, overwrite=overwrite, directory=False, sidecars=(".json",))
    output.parent.mkdir(parents=True, exist_ok=True)
    prep = loaded.preprocessing
    if image_size:
        prep = dataclasses.replace(prep, image_size=image_size)
    size = prep.image_size
    forward = pixels_forward(loaded.model, prep)
    layout = "NCHW" if fmt == "onnx" else "NHWC"
    metadata = {
        "model": loaded.model.variant,
        "source": loaded.description,
        "format": fmt,
        "quantize": quantize,
        "input": {
            "name": "pixels",
            "layout": layout,
            "dtype": "float32",
            "range": "RGB 0-255, resized and cropped",
            "shape": ["batch", 3, size, size] if layout == "NCHW" else ["batch", size, size, 3],
        },
        "output": {"name": "logits", "shape": ["batch", loaded.model.num_classes]},
        "preprocessing": prep.to_dict(),
        "class_names": loaded.class_names,
    }
    if fmt == "onnx":
        model = lowering.to_onnx(forward, size, metadata={"lightnets": json.dumps(metadata)})
        serialized = model.SerializeToString()
    elif fmt == "tflite":
        serialized = lowering.to_tflite(forward, size, quantize=quantize, calibration=calibration)
    else:
        serialized = to_stablehlo(forward, size)
    sidecar = output.with_name(output.name + ".json")
    # Written beside their destinations and renamed when checked; removed if this call stops half way.
    partial, staged = (p.with_name(p.name + ".partial") for p in (output, sidecar))
    try:
        partial.write_bytes(serialized)
        pixels = verification_pixels(size)
        expected = reference_logits(loaded.model, prep, pixels)
        try:
            actual = RUNNERS[fmt](partial, pixels)
        except Exception as e:  # the runtime refuses the file: a failed export, reported as such
            actual = np.full_like(expected, np.nan)
            error = f"{type(e).__name__}: {e}"
        else:
            error = None
        result = check(expected, actual, quantized=quantize != "none", min_agreement=min_agreement)
        result.error = error
        if result.passed:
            staged.write_text(json.dumps(metadata, indent=2) + "\n")
            partial.replace(output)
            staged.replace(sidecar)
        else:
            partial.replace(output.with_name(output.name + ".failed"))
    finally:
        partial.unlink(missing_ok=True)
        staged.unlink(missing_ok=True)
    return result


def reference_logits(model: nnx.Module, prep: preprocessing.Preprocessing, pixels: np.ndarray) -> np.ndarray:
    """The JAX model's logits on `pixels`, as lightnets runs it (its own convolution formulation);
    exporting one model to several formats compiles it once (`registry.forward`)."""
    return np.asarray(forward(model, jnp.asarray(prep.normalize(pixels))))


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a trainer workdir or a weights directory")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", required=True, help="the file to write (its preprocessing goes to OUTPUT.json)")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE,
        default="none",
        help="TFLite only: float16 weights, or int8 post-training quantisation (needs calibration)",
    )
    parser.add_argument(
        "--calibration",
        default=None,
        help="int8: the data set to calibrate on, in config.dataset form (tfds:imagenet2012, "
        "folder:PATH, ...); default: the trainer run's own data set",
    )
    parser.add_argument("--calibration_images", type=int, default=256, help="int8: images to calibrate on")
    parser.add_argument("--data_dir", default=None, help="TFDS data directory for --calibration=tfds:NAME")
    parser.add_argument(
        "--min_agreement",
        type=float,
        default=0.9,
        help="quantised exports: the least top-1 agreement with the model on the photos",
    )
    parser.add_argument("--image_size", type=int, default=None, help="input size (default: the checkpoint's)")
    parser.add_argument(
        "--weights",
        choices=inference.WEIGHTS,
        default="auto",
        help="a trainer run's raw or EMA weights; auto: EMA when the run kept one",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT and OUTPUT.json")
    args = parser.parse_args(argv)
    if args.quantize != "none" and args.format != "tflite":
        parser.error(f"--quantize={args.quantize} is for --format=tflite; ONNX and StableHLO export float32")
    if args.calibration_images < 1 or (args.image_size is not None and args.image_size < 1):
        parser.error("--calibration_images and --image_size must be positive")
    # Before the checkpoint is read: a destination that cannot be written fails at once.
    checkpoint.check_destination(args.output, overwrite=args.overwrite, directory=False, sidecars=(".json",))
    loaded = inference.load(args.checkpoint, weights=args.weights)
    calibration = None
    if args.quantize == "int8":
        run = loaded.config or {}
        dataset = args.calibration or run.get("dataset")
        if not dataset:
            parser.error(
                "--quantize=int8 needs --calibration (a few hundred training images: tfds:imagenet2012, "
                "folder:PATH, ...); a weights directory does not say what it was trained on"
            )
        prep = loaded.preprocessing
        if args.image_size:
            prep = dataclasses.replace(prep, image_size=args.image_size)
        data_dir = args.data_dir or (run.get("data_dir") if not args.calibration else None)
        calibration = calibration_images(dataset, prep, args.calibration_images, data_dir=data_dir)
    start = time.perf_counter()
    result = export(
        loaded,
        args.format,
        args.output,
        quantize=args.quantize,
        calibration=calibration,
        min_agreement=args.min_agreement,
        image_size=args.image_size,
        overwrite=args.overwrite,
    )
    output = pathlib.Path(args.output)
    quantized = f" ({args.quantize})" if args.quantize != "none" else ""
    print(f"{loaded.description} -> {args.format}{quantized}, {time.perf_counter() - start:.1f} s")
    print(f"  {args.format} vs JAX: {result.line()}")
    if result.passed:
        print(f"  wrote {output} ({output.stat().st_size / 1e6:.1f} MB) and {output}.json")
        return 0
    bound = (
        f"max |difference| <= {FLOAT32_TOLERANCE:g} x max |logit|"
        if not quantized
        else (f"top-1 agreement >= {args.min_agreement:.0%}")
    )
    print(f"  the export does not compute what the model computes ({bound}); left as {output}.failed", file=sys.stderr)
    return 1


def command() -> None:
    """`lightnets-export`, the entry point pyproject.toml installs: as `python -m lightnets.export`."""
    cli.run(main, PROG)


if __name__ == "__main__":
    command()
