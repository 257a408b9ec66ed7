"""Generated data as augmentation: ``lit-genai augment``.

Train the domain classifier (``lit_genai.metrics.classifier``) on real digits alone and on the same
digits plus a class-conditional model's generated ones, and score both on real held-out digits:
the question of Ravuri & Vinyals 2019 (CAS, "naive augmentation") and Azizi et al. 2023 ("Synthetic
Data from Diffusion Models Improves ImageNet Classification") at MNIST size.

One job per file:

- ``pool``: ``synthetic_pool``, a checkpoint's class-balanced samples, drawn once and cached.
- ``sweep``: ``run_sweep``, the experiment as a plain loop over (real per class, ratio, seed) cells.
- ``report``: ``write_report``, the summary over seeds (t intervals), markdown table, JSON and plot.
- ``command``: ``main``, ``lit-genai augment``'s options, data and files.
"""

from lit_genai.augment.pool import synthetic_pool
from lit_genai.augment.report import summarise, t_interval, write_report
from lit_genai.augment.sweep import Images, Training, run_sweep

__all__ = ["Images", "Training", "run_sweep", "summarise", "synthetic_pool", "t_interval", "write_report"]
