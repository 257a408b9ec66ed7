"""``lit-genai serve``: real HTTP requests to a service on 127.0.0.1 over tiny trained models.

One server (``served``, shared with tests/test_serve_ui.py: serve_helpers.py): an image model
(class-conditional diffusion), a text model (character GPT) and an audio model (WaveNet), with an
API key, batching on, and small limits so that each refusal is cheap to provoke. The checks: the
bytes of a served sample are those of ``lit-genai predict``'s file of the same index and seed; the
same request gives the same bytes; batched requests get the samples they get alone (tokens byte for
byte, float images within one level of round-off); text streams token chunks that add up to the
text ``/predict`` gives; each bad request is its own 4xx naming what is allowed; the body limit, the
API key, ``/health`` and ``/info``. The functions behind the service (``catalog``, ``draw``) are
also checked without a server, over every paradigm's contract row.
"""

from __future__ import annotations

import base64
import io
import json
import wave
from concurrent.futures import ThreadPoolExecutor

import numpy
import pytest
import torch
from helpers import run_cli
from serve_helpers import KEY, LIMITS, run_args, tiny_runs

requests = pytest.importorskip("requests")
pytest.importorskip("litserve")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tiny_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def served(serve_server):
    return serve_server


def post(served, body, path="/predict", key=KEY, **kwargs):
    return requests.post(f"{served.url}{path}", json=body, headers={"X-API-Key": key}, timeout=120, **kwargs)


def test_health_and_info_describe_the_models(served):
    assert requests.get(f"{served.url}/health", headers={"X-API-Key": KEY}, timeout=10).text == "ok"
    info = requests.get(f"{served.url}/info", headers={"X-API-Key": KEY}, timeout=10).json()["model"]
    assert info["limits"] == LIMITS
    assert info["paths"] == {"predict": "/predict", "stream": "/stream", "ui": "/ui"}
    image, text, audio = (info["models"][name] for name in ("image", "text", "audio"))
    assert (image["paradigm"], image["modality"], image["media_type"]) == ("Diffusion", "image", "image/png")
    assert image["classes"] == [str(i) for i in range(10)] and image["conditions"] == ["label"]
    assert image["sampling"]["steps"] == {"default": 3, "nullable": False, "type": "int", "min": 1, "max": 50}
    assert (
        image["sampling"]["sampler"]["type"] == "choice" and "ddim" in image["sampling"]["sampler"]["choices"]
    )
    assert (text["paradigm"], text["modality"], text["stream"], text["classes"]) == (
        "NextToken",
        "text",
        True,
        [],
    )
    assert (
        text["sampling"]["max_new_tokens"]["default"] == 12
        and text["sampling"]["max_new_tokens"]["max"] == 64
    )
    assert text["sampling"]["top_k"] == {"default": None, "nullable": True, "type": "int"}
    assert (audio["modality"], audio["media_type"], audio["num_classes"]) == ("audio", "audio/wav", 4)


def test_a_served_sample_is_predicts_file(served, runs):
    """PNG and WAV bytes equal ``lit-genai predict``'s ``sample_<i>`` files (same seed, same index).

    predict draws the tiny image run's 3 samples in one batch; the service is asked for the same
    batch (n=3), since a float model's samples can change in round-off with the batch size (draw.py).
    """
    for name in ("image", "audio"):
        assert run_cli(["predict", *run_args(runs[name].parent, name), "--ckpt_path", "last"]) == 0
    files = runs["image"] / "predictions"
    batch = post(served, {"model": "image", "n": 3}).json()["samples"]
    assert [base64.b64decode(png) for png in batch] == [
        (files / f"sample_{i:05d}.png").read_bytes() for i in range(3)
    ]
    one = post(served, {"model": "image", "start": 1})  # one image: the PNG itself, as the JSON holds it
    assert one.headers["content-type"] == "image/png"
    assert one.content == base64.b64decode(
        post(served, {"model": "image", "start": 1, "format": "json"}).json()["samples"][0]
    )
    for i in (0, 1):  # audio samples are tokens: the same in any batch
        response = post(served, {"model": "audio", "start": i})
        assert response.headers["content-type"] == "audio/wav"
        assert response.content == (runs["audio"] / "predictions" / f"sample_{i:05d}.wav").read_bytes()


