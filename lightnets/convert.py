"""Weights between lightnets and PyTorch (torchvision, timm, the Ascend ModelZoo checkpoints) or
MindSpore (the model zoo's MobileNetV1, `from_mindspore` / `to_mindspore`; no MindSpore needed).

    model = convert.from_torch("mobilenet_v2_100", "mobilenet_v2.pth")   # eval mode
    state_dict = convert.to_torch(model)    # loads into torchvision's mobilenet_v2, strict=True

A conversion is a rename plus a layout change: convolution kernels OIHW <-> HWIO (a depthwise
`[C, 1, k, k]` is `[k, k, 1, C]`), linear weights transposed, BatchNorm `weight, bias,
running_mean, running_var, num_batches_tracked` <-> `scale, bias, mean, var, num_batches_tracked`.
The rename is timm's names unchanged for the networks timm builds (our attribute names are
timm's), and for torchvision's `nn.Sequential` indices the family's own name map (each family
class's `TORCH_LAYOUTS`, in lightnets/models/): this module knows no family.

A checkpoint that does not fit the network is refused before anything is loaded, with every
missing and unexpected key and every shape that differs; so are weights holding a nan or an inf,
in either direction, naming the tensors (unless `allow_nonfinite=True`). PyTorch files are read
with `torch.load(weights_only=True)` or safetensors, never by unpickling arbitrary objects. torch
is needed only to read `.pth` files and by `to_torch`; the rest of lightnets imports without it.

Command line: `python -m lightnets.convert --help`.
"""

from __future__ import annotations

import ast
import math
import os
import pickle
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lightnets import checkpoint, cli, preprocessing
from lightnets.checkpoint import check_finite
from lightnets.models.layers import BatchNorm, Conv2d, Linear
from lightnets.models.registry import create_model, forward, list_models, model_info

PROG = cli.prog("lightnets.convert")
LAYOUTS = ("torchvision", "timm")

