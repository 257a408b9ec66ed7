"""Every notebook under notebooks/ runs top to bottom (no Jupyter needed), and its stored outputs stay small.

A notebook is run by exec-ing its code cells in order in one namespace, in a temporary working
directory (nothing is written into the repository or left in the working directory), with
``NOTEBOOK_STEPS=2`` and ``NOTEBOOK_AUDIO_SECONDS=0.01`` so that training and sampling are a smoke
test. Notebook-specific checks of the final namespace live in ``CHECKS``.

The notebooks keep the outputs of one run at a small setting so that they render with pictures on
GitHub: each file stays under ``MAX_BYTES``, no cell stored an error, and no output names a folder of
the machine that ran it.
"""

import json
import re
import sys
import tempfile
from pathlib import Path

import pytest
import torch

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
STEPS = 2
SAMPLES = 2  # images per model or per row
MAX_BYTES = 500_000
# Absolute paths of the machine that ran a notebook: its checkout, temporary folder and home, and
# home folders in general.
_HERE = (NOTEBOOK_DIR.parent, Path(tempfile.gettempdir()), Path.home())
MACHINE_PATH = re.compile(
    "|".join(
        [
            *(re.escape(str(p)) for p in _HERE if len(p.parts) > 1),
            r"/home/",
            r"/Users/",
            r"[A-Za-z]:\\\\Users",
        ]
    )
)


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def run_notebook(path: Path) -> dict:
    """Exec the code cells of ``path`` in order in one namespace; returns the namespace."""
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            exec(compile(source, f"{path.name}, cell {i}", "exec"), namespace)
    return namespace


def is_uint8_images(images, n: int) -> bool:
    return isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.shape == (n, 1, 28, 28)


def check_quickstart(namespace: dict) -> None:
    samples = namespace["samples"]
    assert isinstance(samples, torch.Tensor)
    assert samples.shape == (16, 1, 28, 28) and samples.dtype == torch.float32
    assert torch.isfinite(samples).all()
    assert samples.min() >= -1.0 and samples.max() <= 1.0
    assert namespace["trainer"].global_step == STEPS  # NOTEBOOK_STEPS was read
    assert is_uint8_images(namespace["images"], 16) and is_uint8_images(namespace["sevens"], 8)
    assert namespace["loaded"].checkpoint_path.endswith("last.ckpt")  # came back through lit_genai.load
    assert namespace["losses"] and all(torch.isfinite(torch.tensor(namespace["losses"])))  # the CSV log
    assert not namespace["RUN"].exists()  # the notebook removed its run folder


def check_paradigms(namespace: dict) -> None:
    expected = {
        "diffusion",
        "flow matching",
        "EDM",
        "DCGAN",
        "DCGAN (class-cond.)",
        "VAE",
        "PixelCNN",
        "MaskGIT",
    }
    assert set(namespace["samples"]) == expected
    for name, images in namespace["samples"].items():
        assert is_uint8_images(images, SAMPLES), name
    for name in expected:
        assert namespace["train_seconds"][name] > 0 and namespace["sample_seconds"][name] > 0
    table = namespace["table"]
    assert len(table) == 2 + len(expected) and all(line.startswith("|") for line in table)
    assert not namespace["RUNS"].exists()


def check_samplers(namespace: dict) -> None:
    n = namespace["N"]
    assert {key[0] for key in namespace["sampler_images"]} == {"ddpm", "ddim", "dpm_solver++"}
    for images in [*namespace["sampler_images"].values(), *namespace["guidance_images"].values()]:
        assert is_uint8_images(images, n)
    assert set(namespace["guidance_images"]) == {0.0, 1.0, 3.0}
    sources, mask = namespace["sources"], namespace["mask"]
    for title, images in namespace["edits"].items():
        assert images.shape == (n, 1, 28, 28) and torch.isfinite(images).all(), title
    for title in ("inpainted (replacement)", "inpainted (RePaint)"):  # the known half is the source's
        assert torch.equal(namespace["edits"][title][~mask], sources[~mask]), title
    alpha_bar = namespace["schedules"]["cosine"]["alpha_bar"]
    assert alpha_bar.shape == (1000,) and bool((alpha_bar[1:] <= alpha_bar[:-1]).all())
    assert not namespace["RUNS"].exists()


