"""MobileNetV2 (Sandler et al., 2018), torchvision's `mobilenet_v2` with timm's names.

torchvision's `mobilenet_v2(width_mult=w)` and timm's `mobilenetv2_{035,050,075,100,140}` are the
same network: stem 3x3/2 -> 17 inverted residuals -> 1x1 head conv -> dropout -> classifier, ReLU6,
channels rounded to multiples of 8 (never down by more than 10 %), the head widened only for
w > 1. The first block has no expansion and is a depthwise-separable convolution.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from lightnets.models.blocks import (
    DepthwiseSeparable,
    InvertedResidual,
    MBNet,
    dotted_names,
    stage,
    torchvision_mbnet_names,
)
from lightnets.models.layers import Layers, make_divisible
from lightnets.models.registry import register_model

STAGES = (
    # block, repeats n, kernel, stride s, channels c, expansion t (the paper's Table 2)
    stage(DepthwiseSeparable, 1, 3, 1, 16),
    stage(InvertedResidual, 2, 3, 2, 24, expand=6),
    stage(InvertedResidual, 3, 3, 2, 32, expand=6),
    stage(InvertedResidual, 4, 3, 2, 64, expand=6),
    stage(InvertedResidual, 3, 3, 1, 96, expand=6),
    stage(InvertedResidual, 3, 3, 2, 160, expand=6),
    stage(InvertedResidual, 1, 3, 1, 320, expand=6),
)


# torchvision's nn.Sequential positions of our block attributes, per block type.
TORCHVISION_BLOCKS = {
    DepthwiseSeparable: {"conv_dw": "conv.0.0", "bn1": "conv.0.1", "conv_pw": "conv.1", "bn2": "conv.2"},
    InvertedResidual: {
        "conv_pw": "conv.0.0",
        "bn1": "conv.0.1",
        "conv_dw": "conv.1.0",
        "bn2": "conv.1.1",
        "conv_pwl": "conv.2",
        "bn3": "conv.3",
    },
}


class MobileNetV2(MBNet):
    TORCH_LAYOUTS: ClassVar[dict] = {
        "torchvision": lambda model: torchvision_mbnet_names(model, TORCHVISION_BLOCKS, flat=True),
        "timm": dotted_names,  # timm's mobilenetv2_*
    }

    def __init__(
        self,
        width_mult: float = 1.0,
        *,
        num_classes: int = 1000,
        dropout: float = 0.2,
        drop_path_rate: float = 0.0,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        layers = Layers(rngs=rngs, act=jax.nn.relu6, dtype=dtype, param_dtype=param_dtype)
        super().__init__(
            [s.scaled(width_mult) for s in STAGES],
            stem_chs=make_divisible(32 * width_mult),
            head_chs=make_divisible(1280 * max(1.0, width_mult)),
            num_classes=num_classes,
            dropout=dropout,
            drop_path_rate=drop_path_rate,
            layers=layers,
        )


for _width in (0.35, 0.5, 0.75, 1.0, 1.4):
    _suffix = f"{round(_width * 100):03d}"
    register_model(
        f"mobilenet_v2_{_suffix}",
        "mobilenet_v2",
        functools.partial(MobileNetV2, _width),
        resolution=224,
        reference=f"torchvision:mobilenet_v2(width_mult={_width})",
    )
