"""Optimisers and schedules against PyTorch's and timm's, update for update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from lightnets.training import optim, steps

torch = pytest.importorskip("torch")
timm_optim = pytest.importorskip("timm.optim")
timm_scheduler = pytest.importorskip("timm.scheduler")


def _config(**overrides):
    """configs/default.py's fields, as the trainer builds optimisers from them, for a small problem."""
    config = default.get_config()
    config.update(
        optimizer="sgd",
        lr=0.1,
        lr_base_batch_size=0,
        batch_size=256,
        weight_decay=0.01,
        schedule="cosine",
        warmup_epochs=2.0,
        warmup_lr=0.01,
        num_epochs=8.0,
        num_train_steps=0,
    )
    config.update(overrides)
    return config


def _torch_optimizer(config, decay, no_decay):
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    if config.optimizer == "rmsprop_tf":
        return timm_optim.RMSpropTF(groups, lr=config.lr, alpha=0.9, eps=config.opt_eps, momentum=config.momentum)
    # Their own epsilons unless the config sets one: opt_eps None must mean the same.
    eps = {} if config.opt_eps is None else {"eps": config.opt_eps}
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, **eps)
    return timm_optim.Lamb(groups, lr=config.lr, max_grad_norm=None, **eps)


@pytest.mark.parametrize(
    ("optimizer", "extra"),
    [
        ("sgd", {}),
        ("sgd", {"nesterov": True}),
        ("sgd", {"momentum": 0.0}),
        ("rmsprop_tf", {"opt_eps": 1e-3}),  # the EfficientNet recipes' (configs/efficientnetv2.py)
        ("adamw", {}),  # the defaults: AdamW's epsilon is PyTorch's 1e-8, not RMSpropTF's 1e-3
        ("lamb", {}),
        ("adamw", {"opt_eps": 1e-3}),
    ],
)
def test_updates_equal_pytorch(optimizer, extra):
    """The same gradients, the same changing learning rate: the same parameters after every step."""
    config = _config(optimizer=optimizer, **extra)
    steps_per_epoch = 3
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(4, 3)).astype(np.float32), "bias": rng.normal(size=3).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(12)]

    schedule = steps.schedule(config, steps_per_epoch)
    tx = steps.optimizer(config, steps_per_epoch, params)
    ours = jax.tree.map(jnp.asarray, params)
    state = tx.init(ours)
    theirs = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    torch_tx = _torch_optimizer(config, [theirs["kernel"]], [theirs["bias"]])
    for step, g in enumerate(grads):
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, ours)
        ours = optax.apply_updates(ours, updates)
        for group in torch_tx.param_groups:
            group["lr"] = float(schedule(step))
        for k, v in theirs.items():
            v.grad = torch.tensor(g[k])
        torch_tx.step()
        for k in params:
            np.testing.assert_allclose(
                ours[k], theirs[k].detach().numpy(), rtol=2e-5, atol=1e-5, err_msg=f"step {step}"
            )


