"""VQ: nearest codes vs float64 brute force, where each loss term's gradient goes, EMA maths, dead-code restarts."""

import pytest
import torch
import torch.nn.functional as F

from vistok.quantizers import VectorQuantizer
from vistok.quantizers.vq import nearest_code

F64 = torch.float64


def tokens(z: torch.Tensor) -> torch.Tensor:
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def brute_nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.double(), codebook.double()).argmin(-1)


@pytest.mark.parametrize("l2_normalize", [False, True])
def test_indices_are_brute_force_nearest_codes(l2_normalize):
    torch.manual_seed(0)
    q = VectorQuantizer(64, dim=6, l2_normalize=l2_normalize).eval()
    with torch.no_grad():
        q.codebook.normal_()
    z = torch.randn(3, 6, 5, 7)
    out = q(z)
    x, codes = tokens(z), q.codebook.detach()
    if l2_normalize:  # nearest on the sphere = largest cosine similarity
        x, codes = F.normalize(x, dim=-1), F.normalize(codes, dim=-1)
    assert torch.equal(out.indices.flatten(), brute_nearest(x, codes))
    assert torch.equal(out.quantized, q.indices_to_codes(out.indices))
    assert torch.equal(nearest_code(x, codes, max_distance_elements=64 * 3), out.indices.flatten())  # 3-row chunks


def test_commitment_gradient_reaches_the_encoder_only():
    torch.manual_seed(1)
    q = VectorQuantizer(16, dim=4, beta=0.7, codebook_weight=0.0).train()
    z = torch.randn(2, 4, 3, 3, dtype=F64, requires_grad=True)
    out = q(z.float())
    code = q.codebook[out.indices.flatten()].detach().double()
    z_grad, codebook_grad = torch.autograd.grad(out.loss, [z, q.codebook], allow_unused=True, materialize_grads=True)
    expected = 0.7 * 2 * (tokens(z.detach()) - code) / code.numel()  # d/dz of β·mean((z − sg(e))²)
    torch.testing.assert_close(tokens(z_grad), expected, rtol=1e-5, atol=1e-7)
    assert torch.count_nonzero(codebook_grad) == 0


def test_codebook_gradient_reaches_the_codes_only():
    torch.manual_seed(2)
    q = VectorQuantizer(16, dim=4, beta=0.0, codebook_weight=1.0).train()
    with torch.no_grad():
        q.codebook.normal_()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    z_grad, codebook_grad = torch.autograd.grad(out.loss, [z, q.codebook])
    assert torch.count_nonzero(z_grad) == 0
    ids, x = out.indices.flatten(), tokens(z.detach()).double()
    per_token = 2 * (q.codebook.detach().double()[ids] - x) / x.numel()  # d/de of mean((e − sg(z))²)
    expected = torch.zeros(16, 4, dtype=F64).index_add(0, ids, per_token)
    torch.testing.assert_close(codebook_grad.double(), expected, rtol=1e-5, atol=1e-7)


def test_straight_through_output():
    torch.manual_seed(3)
    q = VectorQuantizer(8, dim=3).train()
    z = torch.randn(4, 3, 5, requires_grad=True)
    out = q(z)
    assert torch.equal(out.quantized, q.indices_to_codes(out.indices))
    z_grad, codebook_grad = torch.autograd.grad(out.quantized.sum(), [z, q.codebook], allow_unused=True)
    assert torch.equal(z_grad, torch.ones_like(z)) and codebook_grad is None
    expected_loss = 0.25 * out.metrics["commit"] + out.metrics["codebook"]
    torch.testing.assert_close(out.loss.detach(), expected_loss)


def test_l2_normalized_low_dim_codes_with_projection():
    torch.manual_seed(4)
    q = VectorQuantizer(32, dim=24, code_dim=8, l2_normalize=True).eval()
    z = torch.randn(2, 24, 4, 4)
    out = q(z)
    assert out.quantized.shape == z.shape
    codes = q.indices_to_codes(out.indices)
    assert codes.shape == (2, 8, 4, 4)
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(2, 4, 4))
    torch.testing.assert_close(q.indices_to_quantized(out.indices), out.quantized)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = q(z)
    assert bf16.quantized.dtype == torch.bfloat16 and torch.isfinite(bf16.loss)


def test_ema_update_matches_formula():
    torch.manual_seed(5)
    decay, eps, size = 0.8, 1e-5, 6
    q = VectorQuantizer(size, dim=3, ema_decay=decay, ema_eps=eps).train()
    with torch.no_grad():
        q.codebook.copy_(torch.randn(size, 3))
        q.ema_embed_sum.copy_(q.codebook)
    initial = q.codebook.detach().double().clone()
    z = torch.randn(10, 3, 1)
    out = q(z)
    assert "codebook" not in out.metrics and not q.codebook.requires_grad
    ids, x = out.indices.flatten(), tokens(z).double()
    counts = torch.bincount(ids, minlength=size).double()
    cluster = decay * 1.0 + (1 - decay) * counts  # starts at one observation per code
    embed = decay * initial + (1 - decay) * torch.zeros(size, 3, dtype=F64).index_add(0, ids, x)
    smoothed = (cluster + eps) / (cluster.sum() + size * eps) * cluster.sum()
    torch.testing.assert_close(q.codebook.detach().double(), embed / smoothed[:, None], rtol=1e-5, atol=1e-6)


def test_dead_codes_are_restarted_from_recent_latents():
    torch.manual_seed(6)
    q = VectorQuantizer(4, dim=2, restart_after=2, restart_buffer_size=64).train()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [50.0, 50.0], [-50.0, 50.0]]))
    batches = [torch.randn(1, 2, 8) for _ in range(3)]
    restarted = [q(z).metrics["restarted"].item() for z in batches]
    assert restarted == [0.0, 0.0, 2.0]  # codes 2, 3 unused at steps 1 and 2 → replaced before step 3
    seen = torch.cat([tokens(z) for z in batches[:2]])
    for code in q.codebook.detach()[2:]:
        assert (seen - code).abs().sum(-1).min() == 0  # each new code is one of the latents seen
    assert (q.last_used[2:] >= 2).all()  # a restarted code gets a fresh lifetime


def test_usage_metrics():
    q = VectorQuantizer(4, dim=1).eval()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0], [1.0], [2.0], [3.0]]))
    out = q(torch.tensor([0.1, 0.9, 1.1, 2.9]).reshape(1, 1, 4))
    assert out.indices.flatten().tolist() == [0, 1, 1, 3]
    assert out.metrics["usage"].item() == pytest.approx(0.75)
    entropy = -(0.25 * torch.log(torch.tensor(0.25)) * 2 + 0.5 * torch.log(torch.tensor(0.5)))
    assert out.metrics["perplexity"].item() == pytest.approx(entropy.exp().item())
    assert out.metrics["bits_per_token"].item() == pytest.approx(2.0)