# Our variable name -> PyTorch's, per layer type.
_VARIABLES = {
    Conv2d: {"kernel": "weight", "bias": "bias"},
    Linear: {"kernel": "weight", "bias": "bias"},
    BatchNorm: {
        "scale": "weight",
        "bias": "bias",
        "mean": "running_mean",
        "var": "running_var",
        "num_batches_tracked": "num_batches_tracked",
    },
}


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the network; the message lists every difference."""


# ---------------------------------------------------------------------------------------------
# Names: our module paths -> PyTorch module names
# ---------------------------------------------------------------------------------------------


def _check_torch_variant(name: str) -> None:
    """A MindSpore network (other padding than any PyTorch layout's) is refused, not silently mixed."""
    if default_layout(name) not in LAYOUTS:
        raise ValueError(
            f"{name} is a MindSpore network, with no PyTorch layout: its checkpoints convert with "
            "--mindspore_checkpoint / --to_mindspore (from_mindspore, to_mindspore)"
        )


def default_layout(variant: str) -> str:
    """The layout of a variant's reference implementation: "torchvision" or "timm"."""
    return model_info(variant).reference.split(":", 1)[0]


def torch_names(model: nnx.Module, layout: str) -> dict[tuple, str]:
    """Our variable path -> PyTorch state-dict key, for every parameter and BatchNorm statistic."""
    namer = model.TORCH_LAYOUTS.get(layout)  # the family's name maps (lightnets/models/)
    if namer is None:
        supported = list(model.TORCH_LAYOUTS)
        raise ValueError(f"{type(model).__name__} has no {layout!r} layout; it converts to and from {supported}")
    return _variable_names(model, namer(model), _VARIABLES)


def _variable_names(model: nnx.Module, module_name: Callable[[tuple], str], variables_of: dict) -> dict[tuple, str]:
    """Our variable path -> `module_name(module path).their variable name`, for every layer whose
    type `variables_of` maps (its variable names -> the framework's)."""
    names = {}
    for path, module in nnx.iter_graph(model):
        variables = variables_of.get(type(module))
        if variables is None:
            continue
        prefix = module_name(tuple(path))
        for ours, theirs in variables.items():
            if getattr(module, ours, None) is not None:
                names[(*path, ours)] = f"{prefix}.{theirs}"
    return names


# ---------------------------------------------------------------------------------------------
# Layouts: PyTorch tensor <-> our array
# ---------------------------------------------------------------------------------------------


def _to_ours(value: np.ndarray, ours: tuple, linear: bool = False) -> np.ndarray:
    """`linear`: our 1x1 convolution is a Linear in their layout (MobileNetV3's head in torchvision's)."""
    if ours[-1] == "kernel" and linear:
        return value.T[None, None]  # (out, in) -> (1, 1, in, out)
    if ours[-1] == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if ours[-1] == "kernel" and value.ndim == 2:
        return value.T  # (out, in) -> (in, out)
    return value


def _to_theirs(value: np.ndarray, ours: tuple, linear: bool = False) -> np.ndarray:
    if ours[-1] == "kernel" and linear:
        return value[0, 0].T
    if ours[-1] == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if ours[-1] == "kernel" and value.ndim == 2:
        return value.T
    return value


def _torch_shape(shape: tuple, ours: tuple, linear: bool = False) -> tuple:
    if ours[-1] == "kernel" and linear:
        return (shape[3], shape[2])
    if ours[-1] == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if ours[-1] == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _linears(model: nnx.Module, layout: str) -> Callable[[tuple], bool]:
    """Whether a state path is of a 1x1 convolution that `layout` holds as a Linear."""
    modules = model.TORCH_LINEARS.get(layout, ())
    return lambda path: path[0] in modules


# ---------------------------------------------------------------------------------------------
# Reading checkpoints
# ---------------------------------------------------------------------------------------------


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor; half precision widens to float32 exactly
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _read_torch_file(path: str) -> Any:
    """`torch.load` of tensors, numbers and strings only; any other content is a ValueError naming `path`."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path} needs PyTorch: pip install torch") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, IndexError, ... for a damaged file
        unsafe = isinstance(e, pickle.UnpicklingError) and re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if unsafe:
            raise ValueError(
                f"{path} holds Python objects other than tensors, numbers and strings ({unsafe[1]}); lightnets does "
                f"not unpickle them (arbitrary code could run). Save its state_dict alone, or as .safetensors"
            ) from None
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {_damage(path, e, 'torch.save')}") from None


def _damage(path: str, error: Exception, writer: str) -> str:
    """Why `path` could not be read, in one line: empty, or the first sentence of the reader's error."""
    if os.path.getsize(path) == 0:
        return "the file is empty"
    reason = str(error).strip().split("\n")[0].split(". ")[0][:200] or type(error).__name__
    return f"truncated, damaged or not written by {writer} ({reason})"


def load_state_dict(checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A PyTorch state dict as numpy arrays, from a path or a dict.

    Accepts a plain state dict, a training checkpoint holding one under `state_dict` or
    `model` (the Ascend ModelZoo scripts save `{'epoch', 'arch', 'state_dict', ...}`), keys
    prefixed `module.` by DistributedDataParallel, and `.safetensors` files. A file that cannot be
    read (empty, truncated, damaged) is a ValueError naming it.
    """
    what = "the checkpoint"
    if isinstance(checkpoint, (str, os.PathLike)):
        path = what = os.fspath(checkpoint)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no checkpoint at {path}")
        if path.endswith(".safetensors"):
            from safetensors.numpy import load_file

            try:
                checkpoint = load_file(path)
            except Exception as e:  # SafetensorError: a header or data that does not fit
                reason = _damage(path, e, "safetensors")
                raise ValueError(f"{path} is not a readable safetensors file: {reason}") from None
        else:
            checkpoint = _read_torch_file(path)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{what} is a {type(checkpoint).__name__}, not a state dict (a mapping of names to tensors)")
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    state = {}
    for key, value in checkpoint.items():
        key = key.removeprefix("module.")
        state[key] = _to_numpy(value)
    return state


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """ "torchvision" if the keys are torchvision's (`features.*`, `stage2.*`), else "timm"."""
    torchvision = any(k.startswith(("features.", "stage2.")) for k in state_dict)
    return "torchvision" if torchvision else "timm"


def _natural(key: str) -> list:
    """Sort key putting `features.2` before `features.10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _mismatch_report(what: str, name: str, layout: str, missing, unexpected, shapes, hint: str = "") -> str:
    """A first line that says it all (a command shows it as its error), then every difference."""

    def listing(title, items):
        return [f"{title} ({len(items)}):"] + [f"  {x}" for x in sorted(items, key=_natural)]

    counts = f"{len(missing)} missing keys, {len(unexpected)} unexpected, {len(shapes)} shapes that differ"
    lines = [f"{what} does not fit {name} ({layout} layout): {counts}; nothing was loaded.{hint}"]
    if missing:
        lines += listing("missing keys", missing)
    if unexpected:
        lines += listing("unexpected keys", unexpected)
    if shapes:
        lines.append(f"shapes that differ ({len(shapes)}), checkpoint vs {name}:")
        lines += [f"  {k}: {tuple(a)} vs {tuple(b)}" for k, a, b in sorted(shapes, key=lambda x: _natural(x[0]))]
    return "\n".join(lines)


def from_torch(
    name: str,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    num_classes: int | None = None,
    dtype: Any = jnp.float32,
    layout: str | None = None,
    rngs: nnx.Rngs | None = None,
    allow_nonfinite: bool = False,
) -> nnx.Module:
    """A lightnets network with the weights of a PyTorch checkpoint, in eval mode.

    Args:
      name: the registered variant the checkpoint is of.
      checkpoint: a path (`.pth`, `.pt`, `.tar`, `.safetensors`) or an in-memory state dict.
      num_classes: None keeps the registry's 1000 classes and requires the checkpoint's
        classifier to have as many; a number asks for that many: the checkpoint's classifier
        is loaded if it has that size, replaced by a freshly initialised one otherwise.
      dtype: the computation dtype of the returned model.
      layout: "torchvision" or "timm"; detected from the keys if not given.
      rngs: keys for a new classifier and for dropout if the model is trained further.
      allow_nonfinite: load tensors holding a nan or an inf (refused by default).

    Raises:
      CheckpointMismatchError: listing every missing and unexpected key and every shape that
        differs, when the checkpoint is of another architecture, width or class count.
      NonFiniteError: naming the tensors that hold a nan or an inf.
    """
    _check_torch_variant(name)
    what = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "the checkpoint"
    state_dict = load_state_dict(checkpoint)

    def names_of(abstract: nnx.Module) -> dict[tuple, str]:
        nonlocal layout
        if layout is None:
            layout = detect_layout(state_dict)
            if layout not in abstract.TORCH_LAYOUTS:
                layout = default_layout(name)  # another network's checkpoint: report its keys against ours
        return torch_names(abstract, layout)

    return _load(
        name,
        state_dict,
        what,
        names_of,
        lambda: layout,
        num_classes=num_classes,
        dtype=dtype,
        rngs=rngs,
        allow_nonfinite=allow_nonfinite,
    )


def _load(
    name: str,
    state_dict: Mapping[str, np.ndarray],
    what: str,
    names_of: Callable[[nnx.Module], dict[tuple, str]],
    layout_of: Callable[[], str],
    *,
    num_classes: int | None,
    dtype: Any,
    rngs: nnx.Rngs | None,
    allow_nonfinite: bool,
) -> nnx.Module:
    """`name` with the weights of `state_dict` (their names from `names_of(model)`, their layout
    PyTorch's), all or nothing; `from_torch`'s guarantees, for any framework's names."""
    classes = 1000 if num_classes is None else num_classes
    abstract = nnx.eval_shape(lambda: create_model(name, num_classes=classes, dtype=dtype))
    names = names_of(abstract)
    layout = layout_of()
    # The classifier's keys are the same whatever its size: take them from a 1000-class model.
    with_head = abstract if classes == 1000 else nnx.eval_shape(lambda: create_model(name, dtype=dtype))
    head = {theirs for ours, theirs in names_of(with_head).items() if abstract.is_head(ours)}
    ckpt_classes = next((int(state_dict[k].shape[0]) for k in sorted(head) if k in state_dict), None)
    if num_classes is not None and ckpt_classes != num_classes:
        # The caller asked for another classifier: the checkpoint's is left out, a new one is made.
        names = {ours: theirs for ours, theirs in names.items() if not abstract.is_head(ours)}
        state_dict = {k: v for k, v in state_dict.items() if k not in head}

    expected = dict(nnx.to_flat_state(nnx.state(abstract, (nnx.Param, nnx.BatchStat))))
    # num_batches_tracked is optional, as in PyTorch (checkpoints older than torch 0.4.1 lack it).
    missing = [k for k in names.values() if k not in state_dict and not k.endswith(".num_batches_tracked")]
    unexpected = set(state_dict) - set(names.values())
    shapes = []
    linear = _linears(abstract, layout)
    for ours, theirs in names.items():
        want = _torch_shape(expected[ours].shape, ours, linear(ours))
        if theirs in state_dict and tuple(state_dict[theirs].shape) != want:
            shapes.append((theirs, state_dict[theirs].shape, want))
    if missing or unexpected or shapes:
        hint = ""
        if ckpt_classes is not None and ckpt_classes != classes:
            hint = (
                f" It classifies {ckpt_classes} classes: pass num_classes={ckpt_classes} (--num_classes) to load "
                f"its classifier, or num_classes=N for a new {name} classifier of N classes."
            )
        raise CheckpointMismatchError(_mismatch_report(what, name, layout, missing, unexpected, shapes, hint))
    if not allow_nonfinite:
        check_finite({theirs: state_dict[theirs] for theirs in names.values() if theirs in state_dict}, what)

    model = create_model(name, num_classes=classes, dtype=dtype, rngs=rngs)
    values = [
        (ours, jnp.asarray(_to_ours(state_dict[theirs], ours, linear(ours)).astype(expected[ours].dtype)))
        for ours, theirs in names.items()
        if theirs in state_dict
    ]
    nnx.update(model, nnx.from_flat_state(values))
    model.eval()
    return model


def to_torch(model: nnx.Module, *, layout: str | None = None, allow_nonfinite: bool = False) -> dict[str, Any]:
    """A state dict for the reference PyTorch model, loadable with `strict=True`.

    Args:
      model: a lightnets network from `create_model` (or `from_torch`).
      layout: "torchvision" or "timm"; by default the variant's reference implementation.
      allow_nonfinite: convert weights holding a nan or an inf (a NonFiniteError by default,
        naming the tensors).
    """
    import torch

    if layout is None:
        if not hasattr(model, "variant"):
            raise ValueError("the model has no `variant` (not built by create_model): pass layout=")
        layout = default_layout(model.variant)
    if hasattr(model, "variant"):
        _check_torch_variant(model.variant)
    state = dict(nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat))))
    names = torch_names(model, layout)
    values = {theirs: np.asarray(jax.device_get(state[ours][...])) for ours, theirs in names.items()}
    if not allow_nonfinite:
        check_finite(values, f"the {model.variant} weights")
    out, linear = {}, _linears(model, layout)
    for ours, theirs in names.items():
        if ours[-1] == "num_batches_tracked":
            out[theirs] = torch.tensor(int(values[theirs]), dtype=torch.int64)
        else:  # a writable copy
            out[theirs] = torch.from_numpy(np.array(_to_theirs(values[theirs], ours, linear(ours))))
    return out


