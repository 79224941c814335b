"""The web monitor: ``/`` and its static assets under ``/monitor/`` (plain HTML, CSS and
JavaScript shipped in ``monitor/``, no build step, nothing fetched from another host). The
page needs no token: it asks the user for one and sends it only to ``/api/v1``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

#: The shipped assets (index.html, *.js, *.css).
ASSETS = Path(__file__).resolve().parent / "monitor"
#: The page and its assets are small and change with the package: revalidate every load.
_NO_CACHE = {"Cache-Control": "no-cache"}


class _Assets(StaticFiles):
    """Static files, revalidated on every load (an upgraded package shows at once)."""

    def file_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().file_response(*args, **kwargs)
        response.headers.update(_NO_CACHE)
        return response


def mount(app: Any) -> None:
    """Adds ``GET /`` (the page) and ``/monitor/*`` (its assets) to ``app``, outside the
    OpenAPI document."""

    @app.get("/", include_in_schema=False)
    async def monitor_page() -> FileResponse:
        return FileResponse(ASSETS / "index.html", media_type="text/html", headers=_NO_CACHE)

    app.mount("/monitor", _Assets(directory=ASSETS), name="monitor")
