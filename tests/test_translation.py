"""pix2pix and CycleGAN (lit_genai.translation): loss terms against hand computations, the image
pool's rule, the networks' shapes, one step of each optimiser per batch, sampling, evaluation keys."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from lit_genai.errors import ConfigError
from lit_genai.nn.cyclegan import CycleGANGenerator
from lit_genai.nn.pix2pix import PatchDiscriminator, UNetGenerator
from lit_genai.translation import CycleGAN, Pix2Pix, losses
from lit_genai.translation.pool import ImagePool


def _pix2pix(**kwargs) -> Pix2Pix:
    return Pix2Pix(
        UNetGenerator(1, 1, 28, base_channels=4),
        PatchDiscriminator(1, source_channels=1, image_size=28, base_channels=4),
        source_shape=(1, 28, 28),
        sample_shape=(1, 28, 28),
        num_examples=4,
        **kwargs,
    )


def _cyclegan(**kwargs) -> CycleGAN:
    g = lambda: CycleGANGenerator(1, 1, 8, base_channels=4, n_blocks=1)  # noqa: E731
    d = lambda: PatchDiscriminator(1, image_size=8, base_channels=4, norm="instance")  # noqa: E731
    return CycleGAN(
        g(), g(), d(), d(), source_shape=(1, 8, 8), sample_shape=(1, 8, 8), num_examples=4, **kwargs
    )


# ---------------------------------------------------------------------- losses


def test_pix2pix_generator_terms_are_gan_plus_100_l1():
    g = torch.Generator().manual_seed(0)
    fake, target = torch.rand(2, 1, 4, 4, generator=g), torch.rand(2, 1, 4, 4, generator=g)
    logits = torch.randn(2, 1, 3, 3, generator=g)
    terms = losses.pix2pix_generator_terms("vanilla", logits, fake, target)
    l1 = torch.tensor([(fake[i] - target[i]).abs().sum().item() / 16 for i in range(2)])
    gan = torch.tensor(
        [sum(math.log1p(math.exp(-v)) for v in logits[i].flatten().tolist()) / 9 for i in range(2)]
    )
    torch.testing.assert_close(terms["l1"], l1)
    torch.testing.assert_close(terms["gan"], gan)
    torch.testing.assert_close(terms["loss"], gan + 100 * l1)


def test_discriminator_terms_are_halved_and_lsgan_is_squared_error():
    real, fake = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.5, -1.0]])
    terms = losses.discriminator_terms("lsgan", real, fake)
    torch.testing.assert_close(terms["real"], torch.tensor([((2 - 1) ** 2 + (0 - 1) ** 2) / 2]))
    torch.testing.assert_close(terms["fake"], torch.tensor([(0.25 + 1.0) / 2]))
    torch.testing.assert_close(terms["loss"], 0.5 * (terms["real"] + terms["fake"]))
    with pytest.raises(ConfigError, match="unknown adversarial loss 'hinge'"):
        losses.adversarial("hinge", real, True)


def test_cyclegan_cycle_and_identity_terms_by_hand():
    a, b = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    rec_a = torch.tensor([[[[0.5, 0.0], [0.0, 0.0]]]])  # |F(G(a)) - a| = 0.5 / 4
    rec_b = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])  # |G(F(b)) - b| = 1 / 4
    idt_a = torch.full((1, 1, 2, 2), 0.5)  # G(b): |G(b) - b| = 0.5
    idt_b = torch.full((1, 1, 2, 2), 0.25)  # F(a): |F(a) - a| = 0.25
    ones = torch.ones(1, 1, 2, 2)  # D says 1 everywhere: LSGAN generator terms 0
    terms = losses.cyclegan_generator_terms("lsgan", ones, ones, a, b, rec_a, rec_b, idt_a, idt_b)
    assert terms["cycle_a"].item() == pytest.approx(0.125)
    assert terms["cycle_b"].item() == pytest.approx(0.25)
    assert terms["idt_a"].item() == pytest.approx(0.5)
    assert terms["idt_b"].item() == pytest.approx(0.25)
    assert terms["gan_a"].item() == 0 and terms["gan_b"].item() == 0
    # lambda = 10 on the cycles, 0.5 * lambda = 5 on the identities (the authors' code)
    assert terms["loss"].item() == pytest.approx(10 * (0.125 + 0.25) + 5 * (0.5 + 0.25))
    without = losses.cyclegan_generator_terms("lsgan", ones, ones, a, b, rec_a, rec_b, identity_weight=0)
    assert without["loss"].item() == pytest.approx(10 * (0.125 + 0.25))


def test_linear_decay_is_constant_then_linear_to_zero():
    factors = [losses.linear_decay(s, 2, 4) for s in range(8)]
    assert factors == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert losses.linear_decay(10**6, 2, None) == 1.0


# ---------------------------------------------------------------------- the image pool


def test_image_pool_fills_then_swaps_with_probability_one_half():
    pool = ImagePool(2)
    img = [torch.full((1, 1, 1), float(i)) for i in range(6)]
    u, slots = torch.tensor([0.9, 0.9]), torch.tensor([0, 1])
    # filling: the new images come back and are kept, whatever the draws
    assert torch.equal(pool.query(torch.stack(img[:2]), u, slots), torch.stack(img[:2]))
    # full, u > 0.5: the stored image of the slot comes back and the new one takes its place
    out = pool.query(torch.stack([img[2]]), torch.tensor([0.7]), torch.tensor([1]))
    assert out.item() == 1 and [t.item() for t in pool.images] == [0, 2]
    # full, u <= 0.5: the new image comes back, the pool is unchanged
    out = pool.query(torch.stack([img[3]]), torch.tensor([0.5]), torch.tensor([0]))
    assert out.item() == 3 and [t.item() for t in pool.images] == [0, 2]
    again = ImagePool(0)
    again.load_state_dict(pool.state_dict())
    assert [t.item() for t in again.images] == [0, 2] and again.size == 2
    assert torch.equal(ImagePool(0).query(torch.stack(img[:2]), u, slots), torch.stack(img[:2]))  # no pool


# ---------------------------------------------------------------------- networks


@pytest.mark.parametrize("size, grid", [(28, 12), (32, 14)])
def test_patchgan_gives_a_grid_of_logits_and_sees_the_source(size, grid):
    d = PatchDiscriminator(3, source_channels=1, image_size=size, base_channels=4, n_layers=1)
    x, s = torch.randn(2, 3, size, size), torch.randn(2, 1, size, size)
    assert d(x, s).shape == (2, 1, grid, grid)
    assert d.receptive_field == 16
    assert (
        PatchDiscriminator(3, base_channels=4, image_size=256, n_layers=3).receptive_field == 70
    )  # the paper's
    with pytest.raises(ValueError, match="got no source image"):
        d(x)


def test_unet_keeps_the_size_and_skips_reach_the_output():
    torch.manual_seed(0)
    g = UNetGenerator(1, 3, 28, base_channels=4).eval()
    x = torch.randn(2, 1, 28, 28)
    y = g(x)
    assert y.shape == (2, 3, 28, 28) and y.abs().max() <= 1
    x2 = x.clone()
    x2[:, :, 0, 0] += 1  # a pixel's change stays local through the skips: the far corner moves less
    diff = (g(x2) - y).abs()[:, :, :4, :4].sum() > (g(x2) - y).abs()[:, :, -4:, -4:].sum()
    assert diff
    assert CycleGANGenerator(1, 1, 28, base_channels=4, n_blocks=2)(x).shape == (2, 1, 28, 28)
    with pytest.raises(ConfigError, match="image_size=48 is not supported"):
        UNetGenerator(image_size=48)


# ---------------------------------------------------------------------- modules


class StepCounter(L.Callback):
    def __init__(self) -> None:
        self.steps: dict[int, int] = {}

    def on_fit_start(self, trainer, pl_module) -> None:
        for i, opt in enumerate(trainer.optimizers):
            opt.register_step_post_hook(lambda *_, i=i: self.steps.update({i: self.steps.get(i, 0) + 1}))


def _unpaired(n: int = 6) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.zeros(n, dtype=torch.long)
    return DataLoader(TensorDataset(a, b, labels, labels), batch_size=2)


@pytest.mark.parametrize("make, data", [(_cyclegan, _unpaired), (_pix2pix, None)])
def test_each_optimiser_steps_once_per_batch(make, data, tmp_path):
    torch.manual_seed(0)
    module = make(lr_decay_steps=3)
    if data is None:
        x = torch.rand(6, 1, 28, 28) * 2 - 1
        loader = DataLoader(TensorDataset(x, x.flip(-1), torch.zeros(6, dtype=torch.long)), batch_size=2)
    else:
        loader = data()
    counter = StepCounter()
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, callbacks=[counter], logger=False, enable_checkpointing=False
    )
    before = {k: v.clone() for k, v in module.state_dict().items() if "examples" not in k}
    trainer.fit(module, loader)
    assert counter.steps == {0: 3, 1: 3}  # generators' and discriminators' optimisers, 3 batches
    assert trainer.global_step == 6
    moved = [k for k, v in module.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert any(k.startswith(("net_g", "generators")) for k in moved)
    assert any(k.startswith(("net_d", "discriminators")) for k in moved)
    lrs = [s.scheduler.get_last_lr()[0] for s in trainer.lr_scheduler_configs]
    assert lrs == [0.0, 0.0]  # decayed linearly to 0 over lr_decay_steps = 3 batches
    if isinstance(module, CycleGAN):
        assert all(len(p.images) == 6 for p in module.pools.values())  # 3 batches of 2 fakes, pool 50


def test_cyclegan_checkpoint_keeps_the_pools(tmp_path):
    torch.manual_seed(0)
    module = _cyclegan()
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False)
    trainer.fit(module, _unpaired())
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    state = torch.load(tmp_path / "c.ckpt", weights_only=True)
    restored = _cyclegan()
    restored.on_load_checkpoint(state)
    for domain in "ab":
        assert torch.equal(
            torch.stack(restored.pools[domain].images), torch.stack(module.pools[domain].images)
        )


def test_sample_translates_the_image_condition_or_stored_examples():
    torch.manual_seed(0)
    module = _pix2pix()
    module.examples_a.copy_(torch.rand(4, 1, 28, 28) * 2 - 1)
    source = module.examples_a[:2]
    torch.testing.assert_close(module.sample(2, cond={"image": source}), module.translate(source))
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    drawn = module.sample(3, generator=gens)
    rows = torch.tensor(
        [int(torch.randint(0, 4, (1,), generator=torch.Generator().manual_seed(i))) for i in range(3)]
    )
    torch.testing.assert_close(drawn, module.translate(module.examples_a[rows]))
    with pytest.raises(ConfigError, match="has no direction 'b2a'"):
        module.sample(1, direction="b2a")
    with pytest.raises(ConfigError, match="unknown condition\\(s\\) label"):
        module.sample(1, cond={"label": torch.zeros(1, dtype=torch.long)})
    cyc = _cyclegan()
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(cyc.sample(2, cond={"image": x}, direction="b2a"), cyc.translate(x, "b2a"))


def test_evaluation_logs_l1_psnr_fid_and_label_preservation(tmp_path):
    torch.manual_seed(0)
    module = _pix2pix(extractor="mnist")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 28, 28, generator=g) * 2 - 1
    labels = torch.arange(8) % 10
    trainer = quiet_trainer(tmp_path, logger=False)
    (result,) = trainer.test(module, DataLoader(TensorDataset(x, x, labels), batch_size=4), verbose=False)
    assert {"test/l1", "test/psnr", "test/loss", "test/fid_mnist", "test/label_acc_mnist"} <= set(result)
    with torch.no_grad():
        out = module.translate(x)
    mse = ((out - x) ** 2).flatten(1).mean(1)
    psnr = (10 * torch.log10(4 / mse)).mean()  # data range 2: [-1, 1]
    assert result["test/psnr"] == pytest.approx(psnr.item(), rel=1e-4)
    assert result["test/l1"] == pytest.approx(F.l1_loss(out, x).item(), rel=1e-4)
    assert not any("extractor" in k or "_extractor" in k for k in module.state_dict())


def test_settings_that_contradict_are_one_line():
    with pytest.raises(ConfigError, match="identity_weight=0.5 feeds each generator"):
        CycleGAN(
            CycleGANGenerator(1, 3, 8, 4, 1),
            CycleGANGenerator(3, 1, 8, 4, 1),
            PatchDiscriminator(1, image_size=8, base_channels=4),
            PatchDiscriminator(3, image_size=8, base_channels=4),
            source_shape=(1, 8, 8),
            sample_shape=(3, 8, 8),
        )
    with pytest.raises(ConfigError, match="model.net_d.source_channels=1 but"):
        Pix2Pix(
            UNetGenerator(3, 1, 28, 4),
            PatchDiscriminator(1, source_channels=1, image_size=28, base_channels=4),
            source_shape=(3, 28, 28),
            sample_shape=(1, 28, 28),
        )


def test_the_grid_shows_source_output_target_and_fit_stores_example_sources(tmp_path):
    from PIL import Image

    from lit_genai.callbacks.translations import TranslationGrid, translation_rows
    from lit_genai.data.translation import EdgesToDigits
    from lit_genai.media import to_uint8

    torch.manual_seed(0)
    module, data = _pix2pix(), EdgesToDigits(batch_size=2)
    grid = TranslationGrid(every_n_epochs=1, num_rows=2)
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1, callbacks=[grid], logger=False
    )
    trainer.fit(module, datamodule=data)
    sources = torch.stack([data.val_set[i][0] for i in range(4)])
    assert torch.equal(module.examples_a, sources)  # the first E = 4 validation sources
    items = [data.val_set[i] for i in range(2)]
    rows = translation_rows(module, items, unpaired=False)  # (6, 3, 28, 28): 2 rows of 3
    assert torch.equal(rows[0], to_uint8(items[0][0]).expand(3, -1, -1))
    assert torch.equal(rows[1], to_uint8(module.translate(items[0][0][None]))[0].expand(3, -1, -1))
    assert torch.equal(rows[2], to_uint8(items[0][1]).expand(3, -1, -1))
    with Image.open(tmp_path / "translations" / "step_0000002.png") as picture:
        assert picture.size == (3 * 28 + 4 * 2, 2 * 28 + 3 * 2)  # torchvision's grid: 2-pixel padding
