"""The W&B run of a command (lit_genai/wandb_run.py): W&B's mode conventions, an unreachable server or
refused key in one line and a few seconds, and a resumed fit in the same run. Nothing here reaches
the internet: an online server is a closed local port or a local HTTP server that refuses every key."""

import contextlib
import http.server
import socket
import sys
import threading
import time
from unittest import mock

import pytest
import torch
import wandb
import yaml
from helpers import TINY_CLI_TRAINER, run_cli
from jsonargparse import Namespace
from test_cli import DEMO, TINY

from lit_genai.cli import LitGenAICLI
from lit_genai.errors import LitGenAIError
from lit_genai.wandb_run import (
    CHECKPOINT_KEY,
    api_key,
    base_url,
    check_server,
    resume_run,
    server_problem,
    wandb_mode,
)

FAKE_KEY = "k" * 40  # W&B's key format: 40+ letters, digits or underscores


@pytest.fixture()
def closed_port_url():
    """A local URL where nothing listens: a connection is refused at once, as without network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def _local_server(status: int, body: bytes):
    """A local HTTP server answering every POST with ``status`` and ``body``; yields its URL."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def refusing_url():
    """A local server that answers as W&B answers a bad key (HTTP 401)."""
    with _local_server(401, b'{"errors": [{"message": "user is not logged in"}]}') as url:
        yield url