# ---------------------------------------------------------------------------------------------
# MindSpore: the model zoo's networks and their .ckpt files
# ---------------------------------------------------------------------------------------------

# MindSpore's variable names, per layer type (mindspore.nn.Conv2d and Dense: `weight`, `bias`,
# in PyTorch's layouts; BatchNorm2d: no num_batches_tracked).
_MINDSPORE_VARIABLES = {
    Conv2d: {"kernel": "weight", "bias": "bias"},
    Linear: {"kernel": "weight", "bias": "bias"},
    BatchNorm: {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"},
}


def mindspore_variants() -> list[str]:
    """The registered variants that are MindSpore networks (their reference is "mindspore:...")."""
    return [n for n in list_models() if parse_reference(model_info(n).reference)[0] == "mindspore"]


def _mindspore_classes(name: str) -> int:
    """The class count of the MindSpore reference's ImageNet head (1001 for the model zoo's MobileNetV1)."""
    return parse_reference(model_info(name).reference)[2].get("class_num", 1000)


def mindspore_names(model: nnx.Module) -> dict[tuple, str]:
    """Our variable path -> MindSpore parameter name; the family names its layers (`mindspore_name`)."""
    variant = getattr(model, "variant", type(model).__name__)
    namer = getattr(model, "mindspore_name", None)
    if namer is None or variant not in mindspore_variants():
        raise ValueError(
            f"{variant} is not a MindSpore network; MindSpore checkpoints convert to and from "
            f"{', '.join(mindspore_variants())}"
        )
    return _variable_names(model, namer, _MINDSPORE_VARIABLES)


def _is_training_state(key: str, value: Any, weights: set[str]) -> bool:
    """An entry of a MindSpore training checkpoint that is not a weight: an optimiser slot of a
    weight (Momentum's `moments.<weight>`, Adam's `adam_m.<weight>`, ...), or a scalar or a string
    (`learning_rate`, `global_step`, `momentum`, the loss scale, `epoch_num`, ...)."""
    if isinstance(value, str) or np.asarray(value).size <= 1:
        return True
    return "." in key and key.split(".", 1)[1] in weights


def from_mindspore(
    name: str,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    num_classes: int | None = None,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs | None = None,
    allow_nonfinite: bool = False,
    notes: list[str] | None = None,
) -> nnx.Module:
    """A lightnets network with the weights of a MindSpore checkpoint, in eval mode.

    As `from_torch`, all or nothing. A training checkpoint's optimiser state and scalars are
    left out. The model zoo's ImageNet head has one spare logit after ImageNet's 1000 classes
    (see `lightnets.models.mobilenet_v1`): with `num_classes=None` (or 1000) it is dropped, giving
    ImageNet's 1000 classes in our class order; `num_classes=1001` keeps it.

    Args:
      checkpoint: a `.ckpt` path, or its entries as `mindspore_ckpt.read` returns them.
      notes: if a list, a line is appended for each thing left out.
    """
    from lightnets.interop import mindspore_ckpt

    what = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "the checkpoint"
    entries = mindspore_ckpt.read(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else dict(checkpoint)
    names_of = mindspore_names
    reference = nnx.eval_shape(lambda: create_model(name))
    expected = names_of(reference)  # also refuses a non-MindSpore variant
    weights = set(expected.values())
    ignored = [k for k, v in entries.items() if k not in weights and _is_training_state(k, v, weights)]
    state = {k: v for k, v in entries.items() if k not in ignored}
    strings = [k for k, v in state.items() if isinstance(v, str)]
    if strings:
        raise ValueError(f"{what}: {', '.join(strings)} hold strings, not weights")
    # Half-precision weights widen to float32 exactly.
    state = {
        k: v.astype(np.float32) if v.dtype.kind == "f" or v.dtype.name == "bfloat16" else v for k, v in state.items()
    }
    said = notes if notes is not None else []
    if ignored:
        said.append(
            f"left out {len(ignored)} entries of the training state (optimiser slots, scalars): "
            f"{', '.join(sorted(ignored, key=_natural)[:4])}{', ...' if len(ignored) > 4 else ''}"
        )
    spare = _mindspore_classes(name) - 1000
    head = sorted(theirs for ours, theirs in expected.items() if reference.is_head(ours))
    with_spare = all(state.get(k, np.zeros(0)).shape[:1] == (1000 + spare,) for k in head)
    if num_classes in (None, 1000) and spare > 0 and with_spare:
        state.update({k: state[k][:1000] for k in head})
        said.append(
            f"dropped the classifier's {spare} spare logit(s) after ImageNet's 1000 classes (num_classes="
            f"{1000 + spare} keeps them)"
        )
    return _load(
        name,
        state,
        what,
        names_of,
        lambda: "MindSpore",
        num_classes=num_classes,
        dtype=dtype,
        rngs=rngs,
        allow_nonfinite=allow_nonfinite,
    )


def to_mindspore(model: nnx.Module, *, allow_nonfinite: bool = False) -> dict[str, np.ndarray]:
    """The entries of a `.ckpt` (for `mindspore_ckpt.write`) that the MindSpore reference network
    loads with `load_param_into_net(strict_load=True)`.

    A 1000-class model gets back the reference's spare logit(s), with a zero weight and the
    family's `mindspore_spare_bias`, so that the model zoo's 1001-class network loads it.
    """
    names = mindspore_names(model)
    state = dict(nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat))))
    values = {theirs: np.asarray(jax.device_get(state[ours][...])) for ours, theirs in names.items()}
    if not allow_nonfinite:
        check_finite(values, f"the {model.variant} weights")
    out = {
        theirs: np.ascontiguousarray(_to_theirs(values[theirs], ours), np.float32)
        for ours, theirs in sorted(names.items(), key=lambda item: _natural(item[1]))
    }
    spare = _mindspore_classes(model.variant) - 1000
    if spare > 0 and model.num_classes == 1000:
        for ours, theirs in names.items():
            if model.is_head(ours):
                extra = np.zeros((spare, *out[theirs].shape[1:]), np.float32)
                if ours[-1] == "bias":
                    extra[:] = model.mindspore_spare_bias
                out[theirs] = np.concatenate([out[theirs], extra])
    return out


