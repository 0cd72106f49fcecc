"""The trainer as users run it: configs, main.py, resuming, stopping, errors, metrics, collectives."""

import json
import logging
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lightnets
from configs import default, efficientnetv2, mobilenetv1, mobilenetv2, mobilenetv3, quickstart, shufflenetv2
from input_pipeline import datasets
from lightnets import checkpoint, preprocessing
from lightnets.models.layers import BatchNorm
from lightnets.training import augment, train, trainer
from lightnets.training.steps import build_model, build_steps, optimizer
from tests.conftest import digest, run_python

ROOT = pathlib.Path(__file__).resolve().parent.parent
STEPS = 24


def tiny(**overrides):
    """The quickstart, small enough to compile and run in seconds on the 8-device CPU mesh."""
    c = quickstart.get_config()
    c.update(
        model="mobilenet_v1_025",
        image_size=16,
        batch_size=32,
        num_train_steps=STEPS,
        log_every_steps=2,
        checkpoint_every_steps=4,
        eval_every_epochs=0,
        ema_decay=0.9,
    )
    # Every augmentation, so that resuming must reproduce their draws too.
    c.update(
        crop_scale=(0.35, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        randaugment="rand-m9-mstd0.5",
        mixup=0.2,
        cutmix=1.0,
        reprob=0.25,
    )
    c.update(**overrides)
    return c


FLAGGED = (
    "model",
    "image_size",
    "batch_size",
    "num_train_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "eval_every_epochs",
    "ema_decay",
    "crop_scale",
    "crop_ratio",
    "randaugment",
    "mixup",
    "cutmix",
    "reprob",
)


def flags(config) -> list[str]:
    """`tiny()` as command-line overrides of the quickstart config."""
    return [f"--config.{k}={config[k]}" for k in FLAGGED]


def _sigterm_at_batch(monkeypatch, n: int) -> None:
    """SIGTERM to this process while the n-th batch of the run goes to the devices."""
    batches, to_devices = [], trainer._global

    def signal_at_the_nth_batch(mesh, batch):
        batches.append(None)
        if len(batches) == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return to_devices(mesh, batch)

    monkeypatch.setattr(trainer, "_global", signal_at_the_nth_batch)


def main_py(*args, env=None) -> subprocess.Popen:
    """main.py in a subprocess; it shares this session's compilation cache (conftest.py)."""
    return subprocess.Popen(
        [sys.executable, "main.py", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


# --- configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, variant, model",
    [
        (mobilenetv1, "", "mobilenet_v1_100_ms"),
        (mobilenetv1, "050", "mobilenet_v1_050"),
        (mobilenetv2, "", "mobilenet_v2_100"),
        (mobilenetv2, "140", "mobilenet_v2_140"),
        (shufflenetv2, "x0_5", "shufflenet_v2_x0_5"),
        (efficientnetv2, "", "efficientnet_v2_rw_t"),
        (efficientnetv2, "s", "efficientnet_v2_s"),
        (mobilenetv3, "", "mobilenet_v3_large_100"),
        (mobilenetv3, "small_100_timm", "mobilenet_v3_small_100_timm"),
    ],
)
def test_family_configs_name_their_variant_and_hold_the_common_fields(module, variant, model):
    config = module.get_config(variant)
    assert config.model == model
    assert set(config.keys()) == set(default.get_config().keys())
    trainer.check_config(config)
    assert config.dataset == "tfds:imagenet2012" and config.num_classes == 1000


def test_recipes_are_the_seeds():
    v2, shuffle, eff = mobilenetv2.get_config(), shufflenetv2.get_config(), efficientnetv2.get_config()
    assert (v2.num_epochs, v2.batch_size, v2.lr, v2.momentum, v2.seed) == (600, 4096, 0.4, 0.9, 49)
    assert (shuffle.num_epochs, shuffle.batch_size, shuffle.lr, shuffle.momentum, shuffle.warmup_epochs) == (
        240,
        8192,
        4.0,
        0.0,
        5,
    )
    assert (eff.optimizer, eff.opt_eps, eff.lr, eff.schedule, eff.decay_epochs, eff.decay_rate) == (
        "rmsprop_tf",
        1e-3,
        0.112,
        "step",
        2.4,
        0.97,
    )
    assert (eff.warmup_lr, eff.weight_decay, eff.dropout, eff.drop_path_rate, eff.ema_decay, eff.image_size) == (
        4e-6,
        1e-5,
        0.3,
        0.2,
        0.9999,
        224,
    )


def test_unknown_variant_lists_the_choices():
    with pytest.raises(ValueError, match="x0_5"):
        shufflenetv2.get_config("x0_7")


# --- clear errors, before anything compiles ------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ({"batch_size": 36}, "does not divide over the 8 devices"),
        ({"model": "mobilenet_v2_10"}, "Unknown model 'mobilenet_v2_10'.*mobilenet_v2_100"),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"randaugment": "rand-m9-x2"}, "RandAugment config 'rand-m9-x2': cannot read 'x2'"),
        ({"dataset": "folder:/no/such/dir"}, "folder:/no/such/dir: no such directory"),
        ({"dtype": "float8"}, "dtype 'float8'"),
        # Values that used to fail only when first used, hours into a run, or never.
        ({"eval_batch_size": -1}, r"eval_batch_size=-1 is out of range: it must be a positive number"),
        ({"eval_batch_size": 12}, "batch_size 12 does not divide over the 8 devices"),
        ({"log_every_steps": 0}, r"log_every_steps=0 is out of range"),
        ({"label_smoothing": 1.0}, r"label_smoothing=1.0 is out of range: it must be in \[0, 1\)"),
        ({"ema_decay": 1.0}, r"ema_decay=1.0 is out of range"),
        ({"lr": float("nan")}, r"lr=nan is out of range: it must be positive and finite"),
        ({"lr": 0.0}, r"lr=0.0 is out of range"),
        ({"keep_checkpoints": 0}, r"keep_checkpoints=0 is out of range: it must be at least 1"),
        ({"crop_scale": (0.5, 0.1)}, r"crop_scale=\(0.5, 0.1\) must be \(low, high\)"),
        ({"optimizer": "adam"}, r"optimizer 'adam' is not one of"),
        ({"hflip": 2.0}, r"hflip=2.0 is out of range: it must be a probability"),
        ({"loss_scale": "auto"}, r"loss_scale='auto': use 'dynamic' or a fixed scale >= 1, e.g. 1024"),
        ({"loss_scale": "0.5"}, r"loss_scale='0.5': use 'dynamic' or a fixed scale >= 1"),
    ],
)
def test_bad_config_is_a_clear_error(override, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        trainer.setup(tiny(**override))


def test_a_config_not_built_from_the_defaults_is_refused():
    lacking = tiny()
    del lacking["hflip"]
    with pytest.raises(ValueError, match=r"lacks the fields \['hflip'\]"):
        trainer.check_config(lacking)
    extra = tiny()
    extra.hflipp = 0.5
    with pytest.raises(ValueError, match=r"fields that configs/default.py does not define: \['hflipp'\]"):
        trainer.check_config(extra)


def test_main_rejects_unknown_fields_and_models(tmp_path):
    unknown = main_py("--config=configs/quickstart.py", f"--workdir={tmp_path}", "--config.no_such_field=1")
    out = unknown.communicate(timeout=120)[0]
    assert unknown.returncode == 2 and "main.py: error: --config.no_such_field: the config has no field" in out
    start = time.perf_counter()
    bad = main_py("--config=configs/quickstart.py", f"--workdir={tmp_path}", "--config.model=mobilenet_v3")
    out = bad.communicate(timeout=120)[0]
    assert bad.returncode == 2 and out.count("main.py: error: Unknown model 'mobilenet_v3'") == 1
    assert "Traceback" not in out
    assert time.perf_counter() - start < 60  # no compilation happened


# --- a run: metrics, resume after SIGTERM and SIGKILL, evaluation -------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A run that was never stopped (with a profiler trace of 3 steps): its workdir and final state."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    state = trainer.train_and_evaluate(tiny(profile_steps=3), str(workdir))
    return workdir, jax.device_get(state)


def _wait_for(process, condition, timeout=240):
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if condition(line):
            return "".join(lines)
    raise AssertionError("condition not met; output:\n" + "".join(lines)[-5000:])


def _checkpoints(workdir) -> list[int]:
    directory = workdir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def test_run_stopped_by_sigterm_then_killed_resumes_bit_for_bit(uninterrupted, tmp_path, monkeypatch):
    _, reference = uninterrupted

    # SIGTERM while the 10th batch goes to the devices: the run saves step 10 (not a multiple of
    # checkpoint_every_steps) and returns normally; main.py then exits with status 0.
    _sigterm_at_batch(monkeypatch, 10)
    trainer.train_and_evaluate(tiny(), str(tmp_path))
    monkeypatch.undo()
    stopped_at = 10
    assert _checkpoints(tmp_path) == [4, 8, 10]

    # main.py resumes it, and is SIGKILLed right after the next checkpoint lands.
    run = main_py("--config=configs/quickstart.py", f"--workdir={tmp_path}", *flags(tiny()))
    _wait_for(run, lambda line: f"Resumed from {tmp_path / 'checkpoints' / str(stopped_at)}" in line)
    killed_after, deadline = None, time.monotonic() + 240
    while killed_after is None and time.monotonic() < deadline:
        if any(s > stopped_at for s in _checkpoints(tmp_path)):
            run.send_signal(signal.SIGKILL)
            killed_after = max(_checkpoints(tmp_path))
        time.sleep(0.005)
    run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL and killed_after < STEPS

    # A third start finishes the run: the same parameters, statistics, optimiser state, EMA and RNG.
    state = jax.device_get(trainer.train_and_evaluate(tiny(), str(tmp_path)))
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(state), strict=True):
        a, b = (jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x for x in (a, b))
        np.testing.assert_array_equal(a, b)
    assert checkpoint.RunCheckpoints(tmp_path / "checkpoints").latest_step() == STEPS