def test_the_same_request_gives_the_same_bytes(served):
    body = {"model": "image", "n": 2, "seed": 5, "label": "7", "options": {"sampler": "ddim"}}
    first, again = post(served, body), post(served, body)
    assert first.status_code == 200 and first.content == again.content
    result = first.json()
    assert (result["seed"], result["n"], result["sampling"]["sampler"], result["sampling"]["steps"]) == (
        5,
        2,
        "ddim",
        3,
    )
    assert all(base64.b64decode(png).startswith(b"\x89PNG") for png in result["samples"])
    other = post(served, {**body, "seed": 6})
    assert other.json()["samples"] != result["samples"]
    wav = post(served, {"model": "audio", "seed": 2})
    with wave.open(io.BytesIO(wav.content)) as clip:  # 16-bit PCM at the data's rate
        assert (clip.getsampwidth(), clip.getframerate(), clip.getnframes()) == (2, 4000, 41)


def test_batched_requests_get_the_bytes_they_get_alone(served):
    """Text (tokens) keeps its bytes exactly; images within float round-off: one level (draw.py)."""
    bodies = [
        {"model": "text", "seed": 1},
        {"model": "text", "seed": 2, "n": 2},
        {"model": "text", "seed": 3, "start": 4, "prompt": "ab"},
        {"model": "text", "seed": 1, "start": 4, "prompt": "ab"},
        {"model": "text", "seed": 1, "options": {"temperature": 0.5}},  # other options: drawn apart
        {"model": "image", "seed": 1, "label": 3, "format": "json"},
        {"model": "image", "seed": 2, "n": 2, "format": "json"},
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda body: post(served, body), bodies))
    alone = [post(served, body) for body in bodies]
    assert [r.status_code for r in together + alone] == [200] * 2 * len(bodies)
    assert [r.content for r in together[:5]] == [r.content for r in alone[:5]]
    for shared, single in zip(together[5:], alone[5:], strict=True):
        for a, b in zip(shared.json()["samples"], single.json()["samples"], strict=True):
            assert (_pixels(a) - _pixels(b)).abs().max() <= 1
    assert max(int(r.headers["X-Batch-Requests"]) for r in together) > 1  # some did share a batch
    assert {r.headers["X-Batch-Requests"] for r in alone} == {"1"}


def _pixels(png: str) -> torch.Tensor:
    from PIL import Image

    return torch.from_numpy(numpy.asarray(Image.open(io.BytesIO(base64.b64decode(png))))).int()


def test_text_streams_in_chunks_that_add_up_to_the_text(served):
    body = {"model": "text", "seed": 4, "prompt": "The "}
    response = post(served, {**body, "n": 2}, path="/stream", stream=True)
    assert response.status_code == 200
    events = [json.loads(line) for line in response.iter_lines() if line]
    texts = post(served, {**body, "n": 2}).json()["samples"]
    for i, text in enumerate(texts):
        chunks = [e["text"] for e in events if e["index"] == i and not e.get("done")]
        assert len(chunks) >= 3  # 12 new tokens, 4 per event
        assert "".join(chunks) == text and text.startswith("The ")
        assert [e["text"] for e in events if e["index"] == i and e.get("done")] == [text]


@pytest.mark.parametrize(
    "body, path, status, words",
    [
        (
            {"model": "image", "options": {"stepz": 3}},
            "/predict",
            400,
            ["stepz", "the options are: sampler, steps"],
        ),
        ({"model": "image", "n": 5}, "/predict", 422, ["n=5", "1 .. 4"]),
        ({"model": "image", "options": {"steps": 51}}, "/predict", 422, ["steps=51", "1 .. 50"]),
        ({"model": "text", "prompt": "x" * 41}, "/predict", 422, ["41 characters", "limit is 40"]),
        ({"model": "text", "prompt": "x" * 41}, "/stream", 422, ["41 characters"]),
        ({"model": "text", "options": {"max_new_tokens": 65}}, "/predict", 422, ["max_new_tokens=65"]),
        ({"model": "image", "label": "seven"}, "/predict", 400, ["'seven'", "0, 1, 2"]),
        ({"model": "text", "label": 1}, "/predict", 400, ["unconditional"]),
        ({"model": "image", "options": {"sampler": "magic"}}, "/predict", 400, ["sampler", "'ddim'"]),
        ({"model": "image", "format": "wav"}, "/predict", 400, ["format 'wav'", "auto, json, png"]),
        ({"model": "image", "colour": 1}, "/predict", 400, ["colour", "the fields are: model, n"]),
        ({"n": 1}, "/predict", 400, ["several models", "image, text, audio"]),
        ({"model": "video"}, "/predict", 404, ["'video'", "image, text, audio"]),
        ({"model": "image"}, "/stream", 400, ["text models only"]),
        (
            {"model": "text", "options": {"top_p": 3.0}},
            "/predict",
            400,
            ["top_p=3.0"],
        ),  # refused by the sampler
    ],
)
def test_a_bad_request_is_one_4xx_naming_what_is_allowed(served, body, path, status, words):
    response = post(served, body, path=path)
    assert response.status_code == status
    detail = response.json()["detail"]
    assert "\n" not in detail and all(word in detail for word in words), detail


