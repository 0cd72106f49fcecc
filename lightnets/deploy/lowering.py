"""The model's jaxpr as ONNX nodes or TensorFlow ops (for TFLite's converter).

    model = lowering.to_onnx(forward, image_size)        # an onnx.ModelProto, input NCHW
    flatbuffer = lowering.to_tflite(forward, image_size, quantize="int8", calibration=images)

`forward` (pixels -> logits, weights as constants: `export.pixels_forward`) is traced to a jaxpr
with a symbolic batch size, and `_Lowering` walks it: everything that depends only on the
weights is evaluated at export time (BatchNorm thus becomes its convolution's scale and bias),
and the rest is emitted to a backend as ONNX nodes or TensorFlow ops. Only what lightnets'
networks use is lowered (convolutions, matrix products, elementwise arithmetic, sigmoid, sums,
reshapes, transposes, concatenation, split, max pooling); anything else is an
`UnsupportedOperation` naming the primitive.

jax2tf's graphs were not used: with a dynamic batch they broadcast every BatchNorm constant to
the batch's shape at run time, which blocks TFLite's fusions and its int8 quantisation
(measured: 17 % top-1 agreement).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

QUANTIZE = ("none", "float16", "int8")
ONNX_OPSET = 17


def input_spec(size: int) -> jax.ShapeDtypeStruct:
    """A batch of `size` x `size` float32 pixels, NHWC, whose batch size is symbolic."""
    (batch,) = jax.export.symbolic_shape("batch")
    return jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)


# --- jaxpr -> ONNX / TensorFlow -------------------------------------------------------------------


class UnsupportedOperation(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """A run-time value: the backend's handle and its shape (logical NHWC order; a dimension of
    size 1 where a broadcast was left to the consumer)."""

    handle: Any
    shape: tuple


@dataclasses.dataclass(frozen=True)
class _Affine:
    """A convolution (or matrix product) not emitted yet, so that the per-channel constants that
    follow it (BatchNorm, biases) fold into its kernel and bias."""

    x: _Tensor
    kernel: np.ndarray  # HWIO, or (in, out) for a matrix product
    bias: np.ndarray
    conv: dict | None  # strides, pads, groups; None for a matrix product
    shape: tuple


_NUMPY = {  # elementwise primitives, for folding constants that broadcast lazily
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum,
    "min": np.minimum, "neg": np.negative, "exp": np.exp, "sqrt": np.sqrt, "tanh": np.tanh,
    "rsqrt": lambda x: 1 / np.sqrt(x), "logistic": lambda x: 1 / (1 + np.exp(-x)),
}  # fmt: skip
_BINARY = ("add", "sub", "mul", "div", "max", "min")
_UNARY = ("neg", "exp", "sqrt", "rsqrt", "tanh", "logistic")


def _is_static(shape) -> bool:
    return all(isinstance(d, int) for d in shape)


class _Lowering:
    """Walks a jaxpr and emits its operations to `backend`, folding what depends only on constants."""

    def __init__(self, backend):
        self.backend = backend
        self._emitted: dict[int, tuple[_Affine, _Tensor]] = {}  # an affine op used twice is emitted once

    def __call__(self, closed: jex_core.ClosedJaxpr, *inputs: _Tensor) -> list[Any]:
        outs = self._run(closed.jaxpr, [np.asarray(c) for c in closed.consts], list(inputs))
        return [self._tensor(o).handle for o in outs]

    def _run(self, jaxpr, consts, args):
        env: dict = {}
        uses = collections.Counter(v for eqn in jaxpr.eqns for v in eqn.invars if isinstance(v, jex_core.Var))
        uses.update(v for v in jaxpr.outvars if isinstance(v, jex_core.Var))

        def read(v):
            return np.asarray(v.val) if isinstance(v, jex_core.Literal) else env[v]

        for v, value in zip(jaxpr.constvars, consts, strict=True):
            env[v] = value
        for v, value in zip(jaxpr.invars, args, strict=True):
            env[v] = value
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            if name in ("jit", "pjit", "closed_call", "core_call"):
                closed = eqn.params["jaxpr"]
                outs = self._run(closed.jaxpr, [np.asarray(c) for c in closed.consts], ins)
            elif name in ("custom_jvp_call", "custom_vjp_call"):
                closed = eqn.params["call_jaxpr"]
                outs = self._run(closed.jaxpr, [np.asarray(c) for c in closed.consts], ins)
            elif all(isinstance(x, np.ndarray) for x in ins):
                outs = self._fold(eqn, ins)
            else:
                single = [isinstance(v, jex_core.Var) and uses[v] == 1 for v in eqn.invars]
                outs = self._emit(eqn, ins, single)
            if not eqn.primitive.multiple_results:
                outs = [outs]
            for v, value in zip(eqn.outvars, outs, strict=True):
                env[v] = value
        return [read(v) for v in jaxpr.outvars]

    # Constants -----------------------------------------------------------------------------------

    def _fold(self, eqn, ins):
        name, params = eqn.primitive.name, eqn.params
        if name in _NUMPY:
            out = _NUMPY[name](*ins)
            return np.asarray(out, dtype=eqn.outvars[0].aval.dtype)
        if name == "broadcast_in_dim":
            return ins[0].reshape(_aligned(ins[0].shape, params["shape"], params["broadcast_dimensions"]))
        if name == "integer_pow":
            return ins[0] ** params["y"]
        # Shape operations in numpy too: `bind` would compile each one for its shapes (~0.1 s).
        if name in ("reshape", "squeeze") and _is_static(eqn.outvars[0].aval.shape):
            return ins[0].reshape(eqn.outvars[0].aval.shape)
        if name == "transpose":
            return ins[0].transpose(params["permutation"])
        if name == "convert_element_type":
            return ins[0].astype(params["new_dtype"])
        shapes_static = all(_is_static(v.aval.shape) for v in eqn.outvars)
        same = all(x.shape == v.aval.shape for x, v in zip(ins, eqn.invars, strict=True))
        if not (shapes_static and same):
            raise UnsupportedOperation(f"cannot fold {name} over lazily broadcast constants")
        out = eqn.primitive.bind(*[jnp.asarray(x) for x in ins], **params)
        return [np.asarray(o) for o in out] if eqn.primitive.multiple_results else np.asarray(out)

    # Run-time values -----------------------------------------------------------------------------

    def _tensor(self, value) -> _Tensor:
        """Emits a pending convolution or matrix product."""
        if isinstance(value, _Affine):
            if id(value) not in self._emitted:
                b = self.backend
                if value.conv is None:
                    handle = b.dense(value.x, value.kernel, value.bias)
                else:
                    handle = b.conv(value.x, value.kernel, value.bias, **value.conv)
                self._emitted[id(value)] = (value, _Tensor(handle, value.shape))
            return self._emitted[id(value)][1]
        if isinstance(value, np.ndarray):
            raise UnsupportedOperation("an output that depends only on the weights")
        return value

    def _full(self, value, eqn, i=0) -> _Tensor:
        """A tensor whose shape is its full logical shape (the input of a non-elementwise op)."""
        t = self._tensor(value)
        if tuple(t.shape) != tuple(eqn.invars[i].aval.shape):
            raise UnsupportedOperation(f"{eqn.primitive.name} of a broadcast value {t.shape}")
        return t

    def _emit(self, eqn, ins, single_use):
        name, params, b = eqn.primitive.name, eqn.params, self.backend
        shape = tuple(eqn.outvars[0].aval.shape)
        if name == "conv_general_dilated":
            return self._conv(eqn, ins)
        if name == "dot_general":
            return self._dot(eqn, ins)
        if name in _BINARY:
            x, y = ins
            # A constant after a convolution used nowhere else folds into it (add and mul commute).
            if isinstance(x, _Affine) and isinstance(y, np.ndarray) and single_use[0]:
                folded = _fold_affine(name, x, y)
            elif isinstance(y, _Affine) and isinstance(x, np.ndarray) and single_use[1] and name in ("add", "mul"):
                folded = _fold_affine(name, y, x)
            else:
                folded = None
            if folded is not None:
                return folded
            x, y = (v if isinstance(v, np.ndarray) else self._tensor(v) for v in (x, y))
            return _Tensor(b.binary(name, x, y), _broadcast_shape(x, y, shape))
        if name in _UNARY:
            x = self._tensor(ins[0])
            return _Tensor(b.unary(name, x), x.shape)
        if name == "integer_pow":
            x = self._tensor(ins[0])
            if params["y"] != 2:
                raise UnsupportedOperation(f"integer_pow y={params['y']}")
            return _Tensor(b.binary("mul", x, x), x.shape)
        if name in ("convert_element_type", "copy", "copy_p", "optimization_barrier"):
            if name == "convert_element_type" and params["new_dtype"] != jnp.float32:
                raise UnsupportedOperation(f"a cast to {params['new_dtype']} (exports compute in float32)")
            return self._tensor(ins[0])
        if name == "broadcast_in_dim":
            x = self._tensor(ins[0])
            aligned = _aligned(x.shape, params["shape"], params["broadcast_dimensions"])
            return x if tuple(aligned) == tuple(x.shape) else _Tensor(b.reshape(x, aligned), aligned)
        if name in ("reshape", "squeeze"):
            x = self._full(ins[0], eqn)
            return _Tensor(b.reshape(x, shape), shape)
        if name == "transpose":
            x = self._full(ins[0], eqn)
            return _Tensor(b.transpose(x, tuple(params["permutation"])), shape)
        if name == "reduce_sum":
            x = self._full(ins[0], eqn)
            return _Tensor(b.reduce(name, x, tuple(params["axes"])), shape)
        if name == "concatenate":
            xs = [self._full(x, eqn, i) for i, x in enumerate(ins)]
            return _Tensor(b.concat(xs, params["dimension"]), shape)
        if name == "split":
            x = self._full(ins[0], eqn)
            handles = b.split(x, tuple(params["sizes"]), params["axis"])
            return [_Tensor(h, tuple(v.aval.shape)) for h, v in zip(handles, eqn.outvars, strict=True)]
        if name == "reduce_window_max":
            return self._max_pool(eqn, ins)
        raise UnsupportedOperation(f"operation {name!r} has no ONNX/TFLite lowering here")

    def _conv(self, eqn, ins):
        x, kernel = ins
        p = eqn.params
        dn = p["dimension_numbers"]
        if not isinstance(kernel, np.ndarray) or isinstance(x, np.ndarray):
            raise UnsupportedOperation("a convolution whose kernel is not a weight")
        if (dn.lhs_spec, dn.rhs_spec, dn.out_spec) != ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2)):
            raise UnsupportedOperation(f"convolution layout {dn} (NHWC/HWIO expected)")
        if set(p["lhs_dilation"]) | set(p["rhs_dilation"]) != {1} or p["batch_group_count"] != 1:
            raise UnsupportedOperation("dilated or batch-grouped convolution")
        conv = {
            "strides": tuple(p["window_strides"]),
            "pads": tuple(map(tuple, p["padding"])),
            "groups": p["feature_group_count"],
        }
        out = tuple(eqn.outvars[0].aval.shape)
        return _Affine(self._full(x, eqn), kernel, np.zeros(kernel.shape[-1], np.float32), conv, out)

    def _dot(self, eqn, ins):
        x, w = ins
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        rank = len(eqn.invars[0].aval.shape)
        if not isinstance(w, np.ndarray) or w.ndim != 2 or lb or rb or tuple(rc) != (0,) or tuple(lc) != (rank - 1,):
            raise UnsupportedOperation("a matrix product other than activations x weights")
        out = tuple(eqn.outvars[0].aval.shape)
        bias = np.zeros(w.shape[1], np.float32)
        if rank == 4:  # a 1x1 convolution written as a product
            conv = {"strides": (1, 1), "pads": ((0, 0), (0, 0)), "groups": 1}
            return _Affine(self._full(x, eqn), w.reshape(1, 1, *w.shape), bias, conv, out)
        if rank != 2:
            raise UnsupportedOperation(f"a matrix product of a rank-{rank} input")
        return _Affine(self._full(x, eqn), w, bias, None, out)

    def _max_pool(self, eqn, ins):
        x = self._full(ins[0], eqn)
        p = eqn.params
        window, strides, pads = p["window_dimensions"], p["window_strides"], p["padding"]
        if (window[0], window[3], strides[0], strides[3]) != (1, 1, 1, 1) or (pads[0], pads[3]) != ((0, 0), (0, 0)):
            raise UnsupportedOperation("max pooling over the batch or channel axis")
        if set(p["base_dilation"]) | set(p["window_dilation"]) != {1}:
            raise UnsupportedOperation("dilated max pooling")
        handle = self.backend.max_pool(x, tuple(window[1:3]), tuple(strides[1:3]), (tuple(pads[1]), tuple(pads[2])))
        return _Tensor(handle, tuple(eqn.outvars[0].aval.shape))


def _aligned(shape, target, broadcast_dimensions) -> tuple:
    """`shape` placed in a rank-`len(target)` shape at `broadcast_dimensions`, 1 elsewhere."""
    out = [1] * len(target)
    for i, d in enumerate(broadcast_dimensions):
        out[d] = shape[i]
    return tuple(out)


def _broadcast_shape(x, y, full) -> tuple:
    """The result's shape, keeping a size-1 dimension where both operands have one."""
    sx, sy = tuple(x.shape), tuple(y.shape)
    if len(sx) < len(full):
        sx = (1,) * (len(full) - len(sx)) + sx
    if len(sy) < len(full):
        sy = (1,) * (len(full) - len(sy)) + sy
    return tuple(1 if (a == 1 and b == 1) else f for a, b, f in zip(sx, sy, full, strict=True))