def test_tensorboard_has_the_curves_and_the_profile(uninterrupted):
    from tensorboard.backend.event_processing import event_accumulator

    workdir, _ = uninterrupted
    events = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
    expected = {"train_loss", "train_top1", "learning_rate", "images_per_sec", "step_time_ms"}
    expected |= {f"eval_{p}{m}" for p in ("", "ema_") for m in ("loss", "top1", "top5")}
    assert expected <= tags, expected - tags
    assert "_hparams_/session_start_info" in tags  # the config as hyperparameters
    assert list((workdir / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))  # TensorBoard's profile tab


def test_a_finished_run_says_so_and_trains_nothing(uninterrupted, caplog):
    workdir, state = uninterrupted
    with caplog.at_level(logging.INFO):
        again = trainer.train_and_evaluate(tiny(profile_steps=3), str(workdir))
    assert f"is complete: step {STEPS} of {STEPS} was trained already" in caplog.text
    assert "Compiling" not in caplog.text
    # The closing summary, from the evaluations the run recorded (eval_every_epochs=0: one, at the end).
    assert re.search(
        rf"Done: top-1 \d+\.\d\d% at the end \(step {STEPS}\), best \d+\.\d\d% \(step {STEPS}\); "
        rf"EMA top-1 .*checkpoints in {workdir}/checkpoints; TensorBoard: tensorboard --logdir={workdir}",
        caplog.text,
    )
    assert trainer.fingerprint(again.params) == trainer.fingerprint(state.params)


