"""MobileNetV3 (Howard et al., 2019), torchvision's `mobilenet_v3_large`/`_small` and timm's
`mobilenetv3_large_100`/`_small_100`.

Stem 3x3/2 (hard-swish) -> inverted residuals, some with squeeze-excitation (ReLU inside, a
hard-sigmoid gate, a quarter of the expanded width rounded to 8), ReLU in the early stages and
hard-swish after -> a 1x1 conv-BN-hard-swish block -> pool -> a 1x1 head (bias, no BN,
hard-swish) -> dropout -> classifier. torchvision and timm build the same network; they differ
in BatchNorm numerics (torchvision: eps 1e-3, momentum 0.01; timm: PyTorch's defaults) and in
names: the `_timm` variants are timm's. torchvision's head is a Linear where timm's is a 1x1
convolution, the same weights.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from lightnets.models.blocks import DepthwiseSeparable, InvertedResidual, MBNet, Namer, dotted_names, stage
from lightnets.models.layers import ConvBnAct, Layers, SqueezeExcite, make_divisible
from lightnets.models.registry import register_model

relu = jax.nn.relu


def squeeze_excite(channels: int, layers: Layers) -> SqueezeExcite:
    """MobileNetV3's: a quarter of the expanded width, rounded to 8; ReLU inside, a hard-sigmoid gate."""
    return SqueezeExcite(channels, make_divisible(channels / 4), layers=layers, act=relu, gate=jax.nn.hard_sigmoid)


DS, IR, CN, SE = DepthwiseSeparable, InvertedResidual, ConvBnAct, {"se_layer": squeeze_excite}

# One entry per stage (a tuple: a stage of unlike blocks); block, repeats, kernel, stride,
# channels, then the options: expansion, squeeze-excitation, ReLU where the paper has it
# (Tables 1 and 2; timm's `_gen_mobilenet_v3` strings, e.g. `ir_r3_k5_s2_e3_c40_se0.25_nre`).
LARGE = (
    stage(DS, 1, 3, 1, 16, act=relu),
    (stage(IR, 1, 3, 2, 24, expand=4, act=relu), stage(IR, 1, 3, 1, 24, expand=3, act=relu)),
    stage(IR, 3, 5, 2, 40, expand=3, act=relu, **SE),
    (stage(IR, 1, 3, 2, 80, expand=6), stage(IR, 1, 3, 1, 80, expand=2.5), stage(IR, 2, 3, 1, 80, expand=2.3)),
    stage(IR, 2, 3, 1, 112, expand=6, **SE),
    stage(IR, 3, 5, 2, 160, expand=6, **SE),
    stage(CN, 1, 1, 1, 960),
)
SMALL = (
    stage(DS, 1, 3, 2, 16, act=relu, **SE),
    (stage(IR, 1, 3, 2, 24, expand=4.5, act=relu), stage(IR, 1, 3, 1, 24, expand=3.67, act=relu)),
    (stage(IR, 1, 5, 2, 40, expand=4, **SE), stage(IR, 2, 5, 1, 40, expand=6, **SE)),
    stage(IR, 2, 5, 1, 48, expand=3, **SE),
    stage(IR, 3, 5, 2, 96, expand=6, **SE),
    stage(CN, 1, 1, 1, 576),
)
VARIANTS = {"small": (SMALL, 1024), "large": (LARGE, 1280)}  # stages, head width


# torchvision's block is a Sequential of its layers in order, the squeeze-excitation one of them.
_ORDER = {IR: ("conv_pw", "conv_dw", "se", "conv_pwl"), DS: ("conv_dw", "se", "conv_pw")}
_NORM_OF = {IR: {"bn1": "conv_pw", "bn2": "conv_dw", "bn3": "conv_pwl"}, DS: {"bn1": "conv_dw", "bn2": "conv_pw"}}
_SE = {"conv_reduce": "fc1", "conv_expand": "fc2"}


def torchvision_names(model: MobileNetV3) -> Namer:
    """torchvision's layout: `features.<k>.block.<j>.{0: conv, 1: BN}` with k counting blocks from 1
    (the stem is 0), squeeze-excitation `block.<j>.fc1/fc2`, the last block `features.<k>.0/1`,
    the head `classifier.0` and the classifier `classifier.3`."""
    number = {}
    for s, stage_blocks in enumerate(model.blocks):
        for i in range(len(stage_blocks)):
            number[(s, i)] = len(number) + 1
    top = {
        "conv_stem": "features.0.0",
        "bn1": "features.0.1",
        "conv_head": "classifier.0",
        "classifier": "classifier.3",
    }

    def name(path: tuple) -> str:
        if path[0] != "blocks":
            return top[path[0]]
        s, i, layer, *inner = path[1:]
        block, k = model.blocks[s][i], number[(s, i)]
        if isinstance(block, CN):
            return f"features.{k}.{0 if layer == 'conv' else 1}"
        present = [a for a in _ORDER[type(block)] if getattr(block, a) is not None]
        if layer == "se":
            return f"features.{k}.block.{present.index('se')}.{_SE[inner[0]]}"
        conv = _NORM_OF[type(block)].get(layer, layer)
        return f"features.{k}.block.{present.index(conv)}.{0 if conv == layer else 1}"

    return name


class MobileNetV3(MBNet):
    TORCH_LAYOUTS: ClassVar[dict] = {"torchvision": torchvision_names, "timm": dotted_names}
    TORCH_LINEARS: ClassVar[dict] = {"torchvision": ("conv_head",)}  # timm's 1x1 conv is their Linear

    def __init__(
        self,
        stages: tuple = LARGE,
        head_chs: int = 1280,
        *,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        num_classes: int = 1000,
        dropout: float = 0.2,
        drop_path_rate: float = 0.0,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        layers = Layers(
            rngs=rngs,
            act=jax.nn.hard_swish,
            bn_eps=bn_eps,
            bn_momentum=bn_momentum,
            dtype=dtype,
            param_dtype=param_dtype,
        )
        super().__init__(
            stages,
            stem_chs=16,
            head_chs=head_chs,
            head="pooled",
            num_classes=num_classes,
            dropout=dropout,
            drop_path_rate=drop_path_rate,
            layers=layers,
        )


for _size, (_stages, _head) in VARIANTS.items():
    register_model(
        f"mobilenet_v3_{_size}_100",
        "mobilenet_v3",
        functools.partial(MobileNetV3, _stages, _head),
        resolution=224,
        reference=f"torchvision:mobilenet_v3_{_size}",
    )
    register_model(
        f"mobilenet_v3_{_size}_100_timm",
        "mobilenet_v3",
        functools.partial(MobileNetV3, _stages, _head, bn_eps=1e-5, bn_momentum=0.1),
        resolution=224,
        reference=f"timm:mobilenetv3_{_size}_100",
        interpolation="bicubic",
    )
