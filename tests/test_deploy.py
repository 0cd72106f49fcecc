"""predict and export: the classes the reference predicts, exports that compute what the model computes."""

import functools
import json
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision  # noqa: F401  (before TensorFlow: the other order crashes here, see DEVELOPERS.md)
from flax import nnx
from PIL import Image

import lightnets
from input_pipeline import datasets, photos
from lightnets import checkpoint, convert, export, predict, preprocessing
from lightnets.deploy import inference
from lightnets.models.layers import BatchNorm
from lightnets.models.registry import model_info
from tests.conftest import SMALLEST, run_command

SIZE = 32  # export tests: the smallest input every family takes


def photo_files(directory: pathlib.Path, count: int = 6) -> list[pathlib.Path]:
    """Some of the shipped photos as JPEG files, the way a user has them."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in list(photos.load_photos().items())[:count]:
        path = directory / f"{name}.jpg"
        Image.fromarray(image).save(path, quality=95)
        paths.append(path)
    return paths


def realistic(model: nnx.Module, size: int) -> nnx.Module:
    """A random model with the BatchNorm statistics of the photos (so that folding them is tested
    and logits have a trained network's scale) and damped residual branches (as a zero-initialised
    last BatchNorm would: random deep networks with BatchNorm are chaotic, and amplify float32
    rounding differences between runtimes to 1e-4 of the logits; trained ones do not)."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, BatchNorm):
            module.momentum = 1.0
        if getattr(module, "has_skip", False):
            last = module.bn3 if hasattr(module, "bn3") else module.bn2
            last.scale.set_value(last.scale[...] * 0.2)
    model.train()
    lightnets.forward(model, jnp.asarray(preprocessing.IMAGENET(photos.sample_pixels(size, views=4))))
    for _, module in nnx.iter_modules(model):
        if isinstance(module, BatchNorm):
            module.momentum = 0.1
    model.eval()
    return model


# --- reference facts --------------------------------------------------------------------------------


def test_imagenet_class_names_are_torchvisions():
    from torchvision.models import MobileNet_V2_Weights

    assert list(inference.imagenet_class_names()) == MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]