def test_evaluate_a_trainer_workdir_and_a_converter_checkpoint(uninterrupted, tmp_path):
    workdir, state = uninterrupted
    config = tiny()
    metrics = trainer.evaluate(config, str(workdir))

    # The same weights as a converter-style weights directory, evaluated against a direct count
    # (364 held-out digits: the last batch of 32 is padded and must not count twice).
    model = lightnets.create_model(config.model, num_classes=10, dtype=jnp.bfloat16)
    model.eval()
    nnx.update(model, state.params, state.batch_stats)
    run = trainer.resolve_config(config)
    checkpoint.save_weights(model, tmp_path / "weights", mean=run.mean, std=run.std)
    from_weights = trainer.evaluate(config, None, str(tmp_path / "weights"))
    source = datasets.create_source("digits", "validation", image_size=config.image_size)
    normalize = preprocessing.Normalize(run.mean, run.std)
    logits = lightnets.forward(model, normalize.on_device(jnp.asarray(source.images), jnp.bfloat16))
    direct = float(np.mean(np.argmax(np.asarray(logits, np.float32), -1) == source.labels))
    assert len(source) % config.batch_size != 0
    assert from_weights["top1"] == pytest.approx(direct, abs=2 / len(source))
    assert "ema_top1" in metrics and "ema_top1" not in from_weights  # a weights directory has no EMA
    assert metrics["top1"] == pytest.approx(direct, abs=2 / len(source))


