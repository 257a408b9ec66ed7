"""Toy modules and data modules for tests: the smallest things that keep a contract.

Token-shaped, text and audio toys stand in for the paradigms that follow (docs/architecture.md),
so the CLI links and the media routes are tested before those paradigms exist.
"""

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lit_genai import paradigm
from lit_genai.media import Waveforms

# ---------------------------------------------------------------------- text and audio toys


def _text_audio_uniform(shape: tuple[int, int], generator: paradigm.Generators, device) -> Tensor:
    """(n, T) uniform in (0, 1) from ``paradigm.randn`` (so one generator per sample works too)."""
    return torch.special.ndtr(paradigm.randn(shape, generator, device))


class TextToyModel(L.LightningModule):
    """A text paradigm stand-in: samples uniform token ids from the generator; trains unigram logits.

    Args:
        vocab_size: Token ids are in [0, vocab_size).
        seq_len: Tokens per sample (T).
        seed: Seed of ``predict`` (sample i uses seed + i).
    """

    modality = "text"
    ema_target = None
    conditions: tuple[str, ...] = ()
    sampling = paradigm.NoSettings()
    sampling_settings = paradigm.sampling_settings
    predict_step = paradigm.predict_step

    def __init__(self, vocab_size: int = 8, seq_len: int = 6, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vocab_size, self.seq_len, self.num_classes = vocab_size, seq_len, 0
        self.logits = nn.Parameter(torch.zeros(vocab_size))  # (V,)

    def sample(self, n: int, *, cond=None, generator: paradigm.Generators = None, **options) -> Tensor:
        u = _text_audio_uniform((n, self.seq_len), generator, self.device)
        return (u * self.vocab_size).long().clamp_(max=self.vocab_size - 1)  # (n, T) token ids

    def _loss(self, ids: Tensor) -> Tensor:  # ids (B, T)
        return F.cross_entropy(self.logits.expand(ids.numel(), -1), ids.flatten())

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TextToyData(L.LightningDataModule):
    """Random sentences over a word vocabulary; ``decode`` joins the words of each row with spaces.

    Args:
        vocab: The words; token id i is ``vocab[i]``.
        seq_len: Tokens per sequence (T).
        num_items: Sequences in the training (and validation) set.
        batch_size: Sequences (and sample indices) per batch.
        predict_samples: Samples ``trainer.predict`` asks for.
    """

    def __init__(
        self,
        vocab: tuple[str, ...] = ("the", "cat", "sat", "on", "a", "mat", "dog", "ran"),
        seq_len: int = 6,
        num_items: int = 8,
        batch_size: int = 4,
        predict_samples: int = 5,
    ) -> None:
        super().__init__()
        self.vocab, self.batch_size, self.predict_samples = tuple(vocab), batch_size, predict_samples
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, len(self.vocab), (num_items, seq_len), generator=g)  # (N, T)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def decode(self, ids: Tensor) -> list[str]:
        """(B, T) token ids -> B strings."""
        return [" ".join(self.vocab[i] for i in row) for row in ids.tolist()]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.ids, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.ids, batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(torch.arange(self.predict_samples), batch_size=self.batch_size)