@pytest.mark.parametrize("variant", lightnets.list_models())
def test_registry_preprocessing_is_the_references(variant):
    """What predict and export feed converted weights: the reference's own evaluation transform."""
    info = model_info(variant)
    library, name, _ = convert.parse_reference(info.reference)
    if library == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None:  # timm's unnamed widths (_gen_mobilenet_v1): its defaults
            cfg = timm.models.get_pretrained_cfg("mobilenetv1_100")
        assert info.resolution == cfg.input_size[-1]
        assert info.crop_pct == pytest.approx(cfg.crop_pct)
        assert (info.interpolation, info.mean, info.std) == (cfg.interpolation, tuple(cfg.mean), tuple(cfg.std))
    elif library == "mindspore":  # the model zoo's src/dataset.py: Decode, Resize(256), CenterCrop(224), Normalize
        assert (info.resolution, info.crop_pct, info.interpolation) == (224, 224 / 256, "bilinear")
        assert (info.mean, info.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    else:
        import torchvision.models as tvm

        weights = tvm.get_model_weights(name).IMAGENET1K_V1.transforms()  # the weights the seeds reproduce
        assert info.resolution == weights.crop_size[0]
        assert info.crop_pct == pytest.approx(weights.crop_size[0] / weights.resize_size[0])
        assert info.interpolation == weights.interpolation.value
        assert (info.mean, info.std) == (tuple(weights.mean), tuple(weights.std))


# --- predict ----------------------------------------------------------------------------------------


def test_predict_prints_the_classes_the_reference_predicts(tmp_path, capsys):
    """A converted torchvision checkpoint: predict's top-5 (names and order) are the reference's."""
    variant = "mobilenet_v2_035"
    reference = convert.reference_model(variant).eval()
    with torch.no_grad():  # BatchNorm statistics of real photos, for logits of a trained network's scale
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        reference.train()
        reference(torch.from_numpy(preprocessing.IMAGENET(photos.sample_pixels(96, views=4)).transpose(0, 3, 1, 2)))
        reference.eval()
    torch.save(reference.state_dict(), tmp_path / "reference.pth")
    weights = tmp_path / "weights"
    argv = ["--model", variant, "--torch_checkpoint", str(tmp_path / "reference.pth"), "--output", str(weights)]
    assert convert.main(argv) == 0
    capsys.readouterr()

    files = photo_files(tmp_path / "photos")
    assert predict.main(["--checkpoint", str(weights), "--batch_size", "4", str(tmp_path / "photos")]) == 0
    out = capsys.readouterr().out

    prep = preprocessing.reference(variant)
    pixels = np.stack([prep.read(f) for f in sorted(files)])
    with torch.no_grad():
        logits = reference(torch.from_numpy(prep.normalize(pixels).transpose(0, 3, 1, 2))).numpy()
    names = inference.imagenet_class_names()
    printed = re.findall(r"^  (\d)\. +([\d.]+)%  (.+) \((\d+)\)$", out, re.MULTILINE)
    assert [line for line in out.splitlines() if not line.startswith("  ")] == [str(f) for f in sorted(files)]
    assert len(printed) == 5 * len(files)
    for i, row in enumerate(logits):
        probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        top5 = np.argsort(-row)[:5]
        for k, ((rank, prob, name, c), expected) in enumerate(zip(printed[5 * i : 5 * i + 5], top5, strict=True), 1):
            assert (int(rank), int(c), name) == (k, expected, names[expected])
            assert float(prob) == pytest.approx(100 * probs[expected], abs=0.006)


def test_predict_skips_unreadable_images_and_says_so(tmp_path, capsys):
    model = lightnets.create_model("mobilenet_v1_025", num_classes=3)
    checkpoint.save_weights(model, tmp_path / "weights")
    good = photo_files(tmp_path / "photos", count=1)[0]
    bad = tmp_path / "photos" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    assert predict.main(["--checkpoint", str(tmp_path / "weights"), str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert str(good) in captured.out and "3 classes" not in captured.out
    assert captured.out.count("  1. ") == 1 and "  4. " not in captured.out  # top-k capped at the 3 classes
    assert f"skipped {bad}" in captured.err and "1 of 2 images could not be read" in captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoint", "/nonexistent", "x.jpg"], "does not exist"),
        (["--checkpoint", "{tmp}", "{tmp}"], "no images"),
        (["--checkpoint", "{tmp}", "--top_k", "0", "x.jpg"], "must be positive"),
        (["--help"], None),
    ],
)
def test_predict_bad_input_is_a_clear_error(argv, message, tmp_path, capsys):
    code, out, err = run_command(predict.main, predict.PROG, [a.format(tmp=tmp_path) for a in argv], capsys)
    if message is None:
        assert code == 0 and out.startswith("usage:")
    elif "--top_k" in argv:  # argparse's own errors come after the usage
        assert code == 2 and message in err.splitlines()[-1]
    else:  # through cli.run: one line
        (line,) = err.splitlines()
        assert code == 2 and line.startswith(f"{predict.PROG}: error: ") and message in line


def test_predict_on_a_directory_without_a_checkpoint_says_so_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    image = photo_files(tmp_path / "images", count=1)[0]
    argv = ["--checkpoint", str(tmp_path / "empty"), str(image)]
    code, _, err = run_command(predict.main, predict.PROG, argv, capsys)
    (line,) = err.splitlines()
    assert code == 2 and line.endswith("empty holds no checkpoint: neither lightnets.json nor checkpoints/")
    assert not any((tmp_path / "empty").iterdir())  # no checkpoints/ made in the user's directory


def _nonfinite_model() -> nnx.Module:
    """A 3-class mobilenet_v1_025 with a nan in its classifier and an inf in a running variance."""
    model = lightnets.create_model("mobilenet_v1_025", num_classes=3)
    model.classifier.kernel[...] = model.classifier.kernel[...].at[0, 1].set(jnp.nan)
    model.bn1.var[...] = model.bn1.var[...].at[2].set(jnp.inf)
    return model


def test_predict_refuses_nonfinite_weights_instead_of_printing_nan(tmp_path, capsys):
    checkpoint.save_weights(_nonfinite_model(), tmp_path / "weights", allow_nonfinite=True)  # as a diverged run
    photo = photo_files(tmp_path / "photos", count=1)[0]
    code, out, err = run_command(
        predict.main, predict.PROG, ["--checkpoint", str(tmp_path / "weights"), str(photo)], capsys
    )
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "2 arrays" in err and "bn1.var, classifier.kernel" in err

    # A model that computes nans all the same (here one built in memory, never loaded): an error, not "nan%".
    model = _nonfinite_model()
    model.eval()
    loaded = inference.Loaded(model, preprocessing.reference("mobilenet_v1_025", SIZE), ["a", "b", "c"], "m")
    with pytest.raises(ValueError, match=f"non-finite probabilities .* for {photo}"):
        predict.predict(loaded, [photo])


# --- export -----------------------------------------------------------------------------------------


def logits(loaded: inference.Loaded, pixels: np.ndarray) -> np.ndarray:
    """The JAX model's logits (jitted: eager execution compiles every operation separately)."""
    return export.reference_logits(loaded.model, loaded.preprocessing, pixels)


@functools.cache
def _loaded(variant: str, num_classes: int = 1000) -> inference.Loaded:
    model = realistic(lightnets.create_model(variant, num_classes=num_classes, dtype=jnp.float32), SIZE)
    prep = preprocessing.reference(variant, SIZE)
    return inference.Loaded(model, prep, inference.class_names(num_classes), variant)


# ONNX and TFLite go through our own lowering, which each family's layers exercise differently;
# StableHLO is jax.export of the same function for every family: one family in CI, all with -m slow.
FLOAT32_EXPORTS = [(v, f) for v in SMALLEST for f in export.FORMATS if f != "stablehlo" or v == SMALLEST[0]]
FLOAT32_EXPORTS += [pytest.param(v, "stablehlo", marks=pytest.mark.slow) for v in SMALLEST[1:]]


@pytest.mark.parametrize(("variant", "fmt"), FLOAT32_EXPORTS)
def test_float32_export_computes_what_the_model_computes(variant, fmt, tmp_path):
    loaded = _loaded(variant)
    output = tmp_path / f"model.{fmt}"
    result = export.export(loaded, fmt, output)
    assert result.passed, result.line()

    # The batch dimension is dynamic: the file as written, at another batch size (for StableHLO,
    # whose every call compiles, its symbolic input shape).
    if fmt == "stablehlo":
        exported = jax.export.deserialize(bytearray(output.read_bytes()))
        assert not isinstance(exported.in_avals[0].shape[0], int) and exported.in_avals[0].shape[1:] == (SIZE, SIZE, 3)
    else:
        actual = export.RUNNERS[fmt](output, export.verification_pixels(SIZE)[:2])
        np.testing.assert_allclose(actual, result.expected[:2], rtol=0, atol=1e-4 * np.abs(result.expected).max())
    sidecar = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert sidecar["preprocessing"]["image_size"] == SIZE and len(sidecar["class_names"]) == 1000
    assert sidecar["input"]["layout"] == ("NCHW" if fmt == "onnx" else "NHWC")


@pytest.mark.parametrize("variant", ["shufflenet_v2_x0_5", "efficientnet_v2_b0_tf"])
def test_int8_tflite_of_every_block_type_runs_in_litert(variant, tmp_path):
    """Max pooling, channel shuffle, split, squeeze-excitation and SiLU in int8, through the
    interpreter's default XNNPACK delegate (which refused a -inf padded max pooling). Random
    networks' int8 decisions mean nothing, so only the running is checked here."""
    loaded = _loaded(variant)
    calibration = export.calibration_images("digits", loaded.preprocessing, 32)
    result = export.export(
        loaded, "tflite", tmp_path / "int8.tflite", quantize="int8", calibration=calibration, min_agreement=0.0
    )
    assert result.error is None and result.passed, result.line()
    assert export.run_tflite(tmp_path / "int8.tflite", export.verification_pixels(SIZE)[:3]).shape == (3, 1000)


def test_onnx_export_runs_without_lightnets(tmp_path):
    """The ONNX file needs onnxruntime and numpy only: lightnets, JAX, flax and TensorFlow are
    made unimportable in the process that runs it."""
    loaded = _loaded("mobilenet_v1_025")
    assert export.export(loaded, "onnx", tmp_path / "model.onnx").passed
    pixels = export.verification_pixels(SIZE)[:4]
    np.save(tmp_path / "pixels.npy", pixels.transpose(0, 3, 1, 2))
    np.save(tmp_path / "expected.npy", logits(loaded, pixels))
    script = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("lightnets", "input_pipeline", "jax", "flax", "tensorflow"):
                    raise ImportError(f"{{name}} is blocked")
        sys.meta_path.insert(0, Block())
        import numpy as np, onnxruntime as ort
        session = ort.InferenceSession({str(tmp_path / "model.onnx")!r}, providers=["CPUExecutionProvider"])
        logits = session.run(None, {{"pixels": np.load({str(tmp_path / "pixels.npy")!r})}})[0]
        expected = np.load({str(tmp_path / "expected.npy")!r})
        print(float(np.abs(logits - expected).max() / np.abs(expected).max()))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) <= 1e-4


