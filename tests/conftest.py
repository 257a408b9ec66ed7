import os

import pytest
import torch

# Two cores are shared between pytest, DataLoader workers and torch's intra-op pool: pin torch to
# one thread so tests do not fight each other (CPU threads are set deliberately in tests and benchmarks).
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def ae_checkpoint(tmp_path_factory):
    """A tiny KL autoencoder checkpoint (1x28x28 -> 2x7x7) fitted 2 steps on MNIST5k, its scale
    factor estimated at its validation, saved as ``lit-genai fit`` saves it; read-only: tests that
    change a first-stage file copy it first. Shared by the latent-diffusion tests."""
    from helpers import quiet_trainer
    from test_autoencoder import tiny_kl

    from lit_genai.data import MNIST5k

    folder = tmp_path_factory.mktemp("kl")
    torch.manual_seed(0)
    trainer = quiet_trainer(folder, max_steps=2, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(tiny_kl(), datamodule=MNIST5k(batch_size=16))
    trainer.save_checkpoint(folder / "kl.ckpt")
    return folder / "kl.ckpt"


@pytest.fixture(scope="session")
def serve_server(tmp_path_factory):
    """One ``lit-genai serve`` process on 127.0.0.1 over tiny image, text and audio runs, with an API
    key and the page, shared by tests/test_serve.py and tests/test_serve_ui.py (serve_helpers.py);
    stopped at the end of the session."""
    from serve_helpers import shared_server

    yield from shared_server(tmp_path_factory)
