"""Weight conversion against the real torchvision and timm, with every weight and statistic random.

Every family is compared in every run on its smallest variant (and on the torchvision and timm
layouts of EfficientNetV2 and MobileNetV2); `-m slow` compares every registered variant.
Inputs are real photos (scikit-learn's and scikit-image's), four views of each, at 64 px.
"""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lightnets
from input_pipeline import photos as shipped_photos
from lightnets import checkpoint, convert, preprocessing
from tests.conftest import SMALLEST, run_command

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("timm")

from tests.torch_helpers import randomize  # noqa: E402  (needs torch)

# Beyond the smallest of each family: the other EfficientNetV2 implementations (torchvision's,
# with symmetric padding, and timm's rw), the seeds' EfficientNetV2.
CI_VARIANTS = (*SMALLEST, "efficientnet_v2_s", "efficientnet_v2_rw_t")
# MindSpore's networks have no PyTorch reference: tests/test_mindspore.py checks them against MindSpore.
TORCH_VARIANTS = [n for n in lightnets.list_models() if n not in convert.mindspore_variants()]
SLOW_VARIANTS = [pytest.param(n, marks=pytest.mark.slow) for n in TORCH_VARIANTS if n not in CI_VARIANTS]


@functools.cache
def photos(size=64):
    return preprocessing.IMAGENET(shipped_photos.sample_pixels(size, views=4))


@functools.cache
def randomized_reference(name, timm_layout=False):
    """The reference PyTorch model of `name`, every tensor random; and its state dict."""
    torch.manual_seed(0)  # the initialisation of the tensors `randomize` keeps, whatever ran before
    if timm_layout:  # torchvision's mobilenet_v2(width_mult=w) is timm's mobilenetv2_<w>
        import timm

        reference = timm.create_model(name.replace("mobilenet_v2_", "mobilenetv2_"), pretrained=False)
    else:
        reference = convert.reference_model(name)
    randomize(reference, photos(), views=4)
    return reference, {k: v.clone() for k, v in reference.state_dict().items()}


def check_against_reference(name, timm_layout=False):
    reference, state_dict = randomized_reference(name, timm_layout)
    images = photos()
    layout = "timm" if timm_layout else convert.default_layout(name)
    assert convert.detect_layout(state_dict) == layout

    f32 = convert.compare(convert.from_torch(name, state_dict), reference, images)
    assert f32["relative_diff"] <= 1e-4, f32
    assert f32["top1"] == 1.0, f32
    bf16 = convert.compare(convert.from_torch(name, state_dict, dtype=jnp.bfloat16), reference, images)
    assert bf16["top1"] >= 0.95, bf16


@pytest.mark.parametrize("name", [*CI_VARIANTS, *SLOW_VARIANTS])
def test_logits_match_the_reference(name):
    check_against_reference(name)


def test_mobilenet_v2_in_timm_layout():
    check_against_reference("mobilenet_v2_035", timm_layout=True)


@pytest.mark.parametrize(("name", "timm_layout"), [(n, False) for n in CI_VARIANTS] + [("mobilenet_v2_035", True)])
def test_round_trip_is_bit_exact(name, timm_layout):
    reference, state_dict = randomized_reference(name, timm_layout)
    layout = "timm" if timm_layout else None
    back = convert.to_torch(convert.from_torch(name, state_dict), layout=layout)
    assert back.keys() == state_dict.keys()
    for key, value in state_dict.items():
        assert back[key].dtype == value.dtype, key
        assert torch.equal(back[key], value), key
    reference.load_state_dict(back, strict=True)


def _ascend_checkpoint(state_dict, path):
    """What the seeds' ModelZoo scripts save: DistributedDataParallel keys inside a training state."""
    torch.save(
        {
            "epoch": 90,
            "arch": "shufflenet_v2_x0_5",
            "state_dict": {f"module.{k}": v for k, v in state_dict.items()},
            "best_acc1": torch.tensor(60.5),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.5, "momentum": 0.9, "params": [0, 1]}]},
        },
        path,
    )


def test_ascend_checkpoint_converts_from_the_command_line(tmp_path, capsys):
    name = "shufflenet_v2_x0_5"
    _, state_dict = randomized_reference(name)
    _ascend_checkpoint(state_dict, tmp_path / "model_best.pth.tar")

    args = ["--model", name, "--torch_checkpoint", str(tmp_path / "model_best.pth.tar"), "--output"]
    assert convert.main([*args, str(tmp_path / "ours"), "--verify", "--resolution", "64"]) == 0
    printed = capsys.readouterr().out
    assert "float32" in printed and "bfloat16" in printed and "FAILED" not in printed

    # ... and back: our weights directory to a state dict that torchvision loads strictly.
    assert convert.main(["--checkpoint", str(tmp_path / "ours"), "--to_torch", str(tmp_path / "back.pth")]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in state_dict.items())
    convert.reference_model(name).load_state_dict(back, strict=True)