def test_a_wrong_export_is_refused_and_left_aside(tmp_path, monkeypatch):
    loaded = _loaded("mobilenet_v1_025")
    run = export.RUNNERS["onnx"]
    monkeypatch.setitem(export.RUNNERS, "onnx", lambda path, pixels: run(path, pixels) * 1.001)
    result = export.export(loaded, "onnx", tmp_path / "model.onnx")
    assert not result.passed and result.relative > 1e-4
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "model.onnx.json").exists()
    assert (tmp_path / "model.onnx.failed").exists()


def test_export_cli_bad_input_is_a_clear_error(tmp_path, capsys):
    model = lightnets.create_model("mobilenet_v1_025", num_classes=3)
    checkpoint.save_weights(model, tmp_path / "weights")
    base = ["--checkpoint", str(tmp_path / "weights"), "--output", str(tmp_path / "m")]
    for argv, message in [
        (["--format", "onnx", "--quantize", "int8"], "is for --format=tflite"),
        (["--format", "tflite", "--quantize", "int8"], "needs --calibration"),
        (["--format", "pt"], "invalid choice"),
    ]:
        with pytest.raises(SystemExit) as e:
            export.main(base + argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def test_export_destination_mistakes_are_one_line_and_leave_nothing(tmp_path, capsys):
    checkpoint.save_weights(lightnets.create_model("mobilenet_v1_025", num_classes=3), tmp_path / "weights")
    (tmp_path / "file").write_text("mine")
    (tmp_path / "directory").mkdir()
    (tmp_path / "model.onnx").write_text("mine")
    (tmp_path / "other.onnx.json").write_text("mine")
    before = sorted(tmp_path.rglob("*"))
    for output, message in [
        ("file/model.onnx", "file is a file, not a directory"),
        ("directory", "directory is a directory"),
        ("model.onnx", "model.onnx exists; pass overwrite=True (--overwrite)"),
        ("other.onnx", "other.onnx.json exists"),
    ]:
        argv = ["--checkpoint", str(tmp_path / "weights"), "--format", "onnx", "--output", str(tmp_path / output)]
        code, out, err = run_command(export.main, export.PROG, argv, capsys)
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err, err
    assert sorted(tmp_path.rglob("*")) == before  # no OUTPUT.partial, nothing replaced
    assert (tmp_path / "model.onnx").read_text() == "mine"
    assert run_command(export.main, export.PROG, ["--help"], capsys)[0] == 0


def test_export_replaces_a_file_only_when_asked(tmp_path):
    loaded = _loaded("mobilenet_v1_025")
    output = tmp_path / "model.onnx"
    output.write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        export.export(loaded, "onnx", output)
    assert output.read_text() == "mine"
    assert export.export(loaded, "onnx", output, overwrite=True).passed
    assert output.stat().st_size > 1000 and (tmp_path / "model.onnx.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json"]


@pytest.fixture(scope="module")
def trained_on_digits():
    """mobilenet_v1_025 trained as the quick start trains (configs/quickstart.py: 32 px, the
    trainer's data pipeline, optimiser, schedule and step) for half its epochs, on one device as
    on a CPU: quantisation is judged on a trained network, as random ones amplify any rounding
    chaotically. In float32, what the exports are checked against (bfloat16 is slower on a CPU)."""
    from configs import quickstart
    from lightnets.training import train, trainer
    from lightnets.training.steps import build_steps

    config = quickstart.get_config()
    config.update(model="mobilenet_v1_025", dtype="float32", num_epochs=6.0)
    s = trainer.setup(config)
    steps = build_steps(config, s.model, train.make_mesh(jax.devices()[:1]), s.steps_per_epoch)
    data = datasets.train_iterator(
        s.train_source,
        global_batch_size=config.batch_size,
        seed=config.seed,
        transform=s.train_transform,
        threads=config.data_threads,
    )
    state = steps.state
    for _ in range(s.num_train_steps):
        batch = next(data)
        state, _ = steps.train_step(state, batch["image"], batch["label"])
    # As `inference.load` takes a run's checkpoint: the trained weights in a float32 model.
    model = lightnets.create_model(config.model, num_classes=10, dtype=jnp.float32)
    nnx.update(model, *jax.device_get((state.params, state.batch_stats)))
    model.eval()
    prep = preprocessing.of_run(trainer.resolve_config(config))
    return inference.Loaded(model, prep, inference.class_names(10), "mobilenet_v1_025 (digits)")


def test_int8_tflite_keeps_a_trained_networks_decisions(trained_on_digits, tmp_path):
    """The floors sit between what a working int8 export gives (measured: 97 % agreement on the
    check's photos, 99.7 % on held-out digits, accuracy 95.3 % against float32's 95.6 %) and what a
    broken one does: calibrated on blank images (ranges that never saw a digit) it agrees on 7 % and
    11 %, chance level (10 digits); on uniform noise, on 87.5 % and 93 %, 6 points less accurate."""
    loaded = trained_on_digits
    calibration = export.calibration_images("digits", loaded.preprocessing, 200)  # through the data pipeline
    output = tmp_path / "int8.tflite"
    result = export.export(loaded, "tflite", output, quantize="int8", calibration=calibration)
    assert result.passed and result.top1_agreement >= 0.9, result.line()

    from ai_edge_litert.interpreter import Interpreter

    ops = {op["op_name"] for op in Interpreter(model_path=str(output))._get_ops_details()}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D"} <= ops  # BatchNorm folded, every op int8 (the converter enforces it)

    # On held-out digits, what it was trained for: the same decisions and the same accuracy.
    held_out = datasets.create_source("digits", "validation", image_size=loaded.preprocessing.image_size)
    float_logits = logits(loaded, held_out.images)
    float_acc = np.mean(float_logits.argmax(-1) == held_out.labels)
    assert float_acc >= 0.85  # it did learn
    int8_logits = export.run_tflite(output, held_out.images.astype(np.float32))
    assert np.mean(float_logits.argmax(-1) == int8_logits.argmax(-1)) >= 0.95
    assert np.mean(int8_logits.argmax(-1) == held_out.labels) >= float_acc - 0.03

    # The broken export these floors refuse.
    blank = (np.zeros_like(image) for image in export.calibration_images("digits", loaded.preprocessing, 200))
    broken = export.export(loaded, "tflite", tmp_path / "blank.tflite", quantize="int8", calibration=blank)
    assert not broken.passed and broken.top1_agreement < 0.5, broken.line()


def test_float16_tflite_is_close(trained_on_digits, tmp_path):
    result = export.export(trained_on_digits, "tflite", tmp_path / "f16.tflite", quantize="float16")
    assert result.passed and result.top1_agreement >= 0.95 and result.relative < 0.02, result.line()
