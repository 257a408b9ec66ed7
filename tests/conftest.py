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
