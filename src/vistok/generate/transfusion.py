"""Transfusion decoding (Zhou et al., 2024, §2.3 "Inference"; PAPERS.md §4): sample text with the KV cache; when a
row emits BOI, switch to diffusion — append n noise patches, denoise them in place (DDPM ancestral steps, or DDIM as
the faster deterministic option; classifier-free guidance with an unconditional pass), re-encode the clean image at
timestep 0 into the KV cache, append EOI and continue text.

**How the batch stays in lock step.** All rows share the cache slots (the backbone's static cache, written at one slot
range per call), but every row has its own rotary position counter and its own per-slot validity: a row that is not
in the current phase (it emits text while another row draws an image, or it has finished) writes nothing valid there
(its slots are marked invalid, so nobody attends to them) and its position counter does not move. The mask over the
cache is rebuilt per call from per-slot span ids and validity with the same rule as training
(:class:`vistok.layers.MaskSpec`: causal, bidirectional inside an image, padding invisible), so a row's cache state
after an image equals a fresh forward over its clean sequence.

**Classifier-free guidance** (scale g > 1): the batch gets B extra "unconditional" rows whose context is ``BOS`` only
(the caption-dropout null caption); when row b starts an image, row B + b feeds BOI too and denoises the same
latents, and ε̂ = ε_u + g (ε_c − ε_u). After each image the unconditional rows forget everything but BOS again.

Every random draw comes from one ``torch.Generator`` seeded by ``seed``: same seed, same output on the same device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vistok.generate.sampling import sample_logits
from vistok.layers import MaskSpec, build_dense_mask
from vistok.models.transfusion import Segment, Transfusion, build_batch
from vistok.tokenizers.text import BOI, BOS, EOI, EOS, PAD

__all__ = ["TransfusionDecoder", "TransfusionSample", "caption", "denoise_timesteps", "generate"]


@dataclass
class TransfusionSample:
    """Per row: the generated ``ids`` (text ids, BOI/EOI included; patch positions omitted), ``images`` (latents
    (C, h, w) in order) and ``segments`` (the generated continuation as text-id lists and latents, in order)."""

    ids: list[list[int]]
    images: list[list[Tensor]]
    segments: list[list[Segment]]


def denoise_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` step indices from T − 1 down to 0, evenly spaced (DDIM's "linspace" spacing), deduplicated."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ts = torch.linspace(timesteps - 1, 0, steps).round().long().tolist()
    return sorted(set(ts), reverse=True)


class TransfusionDecoder:
    """Step-level decoding state over the model's static KV cache (see the module docstring).

    ``batch_size`` B conditional rows (+ B unconditional rows when ``cfg``); ``max_len`` cache slots.
    """

    def __init__(self, model: Transfusion, batch_size: int, max_len: int, cfg: bool = False, seed: int = 0) -> None:
        self.model, self.b, self.cfg = model, batch_size, cfg
        dev = model.backbone.tok_embeddings.weight.device
        self.rows = batch_size * (2 if cfg else 1)
        model.backbone.setup_caches(self.rows, max_len)
        model.backbone.reset_caches()
        self.len = max_len
        self.valid = torch.zeros(self.rows, max_len, dtype=torch.bool, device=dev)
        self.span = torch.zeros(self.rows, max_len, dtype=torch.long, device=dev)
        self.pos = torch.zeros(self.rows, dtype=torch.long, device=dev)
        self.slot, self.next_span, self.device = 0, 1, dev
        self.generator = torch.Generator(device=dev).manual_seed(seed)

    def _forward(self, x: Tensor, positions: Tensor, valid: Tensor, span: Tensor) -> Tensor:
        """Run embeddings x (R, n, dim) at slots slot … slot + n − 1 (written into the cache; not committed)."""
        n = x.shape[1]
        if self.slot + n > self.len:
            raise RuntimeError(f"KV cache full: {self.slot} + {n} > {self.len} slots")
        slots = torch.arange(self.slot, self.slot + n, device=self.device)
        self.valid[:, slots] = valid
        self.span[:, slots] = span
        spec = MaskSpec(causal=True, span_ids=self.span, valid=self.valid)
        mask = build_dense_mask(spec, q_len=n, kv_len=self.len, q_offset=self.slot)
        return self.model.run_backbone(x, positions, mask, cache_slots=slots)

    @torch.no_grad()
    def prefill(self, prompts: Sequence[Sequence[Segment]]) -> Tensor:
        """Write every prompt but its last token into the cache; returns the last tokens (B,) (they must be text)."""
        if len(prompts) != self.b:
            raise ValueError(f"expected {self.b} prompts, got {len(prompts)}")
        m = self.model
        batch = build_batch(prompts, m.config.patch_size, num_text_tokens=m.config.num_text_tokens).to(self.device)
        lens = batch.valid.sum(1)
        last = batch.ids[torch.arange(self.b, device=self.device), lens - 1]
        if batch.is_patch[torch.arange(self.b, device=self.device), lens - 1].any():
            raise ValueError("a prompt must end with a text token")
        n = max(int(lens.max()) - 1, 1)
        ids = batch.ids[:, :n]
        x = m.backbone.tok_embeddings(ids)
        for i, img in enumerate(batch.images):
            tokens, _, _ = m.encode_images(img[None].to(x.dtype), torch.zeros(1, dtype=torch.long, device=x.device))
            r, s = int(batch.image_row[i]), int(batch.image_start[i])
            x[r, s : s + tokens.shape[1]] = tokens[0]
        cols = torch.arange(n, device=self.device)
        valid = cols[None] < (lens - 1)[:, None]
        span = batch.span_ids[:, :n] * valid
        positions = batch.positions[:, :n]
        if self.cfg:  # unconditional rows: BOS at slot 0
            x = torch.cat([x, m.backbone.tok_embeddings(torch.full_like(ids, BOS))])
            valid = torch.cat([valid, (cols == 0)[None].expand(self.b, -1)])
            span, positions = torch.cat([span, torch.zeros_like(span)]), torch.cat([positions, positions])
        self._forward(x, positions, valid, span)
        self.slot = n
        self.pos[: self.b] = lens - 1
        self.pos[self.b :] = 1
        self.next_span = int(batch.span_ids.max()) + 1
        return last

    @torch.no_grad()
    def text_step(self, tokens: Tensor, active: Tensor) -> Tensor:
        """Feed one token per row (R,) where ``active`` (R,); returns next-token logits (R, V); commits one slot."""
        m = self.model
        x = m.backbone.tok_embeddings(tokens.to(self.device)[:, None])
        h = self._forward(x, self.pos[:, None], active[:, None], torch.zeros_like(tokens)[:, None])
        self.pos += active.long()
        self.slot += 1
        return m.backbone.output(h[:, 0]).float()

    @torch.no_grad()
    def image_phase(
        self,
        rows: Tensor,
        size: tuple[int, int],
        steps: int = 50,
        sampler: str = "ddim",
        guidance: float = 1.0,
        clip_x0: float | None = 4.0,
    ) -> Tensor:
        """Diffuse one image for each row in ``rows`` (B,) bool (their BOI already fed); returns latents (B, C, h, w).

        Writes the clean image (timestep 0) into the cache and commits its n slots; EOI is left to the caller.
        ``clip_x0``: clamp x̂₀ at every step (latents are normalized to unit variance; None = no clamp)."""
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        m, sch = self.model, self.model.schedule
        c, k = m.config.latent_channels, m.config.patch_size
        n = (size[0] // k) * (size[1] // k)
        active = torch.cat([rows, rows]) if self.cfg else rows
        span = torch.where(active, self.next_span, 0)[:, None].expand(-1, n)
        positions = self.pos[:, None] + torch.arange(n, device=self.device)
        dtype = m.backbone.tok_embeddings.weight.dtype
        x = torch.randn((self.b, c, *size), generator=self.generator, device=self.device, dtype=dtype)
        ts = denoise_timesteps(m.config.timesteps, steps)
        for i, t in enumerate(ts):
            t_now = torch.full((self.b,), t, dtype=torch.long, device=self.device)
            t_prev = torch.full_like(t_now, ts[i + 1] if i + 1 < len(ts) else -1)
            out = self._predict(x, t_now, positions, active, span, size)
            if self.cfg:
                cond, uncond = out.chunk(2)
                out = uncond + guidance * (cond - uncond)
            if sampler == "ddim":
                x = sch.ddim_step(x, t_now, t_prev, out, clip_x0=clip_x0)
            else:
                x = sch.ddpm_step(x, t_now, t_prev, out, generator=self.generator, clip_x0=clip_x0)
        zeros = torch.zeros(self.rows, dtype=torch.long, device=self.device)
        tokens, _, _ = m.encode_images(torch.cat([x, x]) if self.cfg else x, zeros)
        self._forward(tokens, positions, active[:, None].expand(-1, n), span)
        self.pos += active.long() * n
        self.slot += n
        self.next_span += 1
        if self.cfg:  # the unconditional rows forget the image: their context is BOS again
            self.valid[self.b :, 1:] = False
            self.pos[self.b :] = 1
        return x

    def _predict(self, x, t, positions, active, span, size) -> Tensor:
        m = self.model
        inp, tt = (torch.cat([x, x]), torch.cat([t, t])) if self.cfg else (x, t)
        tokens, temb, skip = m.encode_images(inp, tt)
        h = self._forward(tokens, positions, active[:, None].expand_as(span), span)
        return m.decode_images(h, temb, skip, size).to(x.dtype)


@torch.no_grad()
def generate(
    model: Transfusion,
    prompts: Sequence[Sequence[Segment]],
    *,
    max_new_tokens: int = 64,
    image_size: tuple[int, int] = (8, 8),
    max_images: int = 1,
    steps: int = 50,
    sampler: str = "ddim",
    guidance: float = 1.0,
    clip_x0: float | None = 4.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> TransfusionSample:
    """Continue each prompt (a document: text-id lists and latents; it must end with a text token — end it with BOI
    to ask for an image right away) with text and up to ``max_images`` images of latent size ``image_size``.

    Text stops at EOS or after ``max_new_tokens`` sampled tokens; ``guidance`` > 1 enables classifier-free guidance.
    """
    model.eval()
    b = len(prompts)
    k = model.config.patch_size
    n = (image_size[0] // k) * (image_size[1] // k)
    flat = build_batch(prompts, k, num_text_tokens=model.config.num_text_tokens)
    max_len = flat.ids.shape[1] + max_new_tokens + max_images * (n + 2) + 2
    cfg = guidance != 1.0
    dec = TransfusionDecoder(model, b, max_len, cfg=cfg, seed=seed)
    nxt = dec.prefill(prompts)
    dev = dec.device
    finished = torch.zeros(b, dtype=torch.bool, device=dev)
    n_images = torch.zeros(b, dtype=torch.long, device=dev)
    n_text = torch.zeros(b, dtype=torch.long, device=dev)
    ids: list[list[int]] = [[] for _ in range(b)]
    images: list[list[Tensor]] = [[] for _ in range(b)]
    segments: list[list[Segment]] = [[[]] for _ in range(b)]
    vocab = model.config.vocab_size
    for _ in range(max_new_tokens + max_images * 2):
        if finished.all():
            break
        boi = ~finished & (nxt == BOI)
        active = torch.cat([~finished, boi]) if cfg else ~finished
        feed = torch.cat([nxt, torch.full_like(nxt, BOI)]) if cfg else nxt
        logits = dec.text_step(feed, active)[:b]
        if boi.any():
            x = dec.image_phase(boi, image_size, steps=steps, sampler=sampler, guidance=guidance, clip_x0=clip_x0)
            for r in boi.nonzero()[:, 0].tolist():
                images[r].append(x[r].clone())
                segments[r] += [x[r].clone(), []]
                ids[r].append(EOI)
                segments[r][-1].append(EOI)
            n_images += boi.long()
        allowed = torch.ones(b, vocab, dtype=torch.bool, device=dev)
        allowed[:, PAD] = False
        allowed[:, EOI] = False
        allowed[:, BOI] = n_images < max_images
        new = sample_logits(
            logits, temperature=temperature, top_k=top_k, top_p=top_p, allowed=allowed, generator=dec.generator
        )
        upd = ~finished & ~boi
        for r in upd.nonzero()[:, 0].tolist():
            ids[r].append(int(new[r]))
            segments[r][-1].append(int(new[r]))
        n_text += upd.long()
        finished |= upd & ((new == EOS) | (n_text >= max_new_tokens))
        nxt = torch.where(boi, EOI, torch.where(upd, new, nxt))
    segments = [[s for s in segs if not (isinstance(s, list) and not s)] for segs in segments]
    return TransfusionSample(ids=ids, images=images, segments=segments)


@torch.no_grad()
def caption(
    model: Transfusion,
    latents: Tensor,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> list[list[int]]:
    """Caption image latents (B, C, h, w): the prompt is ``BOS, BOI, patches, EOI``; returns the text ids per row
    (up to and including EOS, if sampled). Greedy by default."""
    prompts = [[[BOS], z] for z in latents]
    out = generate(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        max_images=0,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )
    return out.ids