def _fold_affine(name: str, affine: _Affine, c: np.ndarray) -> _Affine | None:
    """`affine <op> c` as one affine op, when `c` is per output channel; else None."""
    channels = affine.kernel.shape[-1]
    if c.ndim > len(affine.shape) or any(d != 1 for d in c.shape[:-1]) or (c.ndim and c.shape[-1] not in (1, channels)):
        return None
    c = np.broadcast_to(c.reshape(-1) if c.ndim else c, (channels,)).astype(np.float32)
    kernel, bias = affine.kernel, affine.bias
    if name == "add":
        bias = bias + c
    elif name == "sub":
        bias = bias - c
    elif name == "mul":
        kernel, bias = kernel * c, bias * c
    elif name == "div":
        kernel, bias = kernel / c, bias / c
    else:
        return None
    return dataclasses.replace(affine, kernel=kernel.astype(np.float32), bias=bias.astype(np.float32))


def _dims(shape) -> list[int]:
    """A shape for a reshape: the symbolic batch as -1."""
    dims = [d if isinstance(d, int) else -1 for d in shape]
    if dims.count(-1) > 1:
        raise UnsupportedOperation(f"a reshape to {shape} with more than one symbolic dimension")
    return dims


# --- ONNX -----------------------------------------------------------------------------------------