# ---------------------------------------------------------------------------------------------
# The reference PyTorch model
# ---------------------------------------------------------------------------------------------


def parse_reference(reference: str) -> tuple[str, str, dict[str, Any]]:
    """ "torchvision:mobilenet_v2(width_mult=0.35)" -> ("torchvision", "mobilenet_v2", {"width_mult": 0.35})."""
    library, call = reference.split(":", 1)
    match = re.fullmatch(r"(\w+)(?:\((.*)\))?", call)
    if not match:
        raise ValueError(f"cannot parse reference {reference!r}")
    fn, args = match.groups()
    kwargs = {}
    if args:
        tree = ast.parse(f"f({args})", mode="eval").body
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in tree.keywords}
    return library, fn, kwargs


def reference_model(name: str, num_classes: int = 1000):
    """The PyTorch model a variant reproduces (torchvision or timm must be installed), eval mode."""
    _check_torch_variant(name)
    library, fn, kwargs = parse_reference(model_info(name).reference)
    if library == "torchvision":
        import torchvision

        model = getattr(torchvision.models, fn)(weights=None, num_classes=num_classes, **kwargs)
    elif fn.startswith("_gen_"):  # a timm generator for widths timm does not register
        from timm.models import efficientnet

        model = getattr(efficientnet, fn)(name, num_classes=num_classes, **kwargs)
    else:
        import timm

        model = timm.create_model(fn, pretrained=False, num_classes=num_classes)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Verification and the command line
