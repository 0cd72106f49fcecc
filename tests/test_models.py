"""The networks: registry, train/eval behaviour, dtypes, heads and resolutions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lightnets
from lightnets.models.blocks import MBNet
from lightnets.models.layers import Dropout
from tests.reference import REFERENCE


def _images(size=64, n=4, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, size, size, 3))


def _batch_stats(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


def test_every_reference_variant_is_registered():
    assert sorted(lightnets.list_models()) == sorted(REFERENCE)
    assert lightnets.list_models("shufflenet_v2_*") == [
        "shufflenet_v2_x0_5",
        "shufflenet_v2_x1_0",
        "shufflenet_v2_x1_5",
        "shufflenet_v2_x2_0",
    ]


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"Unknown model 'mobilenet_v2_10'.*mobilenet_v2_100"):
        lightnets.create_model("mobilenet_v2_10")
    with pytest.raises(ValueError, match="efficientnet_v2_s_tf"):
        lightnets.model_info("efficientnetv2_s_tf")


def test_unknown_option_is_refused():
    with pytest.raises(TypeError, match="drop_rate"):
        lightnets.create_model("mobilenet_v2_035", drop_rate=0.1)


def test_train_and_eval_in_bfloat16(smallest):
    """64 px in bfloat16: finite float32 logits; BatchNorm statistics move only in train mode;
    eval is deterministic."""
    model = lightnets.create_model(smallest, dtype=jnp.bfloat16)
    x = _images()
    before = _batch_stats(model)
    logits = lightnets.forward(model, x)
    assert logits.shape == (4, 1000) and logits.dtype == jnp.float32
    assert bool(jnp.isfinite(logits).all())
    after = _batch_stats(model)
    assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))

    model.eval()
    first, second = lightnets.forward(model, x), lightnets.forward(model, x)
    np.testing.assert_array_equal(first, second)
    assert all(np.array_equal(a, b) for a, b in zip(after, _batch_stats(model), strict=True))
    assert bool(jnp.isfinite(first).all())


@pytest.mark.parametrize("name", ["mobilenet_v2_035", "efficientnet_v2_b0_tf"])
def test_dropout_and_stochastic_depth_only_in_train_mode(name):
    model = lightnets.create_model(name, dtype=jnp.float32, dropout=0.3, drop_path_rate=0.3)
    rates = [m.rate for _, m in nnx.iter_graph(model) if isinstance(m, Dropout)]
    assert 0.3 in rates and max(rates) > 0
    x = _images(seed=1)
    model.eval()
    np.testing.assert_array_equal(lightnets.forward(model, x), lightnets.forward(model, x))
    model.train()
    assert not np.allclose(lightnets.forward(model, x), lightnets.forward(model, x))


def test_stochastic_depth_rises_linearly_with_depth():
    # torchvision and timm: block i of n (counted over the whole network) drops with p * i / n.
    model = lightnets.create_model("efficientnet_v2_rw_t", drop_path_rate=0.2)
    blocks = [block for stage in model.blocks for block in stage]
    for i, block in enumerate(blocks):
        if block.has_skip:
            assert block.drop_path.rate == pytest.approx(0.2 * i / len(blocks))
    assert any(b.has_skip for b in blocks) and blocks[0].drop_path.rate == 0.0


def test_parameters_float32_compute_bfloat16(smallest):
    model = lightnets.create_model(smallest, dtype=jnp.bfloat16)
    leaves = jax.tree.leaves(nnx.state(model, (nnx.Param, nnx.BatchStat)))
    assert {x.dtype for x in leaves if x.ndim} == {jnp.dtype(jnp.float32)}  # all but the batch counters
    model.eval()
    features = nnx.jit(lambda m, x: m.forward_features(x))(model, _images(32, n=2))
    assert features.dtype == jnp.bfloat16


@pytest.mark.parametrize("name", ["mobilenet_v1_025", "shufflenet_v2_x0_5"])
def test_classifier_is_replaceable_and_features_are_reachable(name):
    x = _images(32, n=2)
    model = lightnets.create_model(name, num_classes=10, dtype=jnp.float32)
    model.eval()
    assert lightnets.forward(model, x).shape == (2, 10)

    features = nnx.jit(lambda m, x: m.forward_head(m.forward_features(x), pre_logits=True))(model, x)
    assert features.shape == (2, model.num_features)
    headless = lightnets.create_model(name, num_classes=0, dtype=jnp.float32)
    headless.eval()
    np.testing.assert_allclose(lightnets.forward(headless, x), features, rtol=1e-5, atol=1e-5)

    backbone = {
        k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param)) if k[0] not in ("classifier", "fc")
    }
    model.reset_classifier(7, rngs=nnx.Rngs(1))
    assert lightnets.forward(model, x).shape == (2, 7)
    after = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert all(np.array_equal(after[k], v) for k, v in backbone.items())


@pytest.mark.parametrize("size", [32, 57, 96])
def test_any_resolution(smallest, size):
    model = lightnets.create_model(smallest, dtype=jnp.float32)
    model.eval()
    logits = lightnets.forward(model, _images(size, n=1))
    assert logits.shape == (1, 1000) and bool(jnp.isfinite(logits).all())


def test_family_classes():
    assert isinstance(lightnets.create_model("mobilenet_v1_025"), lightnets.models.MobileNetV1)
    assert isinstance(lightnets.create_model("efficientnet_v2_b0_tf"), MBNet)
    assert lightnets.model_info("efficientnet_v2_rw_t").reference == "timm:efficientnetv2_rw_t"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_every_variant_forward_in_bfloat16(name):
    model = lightnets.create_model(name, dtype=jnp.bfloat16)
    model.eval()
    logits = lightnets.forward(model, _images(n=2))
    assert logits.shape == (2, 1000) and bool(jnp.isfinite(logits).all())
