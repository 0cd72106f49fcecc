"""MobileNetV1 (Howard et al., 2017), in the layout of timm's `mobilenetv1_100`.

Thirteen depthwise-separable blocks, each depthwise 3x3 -> BN -> ReLU6 -> pointwise 1x1 -> BN
-> ReLU6, no residuals and no head convolution. timm registers widths 1.0 and 1.25; the smaller
widths of the paper are the same network with channels scaled and rounded to multiples of 8, as
timm's `_gen_mobilenet_v1(channel_multiplier=...)` builds them.

`mobilenet_v1_100_ms` is the network of MindSpore's model zoo
(`official/cv/MobileNet/mobilenetv1/src/mobilenet_v1.py`, the MobileNetV1 seed): the same layers
with MindSpore's `pad_mode="same"`, TensorFlow's padding (at stride 2 the extra row and column go
bottom and right), BatchNorm eps 1e-5. Its ImageNet head has `class_num: 1001` logits: the seed
reads ImageNet with `ImageFolderDataset`, which numbers the 1000 class folders in sorted order
from 0 (the WordNet ids, the order of torchvision's and our class list), so logit 1000 is a class
that no image has (TensorFlow's "background" convention, put last). Converting drops it, unless
`num_classes=1001` keeps it; writing a 1000-class model back adds it (`MobileNetV1.mindspore_spare_bias`).
"""

from __future__ import annotations

import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from lightnets.models.blocks import DepthwiseSeparable, MBNet, dotted_names, stage
from lightnets.models.layers import Layers, make_divisible
from lightnets.models.registry import register_model
from lightnets.preprocessing import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD

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
    # The model zoo's ImageNet head (default_config_imagenet.yaml `class_num: 1001`: ImageFolder's
    # 1000 classes, then a spare logit), and the bias the spare logit gets when a 1000-class model
    # is written back: with a zero weight it never wins an argmax or a top-5, and -1e4 stays
    # finite in float16, which MindSpore's mixed precision computes in.
    mindspore_classes = 1001
    mindspore_spare_bias = -1e4

    def __init__(
        self,
        width_mult: float = 1.0,
        *,
        num_classes: int = 1000,
        dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        padding: str = "symmetric",
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        layers = Layers(rngs=rngs, act=jax.nn.relu6, padding=padding, dtype=dtype, param_dtype=param_dtype)
        super().__init__(
            [s.scaled(width_mult) for s in STAGES],
            stem_chs=make_divisible(32 * width_mult),
            head_chs=None,
            num_classes=num_classes,
            dropout=dropout,
            drop_path_rate=drop_path_rate,
            layers=layers,
        )

    def mindspore_name(self, path: tuple) -> str:
        """The model zoo's cell name of one of our layers: `network.<i>.0` the convolution of unit
        i (the stem, then each block's depthwise and pointwise), `network.<i>.1` its BatchNorm, `fc`."""
        if path[0] == "classifier":
            return "fc"
        if path[0] in ("conv_stem", "bn1"):
            return f"network.0.{0 if path[0] == 'conv_stem' else 1}"
        s, i, layer = path[1:]
        block = sum(len(stage) for stage in self.blocks[:s]) + i
        unit = 2 * block + (1 if layer in ("conv_dw", "bn1") else 2)
        return f"network.{unit}.{0 if layer.startswith('conv') else 1}"


# timm's weights were trained with the Inception normalisation and evaluate with a bicubic resize.
for _width, _timm, _crop in (
    (0.25, None, 0.875),
    (0.5, None, 0.875),
    (0.75, None, 0.875),
    (1.0, "mobilenetv1_100", 0.875),
    (1.25, "mobilenetv1_125", 0.9),
):
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

# The seed's evaluation transform (src/dataset.py create_dataset2): Resize(256) (bilinear),
# CenterCrop(224), ImageNet's mean and std.
register_model(
    "mobilenet_v1_100_ms",
    "mobilenet_v1",
    functools.partial(MobileNetV1, 1.0, padding="same"),
    resolution=224,
    reference=f"mindspore:mobilenet_v1(class_num={MobileNetV1.mindspore_classes})",
    crop_pct=224 / 256,
    interpolation="bilinear",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)
