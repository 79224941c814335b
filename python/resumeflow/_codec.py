"""The value codec: msgpack with extension frames for tensors, arrays and large bytes. No
pickle by default.

Large buffers (tensor and array data, safetensors payloads, ``bytes`` and ``bytearray`` of
64 KiB or more) are not copied into the msgpack document: they follow it as raw *frames*, and
the document refers to them by index. The encoded value is then ``b"\\xc1RF\\x02"`` (``0xc1``
is never a msgpack byte; ``\\x03`` instead of ``\\x02`` when the document holds tuples), the
frame count and lengths, the document, and the frames, joined with one copy (or written to a
blob file from the buffers themselves: see :func:`encode_parts`); decoding a writable buffer
(what the engine hands back) gives tensors and arrays that share its memory. A value with
neither frames nor tuples is a plain msgpack document.

Encodable: None, bool, int, float, str, bytes, bytearray, lists, tuples, dicts with str (or int)
keys, numpy arrays, numpy scalars (kept as numpy scalars of their dtype), torch tensors (any
dtype incl. bf16/fp8, non-contiguous, GPU), dicts of tensors (stored in the safetensors layout),
and types with a registered codec. A registered codec wins over the built-in encoding: the
codec of the value's own type first, then one registered for a base class (in MRO order), so a
NamedTuple, an IntEnum or a dict or str subclass with a codec comes back as itself; without one,
a subclass of a built-in is stored as its base type. Lists, tuples and dicts nest at most
:data:`MAX_DEPTH` levels deep. Anything else raises ``SerializationError`` naming the node, the
key path and the type.

In one process, dependants receive what :func:`live_handover` gives: the producer's object when
it cannot be changed or is a tensor or array, else a fresh decode (their own copy, equal to what
a resume would give them).

>>> decode(encode({"a": [1, (2, 3)]}))
{'a': [1, (2, 3)]}
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable, Iterator
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
_EXT_NUMPY_SCALAR = 11
_EXT_BYTES_FRAME = 12
_EXT_BYTEARRAY = 13
_EXT_BYTEARRAY_FRAME = 14
#: First element of the msgpack array that holds a tuple's items. (Tuples used to be a nested
#: document in an ``_EXT_TUPLE``; decoding those recurses through msgpack's C code, whose
#: stack use crashed the interpreter at ~200 levels, so they are still read, to a limit.)
_EXT_TUPLE_MARK = 15
_TUPLE_MARK_EXT = msgpack.ExtType(_EXT_TUPLE_MARK, b"")

#: Prefix of a framed value; 0xc1 never starts a msgpack document.
_MAGIC = b"\xc1RF\x02"
#: Prefix of a framed value whose document holds tuples (only those need msgpack's list hook,
#: a Python call per decoded array). A value with tuples is framed even without frames.
_MAGIC_TUPLES = b"\xc1RF\x03"
#: Buffers at least this large become frames.
_FRAME_MIN = 64 << 10
#: Frames start at multiples of this offset in the value.
_ALIGN = 64
#: The deepest nesting of lists, tuples and dicts that encodes (a list of lists is 2 levels);
#: deeper values raise ``SerializationError`` naming the node and the path. Decoding follows
#: msgpack's own limit (1024 levels), so values stored by older versions still load.
MAX_DEPTH = 512
#: The deepest nesting of ``_EXT_TUPLE`` documents (written by older versions) decoded.
_LEGACY_TUPLE_DEPTH = 100
#: Types the codec encodes natively; a codec registered for one of them could never be used.
_NATIVE_TYPES = (type(None), bool, int, float, str, bytes, bytearray, list, tuple, dict, object)

_custom_by_type: dict[type, tuple[str, Callable[[Any], bytes]]] = {}
_custom_by_name: dict[str, Callable[[bytes], Any]] = {}
#: type -> the codec that applies to it (its own, else its nearest registered base), or None.
_codec_cache: dict[type, tuple[str, Callable[[Any], bytes]] | None] = {}
_pickle_enabled = False


def register_codec(
    cls: type, name: str, encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]
) -> None:
    """Teaches the codec a type: ``encode(obj) -> bytes`` and ``decode(bytes) -> obj``.

    The codec wins over the built-in encoding of a subclass of a built-in (a NamedTuple, an
    IntEnum, a dict or str subclass) and also serves subclasses of ``cls`` that have no codec
    of their own (the nearest registered class in the MRO). Built-in types themselves (int,
    str, dict, ...) cannot be given a codec: ``ValueError``.

    >>> import fractions
    >>> register_codec(fractions.Fraction, "fraction", lambda f: str(f).encode(),
    ...                lambda b: fractions.Fraction(b.decode()))
    >>> decode(encode(fractions.Fraction(1, 3)))
    Fraction(1, 3)
    >>> import enum
    >>> class Level(enum.IntEnum):
    ...     HIGH = 2
    >>> register_codec(Level, "level", lambda v: str(int(v)).encode(), lambda b: Level(int(b)))
    >>> decode(encode([Level.HIGH]))
    [<Level.HIGH: 2>]
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_codec needs a class, got {cls!r}")
    if cls in _NATIVE_TYPES:
        raise ValueError(
            f"register_codec({cls.__name__}, {name!r}, ...): {cls.__name__} is encoded natively "
            f"and cannot be given a codec; register a subclass of {cls.__name__} instead"
        )
    _custom_by_type[cls] = (name, encode)
    _custom_by_name[name] = decode
    _codec_cache.clear()