def test_predict_and_export_a_trainer_workdir(uninterrupted, tmp_path, capsys):
    """The run's own preprocessing, class names and (ema_decay > 0) EMA weights; int8 calibrates on
    the run's data set by default."""
    from PIL import Image

    from lightnets import export, predict

    workdir, state = uninterrupted
    config = tiny()
    held_out = datasets.create_source("digits", "validation", image_size=config.image_size)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(held_out.images[i]).save(paths[-1])
    assert predict.main(["--checkpoint", str(workdir), "--top_k", "1", *map(str, paths)]) == 0
    out = capsys.readouterr().out
    model = lightnets.create_model(config.model, num_classes=10, dtype=jnp.float32)
    model.eval()
    nnx.update(model, state.ema_params, state.ema_batch_stats)
    prep = preprocessing.of_run(trainer.resolve_config(config))
    pixels = np.stack([prep.read(p) for p in paths])
    expected = np.argmax(np.asarray(lightnets.forward(model, jnp.asarray(prep.normalize(pixels)))), -1)
    assert re.findall(r"1\.\s+\S+%\s+(\d) \((\d)\)", out) == [(str(c), str(c)) for c in expected]

    output = tmp_path / "run.tflite"
    argv = [
        "--checkpoint",
        str(workdir),
        "--format",
        "tflite",
        "--quantize",
        "int8",
        "--output",
        str(output),
        "--calibration_images",
        "16",
        "--min_agreement",
        "0",
    ]
    assert export.main(argv) == 0
    sidecar = json.loads(output.with_name("run.tflite.json").read_text())
    assert sidecar["class_names"] == [str(i) for i in range(10)]
    assert sidecar["preprocessing"]["image_size"] == config.image_size
    assert sidecar["preprocessing"]["mean"] == [0.5] * 3  # what the run trained with: mobilenet_v1's reference
    assert "EMA weights" in sidecar["source"]


def test_a_run_loads_for_inference_without_the_training_package(uninterrupted):
    """predict and export read a run's raw and EMA weights, bit for bit, with lightnets.training
    unimportable: no optimiser is built to read a checkpoint."""
    workdir, state = uninterrupted
    code = f"""
    from flax import nnx
    from lightnets import export, predict
    from lightnets.deploy import inference
    from tests.conftest import digest

    for weights in ("raw", "ema"):
        model = inference.load({str(workdir)!r}, weights=weights).model
        print(digest(nnx.state(model, nnx.Param)), digest(nnx.state(model, nnx.BatchStat)))
    """
    result = run_python(code, absent=("lightnets.training",))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [
        digest(state.params),
        digest(state.batch_stats),
        digest(state.ema_params),
        digest(state.ema_batch_stats),
    ]


def test_fine_tune_from_a_converter_checkpoint_with_a_new_head(tmp_path):
    source = lightnets.create_model("mobilenet_v1_025", num_classes=1000, rngs=nnx.Rngs(7))
    checkpoint.save_weights(source, tmp_path / "imagenet")
    model = build_model(tiny(init_from=str(tmp_path / "imagenet")), num_classes=10)
    np.testing.assert_array_equal(model.conv_stem.kernel[...], source.conv_stem.kernel[...])
    assert model.classifier.kernel.shape[-1] == 10


