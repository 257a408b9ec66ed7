"""What the denoising modules share: ``Diffusion`` (DDPM steps), ``EDM`` (noise levels sigma) and
``FlowMatching`` (times t in [0, 1]).

Each of them trains an injected network ``net(x (B,C,H,W), t (B,), y (B,) or None) -> (B,C,H,W)``
to undo noise and samples by integrating from noise to data; they differ in the noise process, the
network's target and the samplers. ``DenoisingModule`` holds the rest (docs/architecture.md,
"Generative modules"):

- the network, the data it models (``sample_shape``, ``num_classes``) and ``paradigm.check_net``;
- the sampling settings (``sampling``, a subclass's ``SamplingSettings``) and the conditions;
- classifier-free guidance (Ho & Salimans 2022): label dropout in training (``p_uncond``,
  Algorithm 1, through ``conditions.drop_conditions``) and the guided model function (eq. 6), both
  branches in one batched pass;
- the optimiser with a linear warm-up and an optional scheduler, stepped every step
  (``paradigm.optimizer_config``);
- ``validation_step`` / ``test_step`` (a subclass's ``_evaluate``, whose noise comes from
  ``paradigm.evaluation_generator``), ``predict_step`` and ``sampling_settings`` (``paradigm``);
- text conditioning (``lit_genai.text_condition``): with a network whose ``text_encoder`` is set, the
  module uses the ``text`` condition: batches ``(x, y, captions)`` are tokenized (the data's
  ``text_vocabulary``, linked by the command line), captions dropped to the empty one with
  ``p_uncond``'s probability for ``text``, encoded once per step and read by cross-attention; samples
  take ``cond={"text": captions}`` or, without one, the sampling settings' ``prompt``;
- latent space (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
  Models"): with ``autoencoder`` (a ``KLAutoencoder`` checkpoint) the network models the scaled
  latents of that frozen first stage (``latent.FirstStage``): batches are encoded before the loss,
  ``sample()`` draws latents and returns their decoded images, so callbacks, FID and media see
  images. Only ``net`` is optimised and averaged by the EMA;
- image to image (``editing.py``): ``sample(n, cond={"image": x, "mask": m})`` or the settings'
  ``init_image`` / ``mask`` files run SDEdit (Meng et al. 2022) or inpainting (replacement, RePaint:
  Lugmayr et al. 2022) with the subclass's sampler as a ``Stepper``; sources are encoded by the first
  stage of a latent model and the known pixels pasted back after decoding, so they are exact.

Hyperparameters: the base saves the ``__init__`` arguments of the subclass too (Lightning collects
the arguments of every ``__init__`` up the inheritance chain), less ``sampling`` and the subclass's
``evaluation_settings``, which come from the command line (docs/architecture.md, "Sampling
settings").

Shape legend: B batch, C/H/W image (or latent: what the net sees, ``net_shape``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lit_genai import paradigm, sharding
from lit_genai.conditions import Cond, DropoutProbability, as_conditions, condition_dropout, drop_labels
from lit_genai.diffusion.editing import Stepper, edit_sample
from lit_genai.errors import ConfigError
from lit_genai.hparams import save_plain_hyperparameters
from lit_genai.media.sources import cycle, read_images, read_mask
from lit_genai.nn.cross_attention import TextContext
from lit_genai.text_condition import TextCondition, prompts_for, text_encoder_of

if TYPE_CHECKING:
    from lit_genai.diffusion.latent import FirstStage

EDIT_CONDITIONS = ("image", "mask")
"""Conditions every denoising module takes at sampling time without training on them: the source
of SDEdit and inpainting and the region to fill (``editing.py``); never compared with the data's."""


@dataclass(frozen=True)
class Edit:
    """What an image-to-image draw starts from (``DenoisingModule._edit_inputs``).

    Args:
        images: (n, C, H, W) the source images in [-1, 1].
        pixel_mask: (n, 1, H, W) bool, True where to fill, or None (SDEdit of the whole image).
        source: (n, c, h, w) the source in model space (the first stage's latents, or the images).
        mask: ``pixel_mask`` at the model's resolution: a latent is known only if all its pixels are.
    """

    images: Tensor
    pixel_mask: Optional[Tensor]
    source: Tensor
    mask: Optional[Tensor]