class AudioToyModel(L.LightningModule):
    """An audio paradigm stand-in: sine tones of random pitch from the generator; trains their gain.

    Args:
        sample_rate: Frames per second of the waveforms (Hz).
        num_frames: Frames per clip (T).
        min_hz: Lowest pitch.
        max_hz: Highest pitch.
        seed: Seed of ``predict`` (sample i uses seed + i).
    """

    modality = "audio"
    ema_target = None
    conditions: tuple[str, ...] = ()
    sampling = paradigm.NoSettings()
    sampling_settings = paradigm.sampling_settings
    predict_step = paradigm.predict_step

    def __init__(
        self,
        sample_rate: int = 8000,
        num_frames: int = 2000,
        min_hz: float = 200.0,
        max_hz: float = 2000.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.sample_rate, self.num_frames, self.num_classes = sample_rate, num_frames, 0
        self.min_hz, self.max_hz = min_hz, max_hz
        self.gain = nn.Parameter(torch.tensor(0.5))

    def sample(self, n: int, *, cond=None, generator: paradigm.Generators = None, **options) -> Tensor:
        u = _text_audio_uniform((n, 1), generator, self.device)
        pitch = self.min_hz + (self.max_hz - self.min_hz) * u  # (n, 1) Hz
        t = torch.arange(self.num_frames, device=self.device) / self.sample_rate  # (T,) seconds
        return self.gain.detach().clamp(0, 1) * torch.sin(2 * torch.pi * pitch * t)  # (n, T)

    def _loss(self, waves: Tensor) -> Tensor:  # waves (B, T): match the data's peak amplitude
        return (self.gain - waves.abs().amax(dim=1).mean()) ** 2

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class AudioToyData(L.LightningDataModule):
    """440 Hz tones at amplitude 0.8; ``decode`` wraps waveforms as ``Waveforms`` at ``sample_rate``.

    Args:
        sample_rate: Frames per second (Hz).
        num_frames: Frames per clip (T).
        num_items: Clips in the training (and validation) set.
        batch_size: Clips (and sample indices) per batch.
        predict_samples: Samples ``trainer.predict`` asks for.
    """

    def __init__(
        self,
        sample_rate: int = 8000,
        num_frames: int = 2000,
        num_items: int = 8,
        batch_size: int = 4,
        predict_samples: int = 5,
    ) -> None:
        super().__init__()
        self.sample_rate, self.batch_size, self.predict_samples = sample_rate, batch_size, predict_samples
        t = torch.arange(num_frames) / sample_rate  # (T,)
        self.waves = 0.8 * torch.sin(2 * torch.pi * 440.0 * t).expand(num_items, -1).clone()  # (N, T)

    def decode(self, x: Tensor) -> Waveforms:
        """(B, T) waveforms in [-1, 1] -> ``Waveforms`` at the data's sample rate."""
        return Waveforms(x.detach().float().clamp(-1, 1).cpu(), self.sample_rate)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.waves, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.waves, batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(torch.arange(self.predict_samples), batch_size=self.batch_size)


# ---------------------------------------------------------------------- token toys (CLI links)


class TokenToyModel(L.LightningModule):
    """A token-shaped model (a GPT's init arguments, no ``sample_shape``): a class-biased bigram table.

    The CLI links ``vocab_size``, ``block_size`` and ``num_classes`` from the data module.

    Args:
        vocab_size: Token ids are in [0, vocab_size).
        block_size: Longest context, in tokens (T).
        num_classes: Classes of the labels (0 = unconditional).
        lr: SGD learning rate.
    """

    def __init__(
        self, vocab_size: int = 4, block_size: int = 4, num_classes: int = 0, lr: float = 0.1
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vocab_size, self.block_size, self.num_classes = vocab_size, block_size, num_classes
        self.bigram = nn.Embedding(vocab_size, vocab_size)  # (V, V) next-token logits

    def _loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch  # (B, T) int64 each: y is x shifted by one token
        assert x.shape[1] <= self.block_size, "the data's sequences are longer than block_size"
        return F.cross_entropy(self.bigram(x).flatten(0, 1), y.flatten())  # (B*T, V) logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class TokenToyData(L.LightningDataModule):
    """Random token sequences as (x, y) next-token pairs, (B, T) int64 each.

    Exposes ``vocab_size``, ``block_size`` and ``num_classes`` for the CLI to link into the model.

    Args:
        vocab_size: Token ids are in [0, vocab_size).
        block_size: Tokens per sequence (T).
        num_classes: Reported label classes (the toy's sequences carry no labels).
        num_items: Sequences in the training (and validation) set.
        batch_size: Sequences per batch.
    """

    def __init__(
        self,
        vocab_size: int = 11,
        block_size: int = 5,
        num_classes: int = 3,
        num_items: int = 8,
        batch_size: int = 4,
    ) -> None:
        super().__init__()
        self.vocab_size, self.block_size, self.num_classes = vocab_size, block_size, num_classes
        self.batch_size = batch_size
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab_size, (num_items, block_size + 1), generator=g)  # (N, T + 1)
        self.pairs = torch.utils.data.TensorDataset(ids[:, :-1], ids[:, 1:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.pairs, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.pairs, batch_size=self.batch_size)


class SlowSteps(L.Callback):
    """Sleeps after every training batch and prints ``step <global step>``: gives a child process
    running the CLI time to be interrupted at a known point (tests/test_resume.py)."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        print(f"step {trainer.global_step}", flush=True)
        time.sleep(self.seconds)
