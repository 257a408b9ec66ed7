"""The vector quantiser (van den Oord et al. 2017): assignment, gradients, EMA codebook, restarts."""

import math

import pytest
import torch

from lit_genai.errors import ConfigError
from lit_genai.nn.vq import VectorQuantizer, code_statistics, ema_codebook, nearest_codes


def _as_latents(vectors) -> torch.Tensor:
    """(M, D) vectors -> (M, D, 1, 1) latents: one position per example."""
    return torch.tensor(vectors, dtype=torch.float32)[:, :, None, None]


def _quantizer(codebook, **kwargs) -> VectorQuantizer:
    codebook = torch.tensor(codebook, dtype=torch.float32)
    vq = VectorQuantizer(num_codes=codebook.shape[0], code_dim=codebook.shape[1], **kwargs)
    with torch.no_grad():
        vq.codebook.copy_(codebook)
        if vq.ema:
            vq.embed_sum.copy_(codebook)  # m = N e with N = 1
    return vq


def test_nearest_code_assignment_by_hand_and_against_cdist():
    codebook = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]])
    z = torch.tensor([[1.0, -1.0], [9.0, 8.0], [-6.0, 7.0], [0.0, 6.0]])  # (4, 2)
    assert nearest_codes(z, codebook).tolist() == [0, 1, 2, 0]  # (0, 6): 36 < 16+100 to both others

    g = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(500, 8, generator=g), torch.randn(64, 8, generator=g)
    assert torch.equal(nearest_codes(z, codebook), torch.cdist(z, codebook).argmin(1))

    vq = _quantizer([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]], dead_code_threshold=0)
    latents = torch.tensor([[1.0, -1.0], [9.0, 8.0], [-6.0, 7.0], [0.0, 6.0]]).T.reshape(1, 2, 2, 2)
    out = vq.eval()(latents)  # (1, 2, 2, 2): positions in raster order
    assert out.indices.dtype == torch.int64 and out.indices.tolist() == [[[0, 1], [2, 0]]]
    assert torch.equal(out.z_q, vq.lookup(out.indices))  # the codes' values
    assert vq.lookup(out.indices).shape == (1, 2, 2, 2)


@pytest.mark.parametrize("ema", [False, True])
def test_straight_through_gradient_reaches_the_encoder_and_codebook_only_without_ema(ema):
    vq = _quantizer([[0.0, 0.0], [10.0, 10.0]], ema=ema, dead_code_threshold=0)
    z_e = _as_latents([[1.0, 2.0], [9.0, 9.0], [-1.0, 0.0]]).requires_grad_()
    out = vq(z_e)
    weights = torch.randn_like(z_e)
    (out.z_q * weights).sum().backward()
    assert torch.allclose(z_e.grad, weights)  # d z_q / d z_e = identity
    if not ema:
        assert vq.codebook.grad is None or vq.codebook.grad.abs().sum() == 0  # z_q passes none there
    assert ("codebook" in dict(vq.named_parameters())) is (not ema)

    z_e.grad = None
    codebook = vq.codebook.detach().clone()  # the codes this pass assigns to (EMA moves them after)
    out = vq(z_e)
    out.loss.sum().backward()
    codes = codebook[out.indices.flatten()]  # (3, 2)
    # commitment beta * mean_D (z_e - e)^2 per example -> 2 beta (z_e - e) / D
    assert torch.allclose(z_e.grad[:, :, 0, 0], 2 * 0.25 * (z_e.detach()[:, :, 0, 0] - codes) / 2)
    if ema:
        assert not vq.codebook.requires_grad
    else:
        # codebook loss mean_D (sg z_e - e)^2 per example: code 0 gets 2 (e - z) / D from examples 0, 2
        z = z_e.detach()[:, :, 0, 0]
        expected = torch.stack([(codes[0] - z[0]) + (codes[2] - z[2]), codes[1] - z[1]])
        assert torch.allclose(vq.codebook.grad, expected)


def test_ema_codebook_update_by_hand():
    # codes e0 = (0, 0), (10, 10), (-10, 10) with N = 1, m = e; gamma = 1/2.
    vq = _quantizer([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]], decay=0.5, eps=0.0, dead_code_threshold=0)
    z = _as_latents([[1.0, 0.0], [0.0, 1.0], [9.0, 11.0]])  # codes 0, 0, 1: n = (2, 1, 0)
    vq.train()(z)
    # N = 1/2 * 1 + 1/2 * n;  m = 1/2 e0 + 1/2 * sums, sums = (1, 1), (9, 11), (0, 0)
    assert vq.cluster_size.tolist() == [1.5, 1.0, 0.5]
    assert torch.allclose(vq.embed_sum, torch.tensor([[0.5, 0.5], [9.5, 10.5], [-5.0, 5.0]]))
    # eps = 0: no smoothing, e = m / N; the unused code keeps its value
    assert torch.allclose(vq.codebook, torch.tensor([[1 / 3, 1 / 3], [9.5, 10.5], [-10.0, 10.0]]))

    # Laplace smoothing with eps = 1/2: N~ = (N + 1/2) / (3 + 3/2) * 3 = (4/3, 1, 2/3)
    N, m, e = ema_codebook(
        torch.ones(3),
        torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]]),
        torch.tensor([2.0, 1.0, 0.0]),
        torch.tensor([[1.0, 1.0], [9.0, 11.0], [0.0, 0.0]]),
        decay=0.5,
        eps=0.5,
    )
    assert torch.allclose(e, torch.tensor([[0.375, 0.375], [9.5, 10.5], [-7.5, 7.5]]))

    before = [t.clone() for t in (vq.codebook, vq.cluster_size, vq.embed_sum)]
    vq.eval()(z)  # eval: nothing moves
    vq.train()(z, update=False)  # nor when asked not to
    assert all(
        torch.equal(a, b) for a, b in zip(before, (vq.codebook, vq.cluster_size, vq.embed_sum), strict=True)
    )