# ---------------------------------------------------------------------------------------------


def compare(model: nnx.Module, reference, images: np.ndarray) -> dict[str, float]:
    """Runs our model and the PyTorch reference on NHWC images; how far their logits are apart.

    Returns the largest absolute logit difference, the same relative to the largest reference
    logit, and the fractions of images whose top-1 class and top-5 set agree.
    """
    import torch

    ours = np.asarray(forward(model, jnp.asarray(images)))
    with torch.no_grad():
        theirs = reference(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).float().numpy()
    diff = float(np.abs(ours - theirs).max())
    top5 = [set(o) == set(t) for o, t in zip(np.argsort(-ours)[:, :5], np.argsort(-theirs)[:, :5], strict=True)]
    return {
        "max_abs_diff": diff,
        "relative_diff": diff / float(np.abs(theirs).max()),
        "top1": float(np.mean(ours.argmax(1) == theirs.argmax(1))),
        "top5": float(np.mean(top5)),
    }


def verify(name: str, state_dict: Mapping[str, Any], images: np.ndarray, *, num_classes: int = 1000) -> bool:
    """Prints how our model and the reference agree in float32 and bfloat16; True if within bounds.

    Bounds: in float32, max |difference| <= 1e-4 x max |logit| and the same top-1 on every
    image; in bfloat16, the same top-1 on at least 95 % of the images; in both, every logit of
    both models finite (a nan difference fails: argmax of nans agrees on anything).
    """
    reference = reference_model(name, num_classes=num_classes)
    reference.load_state_dict(dict(state_dict), strict=True)
    ok = True
    for dtype, label in ((jnp.float32, "float32"), (jnp.bfloat16, "bfloat16")):
        # Non-finite weights are let through here to be judged: their logits fail the bounds.
        model = from_torch(name, state_dict, num_classes=num_classes, dtype=dtype, allow_nonfinite=True)
        r = compare(model, reference, images)
        close = r["relative_diff"] <= 1e-4 and r["top1"] == 1.0 if dtype == jnp.float32 else r["top1"] >= 0.95
        good = close and math.isfinite(r["max_abs_diff"])
        ok &= good
        print(
            f"{label:9s} max |logit difference| {r['max_abs_diff']:.3g} ({r['relative_diff']:.2g} of max |logit|), "
            f"top-1 agreement {r['top1']:.1%}, top-5 {r['top5']:.1%} on {len(images)} images: "
            f"{'ok' if good else 'FAILED'}"
        )
    return ok


