"""The contracts every generative LightningModule and every autoencoder keep, and the few helpers
they share (docs/architecture.md, "Generative modules", "Sampling settings", "Autoencoders").

A paradigm's module (``Diffusion``, ``GAN``, ...) keeps ``GenerativeModule``:

- ``sample(n, *, cond=None, generator=None, **options) -> Tensor``: ``n`` samples in data space
  (images in [-1, 1] (n, C, H, W), token ids (n, T), waveforms (n, T)); ``cond`` the named
  conditions (``lit_genai.conditions``; a bare (n,) tensor means class labels); ``generator`` one
  ``torch.Generator`` for the whole batch or one per sample (``sample_generators``), so that the
  same seeds give the same samples; ``options`` override the module's sampling settings for this
  call, by the settings' own names;
- ``sampling``: its inference-time settings, one frozen dataclass per paradigm (a
  ``SamplingSettings``), passed as the ``sampling`` init argument (``--model.sampling.steps 20``)
  and kept out of checkpoint hyperparameters, so that ``predict`` and ``test`` take them from the
  command line; ``sampling_settings(**options)`` gives the values a ``sample(**options)`` call uses,
  which the evaluation protocol records;
- ``modality``: ``"image"``, ``"text"`` or ``"audio"``, which media route its samples take;
- ``ema_target``: the name of the submodule the EMA callback averages (``None``: the whole module);
- ``num_classes``: the classes the model uses (0 = unconditional); ``conditions``: the names of the
  conditions it uses (``("label",)`` for a class-conditional model).

Callbacks read only these contracts. There is no base class for generative modules; the shared
pieces are functions and one dataclass base: assign ``predict_step`` and ``sampling_settings`` as
methods, use ``eval_mode`` around sampling and ``check_net`` in ``__init__``.

Shape legend: B batch (n samples), C/H/W image, T time or tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Optional, Protocol, TypeVar, Union, runtime_checkable

import torch
from torch import Tensor, nn

from lit_genai.errors import ConfigError

Modality = Literal["image", "text", "audio"]
MODALITIES: tuple[Modality, ...] = ("image", "text", "audio")

Generators = Union[torch.Generator, Sequence[torch.Generator], None]
"""One generator for a whole batch, one per sample (row i draws from ``generator[i]``), or None."""


Settings = TypeVar("Settings", bound="SamplingSettings")


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """Base of a paradigm's inference-time settings (sampler, steps, guidance, temperature, ...).

    Each paradigm subclasses it with typed, defaulted, documented fields (``DiffusionSampling``,
    ``TokenSampling``, ...). A field's name is the setting's one name everywhere: the module's
    ``sampling.<name>``, the ``sample(<name>=...)`` keyword, ``--model.sampling.<name>`` on the
    command line, ``evaluation.sampling`` and the evaluation protocol. Frozen: change a module's
    settings with ``module.sampling = module.sampling.replace(steps=20)``.
    """

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings' names, in their declared order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    def replace(self: Settings, **options: Any) -> Settings:
        """These settings with ``options`` changed; an unknown name is one ``ConfigError`` line naming
        the allowed ones."""
        unknown = sorted(set(options) - set(self.names()))
        if unknown:
            raise ConfigError(
                f"unknown sampling option(s) {', '.join(unknown)} for {type(self).__name__}; "
                f"the options are: {', '.join(self.names()) or 'none'}"
            )
        return dataclasses.replace(self, **options) if options else self

    def as_dict(self) -> dict[str, Any]:
        """{name: value}, in declared order (for the evaluation protocol and logs)."""
        return {name: getattr(self, name) for name in self.names()}


@dataclasses.dataclass(frozen=True)
class NoSettings(SamplingSettings):
    """For a module with nothing to choose at sampling time."""


@runtime_checkable
class GenerativeModule(Protocol):
    """What callbacks, ``predict`` and the metrics may rely on (see the module docstring)."""

    modality: Modality
    ema_target: Optional[str]
    num_classes: int
    conditions: tuple[str, ...]
    sampling: SamplingSettings

    def sample(self, n: int, *, cond: Any = None, generator: Generators = None, **options: Any) -> Tensor: ...

    def sampling_settings(self, **options: Any) -> dict[str, Any]: ...


LatentSpace = Literal["continuous", "discrete"]


@runtime_checkable
class Autoencoder(Protocol):
    """What the latent grids, the adversarial objectives and ``pretrained.py`` may rely on in an
    autoencoder (the VAE, the KL autoencoder, the VQ-VAE; docs/architecture.md, "Autoencoders").

    - ``encode(x, y=None)``: images (B, C, H, W) in [-1, 1] -> latents (B, *latent_shape): a VAE's
      posterior means (B, D), the KL autoencoder's scaled latents (B, c, h, w), a VQ-VAE's token
      ids (B, h, w) int64;
    - ``decode(z, y=None)``: latents -> images (B, C, H, W) in [-1, 1];
    - ``reconstruct(x, y=None)``: ``decode(encode(x))``, differentiable in x;
    - ``per_example_loss(x, y=None)`` (B,): the model's own objective, differentiable in x;
    - ``latent_space``: ``"continuous"`` or ``"discrete"``; ``latent_shape``: the shape of one
      example's latent, (D,), (c, h, w) or (h, w).
    """

    latent_space: LatentSpace
    latent_shape: tuple[int, ...]

    def encode(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor: ...

    def decode(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor: ...

    def reconstruct(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor: ...

    def per_example_loss(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor: ...


def is_autoencoder(module: Any) -> bool:
    """Whether ``module`` keeps the ``Autoencoder`` protocol (with a known ``latent_space``)."""
    return isinstance(module, Autoencoder) and module.latent_space in ("continuous", "discrete")


def is_generative(module: Any) -> bool:
    """Whether ``module`` keeps the contract (has ``sample`` and a known ``modality``)."""
    return callable(getattr(module, "sample", None)) and getattr(module, "modality", None) in MODALITIES


# ---------------------------------------------------------------------- shared methods


def sampling_settings(self: Any, **options: Any) -> dict[str, Any]:
    """The settings a ``self.sample(n, **options)`` call uses: ``self.sampling`` with ``options``
    applied, as ``{name: value}`` (unknown names are one ``ConfigError`` line), for the evaluation
    protocol. Assign as a method: ``sampling_settings = paradigm.sampling_settings``.
    """
    return self.sampling.replace(**options).as_dict()


def conditions_of(num_classes: int) -> tuple[str, ...]:
    """The conditions of a model conditioned on class labels only: ``("label",)`` or none."""
    return ("label",) if num_classes > 0 else ()


def sample_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample: sample ``i`` draws from ``manual_seed(seed + i)``.

    Sample i then depends on (seed, i) only, not on the batch it is drawn in, the batch size or the
    number of devices; the noise is drawn on the CPU and moved, so it is the same on every device.
    """
    return [torch.Generator().manual_seed(int(seed) + int(i)) for i in indices]


