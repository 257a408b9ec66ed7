"""The web playground of ``lit-genai serve --ui``: ``page.html``, served at ``GET /ui`` by the same
FastAPI app as the generation endpoints (LitServe's ``LitServer.app``).

The page is one static file with a little JavaScript (no Gradio, nothing to build): it reads
``GET /info`` (models, classes, sampling options with defaults and limits), asks ``POST /predict``
for samples and shows images, plays audio in an ``<audio>`` element, and shows text as it streams
from ``POST /stream``. It holds no secret, so it is served without the API key; the key, when the
server has one, is typed into the page and sent with each request.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

PATH = "/ui"


def page() -> str:
    """The page's HTML."""
    return resources.files("lit_genai.serve").joinpath("page.html").read_text(encoding="utf-8")


def add_page(app: Any, path: str = PATH) -> None:
    """Serve the page at ``GET path`` of the FastAPI ``app``."""
    from fastapi.responses import HTMLResponse

    html = page()

    async def playground() -> HTMLResponse:
        return HTMLResponse(html)

    app.add_api_route(path, playground, methods=["GET"], include_in_schema=False)
