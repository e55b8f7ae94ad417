"""LFQ: entropy terms and gradients against brute force over all 2^K codes, bit orders, annealing, peer check."""

import math

import pytest
import torch

from vistok.quantizers import LFQ, bits_to_indices, convert_bit_order, indices_to_bits, join_indices, split_indices
from vistok.quantizers.lfq import annealed_weight

F64 = torch.float64


# ----------------------------------------------------------------------------------------------- brute force


def all_codes(num_bits: int, value: float = 1.0) -> torch.Tensor:
    """Every code c ∈ {±value}^K, row j = code of LSB-first id j, float64."""
    bits = ((torch.arange(2**num_bits).unsqueeze(-1) >> torch.arange(num_bits)) & 1).bool()
    return torch.where(bits, value, -value).to(F64)


def brute_softmax(x: torch.Tensor, inv_temperature: float, code_value: float = 1.0) -> torch.Tensor:
    """q(c|x_n) = softmax_c(2τ⟨x_n, c⟩) materialized over all 2^K codes: (N, 2^K), float64."""
    return torch.softmax(2 * inv_temperature * x.to(F64) @ all_codes(x.shape[-1], code_value).T, dim=-1)


def brute_entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log()).sum(-1)


def brute_terms(x, inv_temperature, code_value=1.0):
    probs = brute_softmax(x, inv_temperature, code_value)
    return brute_entropy(probs).mean(), brute_entropy(probs.mean(0))


def brute_group_entropy(x, inv_temperature, sizes):
    """Σ_g H(marginal of Q̄ over the bits of group g), each marginal by summing the full 2^K table."""
    q_bar = brute_softmax(x, inv_temperature).mean(0)
    ids = torch.arange(2 ** x.shape[-1])
    total, start = 0.0, 0
    for size in sizes:
        group_ids = (ids >> start) & (2**size - 1)
        total = total + brute_entropy(torch.zeros(2**size, dtype=F64).index_add(0, group_ids, q_bar))
        start += size
    return total


def grad(value, x):
    return torch.autograd.grad(value, x, retain_graph=True)[0]


# ----------------------------------------------------------------------------------------------- exact entropy