def _codec_for(cls: type) -> tuple[str, Callable[[Any], bytes]] | None:
    """The registered codec that applies to ``cls``: its own, else its nearest base's."""
    try:
        return _codec_cache[cls]
    except KeyError:
        pass
    found = None
    for klass in cls.__mro__:
        found = _custom_by_type.get(klass)
        if found is not None:
            break
    if len(_codec_cache) > 4096:  # classes made at run time (a namedtuple per call)
        _codec_cache.clear()
    _codec_cache[cls] = found
    return found


def enable_pickle(enabled: bool = True) -> None:
    """Allows pickle for otherwise unencodable values (off by default: unpickling runs code).

    >>> enable_pickle(False)
    """
    global _pickle_enabled
    _pickle_enabled = enabled


class _Unencodable(Exception):
    """A value the codec refuses; ``keys`` collects the key path (innermost first) while the
    walk unwinds, so that encoding builds no path strings unless something fails."""

    def __init__(self, obj: Any, why: str = "", *, key: str | None = None, too_deep: bool = False) -> None:
        super().__init__(why)
        self.obj = obj
        self.why = why
        self.keys: list[str] = [] if key is None else [key]
        self.too_deep = too_deep

    def path(self, what: str) -> str:
        """``what`` followed by the key path, abbreviated when it is long."""
        keys = self.keys[::-1]
        if len(keys) <= 16:
            return what + "".join(keys)
        return what + "".join([*keys[:8], "...", *keys[-4:]]) + f" ({len(keys)} levels down)"


# --- tensors -----------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "complex64": "C64",
}
_TORCH_BY_SAFETENSORS = {v: k for k, v in _SAFETENSORS_DTYPES.items()}


def _class_of(module: str, name: str) -> Any:
    """``module.name`` if that module was imported far enough to define it, else None.

    Another thread may be importing numpy or torch right now (a node's first use): the module
    is then in ``sys.modules`` half initialized, and no value can be an instance of a class
    it has not defined yet.

    >>> _class_of("no_such_module", "X") is None
    True
    """
    return getattr(sys.modules.get(module), name, None)


def _is_tensor(obj: Any) -> bool:
    tensor = _class_of("torch", "Tensor")
    return tensor is not None and isinstance(obj, tensor)


def _is_ndarray(obj: Any) -> bool:
    ndarray = _class_of("numpy", "ndarray")
    return ndarray is not None and isinstance(obj, ndarray)


