"""MindSpore's `.ckpt` files, read and written without MindSpore.

    entries = mindspore_ckpt.read("mobilenetv1.ckpt")   # {"network.0.0.weight": array, ...}
    mindspore_ckpt.write("out.ckpt", entries)           # what mindspore.load_checkpoint reads

The format is protobuf (`mindspore_checkpoint.proto` beside this file): a concatenation of
`Checkpoint` messages holding one `Value` (a tag and a tensor) each; a tensor over 512 MiB is
split along its first axis into consecutive values of one tag; an optional trailer b"crc_num" +
a 10-byte big-endian CRC-32 of everything before it (`save_checkpoint(..., crc_check=True)`).
Contents are raw little-endian bytes in C order; scalars have dims [] or [0]; strings (from
`append_dict`) have the type "str" and UTF-32 content.

The descriptor is built here from the .proto's definition rather than from a checked-in
`_pb2.py`: protoc's generated code refuses a protobuf runtime older than the protoc that wrote
it (`ValidateProtobufRuntimeVersion`; MindSpore 2.10's needs protobuf >= 7.34) and regenerating
it needs protoc, which no requirement installs; a descriptor built at import works with the
venv's protobuf (7.36) and every one back to 4.21 (`message_factory.GetMessageClass`).
tests/test_mindspore.py checks that it is the one MindSpore itself uses. It lives in a private
pool, so that no other `Checkpoint` message in the process (MindSpore's, TensorFlow's) clashes.

Nothing is ever returned partly: a file that is truncated, damaged, holds an unknown tensor type
or dims that do not fit its content is a ValueError naming the file and the tag.
"""

from __future__ import annotations

import binascii
import math
import os
import pathlib
from collections.abc import Mapping

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

# MindSpore's tensor_type names and their numpy types (mindspore/train/serialization.py's
# `_tensor_to_np_type`, plus BFloat16, which numpy lacks: ml_dtypes' is the same bits).
_NUMPY_TYPES = {
    "Bool": np.bool_,
    "Int8": np.int8,
    "UInt8": np.uint8,
    "Int16": np.int16,
    "UInt16": np.uint16,
    "Int32": np.int32,
    "UInt32": np.uint32,
    "Int64": np.int64,
    "UInt64": np.uint64,
    "Float16": np.float16,
    "Float32": np.float32,
    "Float64": np.float64,
}
_STRING = "str"
_CRC_MARK = b"crc_num"
_CRC_BYTES = 10
# MindSpore's SLICE_SIZE: tensors larger than this are written in pieces (protobuf's limit of
# 2 GiB a message is then never reached).
SLICE_BYTES = 512 * 1024 * 1024


def _numpy_type(name: str):
    if name == "BFloat16":
        import ml_dtypes  # a jax dependency

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_NUMPY_TYPES[name]) if name in _NUMPY_TYPES else None