def test_a_body_that_is_not_json_or_too_large_is_refused(served):
    response = requests.post(
        f"{served.url}/predict", data=b"{not json", headers={"X-API-Key": KEY}, timeout=30
    )
    assert response.status_code == 400 and "not JSON" in response.json()["detail"]
    big = post(served, {"model": "text", "prompt": "x" * 5000})
    assert big.status_code == 413


def test_requests_without_the_api_key_are_401(served):
    assert post(served, {"model": "image"}, key="wrong").status_code == 401
    assert requests.post(f"{served.url}/predict", json={"model": "image"}, timeout=30).status_code == 401
    assert requests.post(f"{served.url}/predict", json={"model": "nope"}, timeout=30).status_code == 401
    assert requests.get(f"{served.url}/info", timeout=30).status_code == 401


# ---------------------------------------------------------------------- without a server


def test_the_command_line_mistakes_are_one_line(tmp_path, capsys):
    for args, words in (
        (["serve"], ["--model"]),
        (["serve", "--model", str(tmp_path / "nothing")], ["nothing"]),
        (["serve", "--model", f"a={tmp_path}", "--port", "80"], ["--port 80"]),
        (["serve", "--model", "x", "--host", "example.org"], ["--host"]),
        (["serve", "--model", "x", "--device", "tpu"], ["--device tpu"]),
    ):
        assert run_cli(args) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("lit-genai: error:") and "\n" not in err and all(w in err for w in words), err


