"""The one quantizer API across LFQ / FSQ / VQ, the usage tracker, and a 2-process DDP run against one process."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vistok.quantizers import FSQ, LFQ, VQ, QuantizerOutput, UsageTracker
from vistok.quantizers.base import flatten_channels, unflatten_channels

QUANTIZERS = {
    "lfq": lambda dim: LFQ(6, dim=dim),
    "lfq_bsq": lambda dim: LFQ(6, dim=dim, spherical=True, bit_order="msb"),
    "fsq": lambda dim: FSQ([7, 5, 5, 3], dim=dim),
    "vq": lambda dim: VQ(32, dim=dim, code_dim=4),
    "vq_l2_ema": lambda dim: VQ(32, dim=dim, code_dim=4, l2_normalize=True, ema_decay=0.9, restart_after=5),
}
SHAPES = [(5, 8), (2, 8, 7), (2, 8, 3, 4), (1, 8, 2, 3, 4)]


@pytest.mark.parametrize("name", QUANTIZERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"rank{len(s)}")
def test_output_contract(name, shape):
    torch.manual_seed(0)
    q = QUANTIZERS[name](shape[1]).train()
    z = torch.randn(shape, requires_grad=True)
    out = q(z)
    assert isinstance(out, QuantizerOutput)
    assert out.quantized.shape == z.shape and out.quantized.dtype == z.dtype
    assert out.indices.shape == (shape[0], *shape[2:]) and out.indices.dtype == torch.int64
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < q.codebook_size
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    for key, value in out.metrics.items():
        assert value.ndim == 0 and not value.requires_grad, key
    assert {"usage", "perplexity", "bits_per_token", "code_entropy_bits"} <= out.metrics.keys()
    (out.quantized.square().sum() + out.loss).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    q.eval()
    out = q(z)
    torch.testing.assert_close(q.indices_to_quantized(out.indices), out.quantized.detach())


@pytest.mark.parametrize("name", QUANTIZERS)
def test_bf16_autocast(name):
    torch.manual_seed(1)
    q = QUANTIZERS[name](8).train()
    z = torch.randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
    assert out.quantized.dtype == torch.bfloat16 and torch.isfinite(out.quantized.float()).all()
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


@pytest.mark.parametrize("name", QUANTIZERS)
def test_codes_are_channel_first_and_consistent(name):
    torch.manual_seed(2)
    q = QUANTIZERS[name](8).eval()
    out = q(torch.randn(2, 8, 3, 5))
    codes = q.indices_to_codes(out.indices)
    assert codes.shape[0] == 2 and codes.shape[2:] == (3, 5)
    x, grid = flatten_channels(codes, codes.shape[1])
    torch.testing.assert_close(unflatten_channels(q.project_out(x), grid), out.quantized)


@pytest.mark.parametrize("name", QUANTIZERS)
def test_wrong_channels_raise_with_expected_and_actual(name):
    q = QUANTIZERS[name](8)
    with pytest.raises(ValueError, match=r"\(B, 8, \.\.\.\).*\(2, 9, 4\)"):
        q(torch.randn(2, 9, 4))


def test_state_dict_round_trip():
    for name, make in QUANTIZERS.items():
        a, b = make(8).train(), make(8)
        a(torch.randn(2, 8, 5))
        b.load_state_dict(a.state_dict())
        z = torch.randn(2, 8, 5)
        assert torch.equal(a.eval()(z).indices, b.eval()(z).indices), name


# ----------------------------------------------------------------------------------------------- usage tracker


def test_usage_tracker_window():
    tracker = UsageTracker(codebook_size=8, window=2)
    tracker.update(torch.tensor([0, 1, 1, 2]))
    assert tracker.metrics()["usage"].item() == pytest.approx(3 / 8)
    tracker.update(torch.tensor([[2, 3]]))
    tracker.update(torch.tensor([5, 5, 5, 5]))  # evicts the first batch
    metrics = tracker.metrics()
    assert tracker.values.tolist() == [2, 3, 5] and tracker.counts.tolist() == [1, 1, 4]
    p = torch.tensor([1 / 6, 1 / 6, 4 / 6], dtype=torch.float64)
    entropy = -(p * p.log()).sum().item()
    assert metrics["usage"].item() == pytest.approx(3 / 8)
    assert metrics["perplexity"].item() == pytest.approx(math.exp(entropy), rel=1e-6)
    assert metrics["code_entropy_bits"].item() == pytest.approx(entropy / math.log(2), rel=1e-6)
    assert metrics["bits_per_token"].item() == pytest.approx(3.0)
    tracker.update(torch.tensor([7]))
    tracker.update(torch.tensor([7]))
    assert tracker.values.tolist() == [7] and tracker.metrics()["perplexity"].item() == pytest.approx(1.0)


def test_usage_tracker_huge_codebook_is_sparse():
    tracker = UsageTracker(codebook_size=2**26, window=3)
    for seed in range(5):
        tracker.update(torch.randint(0, 2**26, (1000,), generator=torch.Generator().manual_seed(seed)))
    assert tracker.values.numel() <= 3000 and len(tracker.slots) == 3
    assert tracker.metrics()["usage"].item() == pytest.approx(tracker.values.numel() / 2**26)


# ----------------------------------------------------------------------------------------------- DDP


def test_ddp_two_processes_match_one_process_on_the_concatenated_batch(tmp_path):
    helper = Path(__file__).with_name("ddp_helper.py")
    result = subprocess.run(
        [sys.executable, str(helper), str(tmp_path)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = torch.load(tmp_path / "single.pt")
    for rank, got in enumerate(ranks):
        torch.testing.assert_close(got["codebook_entropy"], single["codebook_entropy"], rtol=1e-6, atol=1e-6)
        # each rank's gradient is world_size × the global-batch gradient of its own inputs (DDP averages them)
        expected = 2 * single["grad"].chunk(2)[rank]
        torch.testing.assert_close(got["grad"], expected, rtol=1e-5, atol=1e-7)
        for key in ("usage", "perplexity"):
            torch.testing.assert_close(got[key], single[key], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got["ema_codebook"], single["ema_codebook"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ranks[0]["restart_codebook"], ranks[1]["restart_codebook"], rtol=0, atol=0)
    assert ranks[0]["restarted"] > 0


@pytest.mark.parametrize("kind", ["lfq", "fsq", "vq"])
def test_indices_to_quantized_in_a_bf16_model(kind):
    from vistok.quantizers import FSQ, LFQ, VQ

    q = {"lfq": lambda: LFQ(6, dim=16), "fsq": lambda: FSQ([4, 4, 4], dim=16), "vq": lambda: VQ(32, dim=16, code_dim=4)}
    model = q[kind]().eval()
    ids = model(torch.randn(2, 16, 3, 3)).indices
    want = model.indices_to_quantized(ids)
    got = model.to(torch.bfloat16).indices_to_quantized(ids)
    assert got.dtype == torch.bfloat16 and torch.allclose(got.float(), want, atol=0.05, rtol=0.02)