def test_a_fine_tune_feeds_the_network_what_its_weights_were_trained_on(tmp_path):
    """Weights trained on 0.5/0.5 (as timm's mobilenetv1_* and the TensorFlow-ported EfficientNetV2s
    are), of a variant whose reference normalises with ImageNet's: the run, its evaluation and what
    it records use the weights' normalisation, not the variant's nor ImageNet's."""
    source = lightnets.create_model("mobilenet_v2_035", num_classes=10, dtype=jnp.float32, rngs=nnx.Rngs(3))
    digits = datasets.create_source("digits", "train", image_size=16).images[:256]
    # As if trained on 0.5/0.5 inputs: BatchNorm statistics of such inputs (momentum 1 keeps the
    # last batch's), else a random network's features are dead and its logits ignore the input.
    for _, module in nnx.iter_modules(source):
        if isinstance(module, BatchNorm):
            module.momentum = 1.0
    lightnets.forward(source, jnp.asarray(preprocessing.Normalize((0.5,) * 3, (0.5,) * 3)(digits)))
    for _, module in nnx.iter_modules(source):
        if isinstance(module, BatchNorm):
            module.momentum = 0.1
    checkpoint.save_weights(source, tmp_path / "w", mean=preprocessing.INCEPTION_MEAN, std=preprocessing.INCEPTION_STD)
    config = trainer.resolve_config(tiny(model="mobilenet_v2_035", init_from=str(tmp_path / "w"), dtype="float32"))
    assert (config.mean, config.std) == (preprocessing.INCEPTION_MEAN, preprocessing.INCEPTION_STD)
    assert trainer.resolve_config(tiny(model="mobilenet_v2_035")).mean == preprocessing.IMAGENET_MEAN  # its reference

    s = trainer.setup(config)
    steps = build_steps(config, s.model, s.mesh, s.steps_per_epoch)
    images, labels = s.eval_source.images[:32], s.eval_source.labels[:32].astype(np.int32)
    batch = trainer._global(s.mesh, {"image": images, "label": labels, "valid": np.ones(32, np.float32)})
    sums = jax.device_get(steps.eval_step(steps.state, batch["image"], batch["label"], batch["valid"]))
    source.eval()

    def loss(normalize):
        logits = np.asarray(lightnets.forward(source, jnp.asarray(normalize(images))), np.float64)
        return float(-np.sum(jax.nn.log_softmax(logits)[np.arange(32), labels]))

    fed, imagenet = loss(preprocessing.Normalize(config.mean, config.std)), loss(preprocessing.IMAGENET)
    # float32 round-off over a different summation order (8-way sharded, other convolution
    # formulations): ~1e-6 of the loss; feeding ImageNet's normalisation changes it by O(1).
    assert float(sums["loss"]) == pytest.approx(fed, rel=1e-4)
    assert abs(imagenet - fed) > 0.05 * fed


def test_divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    # A sane first step (warmup from 0.01), then a rate that blows the weights up.
    config = tiny(
        lr=1e30,
        schedule="constant",
        warmup_lr=0.01,
        warmup_epochs=2 / 44,
        log_every_steps=1,
        checkpoint_every_steps=1,
        ema_decay=0.0,
    )
    with pytest.raises(trainer.TrainingDiverged, match=r"diverged at step 2.*last good checkpoint is step 1"):
        trainer.train_and_evaluate(config, str(tmp_path))
    ckpts = checkpoint.RunCheckpoints(tmp_path / "checkpoints")
    assert ckpts.latest_step() == 1


# --- float16: the loss scale in the state, the checkpoints and TensorBoard ------------------------


@pytest.fixture(scope="module")
def uninterrupted_float16(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted-float16")
    state = trainer.train_and_evaluate(tiny(dtype="float16"), str(workdir))
    return workdir, jax.device_get(state)


def test_float16_run_stopped_and_resumed_is_bit_for_bit_with_its_loss_scale(
    uninterrupted_float16, tmp_path, monkeypatch
):
    workdir, reference = uninterrupted_float16
    # The first steps overflow at jmp's 2**15 (measured: 3 skipped, 2**12 from step 3 on), so the
    # checkpoint at step 10 holds a scale and a count that a fresh state would not have.
    assert 0 < int(reference.loss_scale.skipped) < STEPS and float(reference.loss_scale.scale) < 2.0**15

    _sigterm_at_batch(monkeypatch, 10)
    trainer.train_and_evaluate(tiny(dtype="float16"), str(tmp_path))
    monkeypatch.undo()
    assert _checkpoints(tmp_path) == [4, 8, 10]
    state = jax.device_get(trainer.train_and_evaluate(tiny(dtype="float16"), str(tmp_path)))
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(state), strict=True):
        a, b = (jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x for x in (a, b))
        np.testing.assert_array_equal(a, b)

    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
    assert {"loss_scale", "skipped_steps"} <= tags


