"""MobileNetV1 (Howard et al., 2017), in the layout of timm's `mobilenetv1_100`.

Thirteen depthwise-separable blocks, each depthwise 3x3 -> BN -> ReLU6 -> pointwise 1x1 -> BN
-> ReLU6, no residuals and no head convolution. timm registers widths 1.0 and 1.25; the smaller
widths of the paper are the same network with channels scaled and rounded to multiples of 8, as
timm's `_gen_mobilenet_v1(channel_multiplier=...)` builds them.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from lightnets.blocks import DepthwiseSeparable, MBNet, dotted_names, stage
from lightnets.layers import Layers, make_divisible
from lightnets.preprocessing import INCEPTION_MEAN, INCEPTION_STD
from lightnets.registry import register_model

# The paper's Table 1 as stages: depthwise-separable blocks with an activation after the
# pointwise convolution and no residual.
SeparableConv = functools.partial(DepthwiseSeparable, pw_act=True, residual=False)
STAGES = (
    # block, repeats, kernel, stride, channels
    stage(SeparableConv, 1, 3, 1, 64),
    stage(SeparableConv, 2, 3, 2, 128),
    stage(SeparableConv, 2, 3, 2, 256),
    stage(SeparableConv, 6, 3, 2, 512),
    stage(SeparableConv, 2, 3, 2, 1024),
)


class MobileNetV1(MBNet):
    TORCH_LAYOUTS: ClassVar[dict] = {"timm": dotted_names}  # timm's mobilenetv1_*

    def __init__(
        self,
        width_mult: float = 1.0,
        *,
        num_classes: int = 1000,
        dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        layers = Layers(rngs=rngs, act=jax.nn.relu6, dtype=dtype, param_dtype=param_dtype)
        super().__init__(
            [s.scaled(width_mult) for s in STAGES],
            stem_chs=make_divisible(32 * width_mult),
            head_chs=None,
            num_classes=num_classes,
            dropout=dropout,
            drop_path_rate=drop_path_rate,
            layers=layers,
        )


# timm's weights were trained with the Inception normalisation and evaluate with a bicubic resize.
for _width, _timm, _crop in (
    (0.25, None, 0.875), (0.5, None, 0.875), (0.75, None, 0.875),
    (1.0, "mobilenetv1_100", 0.875), (1.25, "mobilenetv1_125", 0.9),
):  # fmt: skip
    _suffix = f"{round(_width * 100):03d}"
    register_model(
        f"mobilenet_v1_{_suffix}",
        "mobilenet_v1",
        functools.partial(MobileNetV1, _width),
        resolution=224,
        reference=f"timm:{_timm}" if _timm else f"timm:_gen_mobilenet_v1(channel_multiplier={_width})",
        crop_pct=_crop,
        interpolation="bicubic",
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
    )