@pytest.fixture()
def silent_url():
    """A local port that accepts connections and never answers, as a server behind a dead route."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture()
def tiny(tmp_path):
    """The tiny demo fit of test_cli.py, logging to W&B (the command line's default logger)."""
    trainer = {k: v for k, v in TINY_CLI_TRAINER.items() if k != "logger"}
    config = {**TINY, "trainer": {**trainer, "default_root_dir": str(tmp_path / "run")}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    wandb.finish()  # a run left open by another test would be reused by the logger
    yield ["fit", "--config", DEMO, "--config", str(tmp_path / "tiny.yaml")]
    wandb.finish()


@pytest.mark.parametrize(
    "env, mode",
    [
        ({}, "offline"),  # no key: offline, to sync later
        ({"WANDB_API_KEY": FAKE_KEY}, "online"),
        ({"NETRC": "netrc"}, "online"),  # `wandb login` wrote the key
        ({"WANDB_API_KEY": FAKE_KEY, "WANDB_MODE": "offline"}, "offline"),
        ({"WANDB_API_KEY": FAKE_KEY, "WANDB_MODE": "dryrun"}, "offline"),
        ({"WANDB_API_KEY": FAKE_KEY, "WANDB_MODE": "disabled"}, "disabled"),
        ({"WANDB_MODE": "online"}, "online"),
    ],
)
def test_the_mode_follows_wandbs_conventions(env, mode, tmp_path):
    (tmp_path / "netrc").write_text(f"machine api.wandb.ai login user password {FAKE_KEY}\n")
    env = {k: str(tmp_path / v) if k == "NETRC" else v for k, v in env.items()}
    assert wandb_mode({"WANDB_CONFIG_DIR": str(tmp_path), "NETRC": str(tmp_path / "none"), **env}) == mode


def test_the_server_and_its_key_come_from_wandbs_settings_and_netrc(tmp_path):
    (tmp_path / "settings").write_text("[default]\nbase_url = https://wandb.example.org/\n")
    (tmp_path / "netrc").write_text(f"machine wandb.example.org login user password {FAKE_KEY}\n")
    env = {"WANDB_CONFIG_DIR": str(tmp_path), "NETRC": str(tmp_path / "netrc")}
    assert base_url(env) == "https://wandb.example.org"
    assert api_key(base_url(env), env) == FAKE_KEY
    assert api_key("https://api.wandb.ai", env) is None  # the key is for the other server
    assert base_url({**env, "WANDB_BASE_URL": "http://127.0.0.1:1"}) == "http://127.0.0.1:1"


def test_the_server_check_says_why_within_seconds(closed_port_url, refusing_url, silent_url):
    start = time.monotonic()
    assert "cannot be reached" in server_problem(closed_port_url, FAKE_KEY)
    assert server_problem(refusing_url, FAKE_KEY) == f"{refusing_url} refused the API key (HTTP 401)"
    assert "no W&B API key" in server_problem(refusing_url, None)
    assert time.monotonic() - start < 3
    start = time.monotonic()
    problem = server_problem(silent_url, FAKE_KEY, timeout=0.5)
    assert "timed out" in problem or "no answer" in problem
    assert time.monotonic() - start < 2  # the timeout bounds the check, not W&B's 90 s init_timeout


def test_the_server_check_passes_a_known_key_and_names_other_answers():
    with _local_server(200, b'{"data": {"viewer": {"id": "VXNlcjox"}}}') as url:
        assert server_problem(url, FAKE_KEY) is None
    with _local_server(200, b'{"data": {"viewer": null}}') as url:
        assert server_problem(url, FAKE_KEY) == f"{url} refused the API key (no user for it)"
    with _local_server(503, b"") as url:
        assert server_problem(url, FAKE_KEY) == f"{url} answered HTTP 503"
    with _local_server(200, b"<html>a proxy's login page</html>") as url:
        assert server_problem(url, FAKE_KEY) == f"{url} does not answer as a W&B server"


@pytest.mark.parametrize("server", ["closed_port_url", "refusing_url"])
def test_no_server_or_a_refused_key_is_one_line_and_the_fit_goes_on_offline(
    server, tiny, tmp_path, monkeypatch, capsys, request
):
    url = request.getfixturevalue(server)
    monkeypatch.delenv("WANDB_MODE")  # a key and no mode: W&B's convention is online
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", url)
    start = time.monotonic()
    assert run_cli(tiny) == 0
    assert time.monotonic() - start < 80  # before: wandb.init retried for 90 s, then a traceback
    err = capsys.readouterr().err
    notices = [line for line in err.splitlines() if line.startswith("lit-genai:")]
    assert len(notices) == 1 and "logs offline" in notices[0] and url in notices[0], err
    assert "Traceback" not in err
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*")), "the run was not logged offline"


def test_an_online_logger_without_a_key_is_told_so_and_logs_offline(tmp_path, monkeypatch, capsys):
    # offline: false in a config, no key anywhere: wandb.init would fail asking for one
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    init_args = Namespace(offline=False, save_dir=str(tmp_path))
    check_server(init_args, "fit")
    assert init_args.offline is True
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("lit-genai: W&B: no W&B API key") and "logs offline" in line
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(LitGenAIError, match="no W&B API key.*WANDB_MODE=online"):
        check_server(Namespace(offline=False, save_dir=str(tmp_path)), "fit")


def test_wandb_mode_online_stops_with_one_line_instead(tiny, closed_port_url, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", closed_port_url)
    assert run_cli(tiny) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lit-genai: error: W&B: "), err
    assert "WANDB_MODE=online" in err[0]


def test_a_resumed_fit_logs_into_the_same_run(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert run_cli([*tiny, "--trainer.max_steps", "2"]) == 0
    wandb.finish()
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    run_id = torch.load(checkpoint, weights_only=True)[CHECKPOINT_KEY]
    assert run_cli([*tiny, "--ckpt_path", "last", "--trainer.max_steps", "3"]) == 0
    folders = sorted(p.name for p in (tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(name.endswith(f"-{run_id}") for name in folders), folders
    assert torch.load(checkpoint, weights_only=True)[CHECKPOINT_KEY] == run_id


def test_a_run_named_in_the_config_is_not_replaced(tmp_path):
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, CHECKPOINT_KEY: "saved123"}, checkpoint)
    for given, expected in [({}, "saved123"), ({"id": "mine"}, "mine"), ({"version": "v"}, None)]:
        init_args = Namespace(**given)
        resume_run(init_args, str(checkpoint))
        assert init_args.get("id") == expected
    init_args = Namespace()
    resume_run(init_args, str(tmp_path / "missing.ckpt"))  # the command line reports a bad file itself
    assert init_args.get("id") is None


@pytest.mark.parametrize("mode, offline", [("disabled", False), ("offline", True), (None, True)])
def test_the_default_logger_leaves_a_disabled_wandb_disabled(mode, offline, tmp_path, monkeypatch):
    # Lightning's WandbLogger(offline=True) sets WANDB_MODE=dryrun, so before, WANDB_MODE=disabled without
    # a key still wrote an offline run. (Checked on the config: W&B reads WANDB_MODE once per process.)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))  # no base_url of this machine's W&B settings
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # and no `wandb login` key
    if mode is None:
        monkeypatch.delenv("WANDB_MODE")
    else:
        monkeypatch.setenv("WANDB_MODE", mode)
    with mock.patch.object(sys, "argv", ["lit-genai"]):  # not pytest's arguments
        cli = LitGenAICLI(args=["--config", DEMO, "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert cli.config.trainer.logger.init_args.offline is offline
