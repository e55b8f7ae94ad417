"""Run by test_quantizer_api.py: `python ddp_helper.py OUT_DIR`.

Computes the same quantities once in this process on the full batch (OUT_DIR/single.pt) and in two gloo processes,
each on half of the batch (OUT_DIR/rank{0,1}.pt): LFQ codebook entropy and its input gradient, usage metrics,
an EMA VQ codebook after a few steps, and a VQ codebook after dead-code restarts (...which the broadcast of the
replacement codes must make agree across ranks).
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vistok.quantizers import LFQ, VQ

WORLD = 2


def full_batches() -> tuple[torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    lfq_input = torch.randn(4, 6, 3, 3, generator=generator)
    vq_inputs = [torch.randn(4, 3, 5, generator=generator) for _ in range(3)]
    return lfq_input, vq_inputs


def run(lfq_input: torch.Tensor, vq_inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Everything measured, on this process's share of the batch."""
    z = lfq_input.clone().requires_grad_()
    lfq = LFQ(6, inv_temperature=0.5).train()
    out = lfq(z)
    _, codebook_entropy = lfq.entropy_terms(z.movedim(1, -1).reshape(-1, 6))
    codebook_entropy.backward()
    torch.manual_seed(1)
    ema = VQ(16, dim=3, ema_decay=0.9).train()
    for batch in vq_inputs:
        ema(batch)
    torch.manual_seed(2)
    restart = VQ(8, dim=3, restart_after=1).train()
    with torch.no_grad():
        restart.codebook.add_(100.0)  # far from the data: most codes die and get restarted
    torch.manual_seed(3 + (dist.get_rank() if dist.is_initialized() else 0))  # ranks sample differently...
    restarted = 0.0
    for batch in vq_inputs:
        restarted += restart(batch).metrics["restarted"].item()
    return {
        "codebook_entropy": codebook_entropy.detach(),
        "grad": z.grad,
        "usage": out.metrics["usage"],
        "perplexity": out.metrics["perplexity"],
        "ema_codebook": ema.codebook.detach(),
        "restart_codebook": restart.codebook.detach(),
        "restarted": restarted,
    }


def worker(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=WORLD)
    try:
        lfq_input, vq_inputs = full_batches()
        share = lambda t: t.chunk(WORLD)[rank]
        result = run(share(lfq_input), [share(b) for b in vq_inputs])
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.save(run(*full_batches()), Path(out_dir) / "single.pt")
    mp.spawn(worker, args=(out_dir,), nprocs=WORLD, join=True)


if __name__ == "__main__":
    main(sys.argv[1])
