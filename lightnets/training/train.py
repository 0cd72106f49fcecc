"""The train and eval steps: pure functions of a `TrainState`, jitted over a mesh of all devices.

    mesh = train.make_mesh()
    state, graphdefs = train.create_train_state(model, tx)
    train_step = train.jit_train_step(train.make_train_step(graphdefs, tx), mesh, state)
    state, metrics = train_step(state, images, labels)   # images uint8 or float NHWC, sharded

The batch is sharded over the mesh's `data` axis, so BatchNorm's statistics are those of the
global batch (XLA inserts the cross-device reductions). The state is replicated, or with
`fsdp=True` its large arrays (parameters, their optimiser state and EMA) are split over the same
axis: XLA then gathers each parameter for the step and reduce-scatters its gradient. The state is
donated: its buffers are reused for the new one. Parameters and BatchNorm statistics stay
float32; the model computes in its own `dtype`. In float16 the loss is scaled
(`lightnets.training.loss_scale`): a step whose gradients are not finite is skipped, leaving the state
as it was but for its step, dropout stream and loss scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lightnets.training import loss_scale as loss_scaling

DATA_AXIS = "data"
# What the train step checks for NaN and infinity, each in a metric `finite_<name>` (1 finite,
# 0 not), in the order a divergence shows in them: the forward pass's BatchNorm statistics, the
# loss, the gradients, the updated weights and their averages.
FINITE = ("batch_stats", "loss", "grads", "params", "ema_params", "ema_batch_stats")
# Arrays smaller than this stay replicated under FSDP: splitting them saves little memory and
# costs a collective each.
FSDP_MIN_SIZE = 2**14


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pytree of arrays, checkpointed as it is."""

    step: jax.Array
    params: nnx.State
    batch_stats: nnx.State
    rngs: nnx.State  # the dropout and stochastic-depth stream's key and counter
    opt_state: optax.OptState
    ema_params: nnx.State
    ema_batch_stats: nnx.State
    # The float16 loss scale and the count of skipped steps; scale 1 and no skips without scaling.
    loss_scale: loss_scaling.LossScaleState


@flax.struct.dataclass
class GraphDefs:
    """The model's structure in train mode (dropout on, batch statistics) and in eval mode."""

    train: nnx.GraphDef = flax.struct.field(pytree_node=False)
    eval: nnx.GraphDef = flax.struct.field(pytree_node=False)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all devices (of all hosts), axis `data`."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def create_train_state(
    model: nnx.Module, tx: optax.GradientTransformation, loss_scale: loss_scaling.LossScale | None = None
) -> tuple[TrainState, GraphDefs]:
    """The state of a fresh run from `model`'s current weights; the EMA starts at them, the loss
    scale at `loss_scale`'s initial one (1 without)."""
    graphdefs = graph_defs(model)
    _, params, batch_stats, rngs = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        rngs=rngs,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
        loss_scale=loss_scale.init() if loss_scale is not None else loss_scaling.initial_state(),
    )
    return state, graphdefs


def graph_defs(model: nnx.Module) -> GraphDefs:
    """`model`'s structure and static settings (e.g. a dropout rate) in training and in evaluation
    mode; `model` is left in training mode."""
    model.eval()
    eval_def = nnx.split(model, nnx.Param, nnx.BatchStat, ...)[0]
    model.train()
    return GraphDefs(train=nnx.split(model, nnx.Param, nnx.BatchStat, ...)[0], eval=eval_def)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy with label smoothing, as `torch.nn.CrossEntropyLoss(label_smoothing=)`."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()


