"""MindSpore checkpoints: the `.ckpt` format, the model zoo's MobileNetV1, and the proof against
MindSpore itself.

MindSpore 2.10 needs NumPy 1 and jax NumPy 2, so MindSpore runs in its own venv
(`LIGHTNETS_MINDSPORE_PYTHON`, see DEVELOPERS.md) as a subprocess, `tests/mindspore_side.py`;
the two sides exchange `.ckpt` and `.npy` files. Without the variable those tests skip, except
under CI, where they fail: CI must not pass without the proof.

Tolerance of the cross-check, as the PyTorch converter's: max |logit difference| <= 1e-4 x max
|logit| and the same top-1. Measured between MindSpore's CPU kernels and XLA's in float32 on
these photos: 0.8-1.3e-6 of max |logit| (summation orders differ over 28 layers), so the bound
has a margin of 80; the network with PyTorch's symmetric padding instead of "same" is 0.48 away,
with 3 % of the top-1s agreeing (docs/conversion.md, "MindSpore").
"""

import functools
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import lightnets
from input_pipeline import photos as shipped_photos
from lightnets import checkpoint, convert, preprocessing
from lightnets.checkpoint import NonFiniteError
from lightnets.interop import mindspore_ckpt
from tests.conftest import run_command

NAME = "mobilenet_v1_100_ms"
# 64 px: every stride-2 layer sees an even size, where "same" pads only bottom and right;
# 67 px: odd sizes, padded on both sides, but for one even one.
SIZES = (64, 67)
HELPER = os.path.join(os.path.dirname(__file__), "mindspore_side.py")


@functools.cache
def photos(size):
    return preprocessing.reference("mobilenet_v1_100_ms").normalize(shipped_photos.sample_pixels(size, views=4))


def logits(model, size):
    return np.asarray(lightnets.forward(model, jnp.asarray(photos(size))))


def assert_close(ours, theirs):
    """The float32 bound of the module docstring; every logit finite."""
    assert np.isfinite(ours).all() and np.isfinite(theirs).all()
    relative = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert relative <= 1e-4, relative
    np.testing.assert_array_equal(ours.argmax(1), theirs.argmax(1))


def random_entries(seed, num_classes=1000):
    """The zoo's parameter names with random weights and BatchNorm statistics (He-scaled)."""
    template = convert.to_mindspore(lightnets.create_model(NAME, num_classes=num_classes, dtype=jnp.float32))
    rng = np.random.default_rng(seed)
    entries = {}
    for key, value in template.items():
        if key.endswith(("moving_mean", "beta", "bias")):
            entries[key] = rng.normal(0, 0.1, value.shape)
        elif key.endswith(("moving_variance", "gamma")):
            entries[key] = rng.uniform(0.5, 1.5, value.shape)
        else:
            entries[key] = rng.normal(0, np.sqrt(2 / np.prod(value.shape[1:])), value.shape)
    return {k: v.astype(np.float32) for k, v in entries.items()}


# --- the .ckpt format ----------------------------------------------------------------------------


def test_every_tensor_type_round_trips(tmp_path):
    entries = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "f16": np.linspace(-2, 2, 6, dtype=np.float16).reshape(2, 3),
        "bf16": np.linspace(-2, 2, 6).astype(ml_dtypes.bfloat16),
        "f64": np.array([1e-300, 3.5]),
        "i32": np.array([-1, 2**31 - 1], np.int32),
        "i64": np.array([[2**40]], np.int64),
        "u8": np.arange(5, dtype=np.uint8),
        "bool": np.array([True, False]),
        "global_step": np.array(7, np.int32),  # a scalar: dims []
        "note": "trained on Ascend",
    }
    for crc in (False, True):
        mindspore_ckpt.write(tmp_path / "all.ckpt", entries, crc_check=crc)
        back = mindspore_ckpt.read(tmp_path / "all.ckpt")
        assert back.keys() == entries.keys()
        assert back["note"] == "trained on Ascend"
        for key, value in entries.items():
            if key != "note":
                assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
                np.testing.assert_array_equal(back[key], value)
        assert ((tmp_path / "all.ckpt").read_bytes()[-17:-10] == b"crc_num") == crc


def test_a_tensor_split_into_pieces_is_joined(tmp_path):
    """MindSpore splits a tensor over 512 MiB along its first axis into consecutive values of one tag."""
    big = np.arange(10 * 7, dtype=np.float32).reshape(10, 7)
    mindspore_ckpt.write(tmp_path / "split.ckpt", {"big": big, "after": np.ones(2, np.float32)}, slice_bytes=64)
    values = list(mindspore_ckpt._values(memoryview((tmp_path / "split.ckpt").read_bytes()), "split.ckpt"))
    assert [v.tag for _, v in values] == ["big"] * 5 + ["after"]  # 280 bytes in 64-byte pieces: 5 pieces
    assert all(list(v.tensor.dims) == [10, 7] for _, v in values[:5])
    np.testing.assert_array_equal(mindspore_ckpt.read(tmp_path / "split.ckpt")["big"], big)