@pytest.mark.parametrize("ema", [False, True])
def test_dead_codes_restart_on_encoder_outputs_of_the_batch(ema):
    # every vector is nearest to code 0: codes 1..3 get no assignment, their N drops to 0.9 < 1
    vq = _quantizer([[0.0, 0.0], [50.0, 50.0], [60.0, 60.0], [70.0, 70.0]], ema=ema, decay=0.9)
    vectors = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 10.0], [11.0, 12.0]])
    vq.train()(vectors[:, :, None, None])
    restarted = vq.codebook.detach()[1:]  # (3, 2)
    for row in restarted:
        assert (row == vectors).all(1).any(), f"{row} is not one of the batch's encoder outputs"
    assert vq.cluster_size[1:].tolist() == [1.0, 1.0, 1.0]  # set to the threshold
    assert vq.cluster_size[0] == pytest.approx(0.9 + 0.1 * 6)  # used: not restarted
    if ema:
        assert torch.allclose(vq.embed_sum[1:], restarted * 1.0)
        expected = (0.9 * torch.zeros(2) + 0.1 * vectors.sum(0)) / 1.5  # m / N of code 0 (eps ~ 0)
        assert torch.allclose(vq.codebook[0], expected, atol=1e-4)
    else:
        assert vq.codebook[0].tolist() == [0.0, 0.0]  # moved by the optimiser, not here

    # threshold 0 turns restarts off
    vq = _quantizer([[0.0, 0.0], [50.0, 50.0]], ema=ema, decay=0.9, dead_code_threshold=0)
    vq.train()(vectors[:, :, None, None])
    assert vq.codebook[1].tolist() == pytest.approx([50.0, 50.0], rel=1e-4)  # only smoothed


def test_perplexity_and_usage_by_hand():
    perplexity, usage = code_statistics(torch.tensor([2.0, 2.0, 0.0, 0.0]))
    assert perplexity.item() == pytest.approx(2.0) and usage.item() == 0.5
    perplexity, usage = code_statistics(torch.tensor([3.0, 1.0, 0.0, 0.0, 0.0]))
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert perplexity.item() == pytest.approx(math.exp(entropy)) and usage.item() == pytest.approx(0.4)

    vq = _quantizer([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0], [0.0, -10.0]]).eval()
    out = vq(_as_latents([[1.0, 1.0], [9.0, 9.0], [0.0, -1.0], [10.0, 11.0]]))  # codes 0, 1, 0, 1
    assert out.perplexity.item() == pytest.approx(2.0) and out.usage.item() == 0.5


def test_bad_arguments_are_one_clear_error():
    with pytest.raises(ConfigError, match="decay"):
        VectorQuantizer(8, 4, decay=1.0)
    with pytest.raises(ValueError, match="code_dim is 4"):
        VectorQuantizer(8, 4)(torch.zeros(2, 3, 1, 1))


def _rank(rank: int, folder: str, batches: torch.Tensor, threshold: float) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # ranks seeded alike, as under DDP
        vq = VectorQuantizer(16, 2, decay=0.9, dead_code_threshold=threshold).train()
        for step in range(3):
            vq(batches[step, rank])
        torch.save({k: v.clone() for k, v in vq.state_dict().items()}, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_two_ranks_update_one_codebook_from_the_world_batch(tmp_path, threshold):
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(1)
    batches = torch.randn(3, 2, 5, 2, 2, 2, generator=g)  # (step, rank, B, D, h, w): distinct per rank
    mp.start_processes(_rank, args=(str(tmp_path), batches, threshold), nprocs=2, start_method="fork")
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name  # restarts too: the same on both ranks
    if threshold == 0:  # no random draws: one process on the concatenated world batch does the same
        torch.manual_seed(0)
        vq = VectorQuantizer(16, 2, decay=0.9, dead_code_threshold=0).train()
        for step in range(3):
            vq(batches[step].flatten(0, 1))
        for name, value in vq.state_dict().items():
            assert torch.allclose(states[0][name], value, atol=1e-6), name