def _tensor_bytes(t: Any) -> tuple[str, list[int], str, bytes | memoryview]:
    import torch

    if t.is_sparse or t.is_quantized or getattr(t, "is_nested", False):
        raise _Unencodable(t, "sparse, quantized and nested tensors are not supported")
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


class _Pieces(list):  # type: ignore[type-arg]
    """One frame made of several buffers (a tensor dict's header, then each tensor's memory),
    placed one after another in the encoding and never joined."""

    __slots__ = ()

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(p) for p in self)


def _safetensors_pieces(tensors: dict[str, Any]) -> _Pieces:
    """A tensor dict in the safetensors layout: the length-prefixed header, then views of the
    tensors' own memory, to be written one after another."""
    header: dict[str, Any] = {}
    devices: dict[str, str] = {}
    chunks: list[bytes | memoryview] = []
    offset = 0
    for key, t in tensors.items():
        try:
            dtype, shape, device, raw = _tensor_bytes(t)
        except _Unencodable as e:
            e.keys.append(f"[{key!r}]")
            raise
        if dtype not in _SAFETENSORS_DTYPES:
            raise _Unencodable(t, f"dtype {dtype} has no safetensors name", key=f"[{key!r}]")
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
    return _Pieces([struct.pack("<Q", len(blob)) + blob, *chunks])


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
    """A dict that can be stored in the safetensors layout (else each tensor gets a frame).
    Values are checked first: an ordinary dict fails at its first value, without a key scan."""
    tensor = _class_of("torch", "Tensor")
    if tensor is None or not obj:
        return False
    return all(
        isinstance(v, tensor) and str(v.dtype).removeprefix("torch.") in _SAFETENSORS_DTYPES
        and not v.is_sparse and not v.is_quantized for v in obj.values()
    ) and all(isinstance(k, str) and k != "__metadata__" for k in obj)


# --- walk ----------------------------------------------------------------------------------


def _frame(frames: list[Any], buf: Any) -> int | None:
    """Appends ``buf`` as a frame and returns its index, if it is large enough to be one."""
    if (buf.nbytes if type(buf) is _Pieces else len(buf)) < _FRAME_MIN:
        return None
    frames.append(buf)
    return len(frames) - 1


class _Walk:
    """What one encoding collects beside the document: large buffers (``frames``), every
    tensor, array, tensor dict and byte string that becomes an extension, in document order
    (``leaves``: what :func:`live_handover` shares instead of decoding), and whether it met a
    tuple."""

    __slots__ = ("frames", "leaves", "tuples")

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.leaves: list[Any] = []
        self.tuples = False


def _prepare(obj: Any, depth: int, walk: _Walk) -> Any:
    """Turns ``obj`` into msgpack-native values and ExtTypes, checking every type; large
    buffers go to ``walk.frames`` instead of into the document.

    Exact built-in types take the fast path; containers recurse here (one frame per level, so
    :data:`MAX_DEPTH` levels stay well inside Python's recursion limit); every other type is
    :func:`_prepare_other`'s."""
    t = type(obj)
    if t is str or t is float or t is bool or obj is None:
        return obj
    if t is int:
        if -(2**63) <= obj < 2**64:
            return obj
        return msgpack.ExtType(_EXT_BIGINT, str(obj).encode())
    if t is bytes:
        return obj if len(obj) < _FRAME_MIN else _bytes_ext(obj, walk)
    if t is list or t is tuple or t is dict:
        kind: type = t
    else:
        done, kind = _prepare_other(obj, t, walk)
        if done:
            return kind
    if depth >= MAX_DEPTH:
        raise _Unencodable(obj, too_deep=True)
    depth += 1
    if kind is dict:
        if _is_tensor_dict(obj):
            walk.leaves.append(obj)
            pieces = _safetensors_pieces(obj)
            index = _frame(walk.frames, pieces)
            if index is not None:
                return msgpack.ExtType(_EXT_SAFETENSORS_FRAME, msgpack.packb(index))
            return msgpack.ExtType(_EXT_SAFETENSORS, b"".join(pieces))
        out = {}
        k = None
        try:
            for k, v in obj.items():
                if type(k) is not str:
                    if not isinstance(k, (str, int)) or isinstance(k, bool):
                        raise _Unencodable(k, "dict keys must be str or int")
                    if isinstance(k, int) and not -(2**63) <= k < 2**64:
                        raise _Unencodable(k, "int dict keys must fit in 64 bits")
                out[k] = _prepare(v, depth, walk)
        except _Unencodable as e:
            e.keys.append(f"[{k!r}]")
            raise
        return out
    # A tuple is an array whose first element is the tuple mark (decoded by _list_hook).
    if kind is list:
        items: list[Any] = []
    else:
        items = [_TUPLE_MARK_EXT]
        walk.tuples = True
    first = len(items)
    try:
        for v in obj:
            items.append(_prepare(v, depth, walk))
    except _Unencodable as e:
        e.keys.append(f"[{len(items) - first}]")
        raise
    return items