_NHWC_TO_NCHW = (0, 3, 1, 2)
_NCHW_TO_NHWC = (0, 2, 3, 1)


@dataclasses.dataclass(frozen=True)
class _OnnxValue:
    name: str
    nchw: bool  # a rank-4 value stored NCHW (its logical axes are NHWC)


class _OnnxBackend:
    """Emits ONNX nodes. Convolutions and pooling want NCHW: rank-4 values stay NCHW between them
    and are transposed only where an operation needs the logical NHWC order."""

    _OPS: ClassVar[dict[str, str]] = {
        "add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min", "neg": "Neg",
        "exp": "Exp", "sqrt": "Sqrt", "tanh": "Tanh", "logistic": "Sigmoid", "reduce_sum": "ReduceSum",
    }  # fmt: skip

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers, self._count = [], [], collections.Counter()

    def _name(self, prefix: str) -> str:
        self._count[prefix] += 1
        return f"{prefix}_{self._count[prefix]}"

    def _node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:
        outs = [self._name(op.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op, inputs, outs, name=self._name(f"{op}_node"), **attrs))
        return outs

    def constant(self, value: np.ndarray, prefix: str = "const") -> str:
        name = self._name(prefix)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def _layout(self, t: _Tensor, nchw: bool) -> str:
        v: _OnnxValue = t.handle
        if v.nchw == nchw or len(t.shape) != 4:
            return v.name
        return self._node("Transpose", [v.name], perm=list(_NHWC_TO_NCHW if nchw else _NCHW_TO_NHWC))[0]

    def _nhwc(self, t: _Tensor) -> str:
        return self._layout(t, False)

    def conv(self, x: _Tensor, kernel, bias, strides, pads, groups) -> _OnnxValue:
        (top, bottom), (left, right) = pads
        w = self.constant(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), "weight")  # HWIO -> OIHW
        out = self._node(
            "Conv",
            [self._layout(x, True), w, self.constant(bias, "bias")],
            kernel_shape=list(kernel.shape[:2]),
            strides=list(strides),
            pads=[top, left, bottom, right],
            group=groups,
        )
        return _OnnxValue(out[0], True)

    def dense(self, x: _Tensor, kernel, bias) -> _OnnxValue:
        out = self._node("Gemm", [x.handle.name, self.constant(kernel, "weight"), self.constant(bias, "bias")])
        return _OnnxValue(out[0], False)

    def _operand(self, v, nchw: bool) -> str:
        if isinstance(v, np.ndarray):
            c = v.astype(np.float32)
            if nchw and c.ndim == 4:
                c = c.transpose(_NHWC_TO_NCHW)
            return self.constant(c)
        return self._layout(v, nchw) if len(v.shape) == 4 else v.handle.name

    def binary(self, name, x, y) -> _OnnxValue:
        tensors = [v for v in (x, y) if isinstance(v, _Tensor)]
        nchw = all(t.handle.nchw for t in tensors if len(t.shape) == 4) and any(len(t.shape) == 4 for t in tensors)
        out = self._node(self._OPS[name], [self._operand(x, nchw), self._operand(y, nchw)])
        return _OnnxValue(out[0], nchw)

    def unary(self, name, x: _Tensor) -> _OnnxValue:
        if name == "rsqrt":
            s = self._node("Sqrt", [x.handle.name])[0]
            return _OnnxValue(self._node("Reciprocal", [s])[0], x.handle.nchw)
        return _OnnxValue(self._node(self._OPS[name], [x.handle.name])[0], x.handle.nchw)

    def reshape(self, x: _Tensor, shape) -> _OnnxValue:
        target = self.constant(np.asarray(_dims(shape), np.int64), "shape")
        return _OnnxValue(self._node("Reshape", [self._nhwc(x), target])[0], False)

    def transpose(self, x: _Tensor, perm) -> _OnnxValue:
        return _OnnxValue(self._node("Transpose", [self._nhwc(x)], perm=list(perm))[0], False)

    def reduce(self, name, x: _Tensor, axes) -> _OnnxValue:
        v: _OnnxValue = x.handle
        if v.nchw:
            physical = [_NHWC_TO_NCHW.index(a) for a in axes]
            kept = [a for a in _NHWC_TO_NCHW if a not in axes]  # the logical axes in stored order
            if kept == sorted(kept):
                axes_const = self.constant(np.asarray(physical, np.int64), "axes")
                return _OnnxValue(self._node(self._OPS[name], [v.name, axes_const], keepdims=0)[0], False)
        axes_const = self.constant(np.asarray(axes, np.int64), "axes")
        return _OnnxValue(self._node(self._OPS[name], [self._nhwc(x), axes_const], keepdims=0)[0], False)

    def concat(self, xs: list[_Tensor], axis: int) -> _OnnxValue:
        nchw = len(xs[0].shape) == 4 and all(x.handle.nchw for x in xs)
        names = [self._layout(x, nchw) if len(x.shape) == 4 else x.handle.name for x in xs]
        return _OnnxValue(self._node("Concat", names, axis=_NHWC_TO_NCHW.index(axis) if nchw else axis)[0], nchw)

    def split(self, x: _Tensor, sizes, axis) -> list[_OnnxValue]:
        nchw = len(x.shape) == 4 and x.handle.nchw
        sizes_const = self.constant(np.asarray(sizes, np.int64), "sizes")
        outs = self._node(
            "Split", [x.handle.name, sizes_const], n_out=len(sizes), axis=_NHWC_TO_NCHW.index(axis) if nchw else axis
        )
        return [_OnnxValue(o, nchw) for o in outs]

    def max_pool(self, x: _Tensor, window, strides, pads) -> _OnnxValue:
        (top, bottom), (left, right) = pads
        out = self._node(
            "MaxPool",
            [self._layout(x, True)],
            kernel_shape=list(window),
            strides=list(strides),
            pads=[top, left, bottom, right],
        )
        return _OnnxValue(out[0], True)

    def output(self, t: _Tensor) -> str:
        return self._nhwc(t) if len(t.shape) == 4 else t.handle.name


