"""Use a trained model from Python: ``load`` it, ``generate`` samples as their medium, ``save`` them.

    import lit_genai

    module = lit_genai.load("runs/diffusion-mnist")              # run folder or checkpoint; EMA weights
    images = lit_genai.generate(module, 16, seed=0, cond=7)      # uint8 (16, 1, 28, 28)
    lit_genai.save(images, "sevens.png")

``load`` (``load.py``) rebuilds the module from the run's config and the checkpoint, without the data;
``generate`` / ``decode`` / ``save`` (``generate.py``) draw samples the way ``lit-genai predict`` does
and write them as it writes them (docs/architecture.md, "Use").
"""

from lit_genai.api.generate import decode, generate, save
from lit_genai.api.load import load

__all__ = ["decode", "generate", "load", "save"]
