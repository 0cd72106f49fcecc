"""Progressive learning (EfficientNetV2, Tan & Le 2021, Section 4 and Algorithm 1).

Training is cut into `config.progressive.stages` equal parts; in each, the training image size and
the regularisation (RandAugment's magnitude, Mixup and CutMix alphas, classifier dropout) take the
stage's value, linear from the field's first value (stage 0) to its last (the last stage):

    value_i = first + (last - first) * i / (stages - 1)          # Algorithm 1

    c.progressive.stages = 4
    c.progressive.image_size = (128, 300)   # training size; evaluation stays at c.image_size
    c.progressive.randaugment = (5, 15)     # the magnitude m of c.randaugment
    c.progressive.dropout = (0.1, 0.3)

Stage i runs the steps [floor(i T / M), floor((i + 1) T / M)) of a run of T steps, as automl's
`max_steps = int(ratio * train_steps)`. automl (efficientnetv2/main.py) takes the image size at
ratio (i + 1) / M instead, so that its first stage is already above `ibase`; we follow the paper.

Everything a stage changes is static to the train step (an input shape, an augmentation's
presence, a dropout rate), so the trainer compiles the step once per stage. The optimiser, its
schedule and the state carry on across stages unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from flax import nnx

from lightnets.models import layers

# The fields a stage may set, with the range of values that works for each.
FIELDS = {
    "image_size": (lambda v: v >= 1 and v == int(v), "a whole number of pixels >= 1"),
    "randaugment": (lambda v: v >= 0, "a magnitude >= 0"),
    "mixup": (lambda v: v >= 0, "a Beta alpha >= 0"),
    "cutmix": (lambda v: v >= 0, "a Beta alpha >= 0"),
    "dropout": (lambda v: 0 <= v < 1, "a rate in [0, 1)"),
}


@dataclasses.dataclass(frozen=True)
class Stage:
    index: int
    count: int  # stages in all
    start: int  # the first step of the stage (steps done before it)
    end: int  # one past its last step
    values: dict[str, float]  # field -> this stage's value, for the scheduled fields only

    def describe(self) -> str:
        shown = ", ".join(f"{k} {_shown(v)}" for k, v in self.values.items())
        return f"stage {self.index + 1}/{self.count} (steps {self.start + 1}-{self.end}): {shown}"


def _shown(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.3g}"


def scheduled(progressive) -> dict[str, tuple[float, float]]:
    """field -> (first, last) for the fields `progressive` schedules."""
    return {k: tuple(progressive[k]) for k in FIELDS if len(progressive[k])}


def check(config) -> None:
    """Raises a ValueError for a progressive schedule that cannot work, before anything is built."""
    p = config.progressive
    fields = scheduled(p)
    if not (isinstance(p.stages, int) and p.stages >= 0):
        raise ValueError(f"progressive.stages={p.stages!r} must be a whole number: 0 (off) or 2 and more")
    if not p.stages:
        if fields:
            raise ValueError(f"progressive schedules {sorted(fields)} but progressive.stages is 0: set it (e.g. 4)")
        return
    if p.stages == 1 or not fields:
        raise ValueError(
            f"progressive.stages={p.stages} needs at least 2 stages and a field to schedule "
            f"({', '.join('progressive.' + k for k in FIELDS)}: (first, last)); 0 turns it off"
        )
    for field, value in fields.items():
        ok, allowed = FIELDS[field]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        if len(value) != 2 or not numbers or not all(ok(v) for v in value):
            raise ValueError(f"progressive.{field}={value!r} must be (first, last), each {allowed}")
    if "randaugment" in fields:
        if not config.randaugment:
            raise ValueError(
                "progressive.randaugment schedules the magnitude of config.randaugment, which is off: "
                "set it, e.g. --config.randaugment=rand-m5-mstd0-mmax15"
            )
        from input_pipeline import transforms

        highest = max(fields["randaugment"])
        clip = transforms.RandAugment(config.randaugment).max
        if highest > clip:
            raise ValueError(
                f"progressive.randaugment reaches magnitude {highest:g}, but {config.randaugment!r} clips "
                f"magnitudes at {clip:g}: add -mmax{math.ceil(highest)} to config.randaugment"
            )


def stages(progressive, total_steps: int) -> list[Stage]:
    """The stages of a run of `total_steps` steps (one stage holding everything when off)."""
    fields = scheduled(progressive)
    count = progressive.stages if fields else 1
    out = []
    for i in range(count):
        ratio = i / (count - 1) if count > 1 else 0.0
        values = {}
        for field, (first, last) in fields.items():
            value = first + (last - first) * ratio
            values[field] = round(value) if field == "image_size" else value
        out.append(Stage(i, count, total_steps * i // count, total_steps * (i + 1) // count, values))
    return out


def stage_at(all_stages: list[Stage], step: int) -> Stage:
    """The stage that trains step `step` + 1 (the last one once the run is complete)."""
    return next((s for s in all_stages if step < s.end), all_stages[-1])


def check_lengths(all_stages: list[Stage], steps_per_epoch: int) -> None:
    """A stage shorter than an epoch would not see the whole data set at its size."""
    if len(all_stages) < 2:
        return
    shortest = min(s.end - s.start for s in all_stages)
    if shortest < steps_per_epoch:
        raise ValueError(
            f"progressive.stages={len(all_stages)} cuts the run into stages of {shortest} steps, shorter than "
            f"an epoch ({steps_per_epoch} steps): use fewer stages or train longer"
        )


def with_randaugment_magnitude(config_str: str, magnitude: float) -> str:
    """`config_str` (timm's RandAugment string) with its magnitude section set to `magnitude`."""
    sections = [s for s in config_str.split("-") if not re.fullmatch(r"m[\d.]+", s)]
    return "-".join([sections[0], f"m{magnitude:g}", *sections[1:]])


def stage_config(config, stage: Stage):
    """`config` as the stage trains: its image size, RandAugment, Mixup/CutMix and dropout.

    The evaluation reads `config` itself (its image_size is the evaluation size).
    """
    c = config.copy_and_resolve_references()
    for field, value in stage.values.items():
        if field == "randaugment":
            c.randaugment = with_randaugment_magnitude(config.randaugment, value)
        elif field == "image_size":
            c.image_size = int(value)
        else:
            c[field] = float(value)
    return c


def set_dropout(model: nnx.Module, rate: float) -> None:
    """Sets the rate of `model`'s classifier dropout (not stochastic depth's, which is per sample)."""
    found = [m for _, m in nnx.iter_modules(model) if isinstance(m, layers.Dropout) and not m.per_sample]
    if not found:
        raise ValueError(f"{model.variant} has no classifier dropout for progressive.dropout to schedule")
    for module in found:
        module.rate = float(rate)


def has_dropout(model: nnx.Module) -> bool:
    return any(isinstance(m, layers.Dropout) and not m.per_sample for _, m in nnx.iter_modules(model))


def scalars(stage: Stage) -> dict[str, Any]:
    """The stage's values as TensorBoard scalars (curves that step at each stage)."""
    return {"progressive_stage": stage.index + 1, **{f"progressive_{k}": v for k, v in stage.values.items()}}