def predict_step(self: Any, batch: Tensor, batch_idx: int = 0, dataloader_idx: int = 0) -> Tensor:
    """``predict``: (B,) int64 sample indices -> B samples from ``self.sample``.

    Sample i uses the generator ``seed + i`` (``self.hparams.seed``), for a class-conditional
    model the label ``i % num_classes``, and for a text-conditional one the caption
    ``predict_prompts`` gives (the prompt i % len), so that a file named after its index can be redrawn alone.
    Assign as a method: ``predict_step = paradigm.predict_step``.
    """
    indices = batch.tolist()
    generators = sample_generators(self.hparams.get("seed", 0), indices)
    num_classes = getattr(self, "num_classes", 0)
    cond: Any = batch.to(self.device) % num_classes if num_classes > 0 else None
    prompts = predict_prompts(self, indices)
    if prompts is not None:  # a text-conditional model with a prompt: sample i takes prompt i % len
        cond = {"text": prompts, **({"label": cond} if cond is not None else {})}
    sources = predict_sources(self, indices)
    if sources is not None:  # image to image: sample i takes source (and mask) i % len
        cond = {
            **(cond if isinstance(cond, dict) else {"label": cond} if cond is not None else {}),
            **sources,
        }
    return self.sample(len(indices), cond=cond, generator=generators)


def predict_sources(module: Any, indices: Sequence[int]) -> Optional[dict[str, Tensor]]:
    """The ``image`` / ``mask`` conditions ``predict`` gives sample i of an image-to-image module (its
    optional ``sources(indices)``: the sampling settings' ``init_image`` and ``mask``, file i % len),
    or None."""
    sources = getattr(module, "sources", None)
    return sources(indices) if callable(sources) else None


