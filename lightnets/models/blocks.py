"""Blocks of the mobile networks and the skeleton that stacks them.

MobileNetV1, MobileNetV2 and EfficientNetV2 are all "stem -> stages of blocks -> head": timm
builds the three with one class (`timm.models.EfficientNet`) and so do we (`MBNet`). A family
file only writes its stage table. Attribute names are timm's (`conv_stem`, `blocks.i.j.conv_pw`,
`bn1`, `se.conv_reduce`, ...), so timm weights load by name and torchvision's by a fixed rename.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lightnets.models.layers import Layers, SqueezeExcite, global_avg_pool, make_divisible

Array = jax.Array


# Given the channels it gates and the network's Layers, a squeeze-excitation module.
SqueezeExciteFactory = Callable[[int, Layers], nnx.Module]


def _squeeze_excite(channels: int, reduced: float, factory: SqueezeExciteFactory | None, layers: Layers):
    """The block's squeeze-excitation: the factory's, else EfficientNet's (`round(reduced)` wide) if any."""
    if factory is not None:
        return factory(channels, layers)
    return SqueezeExcite(channels, round(reduced), layers=layers) if reduced else None


class DepthwiseSeparable(nnx.Module):
    """Depthwise 3x3 -> BN -> act -> [SE] -> pointwise 1x1 -> BN [-> act] (MobileNetV1 block).

    MobileNetV2's first block is this one with a linear pointwise projection (`pw_act=False`).
    MobileNetV1 applies the activation after the pointwise convolution and has no residual.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        kernel: int = 3,
        stride: int = 1,
        se_ratio: float = 0.0,
        se_layer: SqueezeExciteFactory | None = None,
        act: Callable[[Array], Array] | None = None,
        pw_act: bool = False,
        residual: bool = True,
        drop_path_rate: float = 0.0,
        layers: Layers,
    ):
        self.conv_dw = layers.conv(in_chs, in_chs, kernel, stride=stride, groups=in_chs)
        self.bn1 = layers.norm(in_chs)
        self.se = _squeeze_excite(in_chs, in_chs * se_ratio, se_layer, layers)
        self.conv_pw = layers.conv(in_chs, out_chs, 1)
        self.bn2 = layers.norm(out_chs)
        self.act = act or layers.act
        self.pw_act = pw_act
        self.has_skip = residual and stride == 1 and in_chs == out_chs
        self.drop_path = layers.drop_path(drop_path_rate) if self.has_skip else None

    def __call__(self, x: Array) -> Array:
        y = self.act(self.bn1(self.conv_dw(x)))
        if self.se is not None:
            y = self.se(y)
        y = self.bn2(self.conv_pw(y))
        if self.pw_act:
            y = self.act(y)
        return self.drop_path(y) + x if self.has_skip else y


class InvertedResidual(nnx.Module):
    """MobileNetV2's inverted residual, EfficientNet's MBConv.

    Pointwise expansion -> BN -> act -> depthwise -> BN -> act -> [SE] -> linear pointwise
    projection -> BN, with a residual when the shapes allow it.

    Args:
      se_ratio: squeeze-excitation width as a fraction of the block's *input* channels (the
        paper's and torchvision's convention; timm's `se0.25`).
      se_layer: instead, a squeeze-excitation factory given the expanded width (MobileNetV3's).
      act: the block's activation; the network's (`layers.act`) by default.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        kernel: int = 3,
        stride: int = 1,
        expand: float = 6.0,
        se_ratio: float = 0.0,
        se_layer: SqueezeExciteFactory | None = None,
        act: Callable[[Array], Array] | None = None,
        drop_path_rate: float = 0.0,
        layers: Layers,
    ):
        mid_chs = make_divisible(in_chs * expand)
        self.conv_pw = layers.conv(in_chs, mid_chs, 1)
        self.bn1 = layers.norm(mid_chs)
        self.conv_dw = layers.conv(mid_chs, mid_chs, kernel, stride=stride, groups=mid_chs)
        self.bn2 = layers.norm(mid_chs)
        # timm divides the ratio first, then rounds: keep its order so channel counts agree.
        self.se = _squeeze_excite(mid_chs, mid_chs * (se_ratio / expand), se_layer, layers)
        self.conv_pwl = layers.conv(mid_chs, out_chs, 1)
        self.bn3 = layers.norm(out_chs)
        self.act = act or layers.act
        self.has_skip = stride == 1 and in_chs == out_chs
        self.drop_path = layers.drop_path(drop_path_rate) if self.has_skip else None

    def __call__(self, x: Array) -> Array:
        y = self.act(self.bn1(self.conv_pw(x)))
        y = self.act(self.bn2(self.conv_dw(y)))
        if self.se is not None:
            y = self.se(y)
        y = self.bn3(self.conv_pwl(y))
        return self.drop_path(y) + x if self.has_skip else y