def test_a_default_beyond_a_limit_stops_the_command(runs, capsys):
    assert run_cli(["serve", "--model", f"image={runs['image']}", "--max_steps", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert "sampling.steps is 3" in err and "--max_steps" in err and "\n" not in err


@pytest.fixture(
    params=[
        "diffusion-unet",
        "gan-dcgan",
        "gpt-text",
        "wavenet-audio",
        "maskgit-image-tokens",
        "text2image-diffusion-unet",
    ]
)
def contract_row(request):
    from test_contract import GENERATIVE

    torch.manual_seed(0)
    module, data = GENERATIVE[request.param][1](None)
    module.media_decoder = data.decode
    return module


def test_every_paradigm_is_described_and_drawn_through_the_contract(contract_row):
    """One service for every paradigm: the catalog reads the contract, a batch of requests equals each
    request drawn alone (tokens exactly, float images within one level of round-off)."""
    from lit_genai.serve.catalog import describe, info_json
    from lit_genai.serve.draw import draw
    from lit_genai.serve.requests import Limits, parse_request
    from lit_genai.serve.responses import samples_json

    module = contract_row
    info = describe("m", module)
    entry = json.loads(json.dumps(info_json(info, Limits().bounds())))
    assert {k: v["default"] for k, v in entry["sampling"].items()} == json.loads(
        json.dumps(module.sampling_settings(), default=str)
    )
    catalog = {"m": info}
    jobs = [
        parse_request({"seed": s, "n": n, "start": s}, catalog, Limits()) for s, n in ((0, 2), (3, 1), (9, 2))
    ]
    together = draw(module, jobs, max_samples=4)
    alone = [draw(module, [job], max_samples=4)[0] for job in jobs]
    for shared, single in zip(together, alone, strict=True):
        if isinstance(single, torch.Tensor) and not hasattr(module, "vocab_size"):  # float images
            assert (shared.int() - single.int()).abs().max() <= 1
        else:
            assert samples_json(shared) == samples_json(single)


def test_captions_are_a_requests_text_condition():
    """A text-to-image model takes ``text`` (one caption or one per sample) or its ``prompt``
    option; the same caption as a condition or as the prompt gives the same images."""
    from test_contract import GENERATIVE

    from lit_genai.serve.catalog import describe
    from lit_genai.serve.draw import draw
    from lit_genai.serve.requests import Limits, RequestError, parse_request

    torch.manual_seed(0)
    module, data = GENERATIVE["text2image-diffusion-unet"][1](None)
    module.media_decoder = data.decode
    with torch.no_grad():  # off the zero initialisation of cross-attention, so captions matter
        for p in module.net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    catalog = {"m": describe("m", module)}
    assert catalog["m"].conditions == ("text",)
    by_text = parse_request({"n": 2, "text": "a red circle"}, catalog, Limits())
    by_prompt = parse_request({"n": 2, "prompt": "a red circle"}, catalog, Limits())
    per_sample = parse_request({"n": 2, "text": ["a red circle", "blue square"]}, catalog, Limits())
    a, b, c = (draw(module, [job], max_samples=4)[0] for job in (by_text, by_prompt, per_sample))
    assert torch.equal(a, b) and torch.equal(a[:1], c[:1]) and not torch.equal(a[1:], c[1:])
    for body, words in (
        ({"n": 3, "text": ["a", "b"]}, "2 captions for 3 samples"),
        ({"text": 3}, "a caption"),
    ):
        with pytest.raises(RequestError, match=words):
            parse_request(body, catalog, Limits())
    unconditional = {"u": describe("u", GENERATIVE["diffusion-unet"][1](None)[0])}
    with pytest.raises(RequestError, match="not text-conditional"):
        parse_request({"model": "u", "text": "a red circle"}, unconditional, Limits())


def test_an_image_to_image_request_inpaints_its_source_and_keeps_the_known_pixels():
    """``image`` (a base64 PNG) and ``mask`` (a named region or a PNG) reach ``sample`` as the
    ``image`` / ``mask`` conditions: the known pixels come back byte for byte; options naming a file
    on the server are refused."""
    from test_contract import GENERATIVE

    from lit_genai.media.image import png_bytes
    from lit_genai.serve.catalog import describe
    from lit_genai.serve.draw import draw
    from lit_genai.serve.requests import Limits, RequestError, parse_request

    torch.manual_seed(0)
    module, data = GENERATIVE["diffusion-unet"][1](None)
    module.media_decoder = data.decode
    catalog = {"m": describe("m", module)}
    C, H, W = module.sample_shape
    source = torch.randint(0, 256, (C, H, W), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    png = base64.b64encode(png_bytes(source)).decode()
    job = parse_request({"n": 2, "image": png, "mask": "left_half"}, catalog, Limits())
    assert job.cond["image"].shape == (2, C, H, W) and job.cond["mask"].shape == (2, 1, H, W)
    (filled,) = draw(module, [job], max_samples=4)  # (2, C, H, W) uint8
    assert torch.equal(filled[..., W // 2 :], source[..., W // 2 :].expand(2, C, H, W - W // 2))
    assert not torch.equal(filled[..., : W // 2], source[..., : W // 2].expand(2, C, H, W // 2))
    by_png = parse_request(
        {
            "n": 2,
            "image": png,
            "mask": base64.b64encode(
                png_bytes((torch.arange(W) < W // 2).to(torch.uint8).mul(255).expand(1, H, W))
            ).decode(),
        },
        catalog,
        Limits(),
    )
    assert torch.equal(by_png.cond["mask"], job.cond["mask"])
    strength0 = parse_request({"image": png, "options": {"strength": 0.0}}, catalog, Limits())
    assert torch.equal(draw(module, [strength0], max_samples=4)[0][0], source)  # SDEdit at 0: the source
    for body, words in (
        ({"image": "not a png"}, "not a base64 PNG"),
        ({"mask": "left_half"}, "needs the image"),
        ({"image": png, "options": {"init_image": "/etc/passwd"}}, "names a file on the server"),
    ):
        with pytest.raises(RequestError, match=words):
            parse_request(body, catalog, Limits())


def test_a_translation_request_returns_the_translation_of_its_source():
    """pix2pix through the service: the request's ``image`` is the source it translates, and the PNG
    that comes back is ``sample(cond={"image": source})``'s, byte for byte; a grey source of a
    1-channel model needs no channel repeat; a model without ``image`` refuses the field."""
    from test_contract import GENERATIVE

    from lit_genai.media import to_uint8
    from lit_genai.media.image import png_bytes
    from lit_genai.serve.catalog import describe
    from lit_genai.serve.draw import draw
    from lit_genai.serve.requests import Limits, RequestError, parse_request

    torch.manual_seed(0)
    module, data = GENERATIVE["gan-pix2pix"][1](None)
    module.media_decoder = data.decode
    module.eval()
    catalog = {"p": describe("p", module), "g": describe("g", GENERATIVE["gan-dcgan"][1](None)[0])}
    C, H, W = module.source_shape
    source = torch.randint(0, 256, (C, H, W), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    png = base64.b64encode(png_bytes(source)).decode()
    job = parse_request({"model": "p", "image": png}, catalog, Limits())
    assert job.cond["image"].shape == (1, C, H, W)
    (served,) = draw(module, [job], max_samples=4)  # (1, C, H, W) uint8
    expected = module.sample(1, cond={"image": source[None].float() / 127.5 - 1})
    assert torch.equal(served, to_uint8(expected))
    with pytest.raises(RequestError, match="takes no source image"):
        parse_request({"model": "g", "image": png}, catalog, Limits())