def finished(module: Any, medium: Any, options: Optional[dict[str, Any]] = None) -> Any:
    """Decoded samples as the user gets them from ``predict``, ``lit_genai.generate`` and the
    service: through the module's optional ``responses(texts, **options)`` for text (a fine-tuned
    chat model's answers cut at its template's stop, ``ar.chat``), else as they are."""
    responses = getattr(module, "responses", None)
    if callable(responses) and isinstance(medium, list):
        return responses(medium, **(options or {}))
    return medium


def predict_prompts(module: Any, indices: Sequence[int]) -> Optional[list[str]]:
    """The caption ``predict`` gives sample i of a text-conditional module (its optional
    ``prompts(indices)``: the sampling settings' prompt, cycled), or None."""
    prompts = getattr(module, "prompts", None)
    return prompts(indices) if callable(prompts) else None


# ---------------------------------------------------------------------- helpers for sample()


@contextmanager
def eval_mode(*nets: nn.Module) -> Iterator[None]:
    """Put ``nets`` in eval mode (batch-norm running statistics, no dropout) and restore each one's
    previous mode afterwards, also when sampling raises."""
    modes = [net.training for net in nets]
    for net in nets:
        net.eval()
    try:
        yield
    finally:
        for net, mode in zip(nets, modes, strict=True):
            net.train(mode)


def _per_sample(generator: Generators, n: int) -> Optional[list[torch.Generator]]:
    if generator is None or isinstance(generator, torch.Generator):
        return None
    generators = list(generator)
    if len(generators) != n:
        raise ValueError(f"got {len(generators)} generators for a batch of {n} samples: give one per sample")
    return generators


def randn(shape: Sequence[int], generator: Generators, device: torch.device) -> Tensor:
    """Standard normal noise of ``shape`` (B, ...) on ``device``.

    Drawn on the generator's device and moved, so a CPU generator gives the same noise on any device.
    With one generator per sample, row i is drawn from ``generator[i]`` alone.
    """
    shape = tuple(int(s) for s in shape)
    generators = _per_sample(generator, shape[0])
    if generators is not None:
        rows = [torch.randn(shape[1:], generator=g, device=g.device).to(device) for g in generators]
        return torch.stack(rows) if rows else torch.zeros(shape, device=device)  # (B, ...)
    noise_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=noise_device).to(device)


def randint(high: int, n: int, generator: Generators, device: torch.device) -> Tensor:
    """(n,) int64 uniform in [0, high), row i from ``generator[i]`` when there is one per sample."""
    generators = _per_sample(generator, n)
    if generators is not None:
        values = [int(torch.randint(0, high, (1,), generator=g, device=g.device)) for g in generators]
        return torch.tensor(values, dtype=torch.long, device=device)
    noise_device = generator.device if generator is not None else device
    return torch.randint(0, high, (n,), generator=generator, device=noise_device).to(device)


def this_rank(draw: Callable[[int], Tensor], n: int, trainer: Any = None) -> Tensor:
    """This rank's ``n`` rows of one draw for the whole world: ``draw(world_size * n)[rank slice]``.

    Under DDP every rank is seeded alike, so plain draws (noise, timesteps, dropout masks, flips)
    would repeat on every rank and W ranks would see B, not W·B, independent draws. Drawing the world's
    values and keeping a slice makes them distinct per rank while the RNG streams stay in step (so a
    checkpoint's RNG state means the same on every rank). Without a trainer: ``draw(n)``.
    """
    world = getattr(trainer, "world_size", 1) if trainer is not None else 1
    if world <= 1:
        return draw(n)
    rank = trainer.global_rank
    return draw(world * n)[rank * n : (rank + 1) * n]


def evaluation_index(trainer: Any, batch_idx: int) -> int:
    """A global index of evaluation batch ``batch_idx`` on this rank, distinct per rank:
    ``batch_idx * world_size + rank`` (``batch_idx`` outside a Trainer)."""
    if trainer is None:
        return batch_idx
    return batch_idx * trainer.world_size + trainer.global_rank


def evaluation_generator(trainer: Any, batch_idx: int, seed: int = 0) -> torch.Generator:
    """A CPU generator for the random draws of evaluation batch ``batch_idx`` (noise, timesteps,
    masks, binarisation), seeded ``seed + evaluation_index``: the same draws at every validation, so
    a validation curve measures the model and not the dice, and distinct per rank, as in training."""
    return torch.Generator().manual_seed(seed + evaluation_index(trainer, batch_idx))


