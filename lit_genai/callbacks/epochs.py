"""When the drawing callbacks draw: after every n-th validation epoch, and after the last one.

``SampleLogger`` (samples.py) and ``LatentGrids`` (latents.py) draw inside validation (so under EMA
weights when the EMA callback is on) by the same rule, kept here so that they agree: never in the
sanity check, never with ``every_n_epochs = 0``, else after validation epochs n, 2n, ... and after
the validation training stops after, so that the final weights always get their pictures.
"""

from __future__ import annotations

from typing import Any


def last_validation(trainer: Any) -> bool:
    """Whether training stops after this validation: ``should_stop``, ``max_steps`` reached, or the
    last of ``max_epochs`` (a limit <= 0 or None is no limit)."""
    max_steps, max_epochs = trainer.max_steps, trainer.max_epochs
    return (
        trainer.should_stop
        or (max_steps is not None and 0 < max_steps <= trainer.global_step)
        or (max_epochs is not None and 0 < max_epochs <= trainer.current_epoch + 1)
    )


def should_draw(trainer: Any, every_n_epochs: int) -> bool:
    """Whether a callback drawing every ``every_n_epochs`` validation epochs (0: never) draws at the end
    of this validation: not in the sanity check, and an n-th epoch or the last validation."""
    if trainer.sanity_checking or every_n_epochs <= 0:
        return False
    return (trainer.current_epoch + 1) % every_n_epochs == 0 or last_validation(trainer)