def test_float16_run_whose_loss_scale_collapses_stops_as_a_divergence(tmp_path, monkeypatch):
    """A first layer whose weights overflow float16 whatever the scale (x 1e6: past its 65504, still
    finite in float32): every step is skipped and halves the scale, from 2**15 to 2**-1 at the
    16th, where the run stops. The weights are state, not program: the fixture's compiled step serves."""

    def overflowing(config, num_classes):
        model = build_model(config, num_classes)
        model.conv_stem.kernel[...] = model.conv_stem.kernel[...] * 1e6
        return model

    monkeypatch.setattr(trainer, "build_model", overflowing)  # the name trainer.setup calls
    config = tiny(dtype="float16", log_every_steps=4, checkpoint_every_steps=4)
    with pytest.raises(
        trainer.TrainingDiverged,
        match=r"diverged at step 16: the float16 loss scale fell below 1 "
        r"\(0.5; 16 steps skipped in all\).*last good checkpoint is step 12.*--config.dtype=bfloat16",
    ):
        trainer.train_and_evaluate(config, str(tmp_path))
    assert checkpoint.RunCheckpoints(tmp_path / "checkpoints").latest_step() == 12


# --- damaged checkpoints, one run per workdir, a resume that does not fit -------------------------


def _copy(uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], workdir)
    return workdir


def _damage(workdir, step, how):
    """Truncates, or flips one bit in the middle of, the largest array file of `step`."""
    files = [p for p in (workdir / "checkpoints" / str(step) / "state").rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x10
    largest.write_bytes(bytes(data))


def _warnings(caplog, text):
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and text in r.getMessage()]


def test_damaged_checkpoints_are_set_aside_and_the_run_resumes_from_an_intact_one(uninterrupted, tmp_path, caplog):
    _, reference = uninterrupted
    caplog.set_level("INFO", logger="absl")
    workdir = _copy(uninterrupted, tmp_path)
    assert _checkpoints(workdir) == [16, 20, 24]
    _damage(workdir, 24, "truncate")  # a read error
    _damage(workdir, 20, "flip")  # reads without error: only the checksum tells
    state = jax.device_get(trainer.train_and_evaluate(tiny(), str(workdir)))
    damaged = _warnings(caplog, "is damaged")
    assert len(damaged) == 2 and "step 24" in damaged[0] and "step 20" in damaged[1], damaged
    assert "differs from its checksum" in damaged[1] and all("\n" not in m for m in damaged)
    assert any(f"Resumed from {workdir / 'checkpoints' / '16'}" in r.getMessage() for r in caplog.records)
    names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert "24.corrupt-1" in names and "20.corrupt-1" in names and _checkpoints(workdir) == [16, 20, 24]
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(state), strict=True):
        a, b = (jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x for x in (a, b))
        np.testing.assert_array_equal(a, b)


def test_inference_and_eval_fall_back_from_a_damaged_step(uninterrupted, tmp_path, caplog):
    from lightnets.deploy import inference

    caplog.set_level("INFO", logger="absl")
    workdir = _copy(uninterrupted, tmp_path)
    _damage(workdir, 24, "flip")
    # While a run holds the workdir, a reader skips the damaged step but leaves it where it is.
    with checkpoint.WorkdirLock(workdir):
        assert "step 20" in inference.load(workdir).description
    assert "left in place" in _warnings(caplog, "is damaged")[-1] and 24 in _checkpoints(workdir)
    assert "step 20" in inference.load(workdir).description
    assert 24 not in _checkpoints(workdir) and (workdir / "checkpoints" / "24.corrupt-1").is_dir()
    _damage(workdir, 20, "truncate")
    trainer.evaluate(tiny(), str(workdir))
    assert any(f"{workdir} step 16" in r.getMessage() for r in caplog.records if r.getMessage().startswith("Evaluated"))