def _raw(path, values):
    """A file of hand-made values: (tag, dims, tensor_type, content)."""
    data = b""
    for tag, dims, kind, content in values:
        message = mindspore_ckpt.Checkpoint()
        message.value.add(tag=tag).tensor.MergeFrom(
            mindspore_ckpt.TensorProto(dims=dims, tensor_type=kind, tensor_content=content)
        )
        data += message.SerializeToString()
    path.write_bytes(data)
    return path


def test_a_scalar_with_dims_0_is_a_scalar(tmp_path):
    """MindSpore writes some scalars (and strings) with dims [0]."""
    path = _raw(tmp_path / "s.ckpt", [("learning_rate", [0], "Float32", np.float32(0.25).tobytes())])
    value = mindspore_ckpt.read(path)["learning_rate"]
    assert value.shape == () and value == np.float32(0.25)


def _good(tmp_path):
    return _raw(
        tmp_path / "good.ckpt",
        [
            ("a.weight", [2, 2], "Float32", np.ones(4, np.float32).tobytes()),
            ("b.bias", [3], "Float32", np.ones(3, np.float32).tobytes()),
        ],
    )


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated", r"bad\.ckpt is truncated after tag 'a\.weight'"),
        ("wrong_type", r"bad\.ckpt: tag 'b\.bias' has tensor_type 'Float33'"),
        ("wrong_dims", r"bad\.ckpt: tag 'b\.bias' has dims \[4\] of Float32 \(16 bytes\) but 12 bytes"),
        ("pieces_apart", r"bad\.ckpt is damaged: tag 'a\.weight' appears twice"),
        ("crc", r"bad\.ckpt fails its CRC-32 check"),
        ("empty", r"bad\.ckpt is empty"),
        ("not_a_ckpt", r"bad\.ckpt is not a MindSpore checkpoint"),
    ],
)
def test_a_damaged_file_is_one_clear_line(tmp_path, damage, message):
    good, bad = _good(tmp_path).read_bytes(), tmp_path / "bad.ckpt"
    four, three = np.ones(4, np.float32).tobytes(), np.ones(3, np.float32).tobytes()
    if damage == "truncated":
        bad.write_bytes(good[:-5])
    elif damage == "wrong_type":
        _raw(bad, [("a.weight", [2, 2], "Float32", four), ("b.bias", [3], "Float33", three)])
    elif damage == "wrong_dims":
        _raw(bad, [("a.weight", [2, 2], "Float32", four), ("b.bias", [4], "Float32", three)])
    elif damage == "pieces_apart":
        _raw(
            bad,
            [
                ("a.weight", [2, 2], "Float32", four),
                ("b.bias", [3], "Float32", three),
                ("a.weight", [2, 2], "Float32", four),
            ],
        )
    elif damage == "crc":
        mindspore_ckpt.write(bad, {"a.weight": np.ones((2, 2), np.float32)}, crc_check=True)
        data = bytearray(bad.read_bytes())
        data[-20] ^= 1  # a bit of the content
        bad.write_bytes(bytes(data))
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        bad.write_bytes(b"PK\x03\x04 a zip, as torch.save writes")
    with pytest.raises(ValueError, match=message) as error:
        mindspore_ckpt.read(bad)
    assert "\n" not in str(error.value)


# --- conversion ----------------------------------------------------------------------------------


def test_parameter_names_are_the_model_zoos():
    names = convert.mindspore_names(lightnets.create_model(NAME))
    expected = {"fc.weight", "fc.bias"}
    for unit in range(27):  # the stem, then 13 depthwise and 13 pointwise convolutions
        expected.add(f"network.{unit}.0.weight")
        expected |= {f"network.{unit}.1.{v}" for v in ("gamma", "beta", "moving_mean", "moving_variance")}
    assert set(names.values()) == expected
    assert names[("blocks", 0, 0, "conv_dw", "kernel")] == "network.1.0.weight"
    assert names[("blocks", 4, 1, "bn2", "var")] == "network.26.1.moving_variance"


def test_only_mindspore_networks_convert():
    with pytest.raises(ValueError, match=r"mobilenet_v1_100 is not a MindSpore network.*mobilenet_v1_100_ms"):
        convert.from_mindspore("mobilenet_v1_100", random_entries(0))
    with pytest.raises(ValueError, match="is not a MindSpore network"):
        convert.to_mindspore(lightnets.create_model("mobilenet_v1_025"))
    # ... nor the other way: timm's weights in the "same"-padded network would compute something else.
    timm_state = convert.to_torch(lightnets.create_model("mobilenet_v1_100"))
    with pytest.raises(ValueError, match="mobilenet_v1_100_ms is a MindSpore network, with no PyTorch layout"):
        convert.from_torch(NAME, timm_state)
    with pytest.raises(ValueError, match="no PyTorch layout"):
        convert.to_torch(lightnets.create_model(NAME), layout="timm")