def _verification_images(args, name: str) -> np.ndarray:
    from input_pipeline import photos

    prep = preprocessing.reference(name, args.resolution)
    if args.images:
        import glob

        paths = sorted(p for pattern in args.images for p in glob.glob(pattern))
        return prep.normalize(photos.load_pixels(paths, prep.image_size))
    return prep.normalize(photos.sample_pixels(prep.image_size, views=4))  # each photo, its mirror image, two crops


def _verify_mindspore_read(model: nnx.Module, path: str) -> bool:
    """--verify of --mindspore_checkpoint: our weights, written back, are the file's tensors bit for bit."""
    from lightnets.interop import mindspore_ckpt

    entries = mindspore_ckpt.read(path)
    ours = to_mindspore(model, allow_nonfinite=True)
    head = {theirs for ours_path, theirs in mindspore_names(model).items() if model.is_head(ours_path)}
    rows = {len(entries[k]) for k in head if k in entries}
    if rows - {model.num_classes, model.num_classes + _mindspore_classes(model.variant) - 1000}:
        ours = {k: v for k, v in ours.items() if k not in head}  # a new classifier: not the file's
    # A classifier whose spare logit was dropped is compared on the rows the two share.
    same = [k for k, v in ours.items() if k in entries and np.array_equal(entries[k][: len(v)], v[: len(entries[k])])]
    good = len(same) == len(ours)
    verdict = "ok" if good else "FAILED"
    print(f"float32   {len(same)} of {len(ours)} tensors of {path} reproduced bit for bit: {verdict}")
    return good


