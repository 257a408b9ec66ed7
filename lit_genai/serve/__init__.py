"""``lit-genai serve``: trained models' samples over HTTP, with LitServe, and a web playground.

Files: ``command.py`` the command (``main(args)``, the ``LitServer``), ``api.py`` the ``LitAPI`` (one
for every paradigm), ``catalog.py`` what the service reads of each model through the module
contract, ``requests.py`` request fields, checks and limits, ``check.py`` those checks in the HTTP
process, ``draw.py`` batched and streamed sampling, ``responses.py`` PNG / WAV / JSON answers,
``ui.py`` + ``page.html`` the page. LitServe (the ``serve`` extra, with FastAPI and Starlette) is
needed by ``api.py``, ``check.py``, ``responses.py`` and ``ui.py`` and imported by ``command.py`` only
when it runs, so ``lit-genai serve`` without it is one line naming the extra; ``requests.py``,
``catalog.py`` and ``draw.py`` need torch alone (docs/architecture.md, "Serve").
"""