@pytest.mark.parametrize(
    ("num_bits", "inv_temperature", "x_scale"),
    [(1, 1.0, 1.0), (5, 0.5, 1.0), (8, 100.0, 0.004), (11, 0.3, 1.0), (12, 2.0, 0.2)],
)
def test_entropy_terms_and_gradients_match_brute_force(num_bits, inv_temperature, x_scale):
    torch.manual_seed(num_bits)
    x = (x_scale * torch.randn(48, num_bits, dtype=F64)).requires_grad_()
    q = LFQ(num_bits, inv_temperature=inv_temperature, entropy_dtype=F64).train()
    sample, codebook = q.entropy_terms(x)
    sample_ref, codebook_ref = brute_terms(x, inv_temperature)
    torch.testing.assert_close(sample, sample_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(codebook, codebook_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad(sample, x), grad(sample_ref, x), rtol=0, atol=1e-6)
    torch.testing.assert_close(grad(codebook, x), grad(codebook_ref, x), rtol=0, atol=1e-6)


def test_hard_assignments_underflow_safely():
    # |u| up to ~10^4: almost every Π Bern underflows to exactly 0; 0·log 0 must give 0 with a finite gradient
    torch.manual_seed(13)
    x = (10 * torch.randn(32, 8)).requires_grad_()
    q = LFQ(8).train()
    sample, codebook = q.entropy_terms(x)
    ids = bits_to_indices(x.detach() > 0)
    p = torch.bincount(ids, minlength=256).double() / 32
    hard = -(p[p > 0] * p[p > 0].log()).sum()  # the empirical histogram's entropy
    assert sample.item() < 1e-6
    torch.testing.assert_close(codebook.double(), hard, rtol=1e-6, atol=1e-6)
    (g,) = torch.autograd.grad(sample - codebook, x)
    assert torch.isfinite(g).all()


def test_entropy_float32_default_close_to_float64_brute_force():
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    sample, codebook = LFQ(10, inv_temperature=0.5).train().entropy_terms(x)
    assert sample.dtype == torch.float32
    sample_ref, codebook_ref = brute_terms(x, 0.5)
    torch.testing.assert_close(sample.double(), sample_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(codebook.double(), codebook_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_bits", [13, 18])
def test_large_codebook_exact_path_matches_brute_force(num_bits):
    # 2^18 codes × 4 tokens is still small enough to materialize in the test (the uneven 7/6 split for K = 13)
    torch.manual_seed(1)
    x = (0.3 * torch.randn(4, num_bits, dtype=F64)).requires_grad_()
    q = LFQ(num_bits, inv_temperature=1.0, entropy_dtype=F64).train()
    assert q.entropy_group_sizes == [num_bits]
    sample, codebook = q.entropy_terms(x)
    sample_ref, codebook_ref = brute_terms(x, 1.0)
    torch.testing.assert_close(sample, sample_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(codebook, codebook_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad(codebook, x), grad(codebook_ref, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("num_bits", "groups", "sizes"), [(12, 3, [4, 4, 4]), (11, 4, [3, 3, 3, 2])])
def test_subgroup_upper_bound_matches_its_brute_force_definition(num_bits, groups, sizes):
    torch.manual_seed(2)
    x = (0.7 * torch.randn(40, num_bits, dtype=F64)).requires_grad_()
    q = LFQ(num_bits, inv_temperature=0.5, entropy_groups=groups, entropy_dtype=F64).train()
    assert q.entropy_group_sizes == sizes
    _, bound = q.entropy_terms(x)
    bound_ref = brute_group_entropy(x, 0.5, sizes)
    torch.testing.assert_close(bound, bound_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad(bound, x), grad(bound_ref, x), rtol=0, atol=1e-6)
    assert bound >= brute_terms(x, 0.5)[1] - 1e-9  # subadditivity: an upper bound on H(Q̄)


def test_group_split_defaults():
    assert LFQ(18).entropy_group_sizes == [18]
    assert LFQ(20).entropy_group_sizes == [20]
    assert LFQ(24).entropy_group_sizes == [12, 12]
    assert LFQ(41).entropy_group_sizes == [14, 14, 13]
    assert LFQ(26, max_exact_bits=26).entropy_group_sizes == [26]
    with pytest.raises(ValueError, match="groups"):
        LFQ(24, entropy_groups=1)


def test_ema_of_code_distribution_value_and_gradient():
    torch.manual_seed(3)
    decay, num_bits, tau = 0.9, 6, 0.5
    q = LFQ(num_bits, inv_temperature=tau, entropy_ema_decay=decay, entropy_dtype=F64).train()
    mean = torch.zeros(2**num_bits, dtype=F64)
    for t in range(1, 4):
        x = (torch.randn(16, num_bits, dtype=F64) + t).requires_grad_()  # drifting batches
        _, codebook = q.entropy_terms(x)
        batch = brute_softmax(x, tau).mean(0)
        mixed = decay * mean + (1 - decay) * batch  # m_{t-1} enters detached
        reference = brute_entropy(mixed / (1 - decay**t))
        torch.testing.assert_close(codebook, reference, rtol=0, atol=1e-6)
        torch.testing.assert_close(grad(codebook, x), grad(reference, x), rtol=0, atol=1e-6)
        mean = mixed.detach()
    assert int(q.ema_updates) == 3
    q.eval()
    q.entropy_terms(torch.randn(16, num_bits, dtype=F64))
    assert int(q.ema_updates) == 3  # evaluation reads the EMA without updating it


def test_module_loss_and_gradient_match_brute_force_spherical():
    torch.manual_seed(4)
    num_bits, tau = 7, 2.0
    q = LFQ(num_bits, spherical=True, inv_temperature=tau, commitment_weight=0.0, entropy_dtype=F64).train()
    z = torch.randn(2, num_bits, 3, 5, dtype=F64, requires_grad=True)
    out = q(z)
    tokens = z.movedim(1, -1).reshape(-1, num_bits)
    x = tokens / tokens.norm(dim=-1, keepdim=True)
    sample, codebook = brute_terms(x, tau, code_value=1 / math.sqrt(num_bits))
    reference = 0.1 * 3.0 * (sample - codebook)  # weight 0.1, annealing factor 3 at step 0
    torch.testing.assert_close(out.loss.double(), reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad(out.loss, z), grad(reference, z), rtol=1e-5, atol=1e-6)
    assert torch.allclose(out.quantized.abs(), torch.full_like(out.quantized, 1 / math.sqrt(num_bits)))


def test_entropy_under_bf16_autocast_is_float32_and_close():
    torch.manual_seed(5)
    q = LFQ(10, dim=16, inv_temperature=1.0).train()
    z = torch.randn(2, 16, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
        projected = q.project_in(z.movedim(1, -1).reshape(-1, 16))
    assert out.quantized.dtype == torch.bfloat16 and projected.dtype == torch.bfloat16
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    sample_ref, codebook_ref = brute_terms(projected.float(), 1.0)  # same bf16 latents, float64 maths
    torch.testing.assert_close(out.metrics["codebook_entropy"].double(), codebook_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.metrics["per_sample_entropy"].double(), sample_ref, rtol=1e-5, atol=1e-5)
    fp32 = q(z)  # without autocast: close to the bf16 run (the latents differ by bf16 rounding only)
    assert abs(fp32.metrics["codebook_entropy"] - out.metrics["codebook_entropy"]) < 0.05
    assert torch.equal(out.indices.flatten(), bits_to_indices(projected > 0))


def test_large_codebook_forward_backward_finite():
    torch.manual_seed(6)
    z = torch.randn(1, 18, 8, 8, requires_grad=True)
    out = LFQ(18).train()(z)
    out.loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    sample, codebook = out.metrics["per_sample_entropy"], out.metrics["codebook_entropy"]
    assert 0 < codebook <= sample + math.log(64) + 1e-5  # a mixture of N components: H(Q̄) ≤ E H(q) + log N


# ----------------------------------------------------------------------------------------------- quantization


def test_sign_quantization_commit_and_straight_through():
    z = torch.tensor([[0.5, -2.0, 0.0, 3.0]]).T.unsqueeze(0).requires_grad_()  # (1, 4, 1): zero maps to −s
    q = LFQ(4, scale=0.5).eval()
    out = q(z)
    assert out.quantized.flatten().tolist() == [0.5, -0.5, -0.5, 0.5]
    torch.testing.assert_close(out.metrics["commit"], torch.tensor((0 + 1.5**2 + 0.5**2 + 2.5**2) / 4))
    torch.testing.assert_close(out.loss, 0.25 * out.metrics["commit"])
    out.quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_bit_orders_on_known_codes():
    z = torch.tensor([1.0, -1.0, -1.0, 2.0, -3.0]).reshape(1, 5, 1)  # bits 1 0 0 1 0 (channel 0 first)
    assert LFQ(5, bit_order="lsb")(z).indices.item() == 1 + 8
    assert LFQ(5, bit_order="msb")(z).indices.item() == 16 + 2


@pytest.mark.parametrize("bit_order", ["lsb", "msb"])
def test_index_code_round_trip(bit_order):
    torch.manual_seed(7)
    q = LFQ(9, bit_order=bit_order, scale=2.0).eval()
    z = torch.randn(3, 9, 2, 5)
    out = q(z)
    assert out.indices.dtype == torch.int64 and out.indices.shape == (3, 2, 5)
    assert torch.equal(q.indices_to_codes(out.indices), out.quantized)
    ids = torch.arange(2**9)
    assert torch.equal(bits_to_indices(indices_to_bits(ids, 9, bit_order), bit_order), ids)
    assert torch.equal(q(q.indices_to_codes(ids.reshape(8, 64)).contiguous()).indices.flatten(), ids)


def test_convert_bit_order_is_bit_reversal():
    torch.manual_seed(8)
    z = torch.randn(4, 12, 6)
    lsb, msb = LFQ(12, bit_order="lsb")(z).indices, LFQ(12, bit_order="msb")(z).indices
    assert torch.equal(convert_bit_order(lsb, 12, "lsb", "msb"), msb)
    assert torch.equal(convert_bit_order(msb, 12, "msb", "lsb"), lsb)
    ids = torch.arange(2**12)
    reversed_ids = torch.tensor([int(f"{i:012b}"[::-1], 2) for i in range(2**12)])
    assert torch.equal(convert_bit_order(ids, 12, "lsb", "msb"), reversed_ids)


def test_subtokens_split_join():
    ids = torch.randint(0, 2**18, (5, 7), generator=torch.Generator().manual_seed(9))
    sub = split_indices(ids, 18, 2)
    assert sub.shape == (5, 7, 2) and int(sub.max()) < 2**9
    assert torch.equal(sub[..., 0], ids % 512) and torch.equal(sub[..., 1], ids // 512)
    assert torch.equal(join_indices(sub, 18), ids)
    q = LFQ(18, num_subtokens=3)
    assert q.to_subtokens(ids).shape == (5, 7, 3)
    assert torch.equal(q.from_subtokens(q.to_subtokens(ids)), ids)
    with pytest.raises(ValueError, match="divide"):
        split_indices(ids, 18, 4)


def test_projection_round_trip():
    torch.manual_seed(10)
    q = LFQ(6, dim=32).eval()
    out = q(torch.randn(2, 32, 3, 3))
    assert out.quantized.shape == (2, 32, 3, 3)
    assert q.indices_to_codes(out.indices).shape == (2, 6, 3, 3)
    torch.testing.assert_close(q.indices_to_quantized(out.indices), out.quantized)


# ----------------------------------------------------------------------------------------------- annealing, step


def test_entropy_weight_schedule():
    assert annealed_weight(0, 0.1).item() == pytest.approx(0.3)
    assert annealed_weight(1000, 0.1).item() == pytest.approx(0.2)
    assert annealed_weight(2000, 0.1).item() == pytest.approx(0.1)
    assert annealed_weight(10**6, 0.1).item() == pytest.approx(0.1)
    cosine = annealed_weight(500, 0.1, mode="cosine").item()
    assert cosine == pytest.approx(0.1 * (1 + 2 * (1 + math.cos(math.pi / 4)) / 2))
    assert annealed_weight(1000, 0.1, mode="cosine").item() == pytest.approx(0.2)
    assert annealed_weight(5, 0.1, steps=0).item() == pytest.approx(0.1)


def test_step_counter_drives_annealing():
    q = LFQ(4, entropy_anneal_steps=4).train()
    z = torch.randn(2, 4, 3)
    weights = [q(z).metrics["entropy_weight"].item() for _ in range(5)]
    assert weights == pytest.approx([0.3, 0.25, 0.2, 0.15, 0.1])
    assert int(q.step) == 5 and "step" in q.state_dict()
    assert q(z, step=2).metrics["entropy_weight"].item() == pytest.approx(0.2)
    q.eval()
    out = q(z)
    assert int(q.step) == 6 and "codebook_entropy" not in out.metrics


# ----------------------------------------------------------------------------------------------- peer


@pytest.mark.parametrize(("num_bits", "spherical"), [(8, False), (10, False), (8, True)])
def test_matches_vector_quantize_pytorch(num_bits, spherical):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(11)
    tau = 0.1 if not spherical else 1.0  # every probability > 1e-5, so the peer's log clamp is inactive
    z = torch.randn(2, num_bits, 4, 4)
    peer = vqp.LFQ(
        dim=num_bits,
        codebook_size=2**num_bits,
        entropy_loss_weight=1.0,
        commitment_loss_weight=1.0,
        diversity_gamma=1.0,
        spherical=spherical,
    ).train()
    (peer_quantized, peer_ids, peer_aux), parts = peer(z, inv_temperature=tau, return_loss_breakdown=True)
    ours = LFQ(num_bits, bit_order="msb", spherical=spherical, inv_temperature=tau, entropy_dtype=F64).train()
    out = ours(z)
    assert torch.equal(out.indices, peer_ids)
    torch.testing.assert_close(out.quantized, peer_quantized)
    torch.testing.assert_close(out.metrics["per_sample_entropy"], parts.per_sample_entropy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.metrics["codebook_entropy"], parts.batch_entropy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.metrics["commit"], parts.commitment, rtol=1e-5, atol=1e-6)
    ours_aux = out.metrics["entropy_loss"] + out.metrics["commit"]
    torch.testing.assert_close(ours_aux, peer_aux, rtol=1e-5, atol=1e-5)


def test_matches_vector_quantize_pytorch_at_default_temperature():
    # τ = 100 (both defaults): near-hard assignments; the peer clamps log p at 1e-5, a bias well below 1e-4 nats here
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(12)
    z = torch.randn(2, 10, 8, 8)
    peer = vqp.LFQ(dim=10, codebook_size=2**10, entropy_loss_weight=1.0, diversity_gamma=1.0).train()
    (_, peer_ids, _), parts = peer(z, return_loss_breakdown=True)
    out = LFQ(10, bit_order="msb").train()(z)
    assert torch.equal(out.indices, peer_ids)
    torch.testing.assert_close(out.metrics["per_sample_entropy"], parts.per_sample_entropy, rtol=0, atol=1e-4)
    torch.testing.assert_close(out.metrics["codebook_entropy"], parts.batch_entropy, rtol=0, atol=1e-4)
