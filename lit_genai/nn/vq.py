"""Vector quantisation of spatial latents: the bottleneck of the VQ-VAE.

Paper: van den Oord et al. 2017, "Neural Discrete Representation Learning".

- Each encoder output z_e (a D-vector per latent position) is replaced by its nearest code e_k of a
  codebook of K vectors (sec. 3.1, eq. 1-2); the index k is the token.
- Straight-through estimator (sec. 3.2): the decoder gets z_e + sg[e_k - z_e], whose value is e_k
  and whose gradient goes to z_e unchanged.
- Loss (eq. 3) beside the reconstruction: ||sg[z_e] - e||^2 (codebook) + beta ||z_e - sg[e]||^2
  (commitment, beta = 0.25).
- EMA codebook (appendix A.1): instead of the codebook loss, exponential moving averages of each
  code's cluster size N_i and of the sum m_i of the encoder outputs assigned to it, with
  e_i = m_i / N_i and Laplace smoothing of N_i (as DeepMind's Sonnet ``VectorQuantizerEMA``).
  The averages start at N_i = 1, m_i = e_i (as Jukebox's code does), so that e = m / N
  holds from the start and a code unused in the first batches keeps its value.
- Dead-code restarts ("random restarts", Dhariwal et al. 2020, Jukebox): a code whose EMA cluster
  size falls below ``dead_code_threshold`` is moved onto a random encoder output of the current
  batch, so unused codes do not stay unused.

Under ``torch.distributed`` the counts and sums are all-reduced before the updates, so every rank
updates the same codebook with the statistics of the whole world batch, and the restart vectors are
broadcast from rank 0 (docs/architecture.md, "Distributed").

Shape legend: B batch, D code dimension, h/w latent grid, M = B*h*w latent vectors, K codes.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from lit_genai.errors import ConfigError

# ---------------------------------------------------------------------- pure maths


def nearest_codes(z: Tensor, codebook: Tensor) -> Tensor:
    """(M, D) vectors, (K, D) codes -> (M,) int64 index of the nearest code in Euclidean distance
    (paper eq. 1), from ||z||^2 - 2 z.e + ||e||^2."""
    distances = z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.t() + codebook.pow(2).sum(1)[None]  # (M, K)
    return distances.argmin(1)


def code_statistics(counts: Tensor) -> tuple[Tensor, Tensor]:
    """(K,) code counts of a batch -> (perplexity, usage).

    Perplexity = exp(entropy of the batch's code histogram), from 1 (one code) to K (all codes
    equally often); usage = share of the K codes used at least once.
    """
    p = counts / counts.sum().clamp_min(1)  # (K,)
    entropy = -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum()  # 0 log 0 = 0
    return entropy.exp(), (counts > 0).to(p.dtype).mean()


def ema_codebook(
    cluster_size: Tensor, embed_sum: Tensor, counts: Tensor, sums: Tensor, decay: float, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One EMA step of the codebook (paper appendix A.1):

        N_i <- gamma N_i + (1 - gamma) n_i,     m_i <- gamma m_i + (1 - gamma) sum_j z_ij,
        e_i = m_i / N~_i,    N~_i = (N_i + eps) / (n + K eps) * n,   n = sum_i N_i

    N~ is N with Laplace smoothing (no division by a zero cluster size). (K,) cluster sizes N,
    (K, D) sums m, this batch's (K,) counts n_i and (K, D) sums of assigned vectors -> new N, m and
    the (K, D) codebook e.
    """
    N = decay * cluster_size + (1 - decay) * counts  # (K,)
    m = decay * embed_sum + (1 - decay) * sums  # (K, D)
    n = N.sum()
    smoothed = (N + eps) / (n + N.numel() * eps) * n  # (K,)
    return N, m, m / smoothed[:, None]


# ---------------------------------------------------------------------- the module