class FusedMBConv(nnx.Module):
    """EfficientNetV2's Fused-MBConv (timm's `EdgeResidual`).

    The expansion and the depthwise convolution of an MBConv fused into one full kxk
    convolution -> BN -> act -> [SE] -> linear pointwise projection -> BN.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        kernel: int = 3,
        stride: int = 1,
        expand: float = 4.0,
        se_ratio: float = 0.0,
        drop_path_rate: float = 0.0,
        layers: Layers,
    ):
        mid_chs = make_divisible(in_chs * expand)
        self.conv_exp = layers.conv(in_chs, mid_chs, kernel, stride=stride)
        self.bn1 = layers.norm(mid_chs)
        self.se = SqueezeExcite(mid_chs, round(mid_chs * (se_ratio / expand)), layers=layers) if se_ratio else None
        self.conv_pwl = layers.conv(mid_chs, out_chs, 1)
        self.bn2 = layers.norm(out_chs)
        self.act = layers.act
        self.has_skip = stride == 1 and in_chs == out_chs
        self.drop_path = layers.drop_path(drop_path_rate) if self.has_skip else None

    def __call__(self, x: Array) -> Array:
        y = self.act(self.bn1(self.conv_exp(x)))
        if self.se is not None:
            y = self.se(y)
        y = self.bn2(self.conv_pwl(y))
        return self.drop_path(y) + x if self.has_skip else y


@dataclasses.dataclass(frozen=True)
class Stage:
    """One row of a stage table: `repeats` blocks, the first with `stride`, all with `kernel`.

    `options` go to every block of the stage (e.g. `expand=6`, `se_ratio=0.25`).
    """

    block: type
    repeats: int
    kernel: int
    stride: int
    channels: int
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def scaled(self, width: float = 1.0, depth: float = 1.0, round_limit: float = 0.9) -> Stage:
        """The stage with channels rounded to multiples of 8 and repeats rounded up (timm, torchvision)."""
        return dataclasses.replace(
            self,
            channels=make_divisible(self.channels * width, 8, round_limit=round_limit),
            repeats=math.ceil(self.repeats * depth),
        )


def stage(block: type, repeats: int, kernel: int, stride: int, channels: int, **options) -> Stage:
    return Stage(block, repeats, kernel, stride, channels, options)


# A PyTorch layout: given a network, its namer (a module's state path -> the PyTorch module name).
Namer = Callable[[tuple], str]


class ClassifierHead:
    """The head API every family shares (timm's): `forward_head`, `__call__`, `num_classes`,
    `reset_classifier`, and `HEAD`, the attribute (and first key of the state paths) of the
    classifier, which fine-tuning on another class count leaves out.

    A family sets `num_features`, `dtype`, `param_dtype`, its classifier (a `Linear`, or None for
    none) under `HEAD`, optionally `dropout` (applied to the pooled features) and
    `head_hidden_size` (the classifier's input, where a layer follows the pool), and the class
    attributes `HEAD`, `TORCH_LAYOUTS` (layout name -> a function of the network giving its
    `Namer`) and `TORCH_LINEARS` (layout name -> our top-level modules whose 1x1 convolution is
    a `Linear` there), which `lightnets.convert` uses.
    """

    HEAD: ClassVar[str] = "classifier"
    TORCH_LAYOUTS: ClassVar[dict[str, Callable[[Any], Namer]]] = {}
    TORCH_LINEARS: ClassVar[dict[str, tuple[str, ...]]] = {}

    def head_features(self, x: Array) -> Array:
        """What the classifier sees of a feature map, before dropout: by default its average."""
        return global_avg_pool(x)

    def forward_head(self, x: Array, pre_logits: bool = False) -> Array:
        """Pool, dropout and classify a feature map; `pre_logits=True` stops before the classifier."""
        x = self.head_features(x)
        if getattr(self, "dropout", None) is not None:
            x = self.dropout(x)
        classifier = getattr(self, self.HEAD)
        if pre_logits or classifier is None:
            return x
        return classifier(x).astype(jnp.float32)

    def __call__(self, x: Array) -> Array:
        """Logits (float32) for NHWC images, normalised as the weights expect (`lightnets.preprocessing`)."""
        return self.forward_head(self.forward_features(x))

    @property
    def num_classes(self) -> int:
        """Size of the classifier, 0 without one."""
        classifier = getattr(self, self.HEAD)
        return 0 if classifier is None else int(classifier.kernel.shape[1])

    def reset_classifier(self, num_classes: int, *, rngs: nnx.Rngs) -> None:
        """Replaces the classifier with a freshly initialised one (0: no classifier)."""
        layers = Layers(rngs=rngs, dtype=self.dtype, param_dtype=self.param_dtype)
        features = getattr(self, "head_hidden_size", self.num_features)
        setattr(self, self.HEAD, layers.linear(features, num_classes) if num_classes else None)

    @classmethod
    def is_head(cls, path: tuple) -> bool:
        """Whether a state path belongs to the classifier (whose size is the class count)."""
        return bool(path) and path[0] == cls.HEAD


def dotted_names(model: Any) -> Namer:
    """timm's layout: our attribute names are timm's, the path joined with dots."""
    return lambda path: ".".join(map(str, path))


def torchvision_mbnet_names(model: MBNet, blocks: dict[type, dict[str, str]], *, flat: bool) -> Namer:
    """torchvision's MobileNetV2 (`flat`: blocks numbered through `features`) and EfficientNetV2
    (one Sequential per stage) layouts of an `MBNet`; `blocks` maps each block type's attributes to
    its positions inside torchvision's block."""
    stage_starts = np.cumsum([0] + [len(stage) for stage in model.blocks]).tolist()
    head = stage_starts[-1] + 1 if flat else len(model.blocks) + 1
    top = {
        "conv_stem": "features.0.0",
        "bn1": "features.0.1",
        "conv_head": f"features.{head}.0",
        "bn2": f"features.{head}.1",
        "classifier": "classifier.1",
    }

    def name(path: tuple) -> str:
        if path[0] != "blocks":
            return top[path[0]]
        s, i, *inner = path[1:]
        prefix = f"features.{stage_starts[s] + i + 1}" if flat else f"features.{s + 1}.{i}"
        return f"{prefix}.{blocks[type(model.blocks[s][i])]['.'.join(inner)]}"

    return name


class MBNet(ClassifierHead, nnx.Module):
    """Stem conv -> stages of blocks -> optional 1x1 head conv -> pool -> dropout -> classifier.

    Args:
      stages: the stage table, channels and repeats already scaled; an entry may be a tuple of
        rows, one stage of unlike blocks (MobileNetV3's, numbered `blocks.<stage>.<i>` as timm's).
      stem_chs: output channels of the 3x3 stride-2 stem.
      head_chs: output channels of the 1x1 head convolution, or None for no head convolution
        (MobileNetV1).
      head: "conv": the head convolution -> BN -> act on the feature map, then the pool
        (MobileNetV2, EfficientNet); "pooled": the pool, then the head convolution with a bias
        and no BN -> act (MobileNetV3, whose features end in a block).
      num_classes: size of the classifier; 0 for none (the model then returns pooled features).
      dropout: dropout rate before the classifier.
      drop_path_rate: stochastic depth of the last block; block i of n gets `rate * i / n`.
    """

    def __init__(
        self,
        stages: Sequence[Stage | tuple[Stage, ...]],
        *,
        stem_chs: int,
        head_chs: int | None,
        num_classes: int,
        dropout: float,
        drop_path_rate: float,
        layers: Layers,
        head: str = "conv",
    ):
        self.conv_stem = layers.conv(3, stem_chs, 3, stride=2)
        self.bn1 = layers.norm(stem_chs)
        self.act = layers.act

        groups = [s if isinstance(s, tuple) else (s,) for s in stages]
        total = sum(row.repeats for rows in groups for row in rows)
        index = 0
        in_chs = stem_chs
        blocks = []
        for rows in groups:
            stage_blocks = []
            for s in rows:
                for i in range(s.repeats):
                    stage_blocks.append(
                        s.block(
                            in_chs,
                            s.channels,
                            kernel=s.kernel,
                            stride=s.stride if i == 0 else 1,
                            drop_path_rate=drop_path_rate * index / total,
                            layers=layers,
                            **s.options,
                        )
                    )
                    in_chs = s.channels
                    index += 1
            blocks.append(nnx.List(stage_blocks))
        self.blocks = nnx.List(blocks)

        if head not in ("conv", "pooled"):
            raise ValueError(f"head must be 'conv' or 'pooled', got {head!r}")
        self.head = head
        # The feature map's width, and what the classifier takes.
        self.num_features = head_chs if head_chs and head == "conv" else in_chs
        self.head_hidden_size = head_chs or in_chs
        self.conv_head = layers.conv(in_chs, head_chs, 1, bias=head == "pooled") if head_chs else None
        self.bn2 = layers.norm(head_chs) if head_chs and head == "conv" else None
        self.dropout = layers.dropout(dropout)
        self.classifier = layers.linear(self.head_hidden_size, num_classes) if num_classes else None
        self.dtype, self.param_dtype = layers.dtype, layers.param_dtype

    def forward_features(self, x: Array) -> Array:
        """The last feature map, (N, H/32, W/32, num_features)."""
        x = self.act(self.bn1(self.conv_stem(x)))
        for stage_blocks in self.blocks:
            for block in stage_blocks:
                x = block(x)
        if self.head == "conv" and self.conv_head is not None:
            x = self.act(self.bn2(self.conv_head(x)))
        return x

    def head_features(self, x: Array) -> Array:
        x = global_avg_pool(x)
        if self.head == "pooled" and self.conv_head is not None:
            # expand_dims/squeeze, not indexing: with a symbolic batch (export) indexing is a gather.
            x = jnp.squeeze(self.act(self.conv_head(jnp.expand_dims(x, (1, 2)))), (1, 2))
        return x
