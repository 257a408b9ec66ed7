"""What a generation request gets back: the samples' bytes as ``predict`` writes them, or JSON.

==========  ===================================================================================
format      body
==========  ===================================================================================
png         one image: ``image/png``, the bytes of ``predict``'s ``sample_<i>.png``
wav         one clip: ``audio/wav``, the bytes of ``predict``'s ``sample_<i>.wav`` (16-bit PCM)
json        ``{"model", "modality", "media_type", "seed", "start", "n", "sampling", "samples"}``:
            ``samples`` holds base64 PNGs or WAVs (then also ``sample_rate``), or the texts
==========  ===================================================================================

The bytes come from ``lit_genai.media.png_bytes`` / ``wav_bytes``, the functions ``predict``'s files
are written with, so a served sample and a predicted one are the same bytes. Binary responses carry
the request's ``X-Seed`` and ``X-Start``; every response says in ``X-Batch-Requests`` how many
requests shared its ``module.sample`` calls (for the load benchmark; kept out of the body, which
depends on batching only through float round-off, draw.py). A refused request is
``{"detail": message}`` with its status, as FastAPI's ``HTTPException`` answers.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from starlette.responses import JSONResponse, Response

from lit_genai.media import Media, Waveforms, png_bytes, wav_bytes
from lit_genai.serve.catalog import MEDIA_TYPES
from lit_genai.serve.requests import Job


def encode(job: Job, medium: Media, modality: str, settings: dict[str, Any], batch: int) -> Response:
    """The response of ``job`` whose samples are ``medium`` (drawn with ``settings``)."""
    headers = {"X-Seed": str(job.seed), "X-Start": str(job.start), "X-Batch-Requests": str(batch)}
    if job.format == "png":
        return Response(png_bytes(medium[0]), media_type="image/png", headers=headers)
    if job.format == "wav":
        return Response(
            wav_bytes(medium.numpy()[0], medium.sample_rate), media_type="audio/wav", headers=headers
        )
    body: dict[str, Any] = {
        "model": job.model,
        "modality": modality,
        "media_type": MEDIA_TYPES[modality],
        "seed": job.seed,
        "start": job.start,
        "n": job.n,
        "sampling": json.loads(json.dumps(settings, default=str)),
        "samples": samples_json(medium),
    }
    if isinstance(medium, Waveforms):
        body["sample_rate"] = int(medium.sample_rate)
    return JSONResponse(body, headers={"X-Batch-Requests": str(batch)})


def samples_json(medium: Media) -> list[str]:
    """Each sample as JSON holds it: a base64 PNG or WAV, or the text itself."""
    if isinstance(medium, Waveforms):
        blobs = [wav_bytes(clip, medium.sample_rate) for clip in medium.numpy()]
    elif isinstance(medium, list):
        return list(medium)
    else:
        blobs = [png_bytes(image) for image in medium]
    return [base64.b64encode(blob).decode("ascii") for blob in blobs]


def refusal(status: int, message: str) -> JSONResponse:
    """A refused request: ``{"detail": message}`` with its HTTP status."""
    return JSONResponse({"detail": message}, status_code=status)
