"""Bearer tokens for ``/api/v1`` (compared in constant time) and the request body cap."""

from __future__ import annotations

import hmac


def token_ok(header: str | None, token: str | None) -> bool:
    """True if no token is required, or ``header`` is ``Bearer <token>``.

    >>> token_ok(None, None), token_ok("Bearer s3cret", "s3cret"), token_ok("Bearer x", "s3cret")
    (True, True, False)
    """
    if token is None:
        return True
    if header is None or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].encode(), token.encode())