def test_one_run_per_workdir_and_a_dead_runs_lock_is_taken_over(tmp_path, caplog):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from lightnets import checkpoint; "
            "checkpoint.WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(300)",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        holding = f"in use by the run of pid {holder.pid} on host {socket.gethostname()}"
        with pytest.raises(FileExistsError, match=holding):
            trainer.train_and_evaluate(tiny(), str(tmp_path))
        assert not (tmp_path / "checkpoints").exists()
    finally:
        holder.kill()  # SIGKILL: its lock goes with it, its record stays
        holder.wait()
    with checkpoint.WorkdirLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(FileExistsError, match=f"pid {os.getpid()}"):
            checkpoint.WorkdirLock(tmp_path).acquire()  # a second lock, in this process
    assert f"from the run of pid {holder.pid}" in _warnings(caplog, "Taking over")[0]
    # A record of a live process of this host whose flock is free: a file system without flock.
    (tmp_path / checkpoint.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))
    with pytest.raises(FileExistsError, match="running although its lock is free"):
        checkpoint.WorkdirLock(tmp_path).acquire()


def test_resume_with_another_config_is_refused_unless_allowed(uninterrupted, tmp_path, caplog):
    workdir = _copy(uninterrupted, tmp_path)
    other = tiny(batch_size=64, seed=1, dataset="synthetic:256", log_every_steps=4)
    with pytest.raises(
        ValueError,
        match=r"other settings: batch_size 32 -> 64, dataset 'digits' -> 'synthetic:256', "
        r"seed 0 -> 1; .*allow_config_change=True",
    ) as refused:
        trainer.train_and_evaluate(other, str(workdir))
    assert "log_every_steps" not in str(refused.value) and not _warnings(caplog, "damaged")
    # Accepted (hflip is host-side: the compiled step is the fixture's), logged and recorded.
    trainer.train_and_evaluate(tiny(hflip=0.5, num_train_steps=STEPS + 2, allow_config_change=True), str(workdir))
    assert "hflip 0.0 -> 0.5" in _warnings(caplog, "allow_config_change")[0]
    run = checkpoint.RunCheckpoints(workdir / "checkpoints").read_run(STEPS + 2)
    (change,) = run["config_changes"]
    assert change["step"] == STEPS and change["accepted_by_allow_config_change"] == ["hflip"]
    assert change["changes"]["num_train_steps"] == [STEPS, STEPS + 2]


def test_divergence_names_what_stopped_being_finite(tmp_path):
    """BatchNorm statistics that overflowed while the loss stayed finite (lr=1e3 on the quick start)."""
    model = lightnets.create_model("mobilenet_v1_025", num_classes=10, rngs=nnx.Rngs(0))
    state, _ = train.create_train_state(model, optax.sgd(0.1))
    hit = lambda path: "var" in str(path) and ("'bn1'" in str(path) or "'bn2'" in str(path))  # noqa: E731
    stats = jax.device_get(state.batch_stats)
    inf = jax.tree_util.tree_map_with_path(lambda p, x: np.full_like(x, np.inf) if hit(p) else x, stats)
    n = sum(hit(p) for p, _ in jax.tree_util.tree_flatten_with_path(stats)[0])
    state = state.replace(batch_stats=inf, ema_batch_stats=inf)
    finite = {
        "loss": 2.3,
        "top1": 0.1,
        "grad_norm": 1.0,
        "param_norm": 9.0,
        **{f"finite_{k}": 1.0 for k in train.FINITE},
    }
    diverged = {**finite, "finite_batch_stats": 0.0, "finite_ema_batch_stats": 0.0}
    ckpts = checkpoint.RunCheckpoints(tmp_path / "checkpoints")
    message = trainer._divergence([finite, diverged], state, 8, ckpts)
    assert n > 2
    assert message.startswith(
        f"training diverged at step 8: BatchNorm running variance is inf in {n} layers (batch_stats); "
        f"EMA BatchNorm running variance is inf in {n} layers (ema_batch_stats); no good checkpoint was saved"
    ), message


# --- the compiled step's collectives -------------------------------------------------------------

COLLECTIVE = re.compile(r"=\s*(.+?)\s(all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)(?:-start)?\(")


