"""ShuffleNetV2 (Ma et al., 2018), torchvision's `shufflenet_v2_x{0_5,1_0,1_5,2_0}`.

conv1 3x3/2 -> max-pool 3x3/2 -> stage2, stage3, stage4 of shuffle units -> conv5 1x1 -> pool
-> fc. Attribute names are torchvision's, which the Ascend ModelZoo checkpoints of the seeds use
too; torchvision's `nn.Sequential` branches become lists of conv-BN-activation layers.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from lightnets.models.blocks import ClassifierHead, Namer
from lightnets.models.layers import ConvBnAct, Layers, channel_shuffle
from lightnets.models.registry import register_model

Array = jax.Array

STAGE_REPEATS = (4, 8, 4)
# conv1, stage2, stage3, stage4, conv5 output channels per width (the paper's Table 5)
STAGE_OUT_CHANNELS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}


class ShuffleUnit(nnx.Module):
    """A ShuffleNetV2 unit (torchvision's `InvertedResidual`).

    Stride 1: split the channels in two halves, transform one (pointwise -> depthwise ->
    pointwise), concatenate, shuffle. Stride 2: both branches see the whole input and each
    halves the output channels; branch1 is depthwise -> pointwise.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, *, layers: Layers):
        branch_chs = out_chs // 2
        if stride == 1 and in_chs != 2 * branch_chs:
            raise ValueError(f"a stride-1 unit needs in_chs == out_chs, got {in_chs} -> {out_chs}")
        self.stride = stride
        if stride > 1:
            self.branch1 = nnx.List(
                [
                    ConvBnAct(in_chs, in_chs, 3, stride=stride, groups=in_chs, act=False, layers=layers),
                    ConvBnAct(in_chs, branch_chs, 1, layers=layers),
                ]
            )
        else:
            self.branch1 = None
        self.branch2 = nnx.List(
            [
                ConvBnAct(in_chs if stride > 1 else branch_chs, branch_chs, 1, layers=layers),
                ConvBnAct(branch_chs, branch_chs, 3, stride=stride, groups=branch_chs, act=False, layers=layers),
                ConvBnAct(branch_chs, branch_chs, 1, layers=layers),
            ]
        )

    def __call__(self, x: Array) -> Array:
        if self.stride == 1:
            x1, x2 = jnp.split(x, 2, axis=-1)
            out = jnp.concatenate([x1, _sequential(self.branch2, x2)], axis=-1)
        else:
            out = jnp.concatenate([_sequential(self.branch1, x), _sequential(self.branch2, x)], axis=-1)
        return channel_shuffle(out, 2)


def _sequential(layers, x: Array) -> Array:
    for layer in layers:
        x = layer(x)
    return x


# The i-th conv-BN(-ReLU) of a branch starts at this index of torchvision's Sequential.
_BRANCH_START = {"branch1": (0, 2), "branch2": (0, 3, 5)}


def torchvision_names(model: ShuffleNetV2) -> Namer:
    def name(path: tuple) -> str:
        if path[0] == "fc":
            return "fc"
        *outer, layer = path  # layer: "conv" or "bn1" of a ConvBnAct
        offset = 0 if layer == "conv" else 1
        if outer[0] in ("conv1", "conv5"):
            return f"{outer[0]}.{offset}"
        stage, unit, branch, index = outer
        return f"{stage}.{unit}.{branch}.{_BRANCH_START[branch][index] + offset}"

    return name


class ShuffleNetV2(ClassifierHead, nnx.Module):
    HEAD = "fc"  # torchvision's name
    TORCH_LAYOUTS: ClassVar[dict] = {"torchvision": torchvision_names}

    def __init__(
        self,
        width: float = 1.0,
        *,
        num_classes: int = 1000,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if width not in STAGE_OUT_CHANNELS:
            raise ValueError(f"ShuffleNetV2 width must be one of {sorted(STAGE_OUT_CHANNELS)}, got {width}")
        layers = Layers(rngs=rngs, act=jax.nn.relu, dtype=dtype, param_dtype=param_dtype)
        channels = STAGE_OUT_CHANNELS[width]
        self.conv1 = ConvBnAct(3, channels[0], 3, stride=2, layers=layers)
        in_chs = channels[0]
        stages = []
        for repeats, out_chs in zip(STAGE_REPEATS, channels[1:4], strict=True):
            units = [ShuffleUnit(in_chs, out_chs, 2, layers=layers)]
            units += [ShuffleUnit(out_chs, out_chs, 1, layers=layers) for _ in range(repeats - 1)]
            stages.append(nnx.List(units))
            in_chs = out_chs
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = ConvBnAct(in_chs, channels[4], 1, layers=layers)
        self.num_features = channels[4]
        self.fc = layers.linear(self.num_features, num_classes) if num_classes else None
        self.dtype, self.param_dtype = dtype, param_dtype

    def forward_features(self, x: Array) -> Array:
        """The last feature map, (N, H/32, W/32, num_features)."""
        x = self.conv1(x)
        # torchvision's MaxPool2d(3, 2, padding=1) pads with -inf.
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for unit in (*self.stage2, *self.stage3, *self.stage4):
            x = unit(x)
        return self.conv5(x)


for _width in STAGE_OUT_CHANNELS:
    _suffix = f"x{_width:.1f}".replace(".", "_")
    register_model(
        f"shufflenet_v2_{_suffix}",
        "shufflenet_v2",
        functools.partial(ShuffleNetV2, _width),
        resolution=224,
        reference=f"torchvision:shufflenet_v2_{_suffix}",
        crop_pct=224 / 232 if _width >= 1.5 else 0.875,  # torchvision's weights: resize 232 or 256
    )
