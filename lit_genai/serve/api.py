"""The service's ``LitAPI``: one class for every paradigm, over one or more trained models.

LitServe (``litserve.LitAPI``) runs it in a worker process per device: ``setup`` loads the models
(``lit_genai.api.load``: EMA weights, eval mode, the media decoder), ``decode_request`` checks a
request into a ``Job`` (``requests.py``), ``predict`` draws the samples (``draw.py``) and
``encode_response`` makes the response (``responses.py``). Everything model-specific is read through
the module contract (``module.sample``, ``sampling_settings``, ``modality``, ``num_classes``,
``conditions``, ``class_names``), so no paradigm is named here.

Two paths, one class each (LitServe wants ``predict`` and ``encode_response`` to be generator
functions exactly when ``stream=True``):

- ``/predict`` (``GenerationAPI``): with ``max_batch_size > 1`` LitServe hands ``predict`` the
  requests that arrived within ``batch_timeout``; those with the same model and options share
  ``module.sample`` calls (at most ``Limits.max_n`` samples each), others are drawn apart. Sample i
  of a request has its own generator, so a batched request gets the samples it would get alone
  (up to float round-off, draw.py).
- ``/stream`` (``StreamAPI``, ``stream=True``, text models only): newline-delimited JSON events as
  the text grows (``draw.stream_text``), one request at a time.

A request refused in the worker becomes its own error response rather than an exception: LitServe's
batched loop (``litserve.loops.simple_loops.BatchedLoop.run_batched_loop``, 0.2.19) answers every
request of a batch with the error any one of them raised. Requests are first checked in the HTTP
process (``check.RequestCheck``), so this is a second line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, Optional, Union

import litserve as ls
from fastapi import HTTPException

from lit_genai.errors import LitGenAIError
from lit_genai.media import Media
from lit_genai.serve.catalog import ModelInfo
from lit_genai.serve.draw import draw, stream_text
from lit_genai.serve.requests import Job, Limits, RequestError, parse_request
from lit_genai.serve.responses import encode, refusal


@dataclasses.dataclass
class Drawn:
    """A request's samples, ready to encode: the medium, the settings used, the requests that shared
    its ``module.sample`` calls."""

    job: Job
    medium: Media
    settings: dict[str, Any]
    batch: int


class GenerationAPI(ls.LitAPI):
    """Samples of served models over HTTP (module docstring).

    Args:
        sources: {name: run folder or checkpoint}, loaded in ``setup`` on the worker's device.
        catalog: {name: ``ModelInfo``} of the same models (read once in the main process).
        limits: What one request may ask for.
        ema: Load the EMA weights where the run kept them.
        threads: torch's CPU threads in the worker (None: torch's default).
        max_batch_size, batch_timeout, api_path, stream: LitServe's (``litserve.LitAPI``).
    """

    def __init__(
        self,
        sources: Mapping[str, str],
        catalog: Mapping[str, ModelInfo],
        limits: Limits,
        *,
        ema: bool = True,
        threads: Optional[int] = None,
        max_batch_size: int = 1,
        batch_timeout: float = 0.0,
        api_path: str = "/predict",
        stream: bool = False,
    ) -> None:
        super().__init__(
            max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=api_path, stream=stream
        )
        self.sources, self.catalog, self.limits = dict(sources), dict(catalog), limits
        self.ema, self.threads = ema, threads

    def setup(self, device: str) -> None:
        import torch

        from lit_genai.api import load

        if self.threads and str(device) == "cpu":
            torch.set_num_threads(self.threads)
        names = [name for name, info in self.catalog.items() if self.serves(info)]
        self.modules = {name: load(self.sources[name], device=device, ema=self.ema) for name in names}

    def serves(self, info: ModelInfo) -> bool:
        """Whether this path serves the model (``setup`` loads those only)."""
        return True

    # decode_request's ``request`` and encode_response's return stay unannotated: LitServer gives
    # their annotations to FastAPI as the endpoint's body and response types (server.register_endpoints).
    def decode_request(self, request):  # -> Job | RequestError
        try:
            return parse_request(request, self.catalog, self.limits)
        except RequestError as error:
            return error

    def predict(self, x: Any) -> Any:
        jobs = list(x) if self.max_batch_size > 1 else [x]
        drawn = self._draw(jobs)
        return drawn if self.max_batch_size > 1 else drawn[0]

    def encode_response(self, output: Any):  # -> a starlette Response
        if isinstance(output, RequestError):
            return refusal(output.status, output.message)
        modality = self.catalog[output.job.model].modality
        return encode(output.job, output.medium, modality, output.settings, output.batch)

    # ------------------------------------------------------------------ helpers

    def _draw(self, jobs: list[Union[Job, RequestError]]) -> list[Union[Drawn, RequestError]]:
        """Each job's samples, jobs with the same model and options in shared calls."""
        results: list[Union[Drawn, RequestError, None]] = [None] * len(jobs)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, job in enumerate(jobs):
            if isinstance(job, RequestError):
                results[i] = job
            else:
                groups.setdefault(job.batch_key(), []).append(i)
        for indices in groups.values():
            group = [jobs[i] for i in indices]
            module = self.modules[group[0].model]
            try:
                settings = module.sampling_settings(**group[0].options)
                media = draw(module, group, self.limits.max_n)
            except LitGenAIError as error:  # e.g. a value the sampler refuses (top_p above 1)
                for i in indices:
                    results[i] = RequestError(400, str(error))
                continue
            for i, job, medium in zip(indices, group, media, strict=True):
                results[i] = Drawn(job, medium, settings, len(group))
        return results


class StreamAPI(GenerationAPI):
    """Text as it is generated, at ``/stream``: each event one JSON line (``draw.stream_text``).

    Args:
        sources, catalog, limits, ema, threads: As ``GenerationAPI``'s; only text models are loaded.
        stream_tokens: New tokens per event.
    """

    def __init__(
        self,
        sources: Mapping[str, str],
        catalog: Mapping[str, ModelInfo],
        limits: Limits,
        *,
        ema: bool = True,
        threads: Optional[int] = None,
        stream_tokens: int = 4,
    ) -> None:
        super().__init__(sources, catalog, limits, ema=ema, threads=threads, api_path="/stream", stream=True)
        self.stream_tokens = stream_tokens

    def serves(self, info: ModelInfo) -> bool:
        return info.streams

    def decode_request(self, request):  # -> Job (unannotated: see GenerationAPI)
        try:
            return parse_request(request, self.catalog, self.limits, stream=True)
        except RequestError as error:  # one request at a time: the exception is this request's own
            raise HTTPException(error.status, error.message) from None

    def predict(self, x: Job) -> Iterator[dict[str, Any]]:
        try:
            yield from stream_text(self.modules[x.model], x, self.stream_tokens)
        except LitGenAIError as error:  # the status line is sent: the error is the last event
            yield {"error": str(error)}

    def encode_response(self, output: Iterator[dict[str, Any]]):  # -> Iterator[dict]
        yield from output  # LitServe writes each dict as one JSON line
