"""The W&B run of a ``lit-genai`` command: online or offline, a short server check, the same run on resume.

Mode. W&B's own conventions decide (``wandb_mode``): ``WANDB_MODE`` when set (``offline`` or its old
name ``dryrun``, ``disabled``, ``online``), else online when W&B has a key (``WANDB_API_KEY`` or the
``~/.netrc`` entry ``wandb login`` writes for the server), else offline, so ``wandb sync`` can upload
the run later. The server is ``WANDB_BASE_URL``, else the ``base_url`` that ``wandb login --host``
wrote into W&B's settings file, else W&B's cloud.

Server check. ``wandb.init`` reaches an online server only after retrying for ``init_timeout``
(90 s in wandb 0.31) and then raises, so an unreachable server or a refused key ended a run after a
minute and a half in a 50-line traceback (and that from Lightning's ``setup`` hook, where nothing can
catch it and go on). Before anything is built, ``server_problem`` asks the server who the key
belongs to (the GraphQL ``viewer`` query ``wandb login`` verifies keys with) and waits
``CHECK_TIMEOUT_S`` at most. On a problem the command prints one line and logs offline, or, when
``WANDB_MODE=online`` asks for an online run explicitly, stops with one line (``LitGenAIError``).

Resume. ``WandbRunId`` writes the W&B run id into every checkpoint (``wandb_run_id``); ``fit
--ckpt_path`` hands it to the logger as ``id`` (unless the config sets ``id`` or ``version``), and
Lightning's ``WandbLogger`` always passes ``resume="allow"``, so the resumed fit logs into the same
run. Offline runs keep the id too: each part is a folder ``wandb/offline-run-<time>-<id>``, and
``wandb sync`` of those folders uploads them into one run, in order of start time.
"""

from __future__ import annotations

import base64
import configparser
import json
import netrc
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Optional
from urllib.parse import urlsplit

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lit_genai.errors import LitGenAIError

Mode = Literal["online", "offline", "disabled"]

DEFAULT_BASE_URL = "https://api.wandb.ai"  # wandb.sdk.lib.urls.DEFAULT_BASE_URL in wandb 0.31
CHECK_TIMEOUT_S = 5.0  # the whole check, name resolution included; a reachable server answers in < 1 s
CHECKPOINT_KEY = "wandb_run_id"


def wandb_mode(environ: Mapping[str, str] = os.environ) -> Mode:
    """The mode W&B runs in: ``WANDB_MODE`` when set, else online with a key, else offline."""
    return _mode_set(environ) or ("online" if api_key(base_url(environ), environ) else "offline")


def _mode_set(environ: Mapping[str, str] = os.environ) -> Optional[Mode]:
    """The mode ``WANDB_MODE`` sets (``dryrun`` is offline's old name), or None."""
    mode = environ.get("WANDB_MODE", "").strip().lower()
    return "offline" if mode == "dryrun" else mode if mode in ("online", "offline", "disabled") else None