class VQOutput(NamedTuple):
    """What ``VectorQuantizer.forward`` returns. Per-example losses are means over (D, h, w)."""

    z_q: Tensor  # (B, D, h, w): the codes' values, with straight-through gradients to z_e
    indices: Tensor  # (B, h, w) int64 token ids
    loss: Tensor  # (B,) codebook + commitment * commitment_loss
    codebook_loss: Tensor  # (B,) ||sg[z_e] - e||^2; zeros with the EMA codebook
    commitment_loss: Tensor  # (B,) ||z_e - sg[e]||^2, not multiplied by beta
    perplexity: Tensor  # () exp(entropy) of this batch's code histogram
    usage: Tensor  # () share of the codes used in this batch


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of (B, D, h, w) latents with a straight-through gradient.

    While the module trains (or with ``update=True``), a forward pass also updates the codebook
    statistics: the EMA codebook (``ema=True``) and the cluster sizes that find dead codes, then
    restarts the dead ones. In eval mode nothing changes.

    Args:
        num_codes: Codebook size K (the vocabulary of the tokens).
        code_dim: Code dimension D (the encoder's latent channels).
        commitment: Weight beta of the commitment loss (paper: 0.25).
        ema: Update the codebook by exponential moving averages (appendix A.1) instead of the
            codebook loss; the codebook is then a buffer, not a parameter.
        decay: Decay gamma of the moving averages (paper: 0.99). Also the decay of the cluster sizes
            that ``dead_code_threshold`` is compared with when ``ema`` is off.
        eps: Laplace smoothing of the cluster sizes (Sonnet: 1e-5).
        dead_code_threshold: A code whose EMA cluster size (assignments per batch, summed over
            ranks) falls below this is restarted on a random encoder output of the batch, with
            its cluster size set to the threshold (Jukebox: 1). Keep it well below the number of
            latent vectors per batch over K; 0 turns restarts off (the paper has none).
    """

    def __init__(
        self,
        num_codes: int = 512,
        code_dim: int = 64,
        commitment: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_threshold: float = 1.0,
    ) -> None:
        super().__init__()
        if num_codes < 1 or code_dim < 1:
            raise ConfigError(
                f"model.quantizer: num_codes={num_codes} and code_dim={code_dim} must be positive"
            )
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"model.quantizer.decay={decay} must be in [0, 1)")
        self.num_codes, self.code_dim, self.commitment = num_codes, code_dim, commitment
        self.ema, self.decay, self.eps, self.dead_code_threshold = ema, decay, eps, dead_code_threshold
        # (K, D) uniform in [-1/K, 1/K] as the PyTorch ports of the paper; restarts move unused codes
        init = torch.empty(num_codes, code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if ema:
            self.register_buffer("codebook", init)
            self.register_buffer("embed_sum", init.clone())  # m (K, D)
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("cluster_size", torch.ones(num_codes))  # N (K,)

    @property
    def vocab_size(self) -> int:
        return self.num_codes

    def forward(self, z_e: Tensor, update: Optional[bool] = None) -> VQOutput:
        """Quantise z_e (B, D, h, w). ``update`` (default: ``self.training``) updates the codebook
        statistics; pass False to evaluate a loss in training mode without touching them."""
        B, D, h, w = z_e.shape
        if D != self.code_dim:
            raise ValueError(f"VectorQuantizer: got {D} latent channels, code_dim is {self.code_dim}")
        flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, D).float()  # (M, D)
        with torch.no_grad():
            indices = nearest_codes(flat, self.codebook.detach().float())  # (M,)
        e = F.embedding(indices, self.codebook).view(B, h, w, D).permute(0, 3, 1, 2)  # (B, D, h, w)
        e = e.to(z_e.dtype)
        commitment_loss = (z_e - e.detach()).pow(2).mean((1, 2, 3))  # (B,)
        if self.ema:
            codebook_loss = torch.zeros_like(commitment_loss)
        else:
            codebook_loss = (z_e.detach() - e).pow(2).mean((1, 2, 3))  # (B,) gradients to the codes
        z_q = z_e + (e - z_e).detach()  # straight-through (sec. 3.2)

        counts = torch.bincount(indices, minlength=self.num_codes).float()  # (K,)
        perplexity, usage = code_statistics(counts)
        if self.training if update is None else update:
            self._update(flat, indices, counts.clone())
        return VQOutput(
            z_q=z_q,
            indices=indices.view(B, h, w),
            loss=codebook_loss + self.commitment * commitment_loss,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            perplexity=perplexity,
            usage=usage,
        )

    def lookup(self, indices: Tensor) -> Tensor:
        """Token ids (B, h, w) -> their codes (B, D, h, w)."""
        return F.embedding(indices.long(), self.codebook).permute(0, 3, 1, 2)

    @torch.no_grad()
    def _update(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        """EMA codebook step and dead-code restarts from this batch's (M, D) encoder outputs."""
        distributed = _world() > 1
        if self.ema:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, flat)  # (K, D)
            if distributed:
                dist.all_reduce(counts)
                dist.all_reduce(sums)
            N, m, codebook = ema_codebook(
                self.cluster_size, self.embed_sum, counts, sums, self.decay, self.eps
            )
            self.cluster_size.copy_(N)
            self.embed_sum.copy_(m)
            self.codebook.copy_(codebook)
        else:
            if distributed:
                dist.all_reduce(counts)
            self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.dead_code_threshold > 0:
            self._restart_dead_codes(flat, distributed)

    def _restart_dead_codes(self, flat: Tensor, distributed: bool) -> None:
        # One candidate per code, drawn whether or not it is dead: the RNG streams advance alike on
        # every step and rank, and no device-to-host sync is needed to count the dead codes.
        dead = self.cluster_size < self.dead_code_threshold  # (K,) the same on every rank
        pick = torch.randint(0, flat.shape[0], (self.num_codes,), device=flat.device)
        fresh = flat[pick].contiguous()  # (K, D) random encoder outputs of this batch
        if distributed:
            dist.broadcast(fresh, src=0)  # rank 0's, so every rank restarts to the same vectors
        codebook = self.codebook.data
        codebook.copy_(torch.where(dead[:, None], fresh.to(codebook.dtype), codebook))
        self.cluster_size.masked_fill_(dead, self.dead_code_threshold)
        if self.ema:
            self.embed_sum.copy_(torch.where(dead[:, None], fresh * self.dead_code_threshold, self.embed_sum))
