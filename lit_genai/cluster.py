"""``--ckpt_path hpc``: the checkpoint Lightning writes when SLURM requeues a job.

Under SLURM, Lightning (2.6, ``SLURMEnvironment(auto_requeue=True)``, the default) catches the
signal SLURM sends before a job's time limit (SIGUSR1, ``#SBATCH --signal=SIGUSR1@90``), saves
``<trainer.default_root_dir>/hpc_ckpt_<n>.ckpt`` (n one more than the highest there) and requeues
the job with ``scontrol requeue``. The requeued job runs the same command; without ``--ckpt_path``
Lightning resumes from the highest n by itself, and ``--ckpt_path hpc`` asks for that file
explicitly. ``lit-genai`` resolves ``hpc`` as it resolves ``last`` and ``best``, in the run folder
(``runs/<experiment>`` unless ``trainer.default_root_dir`` is set), so the file gets the same
one-line checks (missing, truncated, another model's) instead of Lightning's ``ValueError``.
"""

from __future__ import annotations

import re
from pathlib import Path

from lit_genai.errors import LitGenAIError

_HPC_NAME = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


def hpc_checkpoint(root: str) -> str:
    """The newest ``hpc_ckpt_<n>.ckpt`` in the run folder ``root``: the highest n, as Lightning's
    ``_CheckpointConnector._hpc_resume_path`` picks it; one ``LitGenAIError`` line when there is none."""
    found = {}
    for path in Path(root).glob("hpc_ckpt_*.ckpt"):
        match = _HPC_NAME.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    if not found:
        raise LitGenAIError(
            f"--ckpt_path hpc: no hpc_ckpt_<n>.ckpt in {root} (Lightning writes one when SLURM "
            "requeues the job); pass last or a checkpoint path"
        )
    return str(found[max(found)])
