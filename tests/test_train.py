"""The train and eval steps: sharded over 8 CPU devices, equal to one device, learning, EMA."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lightnets
from lightnets.training import loss_scale, train

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


def _change(before, after):
    """What a step changed, leaf by leaf; floats in float64, so that the subtraction adds no error."""
    wide = lambda x: np.asarray(x, np.float64 if np.issubdtype(x.dtype, np.floating) else x.dtype)  # noqa: E731
    return jax.tree.map(lambda a, b: wide(b) - wide(a), before, after)


def _relative_difference(a, b) -> float:
    """|b - a| / |a| over all the float leaves of two trees together (2-norms)."""
    pairs = [(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True) if x.dtype.kind == "f"]
    return float(np.sqrt(sum(np.sum((y - x) ** 2) for x, y in pairs) / sum(np.sum(x**2) for x, _ in pairs)))


def test_sharded_step_equals_single_device_step():
    """8 devices, batch split over them: the same step as one device with the whole batch
    (BatchNorm statistics and gradients over the global batch).

    The two sum in different orders, so what is compared is what the step changed (the update
    and the statistics' change) relative to its size. Reordering a float32 sum of n terms moves
    it by at most about n * 2**-24 of the sum of their magnitudes; the largest sums here,
    BatchNorm's over the first feature maps, have n = 16 x 16 x 16 = 4096 terms: hence the
    tolerance. Measured: 8e-6 for the update, 1e-6 for the statistics (permuting the batch on one
    device moves them as much). Broken steps: statistics over each device's 2 examples, with the
    gradients averaged over the devices or not, put the update 46-56 and the statistics 0.16-0.37
    off; gradients summed over the devices instead of averaged put the update 7 off.
    """
    assert jax.device_count() == 8
    tolerance = 4096 * 2.0**-24
    tx = optax.sgd(0.1)  # one step from the same state: the update is -0.1 x the gradient
    images, labels = _batch()
    changes, metrics = [], []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = train.make_mesh(devices)
        state, graphdefs = _state(tx)
        before = jax.device_get((state.params, state.batch_stats))
        step = train.jit_train_step(train.make_train_step(graphdefs, tx, label_smoothing=0.1), mesh, state)
        state, m = step(state, images, labels)
        assert state.params["conv_stem"]["kernel"][...].sharding.is_fully_replicated
        changes.append(_change(before, jax.device_get((state.params, state.batch_stats))))
        metrics.append(jax.device_get(m))
    (params_1, stats_1), (params_8, stats_8) = changes
    assert _relative_difference(params_1, params_8) <= tolerance
    assert _relative_difference(stats_1, stats_8) <= tolerance
    assert all(n == 1 for n in jax.tree.leaves((stats_1, stats_8)) if n.dtype.kind == "i")  # num_batches_tracked
    for k in ("loss", "grad_norm"):
        np.testing.assert_allclose(metrics[1][k], metrics[0][k], rtol=tolerance)


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


# --- float16 and its loss scale -----------------------------------------------------------------

U16 = 2.0**-11  # float16's unit roundoff (11 significant bits)


class _Faint(nnx.Module):
    """A linear layer whose float16 output is multiplied by 2**10, then by 2**-22: the loss's
    cotangent reaches the first product multiplied by 2**-22, below float16's smallest subnormal
    (2**-24) for every |dloss/dlogit| <= 1/16 (a batch of 16). The barrier keeps XLA from folding
    the two constants into one (2**-12), as a weight between them would."""

    def __init__(self, dtype, rngs):
        self.linear = nnx.Linear(8, 10, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.dtype = dtype

    def __call__(self, x):
        h = self.linear(x.astype(self.dtype)) * jnp.asarray(2.0**10, self.dtype)
        return jax.lax.optimization_barrier(h) * jnp.asarray(2.0**-22, self.dtype)


def test_float16_gradients_that_underflow_are_kept_by_the_loss_scale():
    """The float32 step's update, from float16 with jmp's dynamic scale (2**15); lost without it.

    With the scale, the kernel's gradient is x and the loss's cotangent, each rounded to float16
    (relative error <= u = 2**-11), their 16-term products summed and the sum rounded: the
    update is within about 3u of float32's, elementwise, and so in norm; 4u is the tolerance
    (measured: 3.8e-4 = 0.8u). Without it every kernel gradient is exactly 0 (the bias's, a sum
    that XLA fuses in float32 on the CPU, survives).
    """
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(16, 8)).astype(np.float32), (np.arange(16) % 10).astype(np.int32)
    tx = optax.sgd(2.0**10)  # a power of two: the update is the gradient, exactly, and large beside the weights
    changes = {}
    for name, dtype, rule in (
        ("float32", jnp.float32, None),
        ("float16", jnp.float16, None),
        ("float16 scaled", jnp.float16, loss_scale.LossScale(dynamic=True)),
    ):
        state, graphdefs = train.create_train_state(_Faint(dtype, nnx.Rngs(0)), tx, rule)
        before = jax.device_get(state.params)
        state, metrics = jax.jit(train.make_train_step(graphdefs, tx, loss_scale=rule))(state, x, labels)
        changes[name] = _change(before, jax.device_get(state.params))
        assert float(metrics.get("skipped", 0.0)) == 0.0
    assert np.all(changes["float32"]["linear"]["kernel"][...] != 0)
    assert np.all(changes["float16"]["linear"]["kernel"][...] == 0)  # the update is lost
    assert _relative_difference(changes["float32"], changes["float16 scaled"]) <= 4 * U16


class _Normed(nnx.Module):
    """A float16 linear layer and BatchNorm: every part of the state a skipped step must keep."""

    def __init__(self, rngs):
        self.linear = nnx.Linear(8, 10, dtype=jnp.float16, param_dtype=jnp.float32, rngs=rngs)
        self.bn = nnx.BatchNorm(10, dtype=jnp.float16, param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.linear(x.astype(jnp.float16)))


def _scaled_step(rule):
    tx = optax.sgd(0.1, momentum=0.9)
    state, graphdefs = train.create_train_state(_Normed(nnx.Rngs(0)), tx, rule)
    return state, jax.jit(train.make_train_step(graphdefs, tx, ema_decay=0.5, loss_scale=rule))


def _host(state):
    return jax.tree.map(np.asarray, jax.device_get(state))


def test_a_non_finite_gradient_skips_the_step_and_halves_the_scale():
    """A scale of 2**100 overflows float16 in the backward pass: the step keeps the parameters,
    optimiser state, BatchNorm statistics and EMA as they were, halves the scale and counts the skip.
    A fixed scale skips too (MindSpore's FixedLossScaleManager's default), and stays."""
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(16, 8)).astype(np.float32), (np.arange(16) % 10).astype(np.int32)
    for rule in (loss_scale.LossScale(dynamic=True), loss_scale.LossScale(dynamic=False, initial=1024.0)):
        state, step = _scaled_step(rule)
        state, _ = step(state, x, labels)  # a normal step first: momentum and statistics are not their initial values
        state = state.replace(loss_scale=state.loss_scale.replace(scale=jnp.asarray(2.0**100, jnp.float32)))
        before = _host(state)
        state, metrics = step(state, x, labels)
        after = _host(state)
        assert float(metrics["skipped"]) == 1.0 and float(metrics["finite_grads"]) == 0.0
        for part in ("params", "batch_stats", "opt_state", "ema_params", "ema_batch_stats"):
            for a, b in zip(jax.tree.leaves(getattr(before, part)), jax.tree.leaves(getattr(after, part)), strict=True):
                np.testing.assert_array_equal(a, b, err_msg=part)
        assert int(after.step) == int(before.step) + 1
        assert float(after.loss_scale.scale) == (2.0**99 if rule.dynamic else 2.0**100)
        assert int(after.loss_scale.skipped) == 1 and int(after.loss_scale.good_steps) == 0

        # The next finite step is applied: the statistics and the weights move again.
        state = state.replace(loss_scale=state.loss_scale.replace(scale=jnp.asarray(1024.0, jnp.float32)))
        state, metrics = step(state, x, labels)
        assert float(metrics["skipped"]) == 0.0
        assert not np.array_equal(_host(state).batch_stats["bn"]["mean"], after.batch_stats["bn"]["mean"])


def test_the_scale_doubles_after_period_finite_steps_and_a_skip_restarts_the_count():
    rule = loss_scale.LossScale(dynamic=True, initial=2.0**10, period=3)
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(16, 8)).astype(np.float32), (np.arange(16) % 10).astype(np.int32)
    state, step = _scaled_step(rule)
    scales = []
    for _ in range(7):
        state, metrics = step(state, x, labels)
        assert float(metrics["skipped"]) == 0.0
        scales.append(float(state.loss_scale.scale))
    assert scales == [2.0**10, 2.0**10, 2.0**11, 2.0**11, 2.0**11, 2.0**12, 2.0**12]
    # jmp's rule, on its own: a skip halves and restarts the count of finite steps.
    ls = loss_scale.initial_state(2.0**10).replace(good_steps=jnp.asarray(2, jnp.int32))
    ls = rule.adjust(ls, jnp.asarray(False))
    assert (float(ls.scale), int(ls.good_steps), int(ls.skipped)) == (2.0**9, 0, 1)
    for _ in range(3):
        ls = rule.adjust(ls, jnp.asarray(True))
    assert (float(ls.scale), int(ls.good_steps), int(ls.skipped)) == (2.0**10, 0, 1)


@pytest.mark.parametrize(
    "value, rule",
    [("dynamic", loss_scale.LossScale(dynamic=True)), ("1024", loss_scale.LossScale(dynamic=False, initial=1024.0))],
)
def test_loss_scale_config_applies_to_float16_only(value, rule):
    assert loss_scale.from_config(value, "float16") == rule
    assert loss_scale.from_config(value, "bfloat16") is None and loss_scale.from_config(value, "float32") is None
