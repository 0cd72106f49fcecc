"""EfficientNetV2 (Tan & Le, 2021): timm's `tf_efficientnetv2_*` and `efficientnetv2_rw_*`,
torchvision's `efficientnet_v2_*`.

Stem 3x3/2 -> a stage of plain conv-BN-SiLU blocks -> Fused-MBConv stages -> MBConv stages with
squeeze-excitation -> 1x1 head conv -> dropout -> classifier. Three lineages share the tables:

- `efficientnet_v2_{b0..b3,s,m,l,xl}_tf`: the official TensorFlow weights as ported by timm.
  TensorFlow "SAME" padding (asymmetric at stride 2), BatchNorm eps 1e-3.
- `efficientnet_v2_{s,m,l}`: torchvision. Same networks as the `_tf` ones with symmetric padding,
  eps 1e-3, and torchvision's dropout and stochastic depth defaults.
- `efficientnet_v2_rw_{t,s,m}`: Ross Wightman's variants, trained in timm before the official
  release; symmetric padding, eps 1e-5. `rw_t` is the network of the Ascend EfficientNetV2 seed.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from lightnets.models.blocks import (
    FusedMBConv,
    InvertedResidual,
    MBNet,
    Stage,
    dotted_names,
    stage,
    torchvision_mbnet_names,
)
from lightnets.models.layers import ConvBnAct, Layers, make_divisible
from lightnets.models.registry import register_model
from lightnets.preprocessing import INCEPTION_MEAN, INCEPTION_STD

Conv = functools.partial(ConvBnAct, residual=True)  # stage 1: Fused-MBConv without expansion
Fused = FusedMBConv
MBConv = InvertedResidual

# block, repeats, kernel, stride, channels, options (the paper's Tables 4 and 8, automl's configs)
BASE = (  # B0-B3
    stage(Conv, 1, 3, 1, 16),
    stage(Fused, 2, 3, 2, 32, expand=4),
    stage(Fused, 2, 3, 2, 48, expand=4),
    stage(MBConv, 3, 3, 2, 96, expand=4, se_ratio=0.25),
    stage(MBConv, 5, 3, 1, 112, expand=6, se_ratio=0.25),
    stage(MBConv, 8, 3, 2, 192, expand=6, se_ratio=0.25),
)
S = (
    stage(Conv, 2, 3, 1, 24),
    stage(Fused, 4, 3, 2, 48, expand=4),
    stage(Fused, 4, 3, 2, 64, expand=4),
    stage(MBConv, 6, 3, 2, 128, expand=4, se_ratio=0.25),
    stage(MBConv, 9, 3, 1, 160, expand=6, se_ratio=0.25),
    stage(MBConv, 15, 3, 2, 256, expand=6, se_ratio=0.25),
)
M = (
    stage(Conv, 3, 3, 1, 24),
    stage(Fused, 5, 3, 2, 48, expand=4),
    stage(Fused, 5, 3, 2, 80, expand=4),
    stage(MBConv, 7, 3, 2, 160, expand=4, se_ratio=0.25),
    stage(MBConv, 14, 3, 1, 176, expand=6, se_ratio=0.25),
    stage(MBConv, 18, 3, 2, 304, expand=6, se_ratio=0.25),
    stage(MBConv, 5, 3, 1, 512, expand=6, se_ratio=0.25),
)
L = (
    stage(Conv, 4, 3, 1, 32),
    stage(Fused, 7, 3, 2, 64, expand=4),
    stage(Fused, 7, 3, 2, 96, expand=4),
    stage(MBConv, 10, 3, 2, 192, expand=4, se_ratio=0.25),
    stage(MBConv, 19, 3, 1, 224, expand=6, se_ratio=0.25),
    stage(MBConv, 25, 3, 2, 384, expand=6, se_ratio=0.25),
    stage(MBConv, 7, 3, 1, 640, expand=6, se_ratio=0.25),
)
XL = (
    stage(Conv, 4, 3, 1, 32),
    stage(Fused, 8, 3, 2, 64, expand=4),
    stage(Fused, 8, 3, 2, 96, expand=4),
    stage(MBConv, 16, 3, 2, 192, expand=4, se_ratio=0.25),
    stage(MBConv, 24, 3, 1, 256, expand=6, se_ratio=0.25),
    stage(MBConv, 32, 3, 2, 512, expand=6, se_ratio=0.25),
    stage(MBConv, 8, 3, 1, 640, expand=6, se_ratio=0.25),
)
# timm's pre-release small network: a Fused-MBConv with a projection in stage 1, 272 channels
# in the last stage and a 1792-wide head.
S_RW = (stage(Fused, 2, 3, 1, 24, expand=1), *S[1:-1], stage(MBConv, 15, 3, 2, 272, expand=6, se_ratio=0.25))


# torchvision's positions of our block attributes inside its blocks, per block type.
TORCHVISION_BLOCKS = {
    ConvBnAct: {"conv": "block.0.0", "bn1": "block.0.1"},
    FusedMBConv: {"conv_exp": "block.0.0", "bn1": "block.0.1", "conv_pwl": "block.1.0", "bn2": "block.1.1"},
    InvertedResidual: {
        "conv_pw": "block.0.0",
        "bn1": "block.0.1",
        "conv_dw": "block.1.0",
        "bn2": "block.1.1",
        "se.conv_reduce": "block.2.fc1",
        "se.conv_expand": "block.2.fc2",
        "conv_pwl": "block.3.0",
        "bn3": "block.3.1",
    },
}


class EfficientNetV2(MBNet):
    """An EfficientNetV2 from a stage table.

    Args:
      stages: the unscaled stage table (`S`, `M`, ...).
      width_mult, depth_mult: channel and repeat multipliers; `depth_mult` may give one value
        per stage.
      round_limit: how far channel rounding may go down (timm uses 0.0 for B0-B3).
      stem_chs, head_chs: stem and head widths before scaling.
      padding: "same" for the TensorFlow-ported weights, "symmetric" otherwise.
    """

    TORCH_LAYOUTS: ClassVar[dict] = {
        "timm": dotted_names,
        "torchvision": lambda model: torchvision_mbnet_names(model, TORCHVISION_BLOCKS, flat=False),
    }

    def __init__(
        self,
        stages: tuple[Stage, ...],
        *,
        width_mult: float = 1.0,
        depth_mult: float | tuple[float, ...] = 1.0,
        round_limit: float = 0.9,
        stem_chs: int = 24,
        head_chs: int = 1280,
        padding: str = "symmetric",
        bn_eps: float = 1e-3,
        num_classes: int = 1000,
        dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        depths = depth_mult if isinstance(depth_mult, tuple) else (depth_mult,) * len(stages)
        if len(depths) != len(stages):
            raise ValueError(f"{len(depths)} depth multipliers for {len(stages)} stages")

        def scale(chs: int) -> int:
            return make_divisible(chs * width_mult, 8, round_limit=round_limit)

        layers = Layers(
            rngs=rngs, act=jax.nn.silu, padding=padding, bn_eps=bn_eps, dtype=dtype, param_dtype=param_dtype
        )
        super().__init__(
            [s.scaled(width_mult, d, round_limit) for s, d in zip(stages, depths, strict=True)],
            stem_chs=scale(stem_chs),
            head_chs=scale(head_chs),
            num_classes=num_classes,
            dropout=dropout,
            drop_path_rate=drop_path_rate,
            layers=layers,
        )


def _register(name, resolution, reference, stages, *, dropout=0.0, drop_path_rate=0.0, preprocess=None, **arch):
    register_model(
        name,
        "efficientnet_v2",
        functools.partial(EfficientNetV2, stages, **arch),
        resolution=resolution,
        reference=reference,
        dropout=dropout,
        drop_path_rate=drop_path_rate,
        **(preprocess or {}),
    )


_TF = {"padding": "same", "bn_eps": 1e-3}
_B = {"stem_chs": 32, "round_limit": 0.0}


# The references' evaluation preprocessing (timm's pretrained configs, torchvision's weights).
def _eval(crop_pct, interpolation="bicubic", inception=False):
    norm = {"mean": INCEPTION_MEAN, "std": INCEPTION_STD} if inception else {}
    return {"crop_pct": crop_pct, "interpolation": interpolation, **norm}


_register("efficientnet_v2_b0_tf", 192, "timm:tf_efficientnetv2_b0", BASE, **_TF, **_B, preprocess=_eval(0.875))
_register(
    "efficientnet_v2_b1_tf",
    192,
    "timm:tf_efficientnetv2_b1",
    BASE,
    **_TF,
    **_B,
    depth_mult=1.1,
    preprocess=_eval(0.882),
)
_register(
    "efficientnet_v2_b2_tf",
    208,
    "timm:tf_efficientnetv2_b2",
    BASE,
    **_TF,
    **_B,
    width_mult=1.1,
    depth_mult=1.2,
    preprocess=_eval(0.89),
)
_register(
    "efficientnet_v2_b3_tf",
    240,
    "timm:tf_efficientnetv2_b3",
    BASE,
    **_TF,
    **_B,
    width_mult=1.2,
    depth_mult=1.4,
    preprocess=_eval(0.9, inception=True),
)
_register("efficientnet_v2_s_tf", 300, "timm:tf_efficientnetv2_s", S, **_TF, preprocess=_eval(1.0, inception=True))
_register("efficientnet_v2_m_tf", 384, "timm:tf_efficientnetv2_m", M, **_TF, preprocess=_eval(1.0, inception=True))
_register(
    "efficientnet_v2_l_tf",
    384,
    "timm:tf_efficientnetv2_l",
    L,
    **_TF,
    stem_chs=32,
    preprocess=_eval(1.0, inception=True),
)
_register(
    "efficientnet_v2_xl_tf",
    384,
    "timm:tf_efficientnetv2_xl",
    XL,
    **_TF,
    stem_chs=32,
    preprocess=_eval(1.0, inception=True),
)

_TV = {"padding": "symmetric", "bn_eps": 1e-3, "drop_path_rate": 0.2}
_register(
    "efficientnet_v2_s", 384, "torchvision:efficientnet_v2_s", S, **_TV, dropout=0.2, preprocess=_eval(1.0, "bilinear")
)
_register(
    "efficientnet_v2_m", 480, "torchvision:efficientnet_v2_m", M, **_TV, dropout=0.3, preprocess=_eval(1.0, "bilinear")
)
_register(
    "efficientnet_v2_l",
    480,
    "torchvision:efficientnet_v2_l",
    L,
    **_TV,
    dropout=0.4,
    stem_chs=32,
    preprocess=_eval(1.0, inception=True),
)

_RW = {"padding": "symmetric", "bn_eps": 1e-5}
_register(
    "efficientnet_v2_rw_t",
    224,
    "timm:efficientnetv2_rw_t",
    S,
    **_RW,
    width_mult=0.8,
    depth_mult=0.9,
    preprocess=_eval(1.0),
)
_register("efficientnet_v2_rw_s", 288, "timm:efficientnetv2_rw_s", S_RW, **_RW, head_chs=1792, preprocess=_eval(1.0))
_register(
    "efficientnet_v2_rw_m",
    320,
    "timm:efficientnetv2_rw_m",
    S_RW,
    **_RW,
    head_chs=1792,
    width_mult=1.2,
    depth_mult=(1.2,) * 4 + (1.6,) * 2,
    preprocess=_eval(1.0),
)
