"""The value codec: msgpack with extension frames for tensors and arrays. No pickle by default.

Large buffers (tensor and array data, safetensors payloads of 64 KiB or more) are not copied
into the msgpack document: they follow it as raw *frames*, and the document refers to them by
index. The encoded value is then ``b"\\xc1RF\\x02"`` (``0xc1`` is never a msgpack byte), the
frame count and lengths, the document, and the frames, joined with one copy; decoding a
writable buffer (what the engine hands back) gives tensors and arrays that share its memory.

Encodable: None, bool, int, float, str, bytes, lists, tuples, dicts with str (or int) keys, numpy
arrays, torch tensors (any dtype incl. bf16/fp8, non-contiguous, GPU), dicts of tensors (stored
in the safetensors layout), and types with a registered codec. Anything else raises
``SerializationError`` naming the node, the key path and the type.

>>> decode(encode({"a": [1, (2, 3)]}))
{'a': [1, (2, 3)]}
"""

from __future__ import annotations

import functools
import json
import struct
import sys
from collections.abc import Callable
from typing import Any

import msgpack

from ._core import SerializationError

# Extension type codes.
_EXT_TUPLE = 1
_EXT_NDARRAY = 2
_EXT_TENSOR = 3
_EXT_SAFETENSORS = 4
_EXT_CUSTOM = 5
_EXT_PICKLE = 6
_EXT_BIGINT = 7
_EXT_NDARRAY_FRAME = 8
_EXT_TENSOR_FRAME = 9
_EXT_SAFETENSORS_FRAME = 10

#: Prefix of a framed value; 0xc1 never starts a msgpack document.
_MAGIC = b"\xc1RF\x02"
#: Buffers at least this large become frames.
_FRAME_MIN = 64 << 10
#: Frames start at multiples of this offset in the value.
_ALIGN = 64

_custom_by_type: dict[type, tuple[str, Callable[[Any], bytes]]] = {}
_custom_by_name: dict[str, Callable[[bytes], Any]] = {}
_pickle_enabled = False


def register_codec(
    cls: type, name: str, encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]
) -> None:
    """Teaches the codec a type: ``encode(obj) -> bytes`` and ``decode(bytes) -> obj``.

    >>> import fractions
    >>> register_codec(fractions.Fraction, "fraction", lambda f: str(f).encode(),
    ...                lambda b: fractions.Fraction(b.decode()))
    >>> decode(encode(fractions.Fraction(1, 3)))
    Fraction(1, 3)
    """
    _custom_by_type[cls] = (name, encode)
    _custom_by_name[name] = decode


def enable_pickle(enabled: bool = True) -> None:
    """Allows pickle for otherwise unencodable values (off by default: unpickling runs code).

    >>> enable_pickle(False)
    """
    global _pickle_enabled
    _pickle_enabled = enabled


class _Unencodable(Exception):
    def __init__(self, path: str, obj: Any, why: str = "") -> None:
        super().__init__(path)
        self.path = path
        self.obj = obj
        self.why = why


# --- tensors -----------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "complex64": "C64",
}
_TORCH_BY_SAFETENSORS = {v: k for k, v in _SAFETENSORS_DTYPES.items()}


def _is_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _is_ndarray(obj: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, np.ndarray)


def _tensor_bytes(t: Any, path: str) -> tuple[str, list[int], str, bytes | memoryview]:
    import torch

    if t.is_sparse or t.is_quantized or getattr(t, "is_nested", False):
        raise _Unencodable(path, t, "sparse, quantized and nested tensors are not supported")
    device = str(t.device)
    host = t.detach().resolve_conj().resolve_neg().contiguous().cpu()
    dtype = str(host.dtype).removeprefix("torch.")
    shape = list(host.shape)
    if host.numel() == 0:
        return dtype, shape, device, b""
    # A view of the tensor's memory: msgpack copies it once, into the encoded value.
    raw = memoryview(host.reshape(-1).view(torch.uint8).numpy())
    return dtype, shape, device, raw


