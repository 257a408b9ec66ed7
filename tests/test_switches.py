"""The speed switches take effect (benchmarks/switches.py measures them): fused or foreach AdamW
(``optimizer.init_args``), bf16 autocast (``--trainer.precision bf16-mixed``), channels-last
(``UNet(channels_last=True)``), and the DataLoader's worker settings. ``torch.compile`` is
tests/test_ar_module.py's ``test_compile_keeps_the_checkpoint_keys``."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from lit_genai.data import MNIST5k
from lit_genai.diffusion import Diffusion
from lit_genai.nn import UNet

TINY = dict(
    base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), dropout=0.0, num_groups=4
)


def _diffusion(optimizer=None, **net) -> Diffusion:
    torch.manual_seed(0)
    optimizer = optimizer or functools.partial(torch.optim.AdamW, lr=1e-3)
    return Diffusion(
        UNet(in_channels=1, num_classes=10, **TINY, **net),
        sample_shape=(1, 8, 8),
        num_classes=10,
        num_timesteps=50,
        optimizer=optimizer,
    )


def _batches(n: int = 2) -> DataLoader:
    x, y = torch.rand(8 * n, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (8 * n,))
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _fit(module, tmp_path, steps: int = 1, **trainer) -> None:
    quiet_trainer(tmp_path, max_steps=steps, limit_val_batches=0, **trainer).fit(module, _batches(steps))


@pytest.mark.parametrize(
    "flag, implementation", [("foreach", "_multi_tensor_adam"), ("fused", "_fused_adam")]
)
def test_foreach_and_fused_reach_the_optimiser_step(tmp_path, monkeypatch, flag, implementation):
    # As optimizer: {class_path: torch.optim.AdamW, init_args: {lr: ..., foreach/fused: true}} gives it.
    import torch.optim.adam as adam

    calls = []
    for name in ("_single_tensor_adam", "_multi_tensor_adam", "_fused_adam"):
        real = getattr(adam, name)
        monkeypatch.setattr(
            adam,
            name,
            functools.partial(lambda real, name, *a, **k: (calls.append(name), real(*a, **k))[1], real, name),
        )
    module = _diffusion(functools.partial(torch.optim.AdamW, lr=1e-3, **{flag: True}))
    _fit(module, tmp_path)
    assert calls == [implementation]
    assert module.trainer.optimizers[0].defaults[flag] is True


def test_bf16_mixed_runs_the_net_under_autocast(tmp_path):
    module, seen = _diffusion(), []
    module.net.conv_in.register_forward_hook(
        lambda m, i, out: seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
    )
    _fit(module, tmp_path, precision="bf16-mixed")
    assert seen == [(True, torch.bfloat16)]
    assert module.net.conv_in.weight.dtype == torch.float32  # the weights stay float32


def test_channels_last_reaches_every_conv_in_the_step(tmp_path):
    module, seen = _diffusion(channels_last=True), []
    convs = [m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        conv.register_forward_pre_hook(
            lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )
    _fit(module, tmp_path)
    assert len(seen) == len(convs) and all(seen)  # every conv's input during the training step
    assert all(
        c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs
    )  # and weights, after the step


def test_channels_last_changes_no_output_and_no_key():
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 30, 49]), torch.tensor([0, 1, 2, 3])
    plain, fast = _diffusion().net, _diffusion(channels_last=True).net
    assert list(plain.state_dict()) == list(fast.state_dict())
    with torch.no_grad():  # zero-initialised output layers would hide a difference
        for a, b in zip(plain.parameters(), fast.parameters(), strict=True):
            a.add_(0.1 * torch.randn_like(a))
            b.copy_(a)
    torch.testing.assert_close(fast(x, t, y), plain(x, t, y), rtol=1e-5, atol=1e-5)
    fast.load_state_dict(plain.state_dict())  # a checkpoint loads across the option
    assert fast.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_worker_settings_reach_the_dataloader(workers):
    # Persistent workers whenever there are workers (the pool survives the epoch); pinned memory only
    # where CUDA is there to use it (page-locked host memory speeds host-to-GPU copies only).
    dm = MNIST5k(batch_size=16, num_workers=workers)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        assert loader.num_workers == workers
        assert loader.persistent_workers is (workers > 0)
        assert loader.pin_memory is torch.cuda.is_available()
