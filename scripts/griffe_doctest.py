"""A griffe extension for the documentation site (mkdocs.yml): fences the doctest examples of
resumeflow's docstrings as ``pycon`` code, so Markdown renders them as code instead of reading
``>>>`` as a quote and ``['a', 'b']`` as a link."""

from __future__ import annotations

from typing import Any

from griffe import Extension, Object


def fence_doctests(text: str) -> str:
    """``text`` with each run of doctest lines (a ``>>>`` line up to the next blank line)
    inside a fenced ``pycon`` block; text already inside a fence is left alone.

    >>> print(fence_doctests("Adds.\\n\\n>>> 1 + 1\\n2\\n\\nMore."))
    Adds.
    <BLANKLINE>
    ```pycon
    >>> 1 + 1
    2
    ```
    <BLANKLINE>
    More.
    """
    out: list[str] = []
    in_fence = in_doctest = False
    for line in text.splitlines():
        stripped = line.strip()
        if in_doctest and not stripped:
            out.append("```")
            in_doctest = False
        elif not in_doctest and stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and not in_doctest and stripped.startswith(">>>"):
            out.append("```pycon")
            in_doctest = True
        out.append(line)
    if in_doctest:
        out.append("```")
    return "\n".join(out)


class FenceDoctests(Extension):
    """Applies `fence_doctests` to every docstring griffe loads."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