def all_finite(tree: Any) -> jax.Array:
    """1.0 if every float in `tree` is finite, else 0.0: one scalar, computed where the tree lives."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)).astype(jnp.float32) if flags else jnp.ones((), jnp.float32)


def _ema(decay: float, average: Any, new: Any) -> Any:
    return jax.tree.map(lambda a, x: x if a.dtype.kind in "iu" else decay * a + (1 - decay) * x, average, new)


def make_train_step(
    graphdefs: GraphDefs,
    tx: optax.GradientTransformation,
    *,
    label_smoothing: float = 0.0,
    ema_decay: float = 0.0,
    preprocess: Callable[[jax.Array], jax.Array] | None = None,
    batch_augment: Callable | None = None,
    seed: int = 0,
    fsdp_mesh: Mesh | None = None,
    loss_scale: loss_scaling.LossScale | None = None,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """A pure train step: forward in train mode, gradients, optimiser update, EMA.

    `preprocess` maps the batch as it arrives (e.g. uint8) to the model's input, on the device.
    `batch_augment` (`lightnets.training.augment.BatchAugment`) then erases and mixes it, with a key drawn
    from `seed` and the step number, so a resumed run draws the same as an uninterrupted one.
    `ema_decay` 0 keeps no average (the EMA fields follow the weights). With `fsdp_mesh`, the
    parameters arrive split over it (`state_sharding(fsdp=True)`): the step gathers them whole
    for the forward pass and reduce-scatters the gradients back to the split layout; left to
    itself, XLA may instead split activations by channel and exchange them layer by layer. The
    metrics include a finiteness flag per part of the state (`FINITE`), for the trainer to stop
    a divergence before anything non-finite is saved.

    With `loss_scale` (float16), the loss is multiplied by the state's scale before the backward
    pass and the gradients divided by it; a step whose gradients are then not finite keeps the
    old parameters, optimiser state, BatchNorm statistics and EMA, and `loss_scale.adjust` moves
    the scale. Its metrics add `skipped` (1 for such a step) and `loss_scale` (the new scale).
    """

    def step(state: TrainState, images: jax.Array, labels: jax.Array):
        x = preprocess(images) if preprocess is not None else images
        labels_b, lam = labels, 1.0
        if batch_augment is not None:
            x, labels_b, lam = batch_augment(jax.random.fold_in(jax.random.key(seed), state.step), x, labels)
        gather = scatter = lambda tree: tree
        if fsdp_mesh is not None:
            split = state_sharding(fsdp_mesh, state, fsdp=True).params
            gather = lambda tree: jax.lax.with_sharding_constraint(tree, replicated(fsdp_mesh))  # noqa: E731
            scatter = lambda tree: jax.lax.with_sharding_constraint(tree, split)  # noqa: E731

        def loss_fn(params):
            params = gather(params)
            # copy=True: Variables of this trace; the BatchNorm update mutates them.
            model = nnx.merge(graphdefs.train, params, state.batch_stats, state.rngs, copy=True)
            logits = model(x)
            _, _, batch_stats, rngs = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
            loss = cross_entropy(logits, labels, label_smoothing)
            if batch_augment is not None:  # mixed targets: the loss mixes by the same lambda
                loss = lam * loss + (1 - lam) * cross_entropy(logits, labels_b, label_smoothing)
            scaled = loss_scale.scale(state.loss_scale, loss) if loss_scale is not None else loss
            return scaled, (loss, logits, batch_stats, rngs)

        (_, (loss, logits, batch_stats, rngs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = scatter(grads)
        if loss_scale is not None:
            grads = loss_scale.unscale(state.loss_scale, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            rngs=rngs,
            opt_state=opt_state,
            ema_params=_ema(ema_decay, state.ema_params, params),
            ema_batch_stats=_ema(ema_decay, state.ema_batch_stats, batch_stats),
        )
        skipped = None
        if loss_scale is not None:
            finite = (all_finite(grads) > 0) & jnp.isfinite(loss)
            kept = ("params", "batch_stats", "opt_state", "ema_params", "ema_batch_stats")
            old, new = ({k: getattr(s, k) for k in kept} for s in (state, new_state))
            new_state = new_state.replace(
                **loss_scaling.select(finite, new, old), loss_scale=loss_scale.adjust(state.loss_scale, finite)
            )
            params, skipped = new_state.params, 1.0 - finite.astype(jnp.float32)
        metrics = {
            "loss": loss,
            "top1": jnp.mean(jnp.argmax(logits, -1) == labels),
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),  # not finite: the update overflowed
        }
        if skipped is not None:
            metrics.update(skipped=skipped, loss_scale=new_state.loss_scale.scale)
        checked = {
            "batch_stats": new_state.batch_stats,
            "loss": loss,
            "grads": grads,
            "params": params,
            "ema_params": new_state.ema_params,
            "ema_batch_stats": new_state.ema_batch_stats,
        }
        metrics.update({f"finite_{k}": all_finite(checked[k]) for k in FINITE})
        return new_state, metrics

    return step


def make_eval_step(
    graphdefs: GraphDefs, *, preprocess: Callable[[jax.Array], jax.Array] | None = None, ema: bool = True
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], dict[str, jax.Array]]:
    """A pure eval step: summed loss, top-1 and top-5 hits over the valid examples, raw and (`ema`) EMA.

    `valid` masks the padding of a last partial batch, so every example counts exactly once.
    """

    def evaluate(params, batch_stats, rngs, x, labels, valid):
        logits = nnx.merge(graphdefs.eval, params, batch_stats, rngs, copy=True)(x).astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        top5 = jnp.any(jax.lax.top_k(logits, min(5, logits.shape[-1]))[1] == labels[:, None], axis=-1)
        return {
            "loss": jnp.sum(losses * valid),
            "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * valid),
            "top5": jnp.sum(top5 * valid),
        }

    def step(state: TrainState, images: jax.Array, labels: jax.Array, valid: jax.Array):
        x = preprocess(images) if preprocess is not None else images
        sums = evaluate(state.params, state.batch_stats, state.rngs, x, labels, valid)
        if ema:
            averaged = evaluate(state.ema_params, state.ema_batch_stats, state.rngs, x, labels, valid)
            sums.update({f"ema_{k}": v for k, v in averaged.items()})
        return {**sums, "count": jnp.sum(valid)}

    return step


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _fsdp_spec(shape: tuple[int, ...], n: int) -> PartitionSpec:
    """Split the largest dimension that divides over `n` devices; small arrays stay whole."""
    if n == 1 or math.prod(shape) < FSDP_MIN_SIZE:
        return PartitionSpec()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % n == 0:
            return PartitionSpec(*([None] * dim), DATA_AXIS)
    return PartitionSpec()


def state_sharding(mesh: Mesh, state: TrainState, *, fsdp: bool = False) -> TrainState:
    """Every leaf replicated over the mesh (data parallelism), or its large arrays split (FSDP)."""
    if not fsdp:
        return jax.tree.map(lambda _: replicated(mesh), state)
    n = mesh.shape[DATA_AXIS]
    return jax.tree.map(lambda x: NamedSharding(mesh, _fsdp_spec(jnp.shape(x), n)), state)


def put(tree: Any, shardings: Any) -> Any:
    """Host or single-device values -> global arrays with `shardings`, on one host or many.

    Every process passes the same values (e.g. a model initialised from the same seed);
    `jax.device_put` alone cannot place arrays on other hosts' devices.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put_leaf(x, sharding):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = put_leaf(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put_leaf, tree, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the `data` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def jit_train_step(step: Callable, mesh: Mesh, state: TrainState, *, fsdp: bool = False) -> Callable:
    """`step` jitted with explicit shardings; the state argument is donated."""
    state_sh = state_sharding(mesh, state, fsdp=fsdp)
    return jax.jit(
        step,
        in_shardings=(state_sh, batch_sharding(mesh), batch_sharding(mesh)),
        out_shardings=(state_sh, replicated(mesh)),
        donate_argnums=0,
    )


def jit_eval_step(step: Callable, mesh: Mesh, state: TrainState, *, fsdp: bool = False) -> Callable:
    """`step` jitted with explicit shardings; nothing donated."""
    batch = batch_sharding(mesh)
    return jax.jit(
        step,
        in_shardings=(state_sharding(mesh, state, fsdp=fsdp), batch, batch, batch),
        out_shardings=replicated(mesh),
    )