def test_weights_directory_round_trip(tmp_path):
    _, state_dict = randomized_reference("mobilenet_v1_025")
    model = convert.from_torch("mobilenet_v1_025", state_dict)
    checkpoint.save_weights(model, tmp_path / "w")
    loaded = checkpoint.load_weights(tmp_path / "w")
    assert loaded.variant == "mobilenet_v1_025" and loaded.num_classes == 1000
    weights = (nnx.Param, nnx.BatchStat)
    for a, b in zip(
        jax.tree.leaves(nnx.state(model, weights)), jax.tree.leaves(nnx.state(loaded, weights)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileExistsError, match="overwrite"):
        checkpoint.save_weights(model, tmp_path / "w")
    with pytest.raises(FileNotFoundError, match="not a lightnets weights directory"):
        checkpoint.load_weights(tmp_path)


def test_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    _, state_dict = randomized_reference("mobilenet_v2_035")
    save_file(state_dict, tmp_path / "model.safetensors")
    model = convert.from_torch("mobilenet_v2_035", tmp_path / "model.safetensors")
    back = convert.to_torch(model)
    assert all(torch.equal(back[k], v) for k, v in state_dict.items())


def test_objects_other_than_tensors_are_not_unpickled(tmp_path):
    torch.save({"state_dict": {}, "trap": _Unsafe()}, tmp_path / "unsafe.pth")
    with pytest.raises(ValueError, match=r"does not\s+unpickle"):
        convert.from_torch("mobilenet_v2_035", tmp_path / "unsafe.pth")
    assert not _Unsafe.unpickled


class _Unsafe:
    unpickled = False

    def __setstate__(self, state):
        _Unsafe.unpickled = True


def test_other_width_is_refused_with_the_shapes_that_differ():
    _, state_dict = randomized_reference("mobilenet_v2_035")
    with pytest.raises(convert.CheckpointMismatchError) as error:
        convert.from_torch("mobilenet_v2_050", state_dict)
    message = str(error.value)
    assert "nothing was loaded" in message
    # Both widths round the first blocks to the same channels; from the second block's output on
    # they differ (24 x 0.35 -> 8 channels, 24 x 0.5 -> 16).
    assert "features.1.conv" not in message
    assert "features.2.conv.2.weight: (8, 48, 1, 1) vs (16, 48, 1, 1)" in message
    assert "features.18.0.weight: (1280, 112, 1, 1) vs (1280, 160, 1, 1)" in message


def test_other_architecture_is_refused_with_missing_and_unexpected_keys():
    _, state_dict = randomized_reference("shufflenet_v2_x0_5")
    with pytest.raises(convert.CheckpointMismatchError) as error:
        convert.from_torch("mobilenet_v2_035", state_dict, layout="torchvision")
    message = str(error.value)
    assert "missing keys" in message and "features.1.conv.0.0.weight" in message
    assert "unexpected keys" in message and "stage2.0.branch1.0.weight" in message


def test_checkpoint_in_a_layout_the_variant_lacks_is_refused_with_its_keys():
    _, state_dict = randomized_reference("mobilenet_v2_035")  # torchvision's keys
    with pytest.raises(convert.CheckpointMismatchError) as error:
        convert.from_torch("mobilenet_v1_025", state_dict)  # timm's layout only
    message = str(error.value)
    assert "missing keys" in message and "conv_stem.weight" in message
    assert "unexpected keys" in message and "features.0.0.weight" in message


def test_class_count_is_refused_unless_asked_for():
    reference = convert.reference_model("mobilenet_v1_025", num_classes=10)
    state_dict = reference.state_dict()
    with pytest.raises(convert.CheckpointMismatchError) as error:
        convert.from_torch("mobilenet_v1_025", state_dict)
    assert "classifier.weight: (10, 256) vs (1000, 256)" in str(error.value)
    assert "num_classes=10" in str(error.value)

    model = convert.from_torch("mobilenet_v1_025", state_dict, num_classes=10)  # the checkpoint's head
    assert model.num_classes == 10
    np.testing.assert_array_equal(model.classifier.kernel[...], state_dict["classifier.weight"].numpy().T)

    model = convert.from_torch("mobilenet_v1_025", state_dict, num_classes=7, rngs=nnx.Rngs(3))  # a new head
    assert model.num_classes == 7
    back = convert.to_torch(model)
    assert all(torch.equal(back[k], v) for k, v in state_dict.items() if not k.startswith("classifier"))


def test_lightnets_imports_and_converts_safetensors_without_torch(tmp_path):
    from safetensors.torch import save_file

    _, state_dict = randomized_reference("mobilenet_v1_025")
    save_file(state_dict, tmp_path / "model.safetensors")
    script = f"""
import sys
sys.modules["torch"] = None  # import torch fails
import lightnets
from lightnets import convert, checkpoint
model = convert.from_torch("mobilenet_v1_025", {str(tmp_path / "model.safetensors")!r})
print(model.num_classes)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "1000"


def test_pickled_state_dict_needs_no_torch_model_classes(tmp_path):
    # A checkpoint saved from a whole model object (pickled classes) is refused, not executed.
    reference = convert.reference_model("mobilenet_v1_025")
    torch.save(reference, tmp_path / "whole_model.pth")
    with pytest.raises(ValueError, match="Save its state_dict alone"):
        convert.load_state_dict(tmp_path / "whole_model.pth")


# --- mistakes and damage: one line, nothing written ---------------------------------------------


def _convert(argv, capsys):
    return run_command(convert.main, convert.PROG, [str(a) for a in argv], capsys)


@pytest.mark.parametrize("damage", ["truncated", "empty", "another architecture"])
def test_a_damaged_or_ill_fitting_checkpoint_is_one_line_and_nothing_is_written(damage, tmp_path, capsys):
    path = tmp_path / "model.pth"
    if damage == "another architecture":
        torch.save(convert.reference_model("shufflenet_v2_x0_5").state_dict(), path)
    else:
        torch.save(convert.reference_model("mobilenet_v1_025").state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if damage == "truncated" else b"")
    code, out, err = _convert(
        ["--model", "mobilenet_v1_025", "--torch_checkpoint", path, "--output", tmp_path / "w"], capsys
    )
    assert code == 2 and out == "" and not (tmp_path / "w").exists()
    first, *rest = err.splitlines()
    assert first.startswith(f"{convert.PROG}: error: {path} ")
    if damage == "another architecture":  # a clear first line, then the keys
        assert "does not fit mobilenet_v1_025" in first and "missing keys" in first and "nothing was loaded" in first
        assert "  conv_stem.weight" in rest and "  stage2.0.branch1.0.weight" in rest
    else:
        assert rest == [] and "not a readable PyTorch checkpoint" in first
        assert ("the file is empty" if damage == "empty" else "truncated") in first


def _nonfinite_state_dict():
    """mobilenet_v1_025's weights with a nan in the classifier and an inf in a running variance."""
    state_dict = {k: v.clone() for k, v in convert.reference_model("mobilenet_v1_025").state_dict().items()}
    state_dict["classifier.weight"][3, 5] = float("nan")
    state_dict["bn1.running_var"][2] = float("inf")
    return state_dict


def test_nonfinite_weights_are_refused_both_ways_unless_allowed(tmp_path, capsys):
    state_dict = _nonfinite_state_dict()
    torch.save(state_dict, tmp_path / "nan.pth")
    to_ours = ["--model", "mobilenet_v1_025", "--torch_checkpoint", tmp_path / "nan.pth", "--output", tmp_path / "w"]
    code, out, err = _convert(to_ours, capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and not (tmp_path / "w").exists()
    assert "2 arrays" in err and "bn1.running_var, classifier.weight" in err and "--allow_nonfinite" in err

    assert _convert([*to_ours, "--allow_nonfinite"], capsys)[0] == 0  # asked for: converted as they are
    with pytest.raises(checkpoint.NonFiniteError, match=r"bn1\.var, classifier\.kernel"):
        checkpoint.load_weights(tmp_path / "w")
    model = checkpoint.load_weights(tmp_path / "w", allow_nonfinite=True)
    for refused in (lambda: convert.to_torch(model), lambda: checkpoint.save_weights(model, tmp_path / "again")):
        with pytest.raises(checkpoint.NonFiniteError, match="classifier"):
            refused()
    assert not (tmp_path / "again").exists()

    to_torch = ["--checkpoint", tmp_path / "w", "--to_torch", tmp_path / "back.pth"]
    code, _, err = _convert(to_torch, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "classifier.kernel" in err
    assert not (tmp_path / "back.pth").exists()
    assert _convert([*to_torch, "--allow_nonfinite"], capsys)[0] == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert all(torch.equal(back[k].nan_to_num(), v.nan_to_num()) for k, v in state_dict.items())


def test_verify_fails_on_nan_before_anything_is_written(tmp_path, capsys):
    torch.save(_nonfinite_state_dict(), tmp_path / "nan.pth")
    argv = [
        "--model",
        "mobilenet_v1_025",
        "--torch_checkpoint",
        tmp_path / "nan.pth",
        "--output",
        tmp_path / "w",
        "--allow_nonfinite",
        "--verify",
        "--resolution",
        "32",
    ]
    code, out, err = _convert(argv, capsys)
    assert code == 1 and not (tmp_path / "w").exists() and "nothing was written" in err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["float32", "bfloat16"]
    assert all(line.endswith("FAILED") and " nan " in line for line in lines)  # argmax of nans "agrees"


def test_convert_help_and_argument_mistakes(tmp_path, capsys):
    assert _convert(["--help"], capsys)[0] == 0
    torch.save(convert.reference_model("mobilenet_v1_025").state_dict(), tmp_path / "m.pth")
    (tmp_path / "file").write_text("mine")
    for output, message in [(tmp_path / "file" / "w", "is a file, not a directory"), (tmp_path, "--overwrite")]:
        code, _, err = _convert(
            ["--model", "mobilenet_v1_025", "--torch_checkpoint", tmp_path / "m.pth", "--output", output], capsys
        )
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    code, _, err = _convert(
        ["--model", "mobilenet_v1_26", "--torch_checkpoint", tmp_path / "m.pth", "--output", tmp_path / "w"], capsys
    )
    assert code == 2 and len(err.splitlines()) == 1 and "Unknown model" in err and "mobilenet_v1_025" in err