def test_the_spare_logit_is_dropped_and_written_back():
    entries = random_entries(0)
    assert entries["fc.weight"].shape == (1001, 1024)
    notes = []
    model = convert.from_mindspore(NAME, entries, notes=notes)
    assert model.num_classes == 1000 and "spare logit" in notes[0]
    kept = convert.from_mindspore(NAME, entries, num_classes=1001)
    np.testing.assert_array_equal(logits(model, 64), logits(kept, 64)[:, :1000])
    back = convert.to_mindspore(model)
    for key, value in entries.items():
        if key.startswith("fc."):
            np.testing.assert_array_equal(back[key][:1000], value[:1000])
        else:
            np.testing.assert_array_equal(back[key], value)
    np.testing.assert_array_equal(back["fc.weight"][1000], 0)
    assert back["fc.bias"][1000] == model.mindspore_spare_bias
    np.testing.assert_array_equal(convert.to_mindspore(kept)["fc.bias"], entries["fc.bias"])  # 1001: unchanged


def test_a_cifar10_checkpoint_needs_its_class_count():
    """The seed's CIFAR-10 recipe trains `class_num: 10`."""
    entries = random_entries(0, num_classes=10)
    with pytest.raises(convert.CheckpointMismatchError, match="It classifies 10 classes: pass num_classes=10"):
        convert.from_mindspore(NAME, entries)
    model = convert.from_mindspore(NAME, entries, num_classes=10)
    back = convert.to_mindspore(model)
    assert back.keys() == entries.keys() and all(np.array_equal(back[k], v) for k, v in entries.items())


def test_a_checkpoint_that_does_not_fit_loads_nothing_and_lists_everything():
    entries = random_entries(0)
    del entries["network.3.0.weight"]
    entries["network.5.1.gamma"] = entries["network.5.1.gamma"][:10]
    entries["head.extra"] = np.ones((3, 3), np.float32)
    with pytest.raises(convert.CheckpointMismatchError) as error:
        convert.from_mindspore(NAME, entries)
    report = str(error.value)
    first = "the checkpoint does not fit mobilenet_v1_100_ms (MindSpore layout): 1 missing keys, 1 unexpected, "
    assert report.splitlines()[0].startswith(first + "1 shapes that differ; nothing was loaded")
    assert "network.3.0.weight" in report and "head.extra" in report and "network.5.1.gamma: (10,) vs (128,)" in report


def test_nonfinite_weights_are_refused():
    entries = random_entries(0)
    entries["network.7.1.moving_variance"][3] = np.inf
    with pytest.raises(NonFiniteError, match=r"network\.7\.1\.moving_variance"):
        convert.from_mindspore(NAME, entries)
    model = convert.from_mindspore(NAME, entries, allow_nonfinite=True)
    with pytest.raises(NonFiniteError, match="var"):
        convert.to_mindspore(model)


def test_both_directions_from_the_command_line(tmp_path, capsys):
    """lightnets -> .ckpt (with a CRC) -> lightnets, each verified; the weights come back bit for bit."""
    model = convert.from_mindspore(NAME, random_entries(1))
    checkpoint.save_weights(model, tmp_path / "ours")
    ckpt = tmp_path / "ours.ckpt"
    argv = [
        "--checkpoint",
        str(tmp_path / "ours"),
        "--to_mindspore",
        str(ckpt),
        "--crc_check",
        "--verify",
        "--resolution",
        "64",
    ]
    status, out, err = run_command(convert.main, convert.PROG, argv, capsys)
    assert status == 0 and "read back" in out and "ok" in out and "1001 classes" in out, (out, err)
    assert ckpt.read_bytes()[-17:-10] == b"crc_num"

    argv = ["--model", NAME, "--mindspore_checkpoint", str(ckpt), "--output", str(tmp_path / "back"), "--verify"]
    status, out, err = run_command(convert.main, convert.PROG, argv, capsys)
    assert status == 0 and "137 of 137 tensors" in out and "ok" in out, (out, err)
    assert "note: dropped the classifier's 1 spare logit" in err
    back = checkpoint.load_weights(tmp_path / "back")
    for a, b in zip(
        nnx.to_flat_state(nnx.state(model, nnx.Param)), nnx.to_flat_state(nnx.state(back, nnx.Param)), strict=True
    ):
        np.testing.assert_array_equal(a[1][...], b[1][...])


