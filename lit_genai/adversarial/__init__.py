"""Adversarial examples for generative models and classifiers (docs/architecture.md, "Adversarial examples").

- ``attacks``: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018) in L-inf / L2 balls; pure
  tensor functions.
- ``objectives``: what an attack maximises, read through the module contract (``per_example_loss``,
  and an ``Autoencoder``'s ``reconstruct`` / ``encode``), with the targeted attacks of Kos et al. 2017.
- ``curves``: robustness curves (clean vs PGD vs random noise, per radius) and attacked examples.
- ``reports``: a curve's files (``robustness.json``, ``robustness.png``, ``examples.png``) and logs.
- ``command``: the ``lit-genai robustness`` subcommand (``TrainerWithRobustness``) and
  ``python -m lit_genai.adversarial compare``.

The package imports nothing itself, so that a model can import ``attacks`` (for adversarial training)
without loading the plotting and Lightning plumbing. Shape legend: B batch, C/H/W image.
"""