def _collectives(fsdp: bool):
    model = lightnets.create_model("mobilenet_v1_025", num_classes=10, rngs=nnx.Rngs(0))
    tx = optax.sgd(0.1, momentum=0.9)
    state, graphdefs = train.create_train_state(model, tx)
    mesh = train.make_mesh()
    # Mixup, CutMix and random erasing on: they must not move images between devices.
    batch_augment = augment.BatchAugment(mixup_alpha=0.2, cutmix_alpha=1.0, erase_prob=0.25, groups=mesh.size)
    step = train.make_train_step(graphdefs, tx, batch_augment=batch_augment, fsdp_mesh=mesh if fsdp else None)
    jitted = train.jit_train_step(step, mesh, state, fsdp=fsdp)
    batch = (jax.ShapeDtypeStruct((16, 16, 16, 3), jnp.float32), jax.ShapeDtypeStruct((16,), jnp.int32))
    hlo = jitted.lower(state, *batch).compile().as_text()
    found = []
    for result, kind in COLLECTIVE.findall(hlo):
        shapes = re.findall(r"[a-z]+\d*\[([\d,]*)\]", result)
        found.append((kind, [tuple(int(d) for d in s.split(",")) if s else () for s in shapes]))
    return state, found


def test_data_parallel_step_all_reduces_each_gradient_once_and_nothing_else():
    state, found = _collectives(fsdp=False)
    assert {kind for kind, _ in found} == {"all-reduce"}
    volume = sum(int(np.prod(s)) for _, shapes in found for s in shapes)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    bn_channels = sum(x.size for x in jax.tree.leaves(state.batch_stats) if x.ndim == 1) // 2
    # Every gradient once, plus BatchNorm's global-batch sums: mean and mean square forward,
    # two per-channel sums backward (one of them is the bias gradient itself), plus the loss.
    assert params + 2 * bn_channels <= volume <= params + 4 * bn_channels + 8


def test_fsdp_step_gathers_each_split_parameter_once():
    state, found = _collectives(fsdp=True)
    kinds = {kind for kind, _ in found}
    assert kinds <= {"all-reduce", "all-gather", "reduce-scatter"} and "all-gather" in kinds
    split = sorted(x.shape for x in jax.tree.leaves(state.params) if x.size >= train.FSDP_MIN_SIZE)
    gathered = sorted(shapes[0] for kind, shapes in found if kind == "all-gather")
    assert len(split) > 0 and [int(np.prod(s)) for s in gathered] == [int(np.prod(s)) for s in split]


# --- two processes -------------------------------------------------------------------------------


def test_two_processes_train_together_and_the_checkpoint_restores_in_one(tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    env.pop("JAX_COMPILATION_CACHE_DIR")  # nothing to share here, and it slows two processes down
    config = tiny(num_train_steps=6, checkpoint_every_steps=6)
    runs = [
        main_py(
            "--config=configs/quickstart.py",
            f"--workdir={tmp_path}",
            *flags(config),
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            env=env,
        )
        for i in range(2)
    ]
    outs = [run.communicate(timeout=400)[0] for run in runs]
    for run, out in zip(runs, outs, strict=True):
        assert run.returncode == 0, out[-5000:]
    assert "Process 1 of 2; 4 local of 8 devices" in outs[1]
    prints = [re.search(r"fingerprint (\w+) \(process (\d)\)", out).groups() for out in outs]
    assert prints[0][0] == prints[1][0] and {p[1] for p in prints} == {"0", "1"}

    # One process, 8 devices: the checkpoint both wrote restores to the same parameters.
    s = trainer.setup(config)
    tx = optimizer(config, s.steps_per_epoch, params=nnx.state(s.model, nnx.Param))
    state, _ = train.create_train_state(s.model, tx)
    restored = checkpoint.RunCheckpoints(tmp_path / "checkpoints").restore(6, state)
    assert trainer.fingerprint(restored.params) == prints[0][0]


def test_a_step_that_does_not_fit_in_memory_is_not_taken_for_damage(uninterrupted, tmp_path, monkeypatch):
    workdir = _copy(uninterrupted, tmp_path)

    def exhausted(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1073741824 bytes.")

    monkeypatch.setattr(checkpoint.RunCheckpoints, "_as_saved", exhausted)  # inside the state's read
    with pytest.raises(ValueError, match=r"step 24 of .* does not fit in memory here .* left as it is") as error:
        checkpoint.load_run(workdir)
    assert not isinstance(error.value, checkpoint.DamagedCheckpoint) and "\n" not in str(error.value)
    assert _checkpoints(workdir) == [16, 20, 24]  # nothing set aside
    assert not list((workdir / "checkpoints").glob("*.corrupt-*"))