def test_a_damaged_file_from_the_command_line_writes_nothing(tmp_path, capsys):
    mindspore_ckpt.write(tmp_path / "m.ckpt", random_entries(0))
    data = (tmp_path / "m.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    argv = ["--model", NAME, "--mindspore_checkpoint", str(tmp_path / "cut.ckpt"), "--output", str(tmp_path / "w")]
    status, _, err = run_command(convert.main, convert.PROG, argv, capsys)
    assert status == 2 and err.count("\n") == 1 and "cut.ckpt is truncated after tag 'network." in err, err
    assert not (tmp_path / "w").exists()


# --- against MindSpore itself --------------------------------------------------------------------


@pytest.fixture(scope="module")
def mindspore_run(tmp_path_factory):
    """Our random network written as ours.ckpt, then the MindSpore side run once (see its docstring)."""
    python = os.environ.get("LIGHTNETS_MINDSPORE_PYTHON")
    if not python:
        if os.environ.get("CI"):
            pytest.fail("CI runs the MindSpore cross-check: set LIGHTNETS_MINDSPORE_PYTHON (.ci/run makes its venv)")
        pytest.skip("LIGHTNETS_MINDSPORE_PYTHON is not set: no MindSpore venv to check against (DEVELOPERS.md)")
    out = tmp_path_factory.mktemp("mindspore")
    for size in SIZES:
        np.save(out / f"images_{size}.npy", np.ascontiguousarray(photos(size).transpose(0, 3, 1, 2)))
    ours = convert.from_mindspore(NAME, random_entries(1))  # 1000 classes: the spare logit is written back
    mindspore_ckpt.write(out / "ours.ckpt", convert.to_mindspore(ours))
    # MindSpore splits only tensors over 512 MiB; pieces of 1 MiB split fc.weight and the 1x1 convolutions.
    mindspore_ckpt.write(out / "ours_split.ckpt", convert.to_mindspore(ours), crc_check=True, slice_bytes=2**20)
    done = subprocess.run(
        [python, HELPER, str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=out,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    if done.returncode:
        sys.stderr.write(done.stderr)
        pytest.fail(f"{HELPER} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return out, ours, json.loads((out / "info.json").read_text())


def test_our_descriptor_is_mindsporess(mindspore_run):
    from google.protobuf import descriptor_pb2

    _, _, info = mindspore_run
    assert info["mindspore"] == "2.10.0"
    theirs = descriptor_pb2.FileDescriptorProto.FromString(bytes.fromhex(info["descriptor"]))
    assert theirs == mindspore_ckpt._file_descriptor()


def test_parameter_count_is_the_model_zoos(mindspore_run):
    _, _, info = mindspore_run
    model = lightnets.create_model(NAME, num_classes=1001)
    trainable = sum(x.size for _, x in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    stats = nnx.to_flat_state(nnx.state(model, nnx.BatchStat))
    stats = sum(x.size for path, x in stats if path[-1] != "num_batches_tracked")
    assert trainable == info["trainable_parameters"]
    assert trainable + stats == info["parameters"]  # with the moving means and variances


@pytest.mark.parametrize("file", ["zoo.ckpt", "zoo_crc.ckpt"])
def test_a_mindspore_checkpoint_reproduces_mindspores_logits(mindspore_run, file):
    out, _, _ = mindspore_run
    if file == "zoo_crc.ckpt":
        assert (out / file).read_bytes()[-17:-10] == b"crc_num"
    model = convert.from_mindspore(NAME, out / file, num_classes=1001)
    for size in SIZES:
        assert_close(logits(model, size), np.load(out / f"zoo_logits_{size}.npy"))


def test_a_training_checkpoint_converts(mindspore_run):
    out, _, _ = mindspore_run
    entries = mindspore_ckpt.read(out / "train.ckpt")
    assert {"learning_rate", "global_step", "moments.fc.weight"} <= entries.keys()
    notes = []
    model = convert.from_mindspore(NAME, out / "train.ckpt", num_classes=1001, notes=notes)
    # Momentum's slot for each of the 83 trainable tensors, learning_rate, momentum, global_step.
    assert notes == [notes[0]] and notes[0].startswith("left out 86 entries of the training state")
    for size in SIZES:
        assert_close(logits(model, size), np.load(out / f"train_logits_{size}.npy"))


def test_our_checkpoint_loads_strictly_in_mindspore(mindspore_run):
    out, ours, info = mindspore_run
    assert info["not_loaded"] == [[], []]  # load_param_into_net(strict_load=True): nothing left over
    assert info["split_equal"]  # our CRC and our pieces, as MindSpore's load_checkpoint reads them
    for size in SIZES:
        theirs = np.load(out / f"ours_logits_{size}.npy")
        assert_close(logits(ours, size), theirs[:, :1000])
        np.testing.assert_array_equal(theirs[:, 1000], ours.mindspore_spare_bias)  # the spare logit never wins
