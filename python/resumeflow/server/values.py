"""Output values as JSON for ``GET /api/v1/runs/ID/results``: what JSON can hold stays as it
is; anything else is ``{"type", "repr"}`` (plus ``"dtype"`` and ``"shape"`` for arrays and
tensors)."""

from __future__ import annotations

import math
from typing import Any

import resumeflow as rf

#: The longest ``repr`` returned for a value JSON cannot hold.
MAX_REPR = 2000


def _opaque(value: Any) -> dict[str, Any]:
    text = repr(value)
    out: dict[str, Any] = {
        "type": type(value).__name__,
        "repr": text if len(text) <= MAX_REPR else text[:MAX_REPR] + "…",
    }
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        out["dtype"] = str(value.dtype)
        out["shape"] = [int(d) for d in shape]
    return out


def to_json(value: Any) -> Any:
    """``value`` as strict JSON data.

    >>> to_json({"a": [1, 2.5, None], "b": float("nan"), "c": b"x"})
    {'a': [1, 2.5, None], 'b': {'type': 'float', 'repr': 'nan'}, 'c': {'type': 'bytes', 'repr': "b'x'"}}
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else _opaque(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else _opaque(value)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, rf.Undecodable):
        return {"type": "Undecodable", "repr": value.error}
    return _opaque(value)
