"""The train and eval steps: sharded over 8 CPU devices, equal to one device, learning, EMA."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lightnets
from lightnets import train

NAME = "mobilenet_v1_025"


def _batch(n=16, size=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, 10, size=n).astype(np.int32)
    return images, labels


def _state(tx, dtype=jnp.float32):
    model = lightnets.create_model(NAME, num_classes=10, dtype=dtype, rngs=nnx.Rngs(0))
    return train.create_train_state(model, tx)


def test_label_smoothing_is_pytorchs():
    torch = pytest.importorskip("torch")
    logits = np.random.default_rng(0).normal(size=(8, 10)).astype(np.float32)
    labels = np.arange(8) % 10
    ours = train.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=0.1)
    theirs = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(torch.tensor(logits), torch.tensor(labels))
    np.testing.assert_allclose(ours, theirs.item(), rtol=1e-6)


def test_sharded_step_equals_single_device_step():
    """8 devices, batch split over them: the same new state as one device with the whole batch
    (BatchNorm statistics and gradients over the global batch)."""
    assert jax.device_count() == 8
    # A small rate: the two differ in the order of their sums, and large steps amplify that.
    tx = optax.sgd(0.002, momentum=0.9)
    images, labels = _batch()
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = train.make_mesh(devices)
        state, graphdefs = _state(tx)
        step = train.jit_train_step(train.make_train_step(graphdefs, tx, label_smoothing=0.1), mesh, state)
        for _ in range(2):
            state, metrics = step(state, images, labels)
        assert state.params["conv_stem"]["kernel"][...].sharding.is_fully_replicated
        results.append(jax.device_get((state.params, state.batch_stats, metrics["loss"])))
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_training_fits_a_batch_moves_statistics_only_in_training_and_averages_weights():
    tx = optax.adamw(3e-3)
    mesh = train.make_mesh()
    state, graphdefs = _state(tx)
    step = train.jit_train_step(train.make_train_step(graphdefs, tx, ema_decay=0.9), mesh, state)
    evaluate = train.jit_eval_step(train.make_eval_step(graphdefs), mesh, state)
    images, labels = _batch()
    valid = np.ones(len(labels), np.float32)
    before = jax.device_get(evaluate(state, images, labels, valid))
    assert jax.device_get(evaluate(state, images, labels, valid)) == before  # eval changes nothing
    stats, initial = jax.device_get((state.batch_stats, state.params))

    state, metrics = step(state, images, labels)
    losses = [float(metrics["loss"])]
    params, ema = jax.device_get((state.params, state.ema_params))  # EMA = 0.9 x old + 0.1 x new
    for p0, p1, e in zip(jax.tree.leaves(initial), jax.tree.leaves(params), jax.tree.leaves(ema), strict=True):
        np.testing.assert_allclose(e, 0.9 * p0 + 0.1 * p1, rtol=1e-6, atol=1e-7)

    for _ in range(39):
        state, metrics = step(state, images, labels)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses
    after = jax.device_get(state.batch_stats)
    assert not np.allclose(after["bn1"]["mean"], stats["bn1"]["mean"])
    assert int(after["bn1"]["num_batches_tracked"]) == 40
    assert int(evaluate(state, images, labels, valid)["count"]) == len(labels)

    # Every part of the state is flagged finite; an infinite running variance (what a huge rate
    # leaves behind) is flagged, in it and in its average, though the loss stays finite.
    assert {k: float(metrics[f"finite_{k}"]) for k in train.FINITE} == dict.fromkeys(train.FINITE, 1.0)
    stats = jax.tree_util.tree_map_with_path(
        lambda path, x: np.full_like(x, np.inf) if "bn1" in str(path) and "var" in str(path) else x, after
    )
    state, metrics = step(state.replace(batch_stats=stats), images, labels)
    flags = {k: float(metrics[f"finite_{k}"]) for k in train.FINITE}
    assert flags == {**dict.fromkeys(train.FINITE, 1.0), "batch_stats": 0.0, "ema_batch_stats": 0.0}
    assert np.isfinite(float(metrics["loss"]))


def test_eval_counts_only_valid_examples():
    tx = optax.sgd(0.1)
    mesh = train.make_mesh()
    state, graphdefs = _state(tx)
    evaluate = train.jit_eval_step(train.make_eval_step(graphdefs), mesh, state)
    images, labels = _batch()
    full = evaluate(state, images, labels, np.ones(16, np.float32))
    half = evaluate(state, images, labels, (np.arange(16) < 8).astype(np.float32))
    first = evaluate(state, np.concatenate([images[:8]] * 2), np.concatenate([labels[:8]] * 2), np.ones(16, np.float32))
    assert int(half["count"]) == 8 and int(full["count"]) == 16
    np.testing.assert_allclose(half["loss"], first["loss"] / 2, rtol=1e-5)