def check_text_and_audio(namespace: dict) -> None:
    texts = namespace["texts"]
    assert set(texts) == {0.5, 0.8, 1.2} and all(isinstance(t, str) and t for t in texts.values())
    answers = namespace["answers"]
    assert len(answers) == 2
    for question, answer in answers.items():
        assert isinstance(answer, str) and question not in answer  # the response alone, not the prompt
        assert "\n" not in answer  # cut at the plain template's stop (a newline)
    assert namespace["finetuned"].hparams["prompt_template"] is not None
    audio = namespace["audio"]
    assert isinstance(audio, torch.Tensor) and audio.ndim == 2
    assert audio.shape[0] == len(namespace["instruments"]) == 4
    assert audio.shape[1] >= namespace["tokens"] and torch.isfinite(audio).all()
    assert audio.abs().max() <= 1.0 and namespace["clips"].sample_rate == 4000
    assert not namespace["RUNS"].exists()


CHECKS = {
    "01_quickstart.ipynb": check_quickstart,
    "02_paradigms.ipynb": check_paradigms,
    "03_diffusion_samplers.ipynb": check_samplers,
    "04_text_and_audio.ipynb": check_text_and_audio,
}


@pytest.fixture
def notebook_env(tmp_path, monkeypatch):
    """Tiny training runs, a non-interactive matplotlib, and a throwaway working directory."""
    monkeypatch.setenv("NOTEBOOK_STEPS", str(STEPS))
    monkeypatch.setenv("NOTEBOOK_AUDIO_SECONDS", "0.01")
    monkeypatch.setenv("NOTEBOOK_SAMPLES", str(SAMPLES))
    monkeypatch.setenv("NOTEBOOK_TIMESTEPS", "50")  # the DDPM sampler of 03 takes T steps
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    plt = sys.modules.get("matplotlib.pyplot")  # None while hidden by test_quickstart_without_matplotlib
    if plt is not None:
        plt.close("all")


def test_notebooks_found():
    assert sorted(CHECKS) == [p.name for p in NOTEBOOKS], (
        f"add the checks of each notebook under {NOTEBOOK_DIR}"
    )


def output_texts(cell: dict) -> list[str]:
    """Every text an output of ``cell`` stores: streams, text/plain and HTML, error tracebacks."""
    texts = []
    for output in cell.get("outputs", []):
        texts.append("".join(output.get("text", "")))
        for mime, value in output.get("data", {}).items():
            if mime.startswith("text/") or mime == "application/json":
                texts.append(value if isinstance(value, str) else "".join(value))
        texts.extend(output.get("traceback", []))
    return texts


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_outputs_are_small(path):
    """nbformat 4; the stored outputs render on GitHub: a small file, no errors, no paths of a machine."""
    assert path.stat().st_size < MAX_BYTES, (
        f"{path.name}: {path.stat().st_size:,} bytes; store smaller figures"
    )
    nb = load(path)
    assert nb["nbformat"] == 4
    for i, cell in enumerate(nb["cells"]):
        assert cell["cell_type"] in ("markdown", "code", "raw")
        if cell["cell_type"] != "code":
            continue
        for output in cell["outputs"]:
            assert output["output_type"] != "error", f"{path.name}, cell {i}: stored an error"
        for text in output_texts(cell):
            found = MACHINE_PATH.search(text)
            assert found is None, (
                f"{path.name}, cell {i}: an output names a local path ({text[found.start() :][:60]!r})"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, notebook_env):
    namespace = run_notebook(path)  # raises if a cell fails
    assert path.name in CHECKS, f"add the checks of {path.name}'s results to CHECKS"
    CHECKS[path.name](namespace)
    assert not list(notebook_env.iterdir()), "the notebook wrote files into the working directory"


def test_quickstart_without_matplotlib(notebook_env, monkeypatch):
    """matplotlib is optional: without it the grid goes to a PNG in the working directory."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` fail
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    namespace = run_notebook(NOTEBOOK_DIR / "01_quickstart.ipynb")
    check_quickstart(namespace)
    assert namespace["plt"] is None
    assert [p.name for p in notebook_env.iterdir()] == ["quickstart_samples.png"]