def _verify_mindspore_write(model: nnx.Module, path: os.PathLike, images: np.ndarray) -> bool:
    """--verify of --to_mindspore: the written file, read back and converted, computes what `model` computes."""
    back = from_mindspore(model.variant, path, num_classes=model.num_classes, allow_nonfinite=True)
    forward = nnx.jit(lambda m, x: m(x))
    ours, theirs = (np.asarray(forward(m, jnp.asarray(images)), np.float32) for m in (model, back))
    diff = float(np.abs(ours - theirs).max())
    relative = diff / float(np.abs(ours).max())
    good = relative <= 1e-4 and bool((ours.argmax(1) == theirs.argmax(1)).all()) and math.isfinite(diff)
    print(
        f"float32   {path} read back: max |logit difference| {diff:.3g} ({relative:.2g} of max |logit|) on "
        f"{len(images)} images: {'ok' if good else 'FAILED'}"
    )
    return good


def main(argv: list[str] | None = None) -> int:

    parser = cli.ArgumentParser(
        prog=PROG,
        description="Convert weights between PyTorch or MindSpore checkpoints and lightnets weights directories.",
        epilog="PyTorch -> lightnets: --model NAME --torch_checkpoint PATH --output DIR. "
        "lightnets -> PyTorch: --checkpoint DIR --to_torch OUT.pth. Add --verify to compare with "
        "the reference PyTorch model (torchvision or timm must be installed) before anything is written. "
        "MindSpore -> lightnets: --model mobilenet_v1_100_ms --mindspore_checkpoint F.ckpt --output DIR; "
        "lightnets -> MindSpore: --checkpoint DIR --to_mindspore OUT.ckpt (MindSpore need not be installed).",
    )
    parser.add_argument("--model", help="registered variant of the checkpoint (see lightnets.list_models())")
    parser.add_argument("--torch_checkpoint", help="PyTorch state dict, training checkpoint or .safetensors file")
    parser.add_argument("--mindspore_checkpoint", help="MindSpore .ckpt (weights or a training checkpoint)")
    parser.add_argument("--output", help="lightnets weights directory to write")
    parser.add_argument("--checkpoint", help="lightnets weights directory to read")
    parser.add_argument("--to_torch", help="PyTorch state dict (.pth) to write from --checkpoint")
    parser.add_argument("--to_mindspore", help="MindSpore .ckpt to write from --checkpoint")
    parser.add_argument(
        "--crc_check",
        action="store_true",
        help="--to_mindspore: end the file in the CRC-32 that crc_check=True verifies",
    )
    parser.add_argument("--num_classes", type=int, help="classifier size (default: the checkpoint's must be 1000)")
    parser.add_argument("--layout", choices=LAYOUTS, help="state-dict layout (default: detected / the reference's)")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="PyTorch: compare with the reference PyTorch model on photos; MindSpore: compare the "
        "conversion read back with what was read; write only if it agrees",
    )
    parser.add_argument("--images", nargs="+", help="image files or globs for --verify (default: sample photos)")
    parser.add_argument("--resolution", type=int, help="--verify resolution (default: the variant's reference one)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --output, an existing --to_torch or --to_mindspore",
    )
    parser.add_argument(
        "--allow_nonfinite", action="store_true", help="convert weights holding a nan or an inf (refused by default)"
    )
    args = parser.parse_args(argv)

    if args.torch_checkpoint and args.mindspore_checkpoint:
        parser.error("give --torch_checkpoint or --mindspore_checkpoint, not both")
    if args.to_torch and args.to_mindspore:
        parser.error("give --to_torch or --to_mindspore, not both")
    mindspore = bool(args.mindspore_checkpoint or args.to_mindspore)
    if args.torch_checkpoint or args.mindspore_checkpoint:
        source = args.torch_checkpoint or args.mindspore_checkpoint
        flag = "--torch_checkpoint" if args.torch_checkpoint else "--mindspore_checkpoint"
        if not (args.model and args.output):
            parser.error(f"{flag} needs --model and --output")
        output = checkpoint.check_destination(args.output, overwrite=args.overwrite)  # before the long work
        if mindspore:
            notes = []
            model = from_mindspore(
                args.model, source, num_classes=args.num_classes, allow_nonfinite=args.allow_nonfinite, notes=notes
            )
            for note in notes:
                print(f"{PROG}: note: {note}", file=sys.stderr)
        else:
            model = from_torch(
                args.model,
                source,
                num_classes=args.num_classes,
                layout=args.layout,
                allow_nonfinite=args.allow_nonfinite,
            )
        name = args.model
    elif args.checkpoint:
        target = args.to_torch or args.to_mindspore
        if not target:
            parser.error("--checkpoint needs --to_torch or --to_mindspore")
        output = checkpoint.check_destination(target, overwrite=args.overwrite, directory=False)
        model = checkpoint.load_weights(args.checkpoint, allow_nonfinite=args.allow_nonfinite)
        name = model.variant
        if mindspore:
            entries = to_mindspore(model, allow_nonfinite=args.allow_nonfinite)
        else:
            state_dict = to_torch(model, layout=args.layout, allow_nonfinite=args.allow_nonfinite)
    else:
        parser.error(
            "give --torch_checkpoint or --mindspore_checkpoint (-> lightnets) or --checkpoint (lightnets -> PyTorch "
            "or MindSpore)"
        )

    if args.verify and model.num_classes == 0:
        raise ValueError("--verify needs a classifier: this model has none (num_classes=0)")
    if args.verify and not mindspore:
        # The reference loads what we convert to, in its own layout, with strict=True.
        reference_state = to_torch(model, allow_nonfinite=True)  # verify judges non-finite weights: they fail
        if not verify(name, reference_state, _verification_images(args, name), num_classes=model.num_classes):
            print(
                f"{PROG}: the conversion does not compute what the reference computes; nothing was written",
                file=sys.stderr,
            )
            return 1
    if args.verify and args.mindspore_checkpoint and not _verify_mindspore_read(model, args.mindspore_checkpoint):
        print(f"{PROG}: the conversion does not hold the checkpoint's weights; nothing was written", file=sys.stderr)
        return 1

    if args.torch_checkpoint or args.mindspore_checkpoint:
        checkpoint.save_weights(model, output, overwrite=args.overwrite, allow_nonfinite=args.allow_nonfinite)
        print(f"wrote {name} ({model.num_classes} classes) to {output}")
    elif mindspore:
        from lightnets.interop import mindspore_ckpt

        partial = output.with_name(output.name + ".partial")  # a cut-off or unverified write never looks complete
        mindspore_ckpt.write(partial, entries, crc_check=args.crc_check)
        if args.verify and not _verify_mindspore_write(model, partial, _verification_images(args, name)):
            partial.unlink()
            print(
                f"{PROG}: {output} read back does not compute what {args.checkpoint} computes; nothing was written",
                file=sys.stderr,
            )
            return 1
        partial.replace(output)
        classes = next(len(entries[theirs]) for ours, theirs in mindspore_names(model).items() if model.is_head(ours))
        print(f"wrote {name} ({classes} classes) as a MindSpore checkpoint to {output}")
    else:
        import torch

        partial = output.with_name(output.name + ".partial")  # a cut-off write never looks complete
        torch.save(state_dict, partial)
        partial.replace(output)
        print(f"wrote {name} ({model.num_classes} classes) as a PyTorch state dict to {output}")
    return 0


def command() -> None:
    """`lightnets-convert`, the entry point pyproject.toml installs: as `python -m lightnets.convert`."""
    cli.run(main, PROG)


if __name__ == "__main__":
    command()