def to_onnx(forward: Callable, image_size: int, *, metadata: dict[str, str] | None = None):
    """The ONNX model (an `onnx.ModelProto`) of `forward`, input `pixels[N, 3, H, W]`."""
    import onnx
    from onnx import TensorProto, helper

    closed = jax.make_jaxpr(forward)(input_spec(image_size))
    backend = _OnnxBackend()
    batch = closed.in_avals[0].shape[0]
    pixels = _Tensor(_OnnxValue("pixels", True), (batch, image_size, image_size, 3))
    (out,) = _Lowering(backend)(closed, pixels)
    out_shape = closed.out_avals[0].shape
    logits = _Tensor(out, tuple(out_shape))
    final = backend.output(logits)
    backend.nodes.append(helper.make_node("Identity", [final], ["logits"], name="logits_node"))
    graph = helper.make_graph(
        backend.nodes,
        "lightnets",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", *out_shape[1:]])],
        backend.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="lightnets")
    model.ir_version = 8  # onnxruntime 1.14+ reads it
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    return model


# --- TensorFlow (for TFLite) ----------------------------------------------------------------------


class _TfBackend:
    """Emits TensorFlow ops (NHWC, as TFLite wants), inside a `tf.function`."""

    def __init__(self):
        import tensorflow as tf

        self.tf = tf

    def conv(self, x: _Tensor, kernel, bias, strides, pads, groups):
        tf = self.tf
        h, w = x.shape[1:3]
        padding = _tf_padding(pads, (h, w), kernel.shape[:2], strides)
        channels = kernel.shape[-1]
        if groups == 1:
            y = tf.nn.conv2d(x.handle, kernel, (1, *strides, 1), padding)
        elif groups == kernel.shape[-1] and kernel.shape[2] == 1:  # depthwise: HW1C -> HWC1
            dw = kernel.reshape(*kernel.shape[:2], channels, 1)
            y = tf.nn.depthwise_conv2d(x.handle, dw, (1, *strides, 1), padding)
        else:
            raise UnsupportedOperation(f"grouped convolution (groups={groups}) for TFLite")
        return tf.nn.bias_add(y, bias)

    def dense(self, x: _Tensor, kernel, bias):
        return self.tf.matmul(x.handle, kernel) + bias

    def _value(self, v):
        return v.astype(np.float32) if isinstance(v, np.ndarray) else v.handle

    def binary(self, name, x, y):
        tf = self.tf
        fn = {"add": tf.add, "sub": tf.subtract, "mul": tf.multiply, "div": tf.divide, "max": tf.maximum,
              "min": tf.minimum}[name]  # fmt: skip
        return fn(self._value(x), self._value(y))

    def unary(self, name, x: _Tensor):
        tf = self.tf
        fn = {"neg": tf.negative, "exp": tf.exp, "sqrt": tf.sqrt, "rsqrt": tf.math.rsqrt, "tanh": tf.tanh,
              "logistic": tf.sigmoid}[name]  # fmt: skip
        return fn(x.handle)

    def reshape(self, x: _Tensor, shape):
        return self.tf.reshape(x.handle, _dims(shape))

    def transpose(self, x: _Tensor, perm):
        return self.tf.transpose(x.handle, perm)

    def reduce(self, name, x: _Tensor, axes):
        return self.tf.reduce_sum(x.handle, axis=list(axes))

    def concat(self, xs, axis):
        return self.tf.concat([x.handle for x in xs], axis)

    def split(self, x: _Tensor, sizes, axis):
        return self.tf.split(x.handle, list(sizes), axis)

    def max_pool(self, x: _Tensor, window, strides, pads):
        padding = _tf_padding(pads, x.shape[1:3], window, strides)
        if isinstance(padding, list) and all(
            k % 2 and p == ((k - 1) // 2,) * 2 for k, p in zip(window, pads, strict=True)
        ):
            # PyTorch's symmetric pooling as a stride-1 "SAME" pooling, subsampled. The direct form,
            # a -inf PADV2, made XNNPACK refuse the int8 model (ShuffleNetV2); this one costs
            # stride^2 more comparisons in a layer that has few.
            y = self.tf.nn.max_pool2d(x.handle, window, 1, "SAME")
            return y[:, :: strides[0], :: strides[1], :]
        if isinstance(padding, list):  # padded values never win, as in lax.reduce_window with -inf
            x_handle = self.tf.pad(x.handle, padding, constant_values=-np.inf)
            return self.tf.nn.max_pool2d(x_handle, window, strides, "VALID")
        return self.tf.nn.max_pool2d(x.handle, window, strides, padding)


def _tf_padding(pads, size, window, strides):
    """ "VALID", "SAME" when the pads are TensorFlow's, else explicit NHWC pads."""
    if all(p == (0, 0) for p in pads):
        return "VALID"
    same = []
    for n, k, s in zip(size, window, strides, strict=True):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        same.append((total // 2, total - total // 2))
    if tuple(map(tuple, pads)) == tuple(same):
        return "SAME"
    return [[0, 0], list(pads[0]), list(pads[1]), [0, 0]]


def to_tf_function(forward: Callable, image_size: int):
    """A `tf.function` computing `forward` with TensorFlow ops, input `pixels[N, H, W, 3]`."""
    import tensorflow as tf

    closed = jax.make_jaxpr(forward)(input_spec(image_size))
    batch = closed.in_avals[0].shape[0]

    # autograph off: there is no Python control flow to convert, and converting the lowering took 15 s.
    signature = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="pixels")]

    @tf.function(input_signature=signature, autograph=False)
    def tf_forward(pixels):
        (out,) = _Lowering(_TfBackend())(closed, _Tensor(pixels, (batch, image_size, image_size, 3)))
        return {"logits": out}

    return tf_forward


def to_tflite(
    forward: Callable, image_size: int, *, quantize: str = "none", calibration: Iterator[np.ndarray] | None = None
) -> bytes:
    """A TFLite flatbuffer of `forward`; int8 needs `calibration` (pixel batches of one image)."""
    import tensorflow as tf

    tf_forward = to_tf_function(forward, image_size)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([tf_forward.get_concrete_function()], tf_forward)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if calibration is None:
            raise ValueError("int8 quantisation needs calibration images")
        images = list(calibration)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None].astype(np.float32)] for image in images)
        # Every op in int8 (inputs and outputs stay float32, quantised at the edges).
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif quantize != "none":
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    return converter.convert()
