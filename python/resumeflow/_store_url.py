"""Store locations that are URLs (``postgresql://user:password@host:port/db?schema=NAME``)
rather than file paths: how to tell them apart, and how to show one without its password.

Every message Python code writes about a store (``repr(engine)``, CLI lines and errors, server
errors) goes through :func:`redact` or :func:`scrub`, so a URL's password never reaches a log.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.DOTALL)
#: libpq also reads a password from the query string (``?password=...``, ``sslpassword``).
_QUERY_SECRET = re.compile(r"(?i)([?&](?:ssl)?password=)[^&#]*")
#: What stands for a password in messages.
HIDDEN = "***"


def is_url(path: str) -> bool:
    """Whether ``path`` names a store by URL (``scheme://...``) rather than a file.

    >>> is_url("postgresql://rf@db.internal/runs"), is_url("/var/lib/runs.db"), is_url("runs.db")
    (True, False, False)
    """
    return _SCHEME.match(path) is not None


def redact(path: str) -> str:
    """``path`` fit for a message: a URL's password (in its user part or its query) becomes
    ``***``; a file path is returned as it is. The user part ends at the *last* ``@``, so a
    password with a raw ``@`` is hidden whole (at worst more than the password is hidden).

    >>> redact("postgresql://rf:s3cret@db.internal:5432/runs?schema=team")
    'postgresql://rf:***@db.internal:5432/runs?schema=team'
    >>> redact("postgresql://rf:p@ss@db/runs"), redact("postgresql://db/runs?password=x&schema=s")
    ('postgresql://rf:***@db/runs', 'postgresql://db/runs?password=***&schema=s')
    >>> redact("postgresql://rf@db/runs"), redact("/tmp/runs.db")
    ('postgresql://rf@db/runs', '/tmp/runs.db')
    """
    m = _SCHEME.match(path)
    if m is None:
        return path
    scheme, rest = m.groups()
    rest = _QUERY_SECRET.sub(lambda q: q.group(1) + HIDDEN, rest)
    at = rest.rfind("@")
    if at < 0:
        return scheme + rest
    userinfo, host = rest[:at], rest[at + 1 :]
    user, colon, _password = userinfo.partition(":")
    if not colon:
        return scheme + rest
    return f"{scheme}{user}:{HIDDEN}@{host}"


def secrets_of(path: str) -> list[str]:
    """The password(s) in a store URL, as written and percent-decoded (empty for a file).

    >>> secrets_of("postgresql://rf:s%40cret@db/runs"), secrets_of("/tmp/runs.db")
    (['s%40cret', 's@cret'], [])
    """
    m = _SCHEME.match(path)
    if m is None:
        return []
    rest = m.group(2)
    found = [q.group(0).split("=", 1)[1] for q in _QUERY_SECRET.finditer(rest)]
    at = rest.rfind("@")
    if at >= 0:
        _user, colon, password = rest[:at].partition(":")
        if colon:
            found.append(password)
    out: list[str] = []
    for secret in found:
        for form in (secret, unquote(secret)):
            if form and form not in out:
                out.append(form)
    return out


def scrub(text: str, path: str) -> str:
    """``text`` (a message that may quote the store) with the store's URL redacted and any
    occurrence of its password replaced by ``***``.

    >>> scrub("cannot open postgresql://rf:pw123@db/runs: pw123 refused", "postgresql://rf:pw123@db/runs")
    'cannot open postgresql://rf:***@db/runs: *** refused'
    """
    secrets = secrets_of(path)
    if not secrets:
        return text
    text = text.replace(path, redact(path))
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)  # even a short one: unreadable beats leaked
    return text
