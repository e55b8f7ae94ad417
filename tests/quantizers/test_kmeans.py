"""vistok.quantizers.kmeans: planted clusters, streaming = in-memory, empty clusters, references (sklearn, faiss)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from vistok._optional import MissingDependencyError
from vistok.quantizers.base import QuantizerOutput
from vistok.quantizers.kmeans import KMEANS_PRESETS, KMeans, KMeansConfig, _chunk_rows, _kmeans_plus_plus, _Reservoir


def _blobs(k: int = 8, d: int = 16, n_per: int = 250, spread: float = 8.0, seed: int = 0):
    """Well separated Gaussian blobs: features (N, D), true labels (N,), true means (k, D)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g) * spread
    labels = torch.arange(k).repeat_interleave(n_per)
    x = means[labels] + torch.randn(k * n_per, d, generator=g)
    perm = torch.randperm(len(x), generator=g)
    return x[perm], labels[perm], means


def _uniform(n: int = 3000, d: int = 8, seed: int = 1) -> torch.Tensor:
    """Unstructured data: Lloyd has real work to do and the init matters."""
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed))


def _match(pred: torch.Tensor, truth: torch.Tensor, k: int) -> tuple[dict[int, int], float]:
    """Majority mapping true label → predicted cluster, and an accuracy that is 1 only for a perfect bijection.

    The accuracy is the smaller of the majority-mapping accuracy (penalises split clusters) and the purity of the
    predicted clusters (penalises merged ones).
    """
    mapping = {t: int(pred[truth == t].mode().values) for t in range(k)}
    acc = float((pred == torch.tensor([mapping[int(t)] for t in truth])).float().mean())
    purity = sum(int(torch.bincount(truth[pred == p]).max()) for p in pred.unique()) / len(truth)
    return mapping, min(acc, purity)


