"""The one preprocessing contract: every path feeds a network the normalisation it was trained on."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import lightnets
from configs import default, mobilenetv1
from lightnets import checkpoint, preprocessing
from lightnets.training import trainer

HALF = (0.5, 0.5, 0.5)


def test_host_device_and_export_normalisations_agree():
    norm = preprocessing.Normalize((0.4, 0.5, 0.6), (0.2, 0.3, 0.4))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    expected = (pixels / 255.0 - np.array(norm.mean)) / np.array(norm.std)  # float64
    scale, shift = norm.folded()
    # float32 round-off of a divide and a subtract on values of order 1: a few ulps (1e-7 each).
    np.testing.assert_allclose(norm(pixels), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(norm.on_device(jnp.asarray(pixels))), expected, atol=1e-6)
    np.testing.assert_allclose(pixels * scale + shift, expected, atol=1e-6)
    assert norm.fill == (102, 128, 153)


def test_bad_values_are_one_line_errors():
    config = default.get_config()
    config.mean = (0.5, 0.5)
    config.std = HALF
    with pytest.raises(ValueError, match=r"mean=\(0.5, 0.5\) must be three finite numbers"):
        trainer.check_config(config)
    config.mean, config.std = HALF, (0.5, 0.0, 0.5)
    with pytest.raises(ValueError, match=r"std=.* must be positive"):
        trainer.check_config(config)
    config.mean, config.std = HALF, None
    with pytest.raises(ValueError, match="set both mean and std"):
        trainer.check_config(config)


def test_a_run_normalises_as_its_config_then_its_init_weights_then_its_reference(tmp_path):
    config = mobilenetv1.get_config("025")  # timm's mobilenetv1_*: TensorFlow-trained, 0.5/0.5
    assert trainer.resolve_config(config).mean == HALF
    config.model = "mobilenet_v2_035"  # torchvision's: ImageNet's
    assert trainer.resolve_config(config).mean == preprocessing.IMAGENET_MEAN
    model = lightnets.create_model("mobilenet_v2_035", num_classes=10)
    checkpoint.save_weights(model, tmp_path / "w", mean=HALF, std=HALF)
    config.init_from = str(tmp_path / "w")
    assert (trainer.resolve_config(config).mean, trainer.resolve_config(config).std) == (HALF, HALF)
    config.mean, config.std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)  # the config's own wins
    assert trainer.resolve_config(config).std == (0.4, 0.5, 0.6)
    assert config.mean == (0.1, 0.2, 0.3) and default.get_config().mean is None  # copies, not changed in place


def test_weights_record_their_normalisation_and_older_ones_read_as_their_references(tmp_path):
    model = lightnets.create_model("mobilenet_v1_025", num_classes=10)
    checkpoint.save_weights(model, tmp_path / "converted")  # converted: the reference's
    assert preprocessing.of_weights(checkpoint.read_metadata(tmp_path / "converted")).mean == HALF
    checkpoint.save_weights(
        model, tmp_path / "trained", mean=preprocessing.IMAGENET_MEAN, std=preprocessing.IMAGENET_STD
    )
    prep = preprocessing.of_weights(checkpoint.read_metadata(tmp_path / "trained"))
    assert (prep.mean, prep.std, prep.image_size) == (preprocessing.IMAGENET_MEAN, preprocessing.IMAGENET_STD, 224)
    metadata = checkpoint.read_metadata(tmp_path / "converted")
    for key in ("mean", "std"):
        metadata.pop(key)
    (tmp_path / "converted" / checkpoint.METADATA).write_text(json.dumps(metadata))
    assert preprocessing.of_weights(checkpoint.read_metadata(tmp_path / "converted")).mean == HALF


def test_runs_saved_before_mean_and_std_were_fields_read_as_imagenet_and_resume():
    """Every run normalised with ImageNet's mean and std before the fields existed: evaluation,
    predict and export must go on doing so, and such a run must resume unchanged."""
    config = trainer.resolve_config(default.get_config())  # mobilenet_v2_100: ImageNet's reference
    saved = json.loads(json.dumps(config.to_dict()))
    for key in ("mean", "std"):
        del saved[key]
    assert preprocessing.of_run(saved).normalize == preprocessing.IMAGENET
    assert trainer.config_changes(saved, config) == {}
    # Those runs also saved opt_eps 1e-3 (then the default, for every optimiser): SGD has none.
    assert trainer.config_changes({**saved, "opt_eps": 1e-3}, config) == {}
    adamw = trainer.resolve_config(default.get_config())
    adamw.optimizer = "adamw"  # the old 1e-3 against AdamW's own 1e-8: a real change
    assert trainer.config_changes({**saved, "optimizer": "adamw", "opt_eps": 1e-3}, adamw)["opt_eps"] == (1e-3, 1e-8)
    v1 = trainer.resolve_config(mobilenetv1.get_config("025"))  # its reference is 0.5/0.5: a change
    saved_v1 = {k: v for k, v in json.loads(json.dumps(v1.to_dict())).items() if k not in ("mean", "std")}
    assert trainer.config_changes(saved_v1, v1)["mean"] == (list(preprocessing.IMAGENET_MEAN), list(HALF))
