"""Parameter and multiply-accumulate counts, computed from the models themselves.

`python -m lightnets.summary` prints the model table of the README.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
from flax import nnx

from lightnets import cli
from lightnets.models.registry import create_model, forward, list_models, model_info

PROG = cli.prog("lightnets.summary")


def count_params(model: nnx.Module) -> int:
    """Trainable parameters (BatchNorm statistics excluded, as PyTorch's `parameters()`)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _jaxpr_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            dn = eqn.params["dimension_numbers"]
            # MACs per output element: the kernel's spatial size times its input features.
            per_output = math.prod(rhs[d] for d in dn.rhs_spec[2:]) * rhs[dn.rhs_spec[1]]
            total += math.prod(eqn.outvars[0].aval.shape) * per_output
        elif eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += _jaxpr_macs(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += _jaxpr_macs(sub)
    return total


def count_macs(model: nnx.Module, resolution: int) -> int:
    """Multiply-accumulates of one eval-mode forward pass of one image, as torch's flop counter
    counts them: convolutions (depthwise and pointwise included) and matrix products.

    Traced, never run: works on an abstract model from `nnx.eval_shape`. Depthwise convolutions
    are traced as `lax.conv_general_dilated` so they are counted as convolutions.
    """
    model = nnx.clone(model)
    model.eval()
    model.set_attributes(conv_impl="xla")
    image = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, image)
    return _jaxpr_macs(jaxpr.jaxpr)


@functools.cache
def variant_counts(name: str) -> tuple[int, int]:
    """(parameters, MACs at the reference resolution) of a registered variant, from an abstract model."""
    model = nnx.eval_shape(lambda: create_model(name))
    return count_params(model), count_macs(model, model_info(name).resolution)


def model_table(names: list[str] | None = None) -> str:
    """The README's model table: every registered variant, its parameters and MACs."""
    rows = [
        "| name | reference | params | MMACs | resolution |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name in list_models() if names is None else names:
        info = model_info(name)
        params, macs = variant_counts(name)
        rows.append(f"| `{name}` | {info.reference} | {params:,} | {macs / 1e6:.1f} | {info.resolution} |")
    return "\n".join(rows)


def describe(config) -> None:
    """Prints what `config` builds: the network, its size and cost, and one forward pass.

    The forward pass runs in eval mode on the sample photos of `input_pipeline`, jitted.
    """
    from input_pipeline import photos
    from lightnets import preprocessing

    info = model_info(config.model)
    dtype = jnp.dtype(config.dtype)
    t0 = time.perf_counter()
    model = create_model(config.model, num_classes=config.num_classes, dtype=dtype, rngs=nnx.Rngs(config.seed))
    model.eval()
    built = time.perf_counter() - t0
    print(f"model        {info.name} ({info.family}), reference {info.reference}")
    print(f"parameters   {count_params(model):,} (float32), classes {config.num_classes}, compute {dtype.name}")
    print(f"cost         {count_macs(model, config.image_size) / 1e6:,.1f} MMACs per image at {config.image_size} px")
    print(f"built in     {built:.1f} s on {jax.devices()[0].platform}")

    images = jnp.asarray(preprocessing.normalization(config)(photos.sample_pixels(config.image_size)))
    t0 = time.perf_counter()
    logits = jax.block_until_ready(forward(model, images))
    compiled = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = jax.block_until_ready(forward(model, images))
    ran = time.perf_counter() - t0
    print(
        f"forward      {images.shape[0]} photos {tuple(images.shape[1:])}: logits {logits.shape} {logits.dtype}, "
        f"finite: {bool(jnp.isfinite(logits).all())}"
    )
    print(
        f"time         compile + first call {compiled:.1f} s, then {ran * 1e3:.0f} ms "
        f"({images.shape[0] / ran:.0f} images/s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style pattern of model names")
    args = parser.parse_args(argv)
    print(model_table(list_models(args.pattern)))
    return 0


def command() -> None:
    """`lightnets-summary`, the entry point pyproject.toml installs: as `python -m lightnets.summary`."""
    cli.run(main, PROG)


if __name__ == "__main__":
    command()