def _prepare_other(obj: Any, t: type, walk: _Walk) -> tuple[bool, Any]:
    """Values that are not of an exact built-in type: ``(True, prepared)``, or ``(False,
    list | tuple | dict)`` for a subclass of a built-in container without a codec."""
    codec = _codec_for(t)
    if codec is not None:  # a registered codec wins over every built-in encoding
        name, enc = codec
        return True, msgpack.ExtType(_EXT_CUSTOM, msgpack.packb([name, enc(obj)], use_bin_type=True))
    generic = _class_of("numpy", "generic")
    if generic is not None and isinstance(obj, generic):  # before float: np.float64 is one
        return True, _numpy_scalar(obj, sys.modules["numpy"])
    if _is_tensor(obj):
        walk.leaves.append(obj)
        dtype, shape, device, raw = _tensor_bytes(obj)
        index = _frame(walk.frames, raw)
        if index is not None:
            return True, msgpack.ExtType(_EXT_TENSOR_FRAME, msgpack.packb([dtype, shape, device, index]))
        return True, msgpack.ExtType(
            _EXT_TENSOR, msgpack.packb([dtype, shape, device, raw], use_bin_type=True)
        )
    if _is_ndarray(obj):
        return True, _ndarray_ext(obj, sys.modules["numpy"], walk)
    # Subclasses of built-ins without a codec are stored as their base type.
    if isinstance(obj, int):  # IntEnum, IntFlag, ... (bool cannot be subclassed)
        value = int.__index__(obj)
        if -(2**63) <= value < 2**64:
            return True, value
        return True, msgpack.ExtType(_EXT_BIGINT, str(value).encode())
    if isinstance(obj, float):
        return True, float.__float__(obj)
    if isinstance(obj, str):
        return True, str.__str__(obj)
    if isinstance(obj, bytes):
        return True, obj if len(obj) < _FRAME_MIN else _bytes_ext(obj, walk)
    if isinstance(obj, bytearray):
        return True, _bytes_ext(obj, walk)
    for container in (list, tuple, dict):
        if isinstance(obj, container):
            return False, container
    if isinstance(obj, memoryview):
        raise _Unencodable(obj, "return bytes(view), bytearray(view) or a numpy array")
    if _pickle_enabled:
        import pickle

        return True, msgpack.ExtType(_EXT_PICKLE, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    raise _Unencodable(obj)


def _bytes_ext(obj: bytes | bytearray, walk: _Walk) -> Any:
    """A large ``bytes`` (the object itself becomes a frame: no copy) or a ``bytearray``."""
    walk.leaves.append(obj)
    index = _frame(walk.frames, obj)
    if isinstance(obj, bytearray):
        if index is None:
            return msgpack.ExtType(_EXT_BYTEARRAY, bytes(obj))
        return msgpack.ExtType(_EXT_BYTEARRAY_FRAME, msgpack.packb(index))
    return msgpack.ExtType(_EXT_BYTES_FRAME, msgpack.packb(index))


def _numpy_scalar(obj: Any, np: Any) -> Any:
    """A numpy scalar (np.float32(0.1), np.bool_, np.datetime64, ...) keeping its dtype."""
    if obj.dtype.hasobject:
        raise _Unencodable(obj, "numpy scalars holding Python objects are not supported")
    descr = np.lib.format.dtype_to_descr(obj.dtype)
    return msgpack.ExtType(_EXT_NUMPY_SCALAR, msgpack.packb([descr, obj.tobytes()], use_bin_type=True))


def _ndarray_ext(obj: Any, np: Any, walk: _Walk) -> Any:
    if type(obj) is not np.ndarray:
        raise _Unencodable(obj, "numpy array subclasses (e.g. masked arrays) are not supported; pass np.asarray(x)")
    if obj.dtype.hasobject:
        raise _Unencodable(obj, "numpy arrays of Python objects are not supported")
    walk.leaves.append(obj)
    arr = obj if obj.flags.c_contiguous else np.array(obj, order="C")
    descr = np.lib.format.dtype_to_descr(arr.dtype)  # keeps structured dtypes' fields
    flat: Any = arr.reshape(-1).view(np.uint8)
    index = _frame(walk.frames, memoryview(flat)) if arr.size else None
    if index is not None:
        return msgpack.ExtType(
            _EXT_NDARRAY_FRAME, msgpack.packb([descr, list(arr.shape), index], use_bin_type=True)
        )
    return msgpack.ExtType(
        _EXT_NDARRAY, msgpack.packb([descr, list(arr.shape), arr.tobytes()], use_bin_type=True)
    )


class EncodedParts(list):  # type: ignore[type-arg]
    """:func:`encode_parts`' result: a list of buffers, plus the msgpack ``document`` and the
    ``leaves`` (the value's tensors, arrays and byte strings, in document order) that
    :func:`live_handover` needs to hand the value over without copying them, and whether the
    document holds ``tuples``."""

    __slots__ = ("document", "leaves", "tuples")

    document: bytes
    leaves: list[Any]
    tuples: bool


def _serialization_error(e: _Unencodable, node: str | None, what: str) -> SerializationError:
    where = f"node {node!r}: " if node else ""
    if e.too_deep:
        return SerializationError(
            f"{where}{what} nested deeper than {MAX_DEPTH} levels (lists, tuples and dicts) at "
            f"{e.path(what)}; flatten it (e.g. a list of rows), or store deep data as bytes, a "
            "numpy array or a type with a registered codec"
        )
    why = f" ({e.why})" if e.why else ""
    return SerializationError(
        f"{where}cannot encode {e.path(what)} of type {type(e.obj).__module__}.{type(e.obj).__qualname__}"
        f"{why}; return None, bool, int, float, str, bytes, lists, tuples, dicts with str keys, "
        "numpy arrays, torch tensors, or register a codec with resumeflow.register_codec"
    )


def encode_parts(obj: Any, *, node: str | None = None, what: str = "output") -> EncodedParts:
    """Encodes a value as buffers whose concatenation is :func:`encode`'s result, without
    joining them: large tensor, array and ``bytes`` data stay views of their own memory (the
    engine writes them to a blob file as they are; a large ``bytes`` value is itself a part).
    Raises ``SerializationError`` like ``encode``.

    >>> b"".join(encode_parts([1, "a"])) == encode([1, "a"])
    True
    >>> big = b"x" * 100_000
    >>> any(part is big for part in encode_parts({"payload": big}))
    True
    """
    walk = _Walk()
    try:
        document = msgpack.packb(_prepare(obj, 0, walk), use_bin_type=True)
    except SerializationError:
        raise
    except _Unencodable as e:
        raise _serialization_error(e, node, what) from None
    except Exception as e:  # a tensor on the meta device, a registered encoder that raised, ...
        where = f"node {node!r}: " if node else ""
        raise SerializationError(f"{where}cannot encode {what}: {type(e).__name__}: {e}") from None
    frames = walk.frames
    parts = EncodedParts()
    parts.document = document
    parts.leaves = walk.leaves
    parts.tuples = walk.tuples
    if not frames and not walk.tuples:
        parts.append(document)
        return parts
    lengths = [_nbytes(f) for f in frames]
    prefix = struct.pack(f"<I{len(frames)}QQ", len(frames), *lengths, len(document))
    magic = _MAGIC_TUPLES if walk.tuples else _MAGIC
    parts += [magic, prefix, document]
    pos = len(magic) + len(prefix) + len(document)
    for frame, n in zip(frames, lengths, strict=True):
        pad = -pos % _ALIGN  # every frame starts aligned (tensor views need it)
        parts += [b"\0" * pad, *frame] if type(frame) is _Pieces else [b"\0" * pad, frame]
        pos += pad + n
    return parts


def _nbytes(buf: Any) -> int:
    return len(buf) if isinstance(buf, (bytes, bytearray)) else int(buf.nbytes)


def encode(obj: Any, *, node: str | None = None, what: str = "output") -> bytes:
    """Encodes a value; raises ``SerializationError`` naming node, key path and type.

    >>> decode(encode([1.5, None, b"x"]))
    [1.5, None, b'x']
    """
    parts = encode_parts(obj, node=node, what=what)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def parts_size(parts: list[Any]) -> int:
    """Total bytes of :func:`encode_parts`' buffers.

    >>> parts_size(encode_parts("hi")) == len(encode("hi"))
    True
    """
    return sum(_nbytes(p) for p in parts)


# --- hand-over to dependants in this process -------------------------------------------------


class _Handover:
    """A node's output as the engine keeps it for dependants in this process when it could be
    changed by one of them: every :func:`from_handover` decodes its own containers (and custom
    and numpy scalar values) from the msgpack document, sharing the output's tensors, arrays
    and ``bytes`` (``leaves``) instead of decoding them. Without leaves, ``encoded`` is the
    whole encoded value and is decoded in full."""

    __slots__ = ("encoded", "leaves", "tuples")

    def __init__(self, encoded: Any, leaves: tuple[Any, ...] | None, tuples: bool = False) -> None:
        self.encoded = encoded
        self.leaves = leaves
        self.tuples = tuples

    def value(self) -> Any:
        if self.leaves is None:
            return decode(self.encoded)
        decoder = _Decoder(leaves=iter(self.leaves))
        try:
            return decoder.unpack(self.encoded, self.tuples)
        except SerializationError:
            raise
        except Exception as e:
            raise _decode_error(e, None, "a node's output") from None

    def __repr__(self) -> str:
        return "<resumeflow output handed over by decoding>"


_IMMUTABLE_TYPES = frozenset({type(None), bool, int, float, str, bytes})


def _shared_as_is(value: Any) -> bool:
    """True when ``value`` can be handed to every dependant as it is: immutable built-ins,
    tuples of such, tensors and arrays (shared on purpose), with no registered codec that
    would turn them into something else on a resume."""
    stack = [value]
    while stack:
        item = stack.pop()
        t = type(item)
        if t in _IMMUTABLE_TYPES:
            continue
        if t is tuple:
            stack.extend(item)
            continue
        if (_is_tensor(item) or t is _class_of("numpy", "ndarray")) and _codec_for(t) is None:
            continue
        return False
    return True


def live_handover(value: Any, encoded: EncodedParts | list[Any] | bytes) -> Any:
    """What the engine keeps, for a node's dependants in this process, of the output ``value``
    that ``encoded`` (:func:`encode_parts`' result, or :func:`encode`'s) encodes. Give each
    dependant ``from_handover(kept)``.

    Rule: a value that no consumer can change, or that is a tensor or an array, is kept and
    handed over as it is (None, bool, int, float, str, bytes, tuples of these, torch tensors,
    numpy arrays: zero-copy, and the same object for every dependant). Anything else (a list, a
    dict, a custom or numpy scalar type) is kept encoded, and every dependant gets a fresh
    decode: its own copy, equal to what it would get after a resume; tensors, arrays and
    ``bytes`` inside it are still shared, not copied, when ``encoded`` is ``encode_parts``' result.

    >>> rows = {"xs": [1, 2]}
    >>> kept = live_handover(rows, encode_parts(rows))
    >>> mine, yours = from_handover(kept), from_handover(kept)
    >>> mine["xs"].append(3)
    >>> yours, rows
    ({'xs': [1, 2]}, {'xs': [1, 2]})
    >>> point = (1.5, "a")
    >>> live_handover(point, encode_parts(point)) is point
    True
    """
    if _shared_as_is(value):
        return value
    if isinstance(encoded, EncodedParts):
        return _Handover(encoded.document, tuple(encoded.leaves), encoded.tuples)
    if isinstance(encoded, list):  # parts without their leaves
        encoded = b"".join(encoded)
    return _Handover(encoded, None)


def from_handover(kept: Any) -> Any:
    """The value a dependant receives for an output that :func:`live_handover` kept: a fresh
    decode of a mutable output, the kept object itself otherwise.

    >>> from_handover(live_handover([1, (2, 3)], encode([1, (2, 3)])))
    [1, (2, 3)]
    >>> from_handover("text")
    'text'
    """
    if type(kept) is _Handover:
        return kept.value()
    return kept


# --- decode --------------------------------------------------------------------------------


def _lists_to_tuples(descr: Any) -> Any:
    """msgpack returns lists; numpy's structured descr wants tuples for its fields."""
    if isinstance(descr, list):
        return [tuple(_lists_to_tuples(x) for x in field) if isinstance(field, list) else field
                for field in descr]
    return descr


#: Extensions :func:`live_handover` shares from the producer's value instead of decoding.
_LEAF_CODES = frozenset({
    _EXT_NDARRAY, _EXT_TENSOR, _EXT_SAFETENSORS, _EXT_NDARRAY_FRAME, _EXT_TENSOR_FRAME,
    _EXT_SAFETENSORS_FRAME, _EXT_BYTES_FRAME, _EXT_BYTEARRAY, _EXT_BYTEARRAY_FRAME,
})


class _LegacyTuplesTooDeep(Exception):
    pass


#: What the tuple mark decodes to, until _list_hook turns its array into a tuple.
_TUPLE_MARK = object()


def _list_hook(items: list[Any]) -> Any:
    if items and items[0] is _TUPLE_MARK:
        return tuple(items[1:])
    return items


class _Decoder:
    """msgpack's ext hook for one value: ``frames`` of a framed value, or ``leaves`` of a
    live hand-over (tensors, arrays and byte strings taken from the producer's value)."""

    __slots__ = ("frames", "leaves", "tuple_depth")

    def __init__(self, frames: list[memoryview] | None = None, leaves: Iterator[Any] | None = None) -> None:
        self.frames = frames
        self.leaves = leaves
        self.tuple_depth = 0

    def unpack(self, data: Any, tuples: bool) -> Any:
        """Decodes a msgpack document; ``tuples``: it may hold tuple marks."""
        return msgpack.unpackb(
            data, ext_hook=self.hook, list_hook=_list_hook if tuples else None,
            raw=False, strict_map_key=False,
        )

    def hook(self, code: int, data: bytes) -> Any:
        if code == _EXT_TUPLE_MARK:
            return _TUPLE_MARK
        if code == _EXT_TUPLE:
            return self._legacy_tuple(data)
        if self.leaves is not None and code in _LEAF_CODES:
            return _shared_leaf(code, next(self.leaves))
        if code == _EXT_NUMPY_SCALAR:
            return _numpy_scalar_from(data)
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
        if code == _EXT_BYTEARRAY:
            return bytearray(data)
        if code in (_EXT_TENSOR_FRAME, _EXT_NDARRAY_FRAME, _EXT_SAFETENSORS_FRAME, _EXT_BYTES_FRAME,
                    _EXT_BYTEARRAY_FRAME):
            if self.frames is None:
                raise SerializationError("a stored value refers to a frame but has none")
            return _from_frame(code, data, self.frames)
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

    def _legacy_tuple(self, data: bytes) -> tuple[Any, ...]:
        """A tuple stored as a nested document (before the tuple mark): each level recurses
        through msgpack's C unpacker, so the depth is limited before the C stack runs out."""
        if self.tuple_depth >= _LEGACY_TUPLE_DEPTH:
            raise _LegacyTuplesTooDeep
        self.tuple_depth += 1
        try:
            return tuple(self.unpack(data, False))  # written before tuple marks existed
        finally:
            self.tuple_depth -= 1


def _shared_leaf(code: int, leaf: Any) -> Any:
    """A dependant's view of a tensor, array, tensor dict or byte string of the producer."""
    if code in (_EXT_SAFETENSORS, _EXT_SAFETENSORS_FRAME):
        return dict(leaf)  # its own dict, the same tensors
    if code == _EXT_BYTES_FRAME:
        return leaf if type(leaf) is bytes else bytes(memoryview(leaf))
    if code in (_EXT_BYTEARRAY, _EXT_BYTEARRAY_FRAME):
        return bytearray(leaf)  # mutable: a copy of its own
    return leaf


def _numpy_scalar_from(data: bytes) -> Any:
    import numpy as np

    descr, raw = msgpack.unpackb(data, raw=False)
    dtype = np.lib.format.descr_to_dtype(_lists_to_tuples(descr))
    if not dtype.itemsize:
        return np.zeros((), dtype=dtype)[()]
    return np.frombuffer(raw, dtype=dtype, count=1)[0]


def _from_frame(code: int, data: bytes, frames: list[memoryview]) -> Any:
    """A tensor, array, tensor dict or byte string whose bytes are a frame (tensors and arrays
    share it, not copy it, when the frame is writable)."""
    if code == _EXT_SAFETENSORS_FRAME:
        return _safetensors_unpack(frames[msgpack.unpackb(data)])
    if code == _EXT_BYTES_FRAME:
        return bytes(frames[msgpack.unpackb(data)])
    if code == _EXT_BYTEARRAY_FRAME:
        return bytearray(frames[msgpack.unpackb(data)])
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


#: msgpack's unpacker follows at most this many levels of nested lists and dicts.
_MSGPACK_MAX_DEPTH = 1024


def _decode_error(e: Exception, node: str | None, what: str) -> SerializationError:
    where = f"node {node!r}: " if node else ""
    if isinstance(e, msgpack.exceptions.StackError):
        return SerializationError(
            f"{where}cannot decode {what}: nested deeper than {_MSGPACK_MAX_DEPTH} levels "
            f"(lists and dicts; this codec writes at most {MAX_DEPTH})"
        )
    if isinstance(e, _LegacyTuplesTooDeep):
        return SerializationError(
            f"{where}cannot decode {what}: tuples nested deeper than {_LEGACY_TUPLE_DEPTH} levels "
            "(stored by an older resumeflow, which wrote each tuple as a nested document)"
        )
    return SerializationError(f"{where}cannot decode {what}: {type(e).__name__}: {e}")


def decode(data: bytes | bytearray | memoryview, *, node: str | None = None,
           what: str = "a stored value") -> Any:
    """Decodes bytes made by :func:`encode`; raises ``SerializationError`` (naming ``node``
    and ``what`` when given) for bytes it cannot decode.

    >>> decode(encode("hi"))
    'hi'
    >>> decode(b"\\x91" * 2000 + b"\\x90", node="load", what="input 'rows'")
    Traceback (most recent call last):
    ...
    resumeflow.SerializationError: node 'load': cannot decode input 'rows': nested deeper than 1024 levels (lists and dicts; this codec writes at most 512)
    """
    try:
        magic = bytes(data[: len(_MAGIC)])
        if magic == _MAGIC or magic == _MAGIC_TUPLES:
            document, frames = _split_frames(data)
            return _Decoder(frames).unpack(document, magic == _MAGIC_TUPLES)
        return _Decoder().unpack(data, False)
    except SerializationError:
        raise
    except Exception as e:  # corrupt or foreign bytes
        raise _decode_error(e, node, what) from None
