"""One name per sampling setting, from the command line to the evaluation protocol (docs/architecture.md,
"Sampling settings"): a value given through ``--evaluation.sampling`` or ``--model.sampling.<name>``
is the value used and the only value the test JSON records."""

import copy
import json

import pytest
import yaml
from helpers import TINY_CLI_TRAINER, run_cli
from test_cli import TINY as CLI_TINY

from lit_genai.diffusion import DiffusionSampling
from lit_genai.errors import ConfigError
from lit_genai.paradigm import NoSettings

DEMO = "experiments/diffusion/mnist.yaml"
# test_cli.py's tiny demo, with a quick evaluation and without the test bound.
TINY = copy.deepcopy(CLI_TINY)
TINY["model"]["init_args"]["test_bpd_timesteps"] = 0
TINY["evaluation"] = {"num_samples": 10, "batch_size": 10, "num_real": 40, "metrics": ["fid"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny demo run fitted 4 steps: (the --config arguments, its checkpoint folder)."""
    root = tmp_path_factory.mktemp("settings")
    path = root / "tiny.yaml"
    path.write_text(
        yaml.safe_dump({**TINY, "trainer": {**TINY_CLI_TRAINER, "default_root_dir": str(root / "run")}})
    )
    args = ["--config", DEMO, "--config", str(path)]
    assert run_cli(["fit", *args]) == 0
    return args, root / "run" / "checkpoints"


def _test_protocol(args, checkpoints, *extra) -> dict:
    assert run_cli(["test", *args, "--ckpt_path", "last", *extra]) == 0
    return json.loads((checkpoints / "last.test.json").read_text())["protocol"]["sampler"]


def test_the_protocol_records_the_steps_given_on_the_command_line(trained):
    args, checkpoints = trained
    sampler = _test_protocol(args, checkpoints)
    assert sampler["steps"] == 3 and sampler["sampler"] == "dpm_solver++"  # the config's
    for extra, steps in (
        (["--evaluation.sampling", "{steps: 4}"], 4),  # through the evaluation callback
        (["--model.sampling.steps", "5"], 5),  # through the module's settings
    ):
        sampler = _test_protocol(args, checkpoints, *extra)
        assert sampler["steps"] == steps
        assert "sampling_steps" not in sampler  # one name per setting
        assert set(sampler) == set(DiffusionSampling.names()) | {"seed", "ema"}


def test_an_unknown_setting_on_the_command_line_is_one_line(trained, capsys):
    args, _ = trained
    assert run_cli(["predict", *args, "--ckpt_path", "last", "--model.sampling.stepz", "5"]) == 2
    assert run_cli(["test", *args, "--ckpt_path", "last", "--evaluation.sampling", "{stepz: 4}"]) == 1
    err = capsys.readouterr().err
    unknown = "lit-genai: error: unknown sampling option(s) stepz for DiffusionSampling; the options are: "
    assert unknown + "sampler, steps" in err


def test_settings_are_frozen_and_replace_checks_names():
    settings = DiffusionSampling(steps=5)
    with pytest.raises(AttributeError):
        settings.steps = 6  # type: ignore[misc]
    assert settings.replace(steps=6).steps == 6 and settings.steps == 5
    assert settings.replace() is settings
    with pytest.raises(ConfigError, match="the options are: none"):
        NoSettings().replace(steps=1)