def logged_now(trainer: Any, global_step: int) -> tuple[bool, bool]:
    """(whether the loggers write this training step's values, whether a progress bar shows them).

    Loggers write every ``trainer.log_every_n_steps`` steps and at the last one (Lightning's rule)
    and Lightning drops step values logged at other steps, while a ``self.log`` call is a noticeable
    share of a small network's step (``benchmarks/vae_step.py``). A module can log its extra terms
    at the logger's steps only, and its loss also at every step while a progress bar shows it (the
    bar costs more than the call). Outside a Trainer: both True.
    """
    if trainer is None:
        return True, True
    n = trainer.log_every_n_steps
    logger_step = n > 0 and ((global_step + 1) % n == 0 or trainer.should_stop)
    return logger_step, trainer.progress_bar_callback is not None


# ---------------------------------------------------------------------- optimisation


def optimizer_config(
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Optional[Callable[[torch.optim.Optimizer], Any]] = None,
    *,
    warmup_steps: int = 0,
    interval: Literal["step", "epoch"] = "epoch",
    monitor: Optional[str] = None,
) -> Any:
    """What ``configure_optimizers`` returns for one optimiser: a linear LR warm-up over
    ``warmup_steps`` optimisation steps (factor (step + 1) / warmup_steps), then ``lr_scheduler``
    (built on the optimiser), stepped every ``interval`` (every step when there is a warm-up);
    ``monitor`` is the metric a ``ReduceLROnPlateau`` reads. Without either: the optimiser alone."""
    schedulers = []
    if warmup_steps > 0:
        warmup = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup_steps)
        )
        schedulers.append(warmup)
    if lr_scheduler is not None:
        schedulers.append(lr_scheduler(optimizer))
    if not schedulers:
        return optimizer
    scheduler = schedulers[0]
    if len(schedulers) == 2:
        scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers, milestones=[warmup_steps])
    config: dict[str, Any] = {"scheduler": scheduler, "interval": "step" if warmup_steps > 0 else interval}
    if monitor is not None:
        config["monitor"] = monitor
    return {"optimizer": optimizer, "lr_scheduler": config}


# ---------------------------------------------------------------------- network versus data


def check_net(
    net: nn.Module,
    name: str,
    *,
    sample_shape: Optional[Sequence[int]] = None,
    num_classes: Optional[int] = None,
    vocab_size: Optional[int] = None,
    channels_attr: str = "in_channels",
    classes: Literal["optional", "required"] = "optional",
) -> None:
    """Raise one ``ConfigError`` line when a network does not fit the data, before the first step.

    The network's attributes (where it has them) are compared with what the data module gave:
    ``<channels_attr>`` with the channels of ``sample_shape``, ``image_size`` with its height and
    width, ``vocab_size``, and ``num_classes``. With ``classes="optional"`` a network with
    ``num_classes=0`` is an unconditional model of labelled data; ``"required"`` (a classifier)
    needs the data's classes exactly. ``name`` is the config key of the network, e.g. ``model.net``.
    """

    def mismatch(attr: str, value: Any, data_text: str, fix: Any) -> ConfigError:
        return ConfigError(f"{name}.{attr}={value} but {data_text}: set {name}.init_args.{attr}: {fix}")

    if sample_shape is not None and len(sample_shape) == 3:
        C, H, W = (int(s) for s in sample_shape)
        channels = getattr(net, channels_attr, None)
        if channels is not None and channels != C:
            raise mismatch(
                channels_attr, channels, f"the data's sample_shape={[C, H, W]} has {C} channel(s)", C
            )
        size = getattr(net, "image_size", None)
        if size is not None and (size, size) != (H, W):
            square = "" if H == W else " and make the data square"
            raise mismatch("image_size", size, f"the data's images are {H}x{W}", f"{H}{square}")
    net_vocab = getattr(net, "vocab_size", None)
    if vocab_size is not None and net_vocab is not None and net_vocab != vocab_size:
        raise mismatch("vocab_size", net_vocab, f"the data has vocab_size={vocab_size}", vocab_size)
    net_classes = getattr(net, "num_classes", None)
    if num_classes is not None and net_classes is not None:
        wrong = net_classes != num_classes if classes == "required" else 0 < net_classes != num_classes
        if wrong:
            raise mismatch("num_classes", net_classes, f"the data has num_classes={num_classes}", num_classes)