def _tensor_from(dtype: str, shape: list[int], device: str, raw: bytes | memoryview) -> Any:
    import torch

    torch_dtype = getattr(torch, dtype)
    if not len(raw):
        t = torch.empty(shape, dtype=torch_dtype)
    else:
        # A writable frame is shared (no copy); anything else is copied once.
        buf = raw if isinstance(raw, memoryview) and not raw.readonly else bytearray(raw)
        t = torch.frombuffer(buf, dtype=torch.uint8).view(torch_dtype).reshape(shape)
    if device != "cpu":
        kind, _, index = device.partition(":")
        backend = getattr(torch, kind, None)
        if backend is not None and hasattr(backend, "is_available") and backend.is_available():
            count = backend.device_count() if hasattr(backend, "device_count") else 1
            # Saved on a device this machine lacks (cuda:1 on a one-GPU box): use the first.
            target = device if (not index or int(index) < count) else f"{kind}:0"
            t = t.to(target)
    return t


def _safetensors_pack(tensors: dict[str, Any], path: str) -> bytes:
    header: dict[str, Any] = {}
    devices: dict[str, str] = {}
    chunks: list[bytes | memoryview] = []
    offset = 0
    for key, t in tensors.items():
        dtype, shape, device, raw = _tensor_bytes(t, f"{path}[{key!r}]")
        if dtype not in _SAFETENSORS_DTYPES:
            raise _Unencodable(f"{path}[{key!r}]", t, f"dtype {dtype} has no safetensors name")
        header[key] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": shape,
            "data_offsets": [offset, offset + len(raw)],
        }
        devices[key] = device
        chunks.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"resumeflow.devices": json.dumps(devices)}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return b"".join([struct.pack("<Q", len(blob)), blob, *chunks])


def _itemsize(dtype: str) -> int:
    import torch

    return int(torch.empty(0, dtype=getattr(torch, dtype)).element_size())


def _safetensors_unpack(data: bytes | memoryview) -> dict[str, Any]:
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(bytes(data[8 : 8 + n]))
    meta = header.pop("__metadata__", {}) or {}
    devices = json.loads(meta.get("resumeflow.devices", "{}"))
    base = 8 + n
    out: dict[str, Any] = {}
    for key, info in header.items():
        start, end = info["data_offsets"]
        dtype = _TORCH_BY_SAFETENSORS[info["dtype"]]
        raw = data[base + start : base + end]
        if isinstance(raw, memoryview) and (base + start) % _itemsize(dtype):
            raw = bytes(raw)  # packed after a smaller dtype: misaligned for a shared view
        out[key] = _tensor_from(dtype, info["shape"], devices.get(key, "cpu"), raw)
    return out


def _is_tensor_dict(obj: dict[Any, Any]) -> bool:
    """A dict that can be stored in the safetensors layout (else each tensor gets a frame)."""
    return (
        bool(obj)
        and all(isinstance(k, str) and k != "__metadata__" for k in obj)
        and all(_is_tensor(v) and str(v.dtype).removeprefix("torch.") in _SAFETENSORS_DTYPES
                and not v.is_sparse and not v.is_quantized for v in obj.values())
    )


# --- walk ----------------------------------------------------------------------------------


def _frame(frames: list[Any] | None, buf: Any) -> int | None:
    """Appends ``buf`` as a frame and returns its index, if it is large enough to be one."""
    if frames is None or len(buf) < _FRAME_MIN:
        return None
    frames.append(buf)
    return len(frames) - 1