def _type_name(dtype: np.dtype) -> str:
    if dtype.name == "bfloat16":
        return "BFloat16"
    name = next((n for n, t in _NUMPY_TYPES.items() if np.dtype(t) == dtype), None)
    if name is None:
        raise ValueError(f"MindSpore checkpoints hold {sorted(_NUMPY_TYPES)} and BFloat16 tensors, not {dtype}")
    return name


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """mindspore_checkpoint.proto, field by field."""
    f = descriptor_pb2.FieldDescriptorProto
    required, optional, repeated = f.LABEL_REQUIRED, f.LABEL_OPTIONAL, f.LABEL_REPEATED
    proto = descriptor_pb2.FileDescriptorProto(name="checkpoint.proto")  # proto2: no syntax field

    def field(message, name, number, label, kind, type_name=None, oneof=None):
        added = message.field.add(name=name, number=number, label=label, type=kind)
        if type_name:
            added.type_name = type_name
        if oneof is not None:
            added.oneof_index = oneof

    checkpoint = proto.message_type.add(name="Checkpoint")
    value = checkpoint.nested_type.add(name="Value")
    field(value, "tag", 1, required, f.TYPE_STRING)
    value.oneof_decl.add(name="value")
    field(value, "tensor", 2, optional, f.TYPE_MESSAGE, ".TensorProto", oneof=0)
    field(value, "maptensor", 3, optional, f.TYPE_MESSAGE, ".MapTensorProto", oneof=0)
    field(checkpoint, "value", 1, repeated, f.TYPE_MESSAGE, ".Checkpoint.Value")
    tensor = proto.message_type.add(name="TensorProto")
    field(tensor, "dims", 1, repeated, f.TYPE_INT64)
    field(tensor, "tensor_type", 2, required, f.TYPE_STRING)
    field(tensor, "tensor_content", 3, required, f.TYPE_BYTES)
    map_tensor = proto.message_type.add(name="MapTensorProto")
    field(map_tensor, "tensor", 1, repeated, f.TYPE_MESSAGE, ".TensorProto")
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())
Checkpoint = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("Checkpoint"))
Value = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("Checkpoint.Value"))
TensorProto = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("TensorProto"))
# Each concatenated Checkpoint message starts with the key of its one `value` (field 1, length-delimited).
_VALUE_KEY = 0x0A


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    """The varint at `at` and the offset after it; IndexError if the data ends inside it."""
    result = shift = 0
    while True:
        byte = data[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, at
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def _values(data: memoryview, path: str):
    """The (offset, Value) messages of a file's content, in order."""
    at, previous = 0, None
    while at < len(data):
        where = f"after tag {previous!r}" if previous else "at its first value"
        if data[at] != _VALUE_KEY:
            raise ValueError(f"{path} is not a MindSpore checkpoint or is damaged {where} (byte {at}: not a value)")
        try:
            length, start = _varint(data, at + 1)
        except (IndexError, ValueError):
            raise ValueError(f"{path} is truncated or damaged {where} (byte {at})") from None
        if start + length > len(data):
            raise ValueError(
                f"{path} is truncated {where}: a value of {length} bytes at byte {at}, {len(data) - start} left"
            )
        try:
            value = Value.FromString(bytes(data[start : start + length]))
        except DecodeError as e:
            raise ValueError(f"{path} is damaged {where} (byte {at}: {e})") from None
        yield at, value
        previous = value.tag
        at = start + length


def read(path: str | os.PathLike) -> dict[str, np.ndarray | str]:
    """Every entry of a `.ckpt` file: tag -> numpy array (a string for "str" entries).

    The pieces of a split tensor are joined; a crc_num trailer is verified. Map tensors
    (embedding tables of recommendation networks) are not read: a ValueError names them.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no MindSpore checkpoint at {path}")
    data = pathlib.Path(path).read_bytes()
    if not data:
        raise ValueError(f"{path} is empty, not a MindSpore checkpoint")
    if data[-_CRC_BYTES - len(_CRC_MARK) : -_CRC_BYTES] == _CRC_MARK:
        body, stored = data[: -_CRC_BYTES - len(_CRC_MARK)], int.from_bytes(data[-_CRC_BYTES:], "big")
        if binascii.crc32(body) != stored:
            raise ValueError(
                f"{path} fails its CRC-32 check (stored {stored}, computed {binascii.crc32(body)}): the file is damaged"
            )
        data = body
    pieces: dict[str, list] = {}  # tag -> [tensor_type, dims, [content, ...]]
    last = None
    for at, value in _values(memoryview(data), path):
        tag = value.tag
        if not value.HasField("tensor"):
            raise ValueError(f"{path}: {tag!r} is a map tensor (MindSpore's MapParameter); lightnets reads tensors")
        tensor = value.tensor
        if tag in pieces:
            kind, dims, _ = pieces[tag]
            if tag != last:
                raise ValueError(f"{path} is damaged: tag {tag!r} appears twice, not in consecutive pieces")
            if (tensor.tensor_type, list(tensor.dims)) != (kind, dims):
                raise ValueError(f"{path} is damaged: the pieces of {tag!r} disagree on type or dims (byte {at})")
        else:
            pieces[tag] = [tensor.tensor_type, list(tensor.dims), []]
        pieces[tag][2].append(tensor.tensor_content)
        last = tag
    return {tag: _decode(path, tag, kind, dims, b"".join(content)) for tag, (kind, dims, content) in pieces.items()}


def _decode(path: str, tag: str, kind: str, dims: list[int], content: bytes) -> np.ndarray | str:
    if kind == _STRING:
        return content.decode("utf-32-le").rstrip("\0")
    dtype = _numpy_type(kind)
    if dtype is None:
        known = ", ".join([*_NUMPY_TYPES, "BFloat16", _STRING])
        raise ValueError(f"{path}: tag {tag!r} has tensor_type {kind!r}; MindSpore checkpoints hold {known}")
    if dims == [0] and len(content) == dtype.itemsize:  # MindSpore writes a scalar's dims as [0]
        dims = []
    if any(d < 0 for d in dims) or math.prod(dims) * dtype.itemsize != len(content):
        raise ValueError(
            f"{path}: tag {tag!r} has dims {dims} of {kind} ({math.prod(dims) * dtype.itemsize} bytes) "
            f"but {len(content)} bytes of content: the file is damaged"
        )
    return np.frombuffer(content, dtype.newbyteorder("<")).astype(dtype).reshape(dims)


def write(
    path: str | os.PathLike,
    entries: Mapping[str, np.ndarray | str],
    *,
    crc_check: bool = False,
    slice_bytes: int = SLICE_BYTES,
) -> None:
    """Writes `entries` (tag -> array or string) as `mindspore.save_checkpoint` would.

    The file appears complete or not at all (written beside it, then renamed). `crc_check`
    adds the CRC-32 trailer that `load_checkpoint(..., crc_check=True)` verifies; tensors over
    `slice_bytes` are split along their first axis as MindSpore splits them.
    """
    path = pathlib.Path(path)
    chunks = []
    for tag, array in entries.items():
        if isinstance(array, str):
            message = Checkpoint()
            message.value.add(tag=tag).tensor.MergeFrom(_tensor([0], _STRING, array.encode("utf-32-le")))
            chunks.append(message.SerializeToString())
            continue
        array = np.asarray(array)
        kind = _type_name(array.dtype)
        little = np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
        count = max(1, math.ceil(little.nbytes / slice_bytes)) if little.ndim else 1
        for piece in np.array_split(little, count) if count > 1 else [little]:
            message = Checkpoint()
            message.value.add(tag=tag).tensor.MergeFrom(_tensor(list(array.shape), kind, piece.tobytes()))
            chunks.append(message.SerializeToString())
    data = b"".join(chunks)
    if crc_check:
        data += _CRC_MARK + binascii.crc32(data).to_bytes(_CRC_BYTES, "big")
    partial = path.with_name(path.name + ".partial")  # a cut-off write never looks complete
    partial.write_bytes(data)
    partial.replace(path)


def _tensor(dims: list[int], kind: str, content: bytes):
    return TensorProto(dims=dims, tensor_type=kind, tensor_content=content)