def _batches(x: torch.Tensor, size: int = 700):
    """A callable giving a fresh generator of uneven minibatches each time (the streamed form of ``x``)."""
    return lambda: (x[i : i + size] for i in range(0, len(x), size))


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Explicit float64 squared distances (N, K)."""
    return ((x.double()[:, None, :] - c.double()[None, :, :]) ** 2).sum(-1)


# ---------------------------------------------------------------------------------------------------------------------
# Planted clusters
# ---------------------------------------------------------------------------------------------------------------------


def test_recovers_planted_clusters_l2():
    x, labels, means = _blobs()
    km = KMeans(8, 16).fit(x)
    mapping, acc = _match(km.assign(x), labels, 8)
    assert acc == 1.0 and sorted(mapping.values()) == list(range(8))
    for t, k in mapping.items():
        empirical = x[labels == t].mean(0)
        torch.testing.assert_close(km.centroids[k], empirical, atol=1e-4, rtol=0)  # exact Lloyd fixed point
        assert float((km.centroids[k] - means[t]).norm()) < 0.4  # true mean, up to sampling noise (~0.25)
        assert int(km.counts[k]) == 250
    expected_inertia = sum(float(((x[labels == t] - x[labels == t].mean(0)) ** 2).sum()) for t in range(8))
    assert km.inertia_ == pytest.approx(expected_inertia, rel=1e-5)
    assert km.history[-1] == km.inertia_ and km.n_empty_ == 0 and km.n_samples_ == len(x)
    assert all(a >= b - 1e-6 * a for a, b in zip(km.history, km.history[1:]))  # Lloyd never raises the inertia


def test_recovers_planted_clusters_cosine():
    g = torch.Generator().manual_seed(3)
    dirs = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
    labels = torch.arange(8).repeat_interleave(200)
    scale = torch.rand(len(labels), 1, generator=g) * 5 + 0.5  # norms vary: only the direction matters
    x = (dirs[labels] + 0.08 * torch.randn(len(labels), 16, generator=g)) * scale
    km = KMeans(8, 16, metric="cosine").fit(x)
    mapping, acc = _match(km.assign(x), labels, 8)
    assert acc == 1.0 and sorted(mapping.values()) == list(range(8))
    torch.testing.assert_close(km.centroids.norm(dim=1), torch.ones(8), atol=1e-5, rtol=0)
    xn = torch.nn.functional.normalize(x, dim=1)
    for t, k in mapping.items():
        spherical_mean = torch.nn.functional.normalize(xn[labels == t].mean(0), dim=0)
        torch.testing.assert_close(km.centroids[k], spherical_mean, atol=1e-5, rtol=0)
        assert float(km.centroids[k] @ dirs[t]) > 0.99
    cos = (xn * km.centroids[km.assign(x)]).sum(1)
    assert km.inertia_ == pytest.approx(float((2 - 2 * cos).sum()), rel=1e-4)


def test_kmeans_plus_plus_seeds_one_centre_per_blob():
    x, labels, _ = _blobs(seed=5)
    centres = _kmeans_plus_plus(x, 8, torch.Generator().manual_seed(0))
    owner = _sq_dists(centres, torch.stack([x[labels == t].mean(0) for t in range(8)])).argmin(1)
    assert sorted(owner.tolist()) == list(range(8))
    assert bool((_sq_dists(centres, x).min(1).values < 1e-6).all())  # centres are data rows


# ---------------------------------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------------------------------


def test_streaming_lloyd_equals_in_memory_given_the_same_init():
    x = _uniform()
    init = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(2))[:24]]
    mem = KMeans(24, 8).fit(x, init=init, n_iter=8, tol=0)
    for data in (_batches(x), [b.numpy() for b in x.split(512)]):
        streamed = KMeans(24, 8).fit(data, init=init, n_iter=8, tol=0)
        torch.testing.assert_close(streamed.centroids, mem.centroids, atol=1e-5, rtol=0)
        assert streamed.history == pytest.approx(mem.history, rel=1e-6)
        assert streamed.inertia_ == pytest.approx(mem.inertia_, rel=1e-6)
        assert torch.equal(streamed.counts, mem.counts) and streamed.n_samples_ == len(x)
    assert mem.history[-1] < 0.8 * mem.history[0]  # the iterations did real work


def test_streaming_fit_with_its_own_init_matches_in_memory_quality():
    x, labels, _ = _blobs(k=8, d=16, n_per=400, seed=7)
    mem = KMeans(8, 16).fit(x)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=300)
    streamed = KMeans(8, 16).fit(loader)  # (features, labels) batches, re-iterated per pass
    assert streamed.inertia_ == pytest.approx(mem.inertia_, rel=1e-2)
    assert _match(streamed.assign(x), labels, 8)[1] == 1.0


def test_one_shot_generator_is_refused_with_advice():
    x = _uniform(200)
    with pytest.raises(TypeError, match="callable"):
        KMeans(4, 8).fit(b for b in x.split(50))


def test_reservoir_is_a_uniform_sample_without_replacement():
    hits = torch.zeros(1000)
    for seed in range(200):
        res = _Reservoir(100, torch.Generator().manual_seed(seed))
        for chunk in torch.arange(1000.0)[:, None].split(64):
            res.add(chunk)
        ids = res.sample()[:, 0].long()
        assert len(ids) == 100 and len(ids.unique()) == 100 and res.seen == 1000
        hits[ids] += 1
    rate = hits / 200  # each row is kept with probability 100 / 1000
    assert float(rate.mean()) == pytest.approx(0.1)
    for part in rate.split(250):  # early and late rows alike: 5000 draws per quarter, sd ≈ 0.004
        assert float(part.mean()) == pytest.approx(0.1, abs=0.015)


def test_weighted_reservoir_samples_proportionally_to_weight():
    x = torch.arange(4.0)[:, None]
    weights = torch.tensor([0.0, 1.0, 2.0, 5.0])
    hits = torch.zeros(4)
    for seed in range(2000):
        res = _Reservoir(1, torch.Generator().manual_seed(seed))
        res.add(x[:2], weights[:2])
        res.add(x[2:], weights[2:])
        hits[int(res.sample()[0, 0])] += 1
    freq = hits / 2000  # expected (0, 1/8, 2/8, 5/8), sd ≤ 0.011
    assert freq[0] == 0
    torch.testing.assert_close(freq[1:], torch.tensor([1 / 8, 2 / 8, 5 / 8]), atol=0.035, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Mini-batch (Sculley 2010)
# ---------------------------------------------------------------------------------------------------------------------


def test_minibatch_update_is_a_running_mean_with_rate_one_over_count():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, 2.0], [11.0, 1.0], [9.0, 0.0]])
    init = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    km = KMeans(2, 2, method="minibatch").fit([x[:3], x[3:]], init=init, n_iter=1)
    # batch 1: {0, 1} → c0 = mean = (0.5, 0); {2} → c1 = (10, 0); v = (2, 1)
    # batch 2: {3} → c0 += ((0, 2) - c0) / 3; {4, 5} → c1 += (sum - 2 c1) / 3
    c0 = torch.tensor([0.5, 0.0]) + (torch.tensor([0.0, 2.0]) - torch.tensor([0.5, 0.0])) / 3
    c1 = torch.tensor([10.0, 0.0]) + (torch.tensor([20.0, 1.0]) - 2 * torch.tensor([10.0, 0.0])) / 3
    torch.testing.assert_close(km.centroids, torch.stack([c0, c1]))
    assert km.counts.tolist() == [3, 3]


def test_minibatch_matches_lloyd_quality_on_blobs():
    x, labels, _ = _blobs(seed=11)
    lloyd = KMeans(8, 16).fit(x)
    mb = KMeans(8, 16, method="minibatch").fit(x, batch_size=256, n_iter=5)
    assert mb.inertia_ == pytest.approx(lloyd.inertia_, rel=1e-2)
    assert _match(mb.assign(x), labels, 8)[1] == 1.0


# ---------------------------------------------------------------------------------------------------------------------
# Empty clusters
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lloyd", "minibatch"])
def test_more_clusters_than_distinct_points_gives_no_nan(method):
    points = torch.randn(5, 4, generator=torch.Generator().manual_seed(0)) * 3
    x = points.repeat(40, 1)  # 200 rows, 5 distinct
    km = KMeans(8, 4, method=method).fit(x, n_iter=4, batch_size=64)
    assert bool(torch.isfinite(km.centroids).all())
    assert km.inertia_ == pytest.approx(0.0, abs=1e-6)
    assert km.n_empty_ == 3 and km.n_reseeded_ >= 3
    assert sorted(km.counts.tolist()) == [0, 0, 0, 40, 40, 40, 40, 40]
    torch.testing.assert_close(km.indices_to_codes(km.assign(x)), x)


@pytest.mark.parametrize("seed", [13, 14, 15])
def test_bad_init_empty_clusters_are_reseeded_and_recover_the_blobs(seed):
    x, labels, _ = _blobs(seed=seed)
    init = torch.cat([x[:1], torch.full((7, 16), 1e3)])  # seven centroids far from everything: empty on pass 1
    km = KMeans(8, 16).fit(x, init=init, n_iter=30)
    assert km.n_reseeded_ == 7 and km.n_empty_ == 0
    assert bool(torch.isfinite(km.centroids).all())
    assert _match(km.assign(x), labels, 8)[1] == 1.0  # D²-sampled, farthest-first re-seeds cover every blob
    mb = KMeans(8, 16, method="minibatch").fit(x, init=init, n_iter=10, batch_size=256)
    assert mb.n_empty_ == 0 and bool(torch.isfinite(mb.centroids).all())


# ---------------------------------------------------------------------------------------------------------------------
# Determinism, assignment, forward
# ---------------------------------------------------------------------------------------------------------------------


def test_same_seed_same_result_other_seed_differs():
    x = _uniform()
    a, b = KMeans(16, 8, seed=4).fit(x, n_iter=5), KMeans(16, 8, seed=4).fit(x, n_iter=5)
    assert torch.equal(a.centroids, b.centroids) and a.history == b.history
    c = KMeans(16, 8).fit(x, n_iter=5, seed=5)
    assert not torch.allclose(a.centroids, c.centroids)
    assert c.config.seed == 5 and c.config.n_iter == 5  # fit overrides are recorded in the config


def test_default_chunks_stay_small_and_the_chunking_does_not_change_the_fit():
    # scores (K per row) and feature rows (D per row) both bounded: small K no longer means 65k-row chunks
    assert [_chunk_rows(k, d) for k, d in ((64, 256), (1024, 256), (4096, 256), (16, 8192))] == [4096, 4096, 1024, 256]
    x = _uniform()
    init = x[:16].clone()
    a = KMeans(16, 8).fit(x, init=init, n_iter=6, tol=0)
    b = KMeans(16, 8).fit(x, init=init, n_iter=6, tol=0, chunk_size=37)
    torch.testing.assert_close(a.centroids, b.centroids, rtol=1e-6, atol=1e-6)
    assert torch.equal(a.counts, b.counts) and a.inertia_ == pytest.approx(b.inertia_, rel=1e-9)


def test_assign_matches_brute_force_argmin():
    x = torch.randn(600, 12, generator=torch.Generator().manual_seed(0))
    km = KMeans(37, 12).fit(x, n_iter=3)
    idx = km.assign(x, chunk_size=7)
    assert idx.dtype == torch.int64 and idx.shape == (600,)
    d = _sq_dists(x, km.centroids)
    best = d.min(1).values
    chosen = d.gather(1, idx[:, None])[:, 0]
    assert bool((chosen - best <= 1e-4 * (1 + best)).all())  # always a nearest centroid, up to float32 rounding
    second = d.topk(2, largest=False).values[:, 1]
    clear = second - best > 1e-3
    assert bool((idx[clear] == d.argmin(1)[clear]).all()) and float(clear.float().mean()) > 0.99
    assert torch.equal(km.assign(x.numpy()), km.assign(x))


def test_channel_first_shapes_and_forward():
    x = torch.randn(2, 12, 5, 3, generator=torch.Generator().manual_seed(1))
    rows = x.movedim(1, -1).reshape(-1, 12)
    km = KMeans(10, 12).fit(rows)
    idx = km.assign(x)
    assert idx.shape == (2, 5, 3) and torch.equal(idx.reshape(-1), km.assign(rows))
    assert km.assign(x.flatten(2)).shape == (2, 15)  # (B, D, N) → (B, N)
    out = km(x)
    assert isinstance(out, QuantizerOutput)
    assert torch.equal(out.indices, idx) and float(out.loss) == 0.0
    torch.testing.assert_close(out.quantized, km.centroids[idx].movedim(-1, 1))
    torch.testing.assert_close(km.indices_to_codes(idx), out.quantized)
    sq = ((rows.double() - km.centroids[idx.reshape(-1)].double()) ** 2).sum(1)
    assert float(out.metrics["inertia"]) == pytest.approx(float(sq.sum()), rel=1e-5)
    assert float(out.metrics["mean_distance"]) == pytest.approx(float(sq.sqrt().mean()), rel=1e-4)
    p = torch.bincount(idx.reshape(-1), minlength=10).double() / idx.numel()
    nz = p[p > 0]
    assert float(out.metrics["perplexity"]) == pytest.approx(math.exp(float(-(nz * nz.log()).sum())), rel=1e-5)
    assert float(out.metrics["usage"]) == pytest.approx(float((p > 0).double().mean()))
    assert km.inertia(x) == pytest.approx(float(sq.sum()), rel=1e-5) and km.codebook_size == 10


def test_no_gradient_reaches_centroids_and_input_grad_is_not_required():
    km = KMeans(4, 3).fit(torch.randn(50, 3, generator=torch.Generator().manual_seed(0)))
    z = torch.randn(6, 3, requires_grad=True)
    out = km(z)
    assert not out.quantized.requires_grad and not km.centroids.requires_grad


def test_bad_inputs_raise_clear_errors():
    km = KMeans(4, 8)
    with pytest.raises(RuntimeError, match="fit"):
        km.assign(torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"\(N, 8\).*got \(10, 7\)"):
        km.fit(torch.randn(10, 7))
    with pytest.raises(ValueError, match="at least num_clusters=4"):
        km.fit(torch.randn(3, 8))
    bad = torch.randn(20, 8)
    bad[5, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        km.fit(bad)
    big = torch.randn(20000, 8)
    big[12345, 0] = float("inf")
    for data in (big, _batches(big, 3000)):  # not in the init sample: found by the first pass
        with pytest.raises(ValueError, match="NaN or Inf"):
            KMeans(4, 8).fit(data, sample_size=100)
    with pytest.raises(ValueError, match=r"shape \(4, 8\)"):
        km.fit(torch.randn(20, 8), init=torch.randn(3, 8))
    with pytest.raises(ValueError, match="metric"):
        KMeans(4, 8, metric="manhattan")


# ---------------------------------------------------------------------------------------------------------------------
# References: scikit-learn (Lloyd update), faiss (backend)
# ---------------------------------------------------------------------------------------------------------------------


def test_lloyd_matches_sklearn_from_the_same_init():
    sk = pytest.importorskip("sklearn.cluster")
    x = _uniform(4000, 8, seed=21)
    init = _kmeans_plus_plus(x, 32, torch.Generator().manual_seed(0))
    ours = KMeans(32, 8).fit(x, init=init, n_iter=15, tol=0)
    ref = sk.KMeans(32, init=init.double().numpy(), n_init=1, max_iter=15, tol=0, algorithm="lloyd")
    ref.fit(x.double().numpy())
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-4)
    np.testing.assert_allclose(ours.centroids.numpy(), ref.cluster_centers_, atol=1e-4)
    assert float((ours.assign(x).numpy() == ref.labels_).mean()) > 0.999


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_faiss_backend_same_contract_comparable_inertia(metric):
    pytest.importorskip("faiss")
    x, labels, _ = _blobs(seed=17)
    ours = KMeans(8, 16, metric=metric).fit(x)
    fa = KMeans(8, 16, metric=metric, backend="faiss").fit(x)
    assert fa.inertia_ == pytest.approx(ours.inertia_, rel=2e-2)
    assert fa.inertia_ == pytest.approx(fa.inertia(x), rel=1e-6) and fa.history[-1] == fa.inertia_
    assert fa.centroids.shape == (8, 16) and fa.n_empty_ == 0 and int(fa.counts.sum()) == len(x)
    assert fa.n_iter_ >= 1 and fa.n_reseeded_ is not None and fa.n_samples_ == len(x)
    assert _match(fa.assign(x), labels, 8)[1] == 1.0
    streamed = KMeans(8, 16, metric=metric, backend="faiss").fit(_batches(x))
    assert streamed.inertia_ == pytest.approx(ours.inertia_, rel=2e-2)


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss → ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'vistok\[faiss\]'"):
        KMeans(4, 8, backend="faiss").fit(torch.randn(50, 8))


# ---------------------------------------------------------------------------------------------------------------------
# Saving, presets
# ---------------------------------------------------------------------------------------------------------------------


def test_round_trip_safetensors_and_config_json(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    x, _, _ = _blobs(seed=19)
    km = KMeans(8, 16, metric="cosine").fit(x, n_iter=7)
    safetensors_torch.save_model(km, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(km.config.to_json())
    config = KMeansConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert config == km.config and config.n_iter == 7 and config.metric == "cosine"
    loaded = KMeans(config)
    with pytest.raises(RuntimeError):
        loaded.assign(x)
    safetensors_torch.load_model(loaded, str(tmp_path / "model.safetensors"))
    assert torch.equal(loaded.centroids, km.centroids) and torch.equal(loaded.counts, km.counts)
    assert torch.equal(loaded.assign(x), km.assign(x))


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown"):
        KMeansConfig.from_dict({"num_clusters": 4, "dim": 2, "n_clusters": 4})
    with pytest.raises(ValueError, match="num_clusters"):
        KMeansConfig(num_clusters=0, dim=2)


@pytest.mark.parametrize("name", sorted(KMEANS_PRESETS))
def test_presets_build(name):
    config = KMeansConfig.from_name(name)
    km = KMeans(config)
    assert km.centroids.shape == (config.num_clusters, config.dim) and km.codebook_size == config.num_clusters
    assert KMeansConfig.from_name(name, seed=3).seed == 3
    if name == "kmeans-tiny":
        km.fit(torch.randn(200, config.dim, generator=torch.Generator().manual_seed(0)))
        assert bool(torch.isfinite(km.centroids).all()) and km.n_iter_ <= config.n_iter


def test_kmeans_save_pretrained_round_trip(tmp_path):
    import vistok

    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    km = vistok.create_model("kmeans-tiny").fit(x)
    km.save_pretrained(tmp_path / "km")
    back = vistok.from_pretrained(tmp_path / "km")
    assert isinstance(back, KMeans) and back.config == km.config
    assert torch.equal(back.centroids, km.centroids) and torch.equal(back.assign(x), km.assign(x))