ModelFn = Callable[[Tensor, Tensor], Tensor]
"""(x (B, C, H, W), t (B,)) -> the network's output (B, C, H, W), guidance included."""


class DenoisingModule(LightningModule):
    """Base of the denoising modules (see the module docstring); not a model on its own.

    A subclass defines ``sample``, ``training_step``, ``_evaluate(stage, batch, batch_idx)``, its
    ``SamplingSettings`` and (if any) ``evaluation_settings``, the names of its evaluation-only
    init arguments, and passes the arguments below on from its own ``__init__``.

    Args:
        net: Network ``(x (B,C,H,W), t (B,), y (B,) or None) -> (B,C,H,W)``. For class-conditional
            models it must accept ``num_classes`` as the null label used for guidance.
        sample_shape: (C, H, W) of one image; linked from the data module.
        num_classes: Number of classes the data offers; linked from the data module. The network
            decides whether they are used: a net with ``num_classes=0`` is unconditional.
        p_uncond: Probability of dropping the label during training (classifier-free guidance): one
            for every condition the model uses, or one per name (``{label: 0.1}``).
        optimizer: Optimiser of the network's parameters.
        lr_scheduler: Optional LR scheduler, stepped every optimisation step (after the warm-up).
        warmup_steps: Linear LR warm-up over this many steps.
        seed: Base seed of ``predict``: sample i uses the generator seed + i.
        autoencoder: Path of a ``KLAutoencoder`` checkpoint: model its latents (latent diffusion).
        sampling: The subclass's inference-time settings; kept out of checkpoints.
        text_vocabulary: The words of the data's captions (linked from the data), which a text
            encoder without a tokenizer of its own reads; None: UTF-8 bytes.
    """

    modality = "image"
    ema_target = "net"
    evaluation_settings: tuple[str, ...] = ()  # evaluation-only init arguments, kept out of checkpoints
    sampling_settings = paradigm.sampling_settings
    predict_step = paradigm.predict_step
    configure_gradient_clipping = sharding.configure_gradient_clipping  # by norm under FSDP too (DiT)

    def __init__(
        self,
        net: nn.Module,
        sample_shape: Sequence[int],
        num_classes: int,
        p_uncond: DropoutProbability,
        optimizer: OptimizerCallable,
        lr_scheduler: Optional[LRSchedulerCallable],
        warmup_steps: int,
        seed: int,
        autoencoder: Optional[str],
        sampling: paradigm.SamplingSettings,
        text_vocabulary: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__()
        # The arguments of the subclass's __init__ as well (Lightning's collect_init_args).
        save_plain_hyperparameters(
            self, objects=("net", "optimizer", "lr_scheduler"), ignore=type(self).evaluation_settings
        )
        self.net = net
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.num_classes = getattr(net, "num_classes", num_classes)  # the classes the model uses
        self.conditions = paradigm.conditions_of(self.num_classes)
        encoder = text_encoder_of(net)
        self.text: Optional[TextCondition] = None
        if encoder is not None:
            self.text = TextCondition(encoder, text_vocabulary, "model.net")
            self.conditions = (*self.conditions, "text")
            prompt = getattr(sampling, "prompt", None)
            if prompt:  # a word the encoder does not know: one line now, not after loading the weights
                self.text.tokenize([prompt] if isinstance(prompt, str) else list(prompt), torch.device("cpu"))
        self._dropout = condition_dropout(p_uncond, self.conditions, "model")
        self.sampling = sampling
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.first_stage: Optional[FirstStage] = None
        if autoencoder is not None:
            from lit_genai.diffusion.latent import FirstStage  # only latent models need the first stage

            self.first_stage = FirstStage(autoencoder, self.sample_shape)
        # (C, H, W) of what the network sees: the images, or the first stage's latents.
        self.net_shape = self.first_stage.latent_shape if self.first_stage is not None else self.sample_shape
        paradigm.check_net(net, "model.net", sample_shape=self.net_shape, num_classes=num_classes)
        predicted = getattr(net, "out_channels", self.net_shape[0])
        if predicted != self.net_shape[0]:  # a learned variance (DiT learn_sigma) has no loss term here
            raise ConfigError(
                f"model.net.out_channels={predicted} but the denoiser predicts the {self.net_shape[0]} "
                "channels it models: set model.net.init_args.learn_sigma: false (DiT) or out_channels: "
                "null (UNet)"
            )

    def forward(
        self, x_t: Tensor, t: Tensor, y: Optional[Tensor] = None, context: Optional[TextContext] = None
    ) -> Tensor:
        """(B, C, H, W), (B,), (B,), the text context -> network output (B, C, H, W)."""
        args = (x_t, t, y) if self.num_classes > 0 else (x_t, t)
        return self.net(*args, context=context) if self.text is not None else self.net(*args)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch, batch_idx)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch, batch_idx)

    def _evaluate(self, stage: str, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        raise NotImplementedError

    def configure_optimizers(self):
        # The first stage and a frozen text encoder are never optimised.
        trained = [p for p in self.net.parameters() if p.requires_grad]
        return paradigm.optimizer_config(
            self.optimizer(trained),
            self.lr_scheduler,
            warmup_steps=self.hparams.warmup_steps,
            interval="step",
        )

    # ------------------------------------------------------------------ data space <-> model space

    def _encode_batch(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> what the network models: the first stage's scaled latents
        (B, c, h, w), without gradients, or the images themselves."""
        return self.first_stage.encode(x) if self.first_stage is not None else x

    def _to_images(self, x: Tensor) -> Tensor:
        """Samples in model space -> images (B, C, H, W) in [-1, 1] (decoded when latent)."""
        if self.first_stage is not None:
            x = self.first_stage.decode(x)  # (B, C, H, W)
        return x.clamp(-1, 1)

    # ------------------------------------------------------------------ training and evaluation helpers

    def _inputs(
        self, batch: Sequence[Any], train: bool
    ) -> tuple[Tensor, Optional[Tensor], Optional[TextContext]]:
        """A batch ``(x, y[, captions])`` -> (what the network models (B, C, H, W), labels (B,) or None,
        the captions' context or None); in training, labels and captions dropped for guidance."""
        x0, y = self._encode_batch(batch[0]), batch[1]
        y = (self._drop_labels(y) if train else y) if self.num_classes > 0 else None
        context = None
        if self.text is not None:
            if len(batch) < 3:
                raise ConfigError(
                    "the model is text-conditional but its batches carry no captions: use captioned "
                    "data (batches (x, y, captions)), or a network without a text_encoder"
                )
            ids, mask = self.text.tokenize(batch[2], x0.device)
            if train:
                ids, mask = self.text.drop(ids, mask, self._dropout, self._trainer)
            context = self.text.encode(ids, mask)
        return x0, y, context

    def _sampling_conditions(
        self, n: int, cond: Cond, settings: paradigm.SamplingSettings
    ) -> tuple[Optional[Tensor], Optional[TextContext]]:
        """``sample()``'s ``cond`` -> (labels (n,) or None, the text context or None). Without a
        ``text`` condition, sample j takes the settings' prompt j % len (none: the empty caption)."""
        named = as_conditions(cond, (*self.conditions, *EDIT_CONDITIONS), f"{type(self).__name__}.sample()")
        labels = named.get("label")
        prompt = getattr(settings, "prompt", None)
        if self.text is None:
            if prompt:
                raise ConfigError(
                    "model.sampling.prompt needs a text-conditional model (a network with a text_encoder)"
                )
            return labels, None
        text = named.get("text")
        if text is None:
            text = prompts_for(prompt, range(n)) or [""] * n
        if len(text) != n:
            raise ConfigError(f"{type(self).__name__}.sample(): {len(text)} captions for {n} samples")
        ids, mask = self.text.tokenize(text, self.device)
        return labels, self.text.encode(ids, mask)

    # ------------------------------------------------------------------ image to image

    def sources(self, indices: Sequence[int], **options: Any) -> Optional[dict[str, Tensor]]:
        """The ``image`` (and ``mask``) conditions of the sample indices ``predict`` draws: source
        i % len of the ``init_image`` setting (and of ``mask``; ``options`` override the settings), or
        None without a source (docs/architecture.md, "Generative modules")."""
        named = self._setting_sources(self.sampling.replace(**options), indices)
        return named or None

    def _setting_sources(
        self, settings: paradigm.SamplingSettings, indices: Sequence[int]
    ) -> dict[str, Tensor]:
        """{"image": (n, C, H, W), "mask": (n, 1, H, W)} read from the ``init_image`` and ``mask``
        settings, row j the file indices[j] % len (a named mask is the same for every row)."""
        init_image, mask = getattr(settings, "init_image", None), getattr(settings, "mask", None)
        named: dict[str, Tensor] = {}
        if init_image is not None:
            named["image"] = cycle(read_images(init_image, self.sample_shape), indices)
        if mask is not None:
            named["mask"] = cycle(read_mask(mask, self.sample_shape[1:]), indices)
        return named

    def _edit_inputs(self, n: int, cond: Cond, settings: paradigm.SamplingSettings) -> Optional[Edit]:
        """``sample()``'s ``image`` and ``mask`` conditions (else the ``init_image`` and ``mask``
        settings, sample j taking file j % len) -> the ``Edit`` to start from, or None (plain sampling)."""
        named = as_conditions(cond, (*self.conditions, *EDIT_CONDITIONS), f"{type(self).__name__}.sample()")
        from_settings = self._setting_sources(settings, range(n))
        images, mask = (
            named.get("image", from_settings.get("image")),
            named.get("mask", from_settings.get("mask")),
        )
        if images is None:
            if mask is not None:
                raise ConfigError(
                    "a mask needs a source image to fill: set model.sampling.init_image (or cond['image'])"
                )
            return None
        images = torch.as_tensor(images).to(self.device, torch.float32)
        if images.dim() == 4 and images.shape[1] == 1 and self.sample_shape[0] == 3:
            images = images.expand(-1, 3, -1, -1)  # a grey source of an RGB model: grey RGB
        if tuple(images.shape) != (n, *self.sample_shape):
            raise ConfigError(
                f"{type(self).__name__}.sample(): the source images have shape {tuple(images.shape)}, "
                f"expected {(n, *self.sample_shape)} (n, C, H, W) in [-1, 1]"
            )
        source = self._encode_batch(images)  # (n, c, h, w)
        model_mask = None
        if mask is not None:
            mask = torch.as_tensor(mask).to(self.device).bool().expand(n, 1, *self.sample_shape[1:])
            factor = self.sample_shape[1] // source.shape[-2]
            if factor * source.shape[-2] != self.sample_shape[1]:
                raise ConfigError(
                    f"images of {self.sample_shape[1:]} do not tile latents of {tuple(source.shape[-2:])}"
                )
            # a latent is known only if every pixel of its cell is: it is filled if any pixel is
            model_mask = F.max_pool2d(mask.float(), factor) > 0 if factor > 1 else mask  # (n, 1, h, w)
        return Edit(images, mask, source, model_mask)

    def _edit(
        self, stepper: Stepper, edit: Edit, settings: Any, generator: paradigm.Generators, progress: bool
    ) -> Tensor:
        """``editing.edit_sample`` of ``edit`` with the module's sampler as ``stepper``: (n, c, h, w)."""
        return edit_sample(
            stepper,
            edit.source,
            strength=settings.strength,
            mask=edit.mask,
            inpaint=settings.inpaint,
            jump=settings.repaint_jump,
            resample=settings.repaint_resample,
            generator=generator,
            progress=progress,
        )

    def _edited_images(self, x: Tensor, edit: Optional[Edit]) -> Tensor:
        """Samples in model space -> images (n, C, H, W); the known pixels of an inpainting are the
        source's, bit for bit (a latent model's decoder would only approximate them)."""
        images = self._to_images(x)
        if edit is None or edit.pixel_mask is None:
            return images
        return torch.where(edit.pixel_mask, images, edit.images)

    def prompts(self, indices: Sequence[int]) -> Optional[list[str]]:
        """The caption of each sample index that ``predict`` draws (the settings' ``prompt``,
        cycled), or None (docs/architecture.md, "Generative modules")."""
        return prompts_for(getattr(self.sampling, "prompt", None), indices) if self.text is not None else None

    def _drop_labels(self, y: Tensor) -> Tensor:
        """Label dropout for classifier-free guidance (Ho & Salimans 2022, Algorithm 1): each label
        becomes the null label ``num_classes`` with probability ``p_uncond``
        (``conditions.drop_conditions``). (B,) -> (B,)."""
        return drop_labels(y, self._dropout, self.num_classes, self._trainer)

    def _log_terms(self, stage: str, terms: dict[str, Tensor]) -> None:
        """Log the per-example ``terms`` {name: (B,)} as ``<stage>/<name>`` means."""
        for name, value in terms.items():
            B = value.shape[0]  # given: Lightning cannot infer it from a batch holding captions
            if stage == "train":
                self.log(f"train/{name}", value.mean(), prog_bar=name == "loss", batch_size=B)
            else:
                self.log(
                    f"{stage}/{name}",
                    value.mean(),
                    prog_bar=stage == "val" and name == "loss",
                    sync_dist=True,
                    batch_size=B,
                )

    # ------------------------------------------------------------------ guidance

    def _model_fn(self, cond: Optional[Tensor], w: float, context: Optional[TextContext] = None) -> ModelFn:
        """The network as ``(x_t, t) -> output``, with classifier-free guidance when asked for.

        ``cond`` (B,) labels or None (an unconditional sample from a conditional model: the null
        label); ``w`` the guidance weight (Ho & Salimans 2022, eq. 6; 0 = conditional). The guided
        output is (1 + w) out(x, c) - w out(x, null): for eps, x0, v, EDM's F and a flow's velocity
        alike, since each is an affine function of the others with coefficients that do not depend
        on the label. ``context``: the captions' text context of a text-conditional model; its null is
        the empty caption, and with labels too the unconditional branch drops both.
        """
        if self.text is not None:
            return self._text_model_fn(cond, w, context)
        if self.num_classes == 0:
            return lambda x_t, t: self.net(x_t, t)
        if cond is None:  # unconditional sample from a conditional model: the null label
            return lambda x_t, t: self.net(x_t, t, torch.full_like(t, self.num_classes, dtype=torch.long))
        y = cond.to(self.device)
        if w == 0:
            return lambda x_t, t: self.net(x_t, t, y)
        null = torch.full_like(y, self.num_classes)

        def guided(x_t: Tensor, t: Tensor) -> Tensor:
            # One batched pass for both branches: (2B, C, H, W) -> two (B, C, H, W).
            out_c, out_u = self.net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
            return out_u + (1 + w) * (out_c - out_u)  # = (1 + w) out_c - w out_u (Ho & Salimans eq. 6)

        return guided

    def _text_model_fn(self, labels: Optional[Tensor], w: float, context: Optional[TextContext]) -> ModelFn:
        """``_model_fn`` of a text-conditional network: guidance between (labels, captions) and (null
        label, empty captions), both branches in one batched pass."""
        if self.num_classes > 0 and labels is None:
            labels = torch.full(
                (1,), self.num_classes, dtype=torch.long, device=self.device
            )  # broadcast below
            w = 0.0  # an unconditional draw: guidance is void
        if self.num_classes > 0:
            labels = labels.to(self.device)

        def rows(x: Tensor, z: Optional[Tensor]) -> Optional[Tensor]:
            return None if z is None else (z.expand(x.shape[0]) if z.shape[0] == 1 else z)

        if w == 0 or context is None:
            return lambda x_t, t: self(x_t, t, rows(x_t, labels), context)
        null_context = self.text.null(context.tokens.shape[0], self.device)
        both = TextContext.cat([context, null_context])

        def guided(x_t: Tensor, t: Tensor) -> Tensor:
            y = None
            if self.num_classes > 0:
                y = torch.cat([rows(x_t, labels), torch.full_like(rows(x_t, labels), self.num_classes)])
            out_c, out_u = self(torch.cat([x_t, x_t]), torch.cat([t, t]), y, both).chunk(2)
            return out_u + (1 + w) * (out_c - out_u)  # Ho & Salimans eq. 6

        return guided