def base_url(environ: Mapping[str, str] = os.environ) -> str:
    """The W&B server: ``WANDB_BASE_URL``, else the ``base_url`` of W&B's settings file, else the cloud."""
    if environ.get("WANDB_BASE_URL"):
        return environ["WANDB_BASE_URL"].rstrip("/")
    folder = Path(environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb")
    settings = configparser.ConfigParser()
    try:
        settings.read(folder / "settings")
    except configparser.Error:
        return DEFAULT_BASE_URL  # wandb treats an unreadable settings file as empty too
    return settings.get("default", "base_url", fallback=DEFAULT_BASE_URL).rstrip("/")


def api_key(url: str, environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """W&B's key for the server at ``url``: ``WANDB_API_KEY``, else its ``~/.netrc`` (or ``$NETRC``) entry."""
    if environ.get("WANDB_API_KEY"):
        return environ["WANDB_API_KEY"]
    try:
        auth = netrc.netrc(environ.get("NETRC")).authenticators(urlsplit(url).netloc)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return None
    return auth[2] if auth and auth[2] else None


def server_problem(url: str, key: Optional[str], timeout: float = CHECK_TIMEOUT_S) -> Optional[str]:
    """Why the W&B server at ``url`` cannot take a run with ``key``, in a few words; None when it can.

    One request, the GraphQL ``viewer`` query, answered within ``timeout`` seconds or not at all
    (it runs in a daemon thread, since ``urlopen``'s timeout does not cover name resolution).
    """
    if not key:
        return "no W&B API key (run `wandb login` or set WANDB_API_KEY)"
    answer: list[Optional[str]] = []
    thread = threading.Thread(target=lambda: answer.append(_ask_viewer(url, key, timeout)), daemon=True)
    thread.start()
    thread.join(timeout)
    return answer[0] if answer else f"no answer from {url} within {timeout:g} s"


def _ask_viewer(url: str, key: str, timeout: float) -> Optional[str]:
    token = base64.b64encode(f"api:{key}".encode()).decode()  # W&B's basic auth: user "api"
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": "query Viewer { viewer { id } }"}).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            viewer = (json.load(response).get("data") or {}).get("viewer")
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            return f"{url} refused the API key (HTTP {error.code})"
        return f"{url} answered HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return f"{url} cannot be reached ({getattr(error, 'reason', error)})"
    except (ValueError, AttributeError):
        return f"{url} does not answer as a W&B server"
    return None if viewer else f"{url} refused the API key (no user for it)"


def prepare_wandb_run(
    init_args: Any, subcommand: str, ckpt_path: Optional[str] = None, weights_only: Optional[bool] = None
) -> None:
    """What the command line does to a ``WandbLogger``'s ``init_args`` before it is built: the server
    check (``check_server``) and, for ``fit --ckpt_path``, the run to resume (``resume_run``)."""
    check_server(init_args, subcommand)
    if subcommand == "fit":
        resume_run(init_args, ckpt_path, weights_only=weights_only is not False)


def check_server(init_args: Any, subcommand: str) -> None:
    """Before a run with a ``WandbLogger`` (its ``init_args``) goes online: log offline, or stop, if
    the server cannot take it. One line either way; nothing when the run is offline or disabled."""
    # offline: false in a config without a key still goes online (and is told there is no key)
    if init_args.get("offline") or _mode_set() in ("offline", "disabled") or rank_zero_only.rank != 0:
        return  # other ranks never start the W&B run (Lightning's @rank_zero_experiment)
    url = base_url()
    problem = server_problem(url, api_key(url))
    if problem is None:
        return
    if _mode_set() == "online":
        raise LitGenAIError(
            f"W&B: {problem}, and WANDB_MODE=online asks for an online run: fix the network or the key, "
            "or unset WANDB_MODE to log offline and `wandb sync` later"
        )
    init_args.offline = True
    init_args.log_model = False  # Lightning refuses log_model with offline; nothing can upload it now
    folder = Path(init_args.get("save_dir") or init_args.get("dir") or ".") / "wandb"
    sys.stderr.write(
        f"lit-genai: W&B: {problem}; this {subcommand} logs offline to {folder}: upload it later with "
        "`wandb sync`, or set WANDB_MODE=online to stop instead\n"
    )


def resume_run(init_args: Any, ckpt_path: Optional[str], weights_only: bool = True) -> None:
    """Let a ``fit`` resumed from ``ckpt_path`` log into the W&B run the checkpoint was written in.

    Sets ``id`` unless the config names a run (``id`` or ``version``); Lightning's ``WandbLogger``
    passes ``resume="allow"`` to ``wandb.init`` itself."""
    if not ckpt_path or init_args.get("id") or init_args.get("version"):
        return
    run_id = saved_run_id(ckpt_path, weights_only=weights_only)
    if run_id:
        init_args.id = run_id


def saved_run_id(ckpt_path: str, weights_only: bool = True) -> Optional[str]:
    """The W&B run id ``WandbRunId`` wrote into the checkpoint, if any.

    Only the pickled metadata is read (``mmap=True``); a file that cannot be read gives None, since
    the command line has checked it already and Lightning reports its own problems with it."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=weights_only, mmap=True)
    except Exception:  # noqa: BLE001 -- see the docstring: not this function's error to report
        return None
    run_id = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    return run_id if isinstance(run_id, str) else None


class WandbRunId(Callback):
    """Write the W&B run id into every checkpoint (``checkpoint["wandb_run_id"]``), for ``resume_run``."""

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            # version is the run's id once the run exists, else the id it was given; None on other ranks
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint[CHECKPOINT_KEY] = str(logger.version)
                return
