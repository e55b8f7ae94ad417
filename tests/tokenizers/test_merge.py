"""Chat-UniVi dynamic visual tokens (vistok.tokenizers.merge): DPC-KNN against a per-sample float64 loop reference,
clustering invariants, padding / memory-mode invariance, multi-scale composition, contiguous video events (against
brute force), ToMe against a loop reference, pooling, patch features (MAGVIT latents, a tiny random DINOv2), the
``merge show`` command and clear errors."""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np
import pytest
import torch

from vistok.tokenizers import merge
from vistok.tokenizers.merge import (
    TILE,
    dpc_knn,
    multiscale_merge,
    pool_merge,
    reduce,
    segment_events,
    spatial_order,
    tome_merge,
    tome_reduce,
    video_events,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clustered(b: int, n: int, c: int, groups: int = 6, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Tokens around ``groups`` random centres (the shape of real patch features, no exact ties)."""
    g = gen(seed)
    centres = torch.randn(b, groups, c, generator=g, dtype=dtype) * 2
    label = torch.randint(0, groups, (b, n), generator=g)
    return centres.gather(1, label[..., None].expand(b, n, c)) + torch.randn(b, n, c, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------------------------- references


def naive_dpc(x: np.ndarray, m: int, k: int) -> dict:
    """The paper's DPC-KNN for one sample with plain loops in float64 (ties by index, as documented)."""
    n, c = x.shape
    d = [
        [math.sqrt(sum((x[i, t] - x[j, t]) ** 2 for t in range(c))) / math.sqrt(c) for j in range(n)] for i in range(n)
    ]
    rho = []
    for i in range(n):
        near = sorted(d[i][j] for j in range(n) if j != i)[: min(k, n - 1)]
        rho.append(math.exp(-sum(v * v for v in near) / len(near)) if near else 1.0)
    delta = []
    for i in range(n):
        denser = [d[i][j] for j in range(n) if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
        others = [d[i][j] for j in range(n) if j != i]
        delta.append(min(denser) if denser else (max(others) if others else 0.0))
    score = [rho[i] * delta[i] for i in range(n)]
    centres = sorted(range(n), key=lambda i: (-score[i], i))[: min(m, n)]
    assign = []
    for i in range(n):
        if i in centres:
            assign.append(centres.index(i))
        else:
            dist = [d[i][cen] for cen in centres]
            assign.append(dist.index(min(dist)))
    tokens = np.stack([x[[i for i in range(n) if assign[i] == s]].mean(0) for s in range(len(centres))])
    return {"centres": centres, "assign": assign, "tokens": tokens}


def naive_tome_step(x: np.ndarray, size: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """ToMe bipartite soft matching on one sample with loops: (tokens, sizes, output slot of every input token)."""
    n = len(x)
    a, b = list(range(0, n, 2)), list(range(1, n, 2))
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    best, match = [], []
    for i in a:
        sims = [float(unit[i] @ unit[j]) for j in b]
        j = max(range(len(b)), key=lambda t: (sims[t], -t))  # first maximum
        best.append(sims[j])
        match.append(j)
    edges = sorted(range(len(a)), key=lambda t: (-best[t], t))
    src, unm = edges[:r], edges[r:]
    sums = {j: x[b[j]] * size[b[j]] for j in range(len(b))}
    sizes = {j: float(size[b[j]]) for j in range(len(b))}
    for t in src:
        sums[match[t]] = sums[match[t]] + x[a[t]] * size[a[t]]
        sizes[match[t]] += float(size[a[t]])
    out = [x[a[t]] for t in unm] + [sums[j] / sizes[j] for j in range(len(b))]
    out_sizes = [float(size[a[t]]) for t in unm] + [sizes[j] for j in range(len(b))]
    slot = [0] * n
    for pos, t in enumerate(unm):
        slot[a[t]] = pos
    for t in src:
        slot[a[t]] = len(unm) + match[t]
    for j in range(len(b)):
        slot[b[j]] = len(unm) + j
    return np.stack(out), np.array(out_sizes), slot


def brute_force_events(f: np.ndarray, k: int) -> float:
    """Smallest within-event squared deviation (/C) over all contiguous splits of T frames into k events."""
    t, c = f.shape
    best = math.inf
    for cuts in itertools.combinations(range(1, t), k - 1):
        bounds = [0, *cuts, t]
        cost = sum(((f[s:e] - f[s:e].mean(0)) ** 2).sum() for s, e in itertools.pairwise(bounds))
        best = min(best, cost / c)
    return best


# ----------------------------------------------------------------------------------------------- DPC-KNN


@pytest.mark.parametrize(("n", "m", "k"), [(37, 8, 5), (70, 16, 3), (9, 12, 5), (2, 3, 5)])
def test_dpc_knn_matches_naive_float64_reference(n, m, k):
    x = clustered(3, n, 6, seed=n)
    out = dpc_knn(x, m, k)
    for b in range(3):
        ref = naive_dpc(x[b].numpy(), m, k)
        count = len(ref["centres"])
        assert out.centers[b, :count].tolist() == ref["centres"]
        assert out.assignment[b].tolist() == ref["assign"]
        np.testing.assert_allclose(out.tokens[b, :count].numpy(), ref["tokens"], rtol=1e-12, atol=1e-12)
        assert out.valid[b].tolist() == [True] * count + [False] * (m - count)


def test_clustering_invariants_with_padding():
    x = clustered(4, 150, 8, seed=1, dtype=torch.float32)
    valid = torch.ones(4, 150, dtype=torch.bool)
    valid[1, 90:], valid[2, 7:], valid[3, :] = False, False, False
    valid[3, [3, 50, 149]] = True  # holes in the middle, not only a tail
    out = dpc_knn(x, 16, 5, valid)
    n_valid = valid.sum(1)
    assert out.num_clusters.tolist() == torch.minimum(n_valid, torch.tensor(16)).tolist()
    for b in range(4):
        cen = out.centers[b][out.valid[b]]
        assert torch.equal(out.assignment[b, cen], torch.arange(len(cen)))  # every centre maps to itself
        assert bool(valid[b, cen].all())
        a = out.assignment[b]
        assert bool((a[~valid[b]] == -1).all()) and bool((a[valid[b]] >= 0).all())
        assert bool((a[valid[b]] < out.num_clusters[b]).all())
        assert set(a[valid[b]].tolist()) == set(range(int(out.num_clusters[b])))  # no empty cluster
    torch.testing.assert_close(out.sizes.sum(1), n_valid.float())
    w = out.weights()
    torch.testing.assert_close(w.sum(-1)[out.valid], torch.ones(int(out.valid.sum())))
    assert float(w.sum(-1)[~out.valid].abs().max()) == 0
    torch.testing.assert_close(w @ x.masked_fill(~valid[..., None], 0), out.tokens, rtol=1e-5, atol=1e-5)
    assert float(out.tokens[~out.valid].abs().max()) == 0
    assert bool((out.centers[~out.valid] == -1).all())
    un = out.unmerge()
    assert torch.equal(un[valid], out.tokens.gather(1, out.assignment.clamp_min(0)[..., None].expand(-1, -1, 8))[valid])


def test_padded_batch_equals_each_sample_alone_even_with_nan_padding():
    x = clustered(3, 200, 16, seed=2, dtype=torch.float32)
    lengths = [200, 131, 40]  # crosses tile boundaries: panels of different widths
    valid = torch.arange(200)[None] < torch.tensor(lengths)[:, None]
    x_bad = x.masked_fill(~valid[..., None], float("nan"))  # padding is never read
    batch = dpc_knn(x_bad, 24, 5, valid)
    assert not any(bool(t.isnan().any()) for t in batch if t.is_floating_point())
    for b, n in enumerate(lengths):
        alone = dpc_knn(x[b : b + 1, :n], 24, 5)
        assert torch.equal(alone.centers, batch.centers[b : b + 1])
        assert torch.equal(alone.assignment[0], batch.assignment[b, :n])
        assert torch.equal(alone.tokens, batch.tokens[b : b + 1])
        assert torch.equal(alone.sizes, batch.sizes[b : b + 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streamed_low_memory_mode_equals_held_matrix(dtype):
    x = clustered(3, 3 * TILE + 17, 12, seed=3, dtype=dtype)
    valid = torch.ones(3, x.shape[1], dtype=torch.bool)
    valid[2, 100:] = False
    held = dpc_knn(x, 20, 5, valid)
    streamed = dpc_knn(x, 20, 5, valid, low_memory=True)
    tiny_budget = dpc_knn(x, 20, 5, valid, max_bytes=1)  # too small to hold: streams too
    for a, b, c in zip(held, streamed, tiny_budget):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("tile", [TILE, 100, 1024])  # 100: a ragged last panel; 1024: one panel (the GPU size)
def test_panel_distances_equal_the_direct_matrix(tile):
    x = clustered(2, 3 * TILE + 5, 7, seed=4)
    n = -(-x.shape[1] // TILE) * TILE
    xp = torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[1]))
    valid = torch.arange(n)[None].expand(2, n) < x.shape[1]
    d = merge._Panels(xp, valid, tile).matrix()
    direct = torch.cdist(xp, xp).square()
    mask = valid[:, :, None] & valid[:, None, :] & ~torch.eye(n, dtype=torch.bool)
    torch.testing.assert_close(d[mask], direct[mask], rtol=1e-9, atol=1e-9)
    assert bool(torch.isinf(d[~mask]).all())
    assert torch.equal(d, d.mT)  # exactly symmetric


@pytest.mark.parametrize("tile", [TILE, 100, 1024])
def test_other_panel_sizes_give_the_same_clusters(monkeypatch, tile):
    """GPUs use larger panels (``GPU_TILE``); held and streamed passes over any panel size give the clusters of the
    CPU's panels (``CPU_TILE`` rows; float64, so GEMM shapes cannot flip a near-tie)."""
    x = clustered(3, 3 * TILE + 17, 12, seed=3, dtype=torch.float64)
    valid = torch.ones(3, x.shape[1], dtype=torch.bool)
    valid[2, 100:] = False
    ref = dpc_knn(x, 20, 5, valid)
    monkeypatch.setattr(merge, "_plan_for", lambda device: merge.CPU_PLAN._replace(tile=tile))
    for out in (dpc_knn(x, 20, 5, valid), dpc_knn(x, 20, 5, valid, low_memory=True)):
        assert torch.equal(out.centers, ref.centers) and torch.equal(out.assignment, ref.assignment)
        torch.testing.assert_close(out.tokens, ref.tokens, rtol=1e-12, atol=1e-12)


def test_ties_all_duplicates_and_heavy_padding_give_no_nan():
    x = torch.randn(1, 1, 5).expand(2, 90, 5).clone()
    out = dpc_knn(x, 8, 5)
    assert torch.equal(out.centers, torch.arange(8).expand(2, 8))  # score ties → lowest index first
    assert bool((out.assignment[:, 8:] == 0).all())  # distance ties → the first cluster
    torch.testing.assert_close(out.tokens, x[:, :8])
    valid = torch.zeros(3, 40, dtype=torch.bool)
    valid[1, 5], valid[2, :3] = True, True
    sparse = dpc_knn(torch.randn(3, 40, 4), 6, 5, valid)
    assert sparse.num_clusters.tolist() == [0, 1, 3]
    assert all(bool(torch.isfinite(t).all()) for t in sparse if t.is_floating_point())
    assert sparse.centers[1, 0].item() == 5 and sparse.assignment[1, 5].item() == 0


def test_determinism_and_seeded_jitter():
    x = torch.randn(2, 100, 8, generator=gen(5))
    a, b = dpc_knn(x, 10), dpc_knn(x, 10)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    ties = torch.randint(0, 3, (2, 100, 2), generator=gen(6)).float()  # many exact ties
    j1, j2 = dpc_knn(ties, 10, jitter=1e-6, seed=7), dpc_knn(ties, 10, jitter=1e-6, seed=7)
    assert all(torch.equal(u, v) for u, v in zip(j1, j2))
    others = [dpc_knn(ties, 10, jitter=1e-6, seed=s).centers for s in range(8, 12)]
    assert any(not torch.equal(o, j1.centers) for o in others)  # the seed does pick among ties


def test_size_weighted_merge():
    x = torch.randn(2, 30, 4, generator=gen(8), dtype=torch.float64)
    sizes = torch.randint(1, 5, (2, 30), generator=gen(9)).double()
    out = dpc_knn(x, 5, 3, sizes=sizes)
    assert torch.equal(out.assignment, dpc_knn(x, 5, 3).assignment)  # sizes do not change the clustering
    for b in range(2):
        for s in range(5):
            members = out.assignment[b] == s
            expect = (x[b, members] * sizes[b, members, None]).sum(0) / sizes[b, members].sum()
            torch.testing.assert_close(out.tokens[b, s], expect)
            torch.testing.assert_close(out.sizes[b, s], sizes[b, members].sum())


def test_half_precision_tokens_are_upcast():
    x = clustered(1, 50, 8, seed=10, dtype=torch.float32)
    half = dpc_knn(x.bfloat16(), 6)
    assert half.tokens.dtype == torch.bfloat16
    assert torch.equal(half.assignment, dpc_knn(x.bfloat16().float(), 6).assignment)


# ----------------------------------------------------------------------------------------------- multi-scale


def test_multiscale_composes_members_positions_and_sizes():
    x = clustered(2, 100, 6, seed=11)
    valid = torch.ones(2, 100, dtype=torch.bool)
    valid[1, 60:] = False
    res = multiscale_merge(x, (10, 10), stages=(12, 6, 3), ks=(5, 3, 3), valid=valid, size_weighted=True)
    assert res.tokens.shape == (2, 21, 6) and res.stage.tolist() == [0] * 12 + [1] * 6 + [2] * 3
    grid = torch.stack(torch.meshgrid(torch.arange(10.0), torch.arange(10.0), indexing="ij"), -1).reshape(100, 2)
    for b in range(2):
        for s, (lo, hi) in enumerate([(0, 12), (12, 18), (18, 21)]):
            a = res.assignments[b, s]
            assert bool((a[~valid[b]] == -1).all()) and bool(((a[valid[b]] >= lo) & (a[valid[b]] < hi)).all())
            assert float(res.sizes[b, lo:hi].sum()) == float(valid[b].sum())
        for slot in range(21):
            members = res.members(b, slot)
            assert len(members) == int(res.sizes[b, slot])
            torch.testing.assert_close(res.tokens[b, slot], x[b, members].mean(0))  # size-weighted: original mean
            torch.testing.assert_close(res.positions[b, slot, 1:], grid[members].mean(0).double().float())
    # stage s clusters stage s − 1's tokens: stage-2 members are unions of stage-1 clusters
    for b in range(2):
        for slot in range(12, 18):
            inner = set(res.assignments[b, 0, res.members(b, slot)].tolist())
            union = {int(i) for j in inner for i in res.members(b, j)}
            assert union == set(res.members(b, slot).tolist())


def test_multiscale_plain_means_follow_the_paper():
    x = clustered(1, 80, 5, seed=12)
    res = multiscale_merge(x, stages=(10, 4), ks=(5, 3))
    first = dpc_knn(x, 10, 5)
    second = dpc_knn(first.tokens, 4, 3)
    torch.testing.assert_close(res.tokens, torch.cat([first.tokens, second.tokens], 1))


def test_sort_by_position_and_spatial_order():
    x = clustered(2, 64, 4, seed=13)
    res = multiscale_merge(x, (8, 8), stages=(10, 5), ks=(3, 3))
    srt = res.sort_by_position()
    for b in range(2):
        for lo, hi in [(0, 10), (10, 15)]:
            keys = [tuple(p) for p in srt.positions[b, lo:hi].tolist()]
            assert keys == sorted(keys)
        for slot in range(15):  # members travel with their tokens
            old = int(res.assignments[b, int(res.stage[slot]), srt.members(b, slot)[0]])
            assert torch.equal(res.tokens[b, old], srt.tokens[b, slot])
    from vistok.layers.rope import rope_cos_sin

    cos, _ = rope_cos_sin(srt.positions, head_dim=12)  # centroids drive 3-axis rotary embeddings directly
    assert cos.shape == (2, 15, 12) and bool(torch.isfinite(cos).all())
    pos = torch.tensor([[[0, 1, 0], [0, 0, 5], [1, 0, 0], [0, 0, 1]]]).float()
    valid = torch.tensor([[True, True, True, False]])
    assert spatial_order(pos, valid).tolist() == [[1, 0, 2, 3]]


# ----------------------------------------------------------------------------------------------- video


@pytest.mark.parametrize(("t", "k"), [(9, 3), (7, 1), (6, 6), (10, 4)])
def test_events_are_optimal_contiguous_segments(t, k):
    f = torch.randn(t, 5, generator=gen(t + k), dtype=torch.float64)
    ev = segment_events(f, k)
    assert int(ev.num_events[0]) == k
    labels = ev.labels[0].tolist()
    assert labels == sorted(labels) and set(labels) == set(range(k))  # contiguous, in order, covering every frame
    bounds = ev.bounds[0].tolist()
    assert bounds[0][0] == 0 and bounds[-1][1] == t and all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert float(ev.cost[0]) == pytest.approx(brute_force_events(f.numpy(), k), rel=1e-9, abs=1e-12)


def test_event_count_rules_and_auto():
    f = torch.randn(2, 40, 3, generator=gen(14))
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[1, 17:] = False
    assert segment_events(f, None, valid).num_events.tolist() == [3, 2]  # ceil(T / 16)
    assert segment_events(f, 50, valid).num_events.tolist() == [40, 17]
    steps = torch.cat([torch.full((7, 4), 0.0), torch.full((12, 4), 5.0), torch.full((9, 4), -3.0)])
    noisy = steps + 0.05 * torch.randn(28, 4, generator=gen(15))
    ev = segment_events(noisy, "auto")
    assert int(ev.num_events[0]) == 3 and ev.bounds[0].tolist() == [[0, 7], [7, 19], [19, 28]]


def test_video_events_merge_within_contiguous_events():
    steps = torch.cat([torch.zeros(5, 1, 6), torch.ones(7, 1, 6) * 4])
    tokens = steps + torch.randn(12, 20, 6, generator=gen(16))
    res = video_events(tokens, 2, stages=(8, 4), ks=(3, 3), positions=(4, 5))
    assert res.events.bounds[0].tolist() == [[0, 5], [5, 12]]
    assert res.tokens.shape == (1, 24, 6) and int(res.valid.sum()) == 24
    assert res.event[0].tolist() == [0] * 12 + [1] * 12
    for s in range(2):
        a = res.assignments[0, s]  # (T, N) slot of every original token
        assert bool((a >= 0).all())
        frames_of_slot = {}
        for t in range(12):
            for slot in a[t].tolist():
                frames_of_slot.setdefault(slot, set()).add(t)
        for slot, frames in frames_of_slot.items():
            e = int(res.event[0, slot])
            lo, hi = res.events.bounds[0, e].tolist()
            assert all(lo <= t < hi for t in frames)  # a merged token stays inside its event
            assert (
                abs(float(res.positions[0, slot, 0]) - np.mean([t for t in range(12) for v in a[t] if v == slot]))
                < 1e-4
            )


def test_video_batch_with_padded_frames_and_growth_with_length():
    x = torch.randn(2, 40, 10, 4, generator=gen(17))
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[1, 20:] = False
    res = video_events(x, frame_valid=valid, stages=(6, 3), ks=(3, 3))
    assert res.events.num_events.tolist() == [3, 2]
    assert res.valid.sum(1).tolist() == [27, 18]  # more frames, more tokens
    assert bool((res.assignments[1, :, 20:] == -1).all())
    alone = video_events(x[1:, :20], stages=(6, 3), ks=(3, 3))
    torch.testing.assert_close(alone.tokens[0], res.tokens[1, :18])


def scalar_reads(fn) -> int:
    """How many times ``fn`` reads a tensor's value into Python (``int(t)``, ``bool(t)``, ``.item()``, ``torch.equal``):
    on a GPU each such read makes the host wait for every kernel launched before it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    reads = {
        torch.ops.aten._local_scalar_dense.default,
        torch.ops.aten.is_nonzero.default,
        torch.ops.aten.equal.default,
    }

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func in reads
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


@pytest.mark.parametrize("tile", [128, merge.GPU_TILE])
def test_gpu_plan_gives_the_same_results(monkeypatch, tile):
    """The GPU plan (large panels, sync-free passes: every row searches its whole row for δ, padding masked without
    asking) run here on the CPU gives bitwise the results of the CPU plan, for images and for videos."""
    x = clustered(3, 2 * TILE + 45, 8, seed=21)
    valid = torch.ones(3, x.shape[1], dtype=torch.bool)
    valid[1, 70:], valid[2, 5:9] = False, False
    video = torch.randn(3, 23, 12, 5, generator=gen(22), dtype=torch.float64)
    frames = torch.arange(23)[None] < torch.tensor([23, 9, 17])[:, None]
    calls = [
        lambda: dpc_knn(x, 20, 5, valid),
        lambda: dpc_knn(x, 20, 5, valid, low_memory=True),
        lambda: multiscale_merge(x, valid=valid, size_weighted=True),
        lambda: video_events(video, frame_valid=frames, stages=(10, 5), ks=(3, 3)),
        lambda: video_events(video, "auto", frame_valid=frames, stages=(6, 3), ks=(3, 3), size_weighted=True),
    ]
    expected = [call() for call in calls]
    monkeypatch.setattr(merge, "_plan_for", lambda device: merge.GPU_PLAN._replace(tile=tile))
    for call, ref in zip(calls, expected):
        out = call()
        for name, a, b in zip(ref._fields, out, ref):
            for u, v in zip(a if name == "events" else [a], b if name == "events" else [b]):
                assert u.dtype == v.dtype and torch.equal(u, v), name


def test_gpu_plan_reads_one_value_per_call(monkeypatch):
    """Under the GPU plan the stages never make the host wait: the only value read is the input's finiteness check
    (the CPU plan reads more, to skip work)."""
    x = clustered(2, 150, 6, seed=23, dtype=torch.float32)
    valid = torch.ones(2, 150, dtype=torch.bool)
    valid[1, 99:] = False
    video = torch.randn(2, 20, 9, 4, generator=gen(24))
    frames = torch.arange(20)[None] < torch.tensor([20, 14])[:, None]
    cpu = scalar_reads(lambda: multiscale_merge(x, valid=valid))
    monkeypatch.setattr(merge, "_plan_for", lambda device: merge.GPU_PLAN)
    assert scalar_reads(lambda: dpc_knn(x, 16, 5, valid)) == 1
    assert scalar_reads(lambda: multiscale_merge(x, valid=valid)) == 1 < cpu
    assert scalar_reads(lambda: video_events(video, frame_valid=frames, stages=(6, 3), ks=(3, 3))) == 1


def test_sync_free_stages_read_nothing_on_the_meta_device():
    """Meta tensors have no values, so any host read inside the stages (``int(t)``, ``.item()``, ``.tolist()``,
    ``.cpu()``, ``torch.equal``) raises: under the sync-free plan the image and video stages run through, under the
    CPU plan they do not."""
    plan = merge.GPU_PLAN._replace(tile=128)
    x, valid = torch.empty(2, 300, 8, device="meta"), torch.ones(2, 300, dtype=torch.bool, device="meta")
    pos = torch.zeros(2, 300, 3, device="meta")
    for low_memory, size_weighted in itertools.product((False, True), (False, True)):
        out = merge._multiscale(
            x, pos, valid, None, (16, 8, 4), (5, 3, 3), size_weighted, {"low_memory": low_memory}, plan, True
        )
        assert out.tokens.shape == (2, 28, 8)
    table, dims = merge._event_tables([(0, 0, 0, 5), (0, 1, 5, 12), (1, 0, 0, 7)], 2, 12)
    video, vpos = torch.empty(2, 12, 9, 4, device="meta"), torch.zeros(12, 9, 3, device="meta")
    out = merge._video_stages(
        video, vpos, table.to("meta"), (2, 12, 9, 4, *dims), (6, 3), (3, 3), False, {}, plan, True
    )
    assert out[0].shape == (2, 2 * 9, 4) and out[-1].shape == (2, 2, 12, 9)
    with pytest.raises((RuntimeError, NotImplementedError)):
        merge._multiscale(x, pos, valid, None, (16,), (5,), False, {}, merge.CPU_PLAN, True)


@pytest.mark.slow
def test_compiled_stages_give_the_same_clusters(monkeypatch):
    """``compile=True`` runs the sync-free stages as one ``torch.compile(fullgraph=True)`` graph (a graph break, i.e. a
    host read, would fail it): the same clusters, positions and sizes as eager; merged token values to rounding."""
    x = clustered(3, 150, 8, seed=25, dtype=torch.float32)
    valid = torch.ones(3, 150, dtype=torch.bool)
    valid[1, 99:] = False
    x[1, 120] = math.nan  # padding is never read
    video = torch.randn(2, 20, 9, 4, generator=gen(26))
    frames = torch.arange(20)[None] < torch.tensor([20, 14])[:, None]
    cases = [
        (multiscale_merge, (x,), {"valid": valid, "stages": (16, 8, 4), "ks": (5, 3, 3)}),
        (video_events, (video,), {"frame_valid": frames, "stages": (6, 3), "ks": (3, 3), "size_weighted": True}),
    ]
    for fn, args, kwargs in cases:
        eager, compiled = fn(*args, **kwargs), fn(*args, **kwargs, compile=True)
        for name, a, b in zip(eager._fields, compiled, eager):
            if name == "events":
                assert all(torch.equal(u, v) for u, v in zip(a, b))
            elif a.is_floating_point() and name == "tokens":
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="NaN or infinite"):
        bad = x.clone()
        bad[0, 3, 2] = math.inf
        multiscale_merge(bad, valid=valid, stages=(16, 8, 4), ks=(5, 3, 3), compile=True)
    # past torch's recompile limit a new shape runs eagerly, with a warning, instead of failing
    torch._dynamo.reset()
    monkeypatch.setattr(merge, "_EAGER_FALLBACK", set())
    with torch._dynamo.config.patch(recompile_limit=1):
        multiscale_merge(x, valid=valid, stages=(16, 8, 4), ks=(5, 3, 3), compile=True)
        with pytest.warns(UserWarning, match="run eagerly"):
            out = multiscale_merge(x[:, :140], valid=valid[:, :140], stages=(16, 8, 4), ks=(5, 3, 3), compile=True)
    ref = multiscale_merge(x[:, :140], valid=valid[:, :140], stages=(16, 8, 4), ks=(5, 3, 3))
    assert torch.equal(out.assignments, ref.assignments)
    torch._dynamo.reset()


def test_compile_refuses_jitter_and_unknown_options():
    x = torch.randn(1, 30, 4)
    with pytest.raises(ValueError, match="jitter=0"):
        multiscale_merge(x, stages=(4,), ks=(3,), compile=True, jitter=1e-6)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['tile'\\]"):
        video_events(torch.randn(4, 30, 4), stages=(4,), ks=(3,), tile=3)


# ----------------------------------------------------------------------------------------------- ToMe, pooling


@pytest.mark.parametrize(("n", "r"), [(10, 3), (11, 5), (8, 0), (9, 4)])
def test_tome_step_matches_loop_reference(n, r):
    x = torch.randn(2, n, 5, generator=gen(n), dtype=torch.float64)
    sizes = torch.randint(1, 4, (2, n), generator=gen(n + 1)).double()
    out = tome_merge(x, r, sizes)
    for b in range(2):
        tokens, sz, slot = naive_tome_step(x[b].numpy(), sizes[b].numpy(), r)
        np.testing.assert_allclose(out.tokens[b].numpy(), tokens, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out.sizes[b].numpy(), sz)
        assert out.assignment[b].tolist() == slot


def test_tome_reduce_tracks_sizes_across_steps():
    x = torch.randn(2, 40, 6, generator=gen(18), dtype=torch.float64)
    out = tome_reduce(x, 7)
    assert out.tokens.shape == (2, 7, 6)
    torch.testing.assert_close(out.sizes.sum(1), torch.full((2,), 40.0, dtype=torch.float64))
    for b in range(2):
        for s in range(7):
            members = out.assignment[b] == s
            assert int(members.sum()) == int(out.sizes[b, s])
            torch.testing.assert_close(out.tokens[b, s], x[b, members].mean(0))
            assert bool(members[out.centers[b, s]])  # the representative is a member
    torch.testing.assert_close(out.weights() @ x, out.tokens)


def test_pool_and_reduce_interface():
    x = torch.randn(2, 48, 3, generator=gen(19))
    pooled = pool_merge(x, 12, grid=(6, 8))
    cell = torch.tensor([[(y // 2) * 4 + xx // 2 for xx in range(8)] for y in range(6)]).flatten()
    assert torch.equal(pooled.assignment[0], cell)
    torch.testing.assert_close(pooled.tokens[:, 0], x[:, [0, 1, 8, 9]].mean(1))
    seq = reduce(x, "pool", 5)
    assert seq.sizes[0].tolist() == [10.0, 10.0, 9.0, 10.0, 9.0]  # contiguous runs n·5 // 48
    assert torch.equal(reduce(x, "dpc-knn", 6, k=3).assignment, dpc_knn(x, 6, 3).assignment)
    assert torch.equal(reduce(x, "tome", 6).tokens, tome_reduce(x, 6).tokens)
    for method in ("dpc-knn", "tome", "pool"):
        out = reduce(x, method, 6)
        assert out.tokens.shape == (2, 6, 3) and torch.equal(out.sizes.sum(1), torch.full((2,), 48.0))
    with pytest.raises(ValueError, match="method must be one of"):
        reduce(x, "kmeans", 6)
    with pytest.raises(ValueError, match="padding"):
        reduce(x, "tome", 6, valid=torch.zeros(2, 48, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------- errors


def test_clear_errors_for_bad_inputs():
    x = torch.randn(2, 10, 3)
    with pytest.raises(ValueError, match=r"\(B, N, C\), got shape \(10, 3\)"):
        dpc_knn(x[0], 4)
    with pytest.raises(ValueError, match=r"valid must have shape \(B, N\) = \(2, 10\), got \(2, 9\)"):
        dpc_knn(x, 4, valid=torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        dpc_knn(x, 4, valid=torch.ones(2, 10))
    with pytest.raises(ValueError, match="num_clusters must be a positive int, got 0"):
        dpc_knn(x, 0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        dpc_knn(x.masked_fill(x > 1, float("inf")), 4)
    with pytest.raises(ValueError, match="sizes of valid tokens must be positive"):
        dpc_knn(x, 4, sizes=torch.zeros(2, 10))
    with pytest.raises(TypeError, match="float"):
        dpc_knn(x.long(), 4)
    with pytest.raises(ValueError, match=r"r must be an int in \[0, N // 2\] = \[0, 5\], got 6"):
        tome_merge(x, 6)
    with pytest.raises(ValueError, match="stages and ks"):
        multiscale_merge(x, stages=(4, 2), ks=(3,))
    with pytest.raises(ValueError, match=r"positions must be"):
        multiscale_merge(x, torch.zeros(9, 3), stages=(4,), ks=(3,))
    with pytest.raises(ValueError, match="prefix"):
        segment_events(torch.randn(1, 5, 2), 2, valid=torch.tensor([[True, False, True, True, True]]))
    with pytest.raises(ValueError, match=r"\(T, N, C\) or \(B, T, N, C\), got \(5, 3\)"):
        video_events(torch.randn(5, 3))
    with pytest.raises(ValueError, match="num_events must be"):
        segment_events(torch.randn(5, 2), 0)
    for frames, valid in (
        (torch.randn(2, 0, 3), None),
        (torch.randn(2, 4, 3), torch.tensor([[True] * 4, [False] * 4])),
    ):
        with pytest.raises(ValueError, match="at least one valid frame"):
            segment_events(frames, valid=valid)


# ----------------------------------------------------------------------------------------------- features, CLI


def test_magvit_features_are_the_encoder_latents():
    from vistok.tokenizers.api import load_tokenizer

    tok = load_tokenizer(None, "cpu")
    img = torch.rand(2, 3, 32, 40, generator=gen(20)) * 2 - 1
    feats = merge.magvit_features(img, tok)
    z = tok.encode_latents(img)
    assert feats.grid == (1, 4, 5) and feats.tokens.shape == (2, 20, tok.latent_channels)
    torch.testing.assert_close(feats.tokens, z.flatten(2).mT)
    assert feats.positions[7].tolist() == [0.0, 1.0, 2.0]
    video = torch.rand(1, 3, 3, 16, 16, generator=gen(21)) * 2 - 1
    vf = merge.magvit_features(video, tok)
    assert vf.tokens.shape == (1, 3, 4, tok.latent_channels) and vf.grid == (3, 2, 2)
    torch.testing.assert_close(vf.tokens[0, 1], tok.encode_latents(video[:, :, 1]).flatten(2).mT[0])


def test_hf_patch_encoder_on_a_tiny_random_dinov2(tmp_path):
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install 'vistok[hf]')"
    )
    torch.manual_seed(0)
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=56, patch_size=14
    )
    model = transformers.Dinov2Model(config).eval()
    model.save_pretrained(tmp_path / "dino")
    enc = merge.HFPatchEncoder(tmp_path / "dino")
    pixels = torch.rand(2, 3, 56, 56, generator=gen(22)) * 2 - 1
    feats = enc(pixels)
    assert feats.tokens.shape == (2, 16, 32) and feats.grid == (1, 4, 4)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = torch.nn.functional.interpolate(pixels, size=(56, 56), mode="bicubic", antialias=True)
    with torch.no_grad():
        ref = model(pixel_values=((x + 1) / 2 - mean[:, None, None]) / std[:, None, None]).last_hidden_state
    torch.testing.assert_close(feats.tokens, ref[:, 1:])  # the CLS token dropped
    penultimate = merge.HFPatchEncoder(tmp_path / "dino", layer=-2)(pixels)
    assert not torch.allclose(penultimate.tokens, feats.tokens)
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        merge.HFPatchEncoder(tmp_path / "missing")


def _run_show(argv: list[str]) -> int:
    from vistok.tokenizers.merge_cli import add_merge_parser

    parser = argparse.ArgumentParser(prog="vistok")
    add_merge_parser(parser.add_subparsers(dest="group", required=True))
    args = parser.parse_args(["merge", "show", *argv])
    return args.func(args)


def _tiny_vit(seed: int = 0):
    from vistok.models.vit import ViT, ViTConfig

    torch.manual_seed(seed)
    return ViT(ViTConfig(image_size=32, patch_size=8, dim=16, depth=3, n_heads=2)).eval()


def test_vit_patch_encoder_is_the_vits_hidden_state_for_images_and_videos(tmp_path):
    vit = _tiny_vit()
    vit.save_pretrained(tmp_path / "run" / "ssl" / "teacher")  # the layout `vistok digit fit` writes
    enc = merge.ViTPatchEncoder(tmp_path / "run")  # a run folder: its DINO teacher
    assert (enc.dim, enc.patch_size, enc.layer) == (16, 8, -3)
    pixels = torch.rand(2, 3, 32, 48, generator=gen(30)) * 2 - 1
    f = enc(pixels, batch_size=1)
    with torch.no_grad():
        direct = vit.patch_features(pixels, layer=-3, norm=True)  # (2, 4, 6, 16)
    assert f.grid == (1, 4, 6) and f.tokens.shape == (2, 24, 16)
    torch.testing.assert_close(f.tokens, direct.flatten(1, 2))
    assert f.positions[:, 1:].tolist() == [[y, x] for y in range(4) for x in range(6)]
    video = torch.rand(1, 3, 5, 32, 32, generator=gen(31)) * 2 - 1
    fv = merge.ViTPatchEncoder(tmp_path / "run" / "ssl" / "teacher", layer=-1)(video)
    assert fv.tokens.shape == (1, 5, 16, 16) and fv.grid == (5, 4, 4)
    with torch.no_grad():
        frame2 = vit.patch_features(video[:, :, 2], layer=-1)
    torch.testing.assert_close(fv.tokens[0, 2], frame2.flatten(1, 2)[0])
    odd = enc(torch.zeros(1, 3, 30, 31))  # not multiples of the patch: resized to the nearest multiple (32 × 32)
    assert odd.grid == (1, 4, 4)
    out = multiscale_merge(f.tokens, f.positions, stages=(8, 4), ks=(3, 3))
    assert out.tokens.shape == (2, 12, 16)
    with pytest.raises(FileNotFoundError, match="no vistok ViT"):
        merge.ViTPatchEncoder(tmp_path / "missing")
    with pytest.raises(ValueError, match="layer must be"):
        merge.ViTPatchEncoder(vit, layer=9)


def test_merge_show_writes_pictures_for_an_image_and_a_video(tmp_path, capsys):
    from PIL import Image

    from vistok.data.samples import SyntheticVideos
    from vistok.data.video import write_video

    assert _run_show(["builtin:coffee", "--size", "64", "--stages", "8", "4", "--out", str(tmp_path / "c.png")]) == 0
    img = Image.open(tmp_path / "c.png")
    assert img.width > 3 * 64 and img.height == 64 + 14
    out = capsys.readouterr().out
    assert "wrote" in out and "64 patch tokens" in out and "8 + 4 = 12 merged tokens" in out
    clip = SyntheticVideos(num_frames=20, size=32, length=1).render(0)
    write_video(tmp_path / "clip.mp4", clip, fps=8)
    argv = [str(tmp_path / "clip.mp4"), "--size", "32", "--stages", "6", "3", "--out", str(tmp_path / "v.png"), "-q"]
    assert _run_show(argv) == 0
    assert Image.open(tmp_path / "v.png").width > 0
    assert "2 events" in capsys.readouterr().out
    _tiny_vit().save_pretrained(tmp_path / "vit")
    argv = ["builtin:coffee", "--size", "64", "--stages", "8", "4", "--features", f"vit:{tmp_path / 'vit'}"]
    assert _run_show([*argv, "--out", str(tmp_path / "vit.png")]) == 0
    captured = capsys.readouterr()
    assert "vistok ViT patch tokens (16-d" in captured.out + captured.err and (tmp_path / "vit.png").is_file()
    with pytest.raises(ValueError, match="--features must be"):
        _run_show(["builtin:coffee", "--features", "clip"])