def test_step_schedule_is_timms():
    """0.97 every 2.4 epochs, counted in whole epochs, after a linear warm-up from warmup_lr."""
    config = _config(schedule="step", warmup_epochs=3, warmup_lr=1e-4, num_epochs=20)
    steps_per_epoch = 5
    schedule = steps.schedule(config, steps_per_epoch)

    def timm_step(**kwargs):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
        # warmup_prefix=False: what timm's train.py (create_scheduler_v2) passes; the warm-up
        # epochs count towards the decay.
        return timm_scheduler.StepLRScheduler(
            optimizer, decay_t=2.4, decay_rate=0.97, warmup_lr_init=1e-4, warmup_prefix=False, **kwargs
        )

    per_epoch = timm_step(warmup_t=3)  # the recipe's: the rate changes at epoch boundaries
    per_step = timm_step(warmup_t=3 * steps_per_epoch, t_in_epochs=False)  # a smooth warm-up
    for step in range(3 * steps_per_epoch, 20 * steps_per_epoch):
        np.testing.assert_allclose(schedule(step), per_epoch._get_lr(step // steps_per_epoch)[0], rtol=1e-5)
    for step in range(3 * steps_per_epoch):
        np.testing.assert_allclose(schedule(step), per_step._get_lr(step)[0], rtol=1e-4)


def _mindspore_seed_lr(mode, lr_init, lr_end, lr_max, warmup_epochs, total_epochs, steps_per_epoch):
    """The MindSpore MobileNetV1 seed's `src/lr_generator.py` (`_generate_poly_lr`, `_generate_liner_lr`),
    written out again here, step by step, in float64 and then cast to float32 as `get_lr` does."""
    total, warmup = steps_per_epoch * total_epochs, steps_per_epoch * warmup_epochs
    rates = []
    for i in range(total):
        if mode == "poly":
            if i < warmup:
                lr = lr_init + (lr_max - lr_init) / warmup * i
            else:
                base = 1.0 - (i - warmup) / (total - warmup)
                lr = max(lr_max * base * base, 0.0)
        elif i < warmup:
            lr = lr_init + (lr_max - lr_init) * i / warmup
        else:
            lr = lr_max - (lr_max - lr_end) * (i - warmup) / (total - warmup)
        rates.append(lr)
    return np.asarray(rates).astype(np.float32)


@pytest.mark.parametrize(
    "schedule, lr_init, lr_max, warmup_epochs",
    [
        ("poly", 0.01, 0.1, 5),  # default_config.yaml (CIFAR-10): lr_decay_mode poly, lr_init 0.01, lr_max 0.1
        ("linear", 0.0, 0.8, 0),
    ],  # default_config_imagenet.yaml: linear, lr_init 0, lr_max 0.8, lr_end 0
)
def test_poly_and_linear_are_the_mindspore_seeds(schedule, lr_init, lr_max, warmup_epochs):
    epochs, steps_per_epoch = 90, 7
    config = _config(
        schedule=schedule, lr=lr_max, warmup_lr=lr_init, warmup_epochs=warmup_epochs, min_lr=0.0, num_epochs=epochs
    )
    ours = steps.schedule(config, steps_per_epoch)
    ours = np.asarray([ours(step) for step in range(epochs * steps_per_epoch)])
    # lr_end (1e-5 in the CIFAR config) is an argument the seed's poly never reads.
    seed = _mindspore_seed_lr(
        schedule, lr_init, 1e-5 if schedule == "poly" else 0.0, lr_max, warmup_epochs, epochs, steps_per_epoch
    )
    # Both sides round a few float32 operations on values <= lr_max: |diff| <= 10 ulp(lr_max).
    np.testing.assert_allclose(ours, seed, rtol=0, atol=10 * np.finfo(np.float32).eps * lr_max)


def test_cosine_warms_up_then_decays_to_min_lr():
    config = _config(schedule="cosine", warmup_epochs=1, warmup_lr=0.0, min_lr=1e-3, num_epochs=10)
    schedule = steps.schedule(config, steps_per_epoch=10)
    assert schedule(0) == 0.0
    np.testing.assert_allclose(schedule(5), 0.05, rtol=1e-6)
    np.testing.assert_allclose(schedule(10), 0.1, rtol=1e-6)
    np.testing.assert_allclose(schedule(100), 1e-3, rtol=1e-5)
    assert all(schedule(s) >= schedule(s + 1) for s in range(10, 100))


def test_learning_rate_scales_with_the_batch():
    assert optim.scaled_lr(0.1, 1024, 256) == pytest.approx(0.4)
    assert optim.scaled_lr(0.1, 1024, 0) == pytest.approx(0.1)
    schedule = steps.schedule(_config(lr=0.1, lr_base_batch_size=256, batch_size=1024, warmup_epochs=0.0), 10)
    assert schedule(0) == pytest.approx(0.4)


def test_weight_decay_spares_batchnorm_and_biases_unless_asked():
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 2))}, "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)}}
    zero = jax.tree.map(jnp.zeros_like, params)
    for include, expected_bn in ((False, 1.0), (True, 0.9)):
        config = _config(optimizer="sgd", momentum=0.0, lr=1.0, weight_decay=0.1, schedule="constant", warmup_epochs=0)
        config.weight_decay_norm_and_bias = include
        tx = steps.optimizer(config, 1, params)
        updates, _ = tx.update(zero, tx.init(params), params)
        new = optax.apply_updates(params, updates)
        np.testing.assert_allclose(new["conv"]["kernel"], 0.9)
        np.testing.assert_allclose(new["bn"]["scale"], expected_bn)


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adam'.*rmsprop_tf"):
        optim.create_optimizer("adam", 0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match=r"unknown schedule 'cos'.*cosine"):
        steps.schedule(_config(schedule="cos"), 1)