def _prepare(obj: Any, path: str, frames: list[Any] | None = None) -> Any:
    """Turns ``obj`` into msgpack-native values and ExtTypes, checking every type; large
    buffers go to ``frames`` (when given) instead of into the document."""
    if obj is None or isinstance(obj, (bool, float, str, bytes)):
        return obj
    if isinstance(obj, int):
        if -(2**63) <= obj < 2**64:
            return obj
        return msgpack.ExtType(_EXT_BIGINT, str(obj).encode())
    if isinstance(obj, list):
        return [_prepare(v, f"{path}[{i}]", frames) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        items = [_prepare(v, f"{path}[{i}]", frames) for i, v in enumerate(obj)]
        return msgpack.ExtType(_EXT_TUPLE, msgpack.packb(items, use_bin_type=True))
    if isinstance(obj, dict):
        if _is_tensor_dict(obj):
            packed = _safetensors_pack(obj, path)
            index = _frame(frames, packed)
            if index is not None:
                return msgpack.ExtType(_EXT_SAFETENSORS_FRAME, msgpack.packb(index))
            return msgpack.ExtType(_EXT_SAFETENSORS, packed)
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise _Unencodable(f"{path}[{k!r}]", k, "dict keys must be str or int")
            if isinstance(k, int) and not -(2**63) <= k < 2**64:
                raise _Unencodable(f"{path}[{k!r}]", k, "int dict keys must fit in 64 bits")
            out[k] = _prepare(v, f"{path}[{k!r}]", frames)
        return out
    if _is_tensor(obj):
        dtype, shape, device, raw = _tensor_bytes(obj, path)
        index = _frame(frames, raw)
        if index is not None:
            return msgpack.ExtType(_EXT_TENSOR_FRAME, msgpack.packb([dtype, shape, device, index]))
        return msgpack.ExtType(_EXT_TENSOR, msgpack.packb([dtype, shape, device, raw], use_bin_type=True))
    if _is_ndarray(obj):
        import numpy as np

        if type(obj) is not np.ndarray:
            raise _Unencodable(path, obj, "numpy array subclasses (e.g. masked arrays) are not supported; pass np.asarray(x)")
        if obj.dtype.hasobject:
            raise _Unencodable(path, obj, "numpy arrays of Python objects are not supported")
        arr = obj if obj.flags.c_contiguous else np.array(obj, order="C")
        descr = np.lib.format.dtype_to_descr(arr.dtype)  # keeps structured dtypes' fields
        flat: Any = arr.reshape(-1).view(np.uint8)
        index = _frame(frames, memoryview(flat)) if arr.size else None
        if index is not None:
            return msgpack.ExtType(
                _EXT_NDARRAY_FRAME, msgpack.packb([descr, list(arr.shape), index], use_bin_type=True)
            )
        return msgpack.ExtType(
            _EXT_NDARRAY,
            msgpack.packb([descr, list(arr.shape), arr.tobytes()], use_bin_type=True),
        )
    codec = _custom_by_type.get(type(obj))
    if codec is not None:
        name, enc = codec
        return msgpack.ExtType(_EXT_CUSTOM, msgpack.packb([name, enc(obj)], use_bin_type=True))
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(obj, numpy.generic):
        return _prepare(obj.item(), path, frames)
    if _pickle_enabled:
        import pickle

        return msgpack.ExtType(_EXT_PICKLE, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    raise _Unencodable(path, obj)


def encode_parts(obj: Any, *, node: str | None = None, what: str = "output") -> list[Any]:
    """Encodes a value as buffers whose concatenation is :func:`encode`'s result, without
    joining them: large tensor and array data stay views of their own memory (the engine
    writes them to a blob file as they are). Raises ``SerializationError`` like ``encode``.

    >>> b"".join(encode_parts([1, "a"])) == encode([1, "a"])
    True
    """
    try:
        frames: list[Any] = []
        document = msgpack.packb(_prepare(obj, what, frames), use_bin_type=True)
        if not frames:
            return [document]
        lengths = [len(f) if isinstance(f, bytes) else f.nbytes for f in frames]
        prefix = struct.pack(f"<I{len(frames)}QQ", len(frames), *lengths, len(document))
        parts: list[Any] = [_MAGIC, prefix, document]
        pos = len(_MAGIC) + len(prefix) + len(document)
        for frame, n in zip(frames, lengths, strict=True):
            pad = -pos % _ALIGN  # every frame starts aligned (tensor views need it)
            parts += [b"\0" * pad, frame]
            pos += pad + n
        return parts
    except SerializationError:
        raise
    except _Unencodable as e:
        where = f"node {node!r}: " if node else ""
        why = f" ({e.why})" if e.why else ""
        raise SerializationError(
            f"{where}cannot encode {e.path} of type {type(e.obj).__module__}.{type(e.obj).__qualname__}"
            f"{why}; return None, bool, int, float, str, bytes, lists, tuples, dicts with str keys, "
            "numpy arrays, torch tensors, or register a codec with resumeflow.register_codec"
        ) from None
    except Exception as e:  # a tensor on the meta device, a registered encoder that raised, ...
        where = f"node {node!r}: " if node else ""
        raise SerializationError(f"{where}cannot encode {what}: {type(e).__name__}: {e}") from None


def encode(obj: Any, *, node: str | None = None, what: str = "output") -> bytes:
    """Encodes a value; raises ``SerializationError`` naming node, key path and type.

    >>> decode(encode([1.5, None, b"x"]))
    [1.5, None, b'x']
    """
    parts = encode_parts(obj, node=node, what=what)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def parts_size(parts: list[Any]) -> int:
    """Total bytes of :func:`encode_parts`' buffers."""
    return sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)


def _lists_to_tuples(descr: Any) -> Any:
    """msgpack returns lists; numpy's structured descr wants tuples for its fields."""
    if isinstance(descr, list):
        return [tuple(_lists_to_tuples(x) for x in field) if isinstance(field, list) else field
                for field in descr]
    return descr


def _ext_hook(code: int, data: bytes, frames: list[memoryview] | None = None) -> Any:
    hook = functools.partial(_ext_hook, frames=frames) if frames is not None else _ext_hook
    if code == _EXT_TUPLE:
        return tuple(msgpack.unpackb(data, ext_hook=hook, raw=False, strict_map_key=False))
    if code == _EXT_NDARRAY:
        import numpy as np

        descr, shape, raw = msgpack.unpackb(data, raw=False)
        dtype = np.lib.format.descr_to_dtype(_lists_to_tuples(descr))
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    if code == _EXT_TENSOR:
        dtype, shape, device, raw = msgpack.unpackb(data, raw=False)
        return _tensor_from(dtype, shape, device, raw)
    if code == _EXT_SAFETENSORS:
        return _safetensors_unpack(data)
    if code in (_EXT_TENSOR_FRAME, _EXT_NDARRAY_FRAME, _EXT_SAFETENSORS_FRAME):
        if frames is None:
            raise SerializationError("a stored value refers to a frame but has none")
        return _from_frame(code, data, frames)
    if code == _EXT_CUSTOM:
        name, payload = msgpack.unpackb(data, raw=False)
        if name not in _custom_by_name:
            raise SerializationError(f"no codec registered under {name!r}; call resumeflow.register_codec first")
        return _custom_by_name[name](payload)
    if code == _EXT_BIGINT:
        return int(data.decode())
    if code == _EXT_PICKLE:
        if not _pickle_enabled:
            raise SerializationError(
                "this value was stored with pickle; call resumeflow.enable_pickle() to load it "
                "(only for stores you trust)"
            )
        import pickle

        return pickle.loads(data)
    raise SerializationError(f"unknown extension type {code} in a stored value")


def _from_frame(code: int, data: bytes, frames: list[memoryview]) -> Any:
    """A tensor, array or tensor dict whose bytes are a frame (shared, not copied, when the
    frame is writable)."""
    if code == _EXT_SAFETENSORS_FRAME:
        return _safetensors_unpack(frames[msgpack.unpackb(data)])
    if code == _EXT_TENSOR_FRAME:
        dtype, shape, device, index = msgpack.unpackb(data, raw=False)
        return _tensor_from(dtype, shape, device, frames[index])
    import numpy as np

    descr, shape, index = msgpack.unpackb(data, raw=False)
    dtype = np.lib.format.descr_to_dtype(_lists_to_tuples(descr))
    frame = frames[index]
    arr = np.frombuffer(frame, dtype=dtype).reshape(shape)
    return arr if not frame.readonly else arr.copy()


def _split_frames(data: Any) -> tuple[memoryview, list[memoryview]]:
    """The msgpack document and the frames of a framed value."""
    view = memoryview(data).cast("B")
    pos = len(_MAGIC)
    (count,) = struct.unpack_from("<I", view, pos)
    pos += 4
    *lengths, doc_len = struct.unpack_from(f"<{count}QQ", view, pos)
    pos += 8 * (count + 1)
    document = view[pos : pos + doc_len]
    pos += doc_len
    frames = []
    for n in lengths:
        pos += -pos % _ALIGN
        frames.append(view[pos : pos + n])
        pos += n
    if pos != len(view):
        raise ValueError(f"framed value is {len(view)} bytes, its frames end at {pos}")
    return document, frames


def decode(data: bytes | bytearray | memoryview) -> Any:
    """Decodes bytes made by :func:`encode`.

    >>> decode(encode("hi"))
    'hi'
    """
    try:
        if bytes(data[: len(_MAGIC)]) == _MAGIC:
            document, frames = _split_frames(data)
            hook = functools.partial(_ext_hook, frames=frames)
            return msgpack.unpackb(document, ext_hook=hook, raw=False, strict_map_key=False)
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except SerializationError:
        raise
    except Exception as e:  # corrupt or foreign bytes
        raise SerializationError(f"cannot decode a stored value: {type(e).__name__}: {e}") from None
