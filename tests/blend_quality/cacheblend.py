"""The engine side of CacheBlend, for a small ``transformers`` Llama: blend forward and metrics.

The server's contract ends at "the KV rows of every matched token are populated, K
rotated to the new positions". What an engine then does is CacheBlend's selective
recompute (the algorithm of the CacheBlend paper, as upstream's in-process
``v1/compute/blend/blender.py`` applies it), written here as a test helper:

1. Layers before the *check layer* are computed for every token (cheap: one layer).
2. At the check layer, fresh K of every token is compared with the reused K; the
   tokens with the largest squared L2 deviation (a fixed fraction of the reused
   tokens), plus every token no cache covered (the holes: the question, gaps),
   are the *recompute set*.
3. From the check layer on only the recompute set is computed: its fresh K and V
   replace the reused rows, and its queries attend over the mixed KV.

The layer arithmetic is the model's own modules (norms, projections, MLP, rotary
embedding); only the attention over a given KV is written out, and
:func:`manual_logits` checks that it reproduces the model's own forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

VOCAB = 512
LAYERS = 4
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 32
MAX_POSITION = 2048
RECENCY = 12.0
"""The shared Q/K bias's score for a token attending to itself (see :func:`tiny_llama`)."""
OUTPUT_SCALE = 3.0
"""``lm_head`` is scaled by this, so the next-token distribution is not flat (its top
probability is about 0.4 rather than 0.04): top-1 agreement then means something."""


def tiny_llama(
    seed: int = 0, recency: float = RECENCY, output_scale: float = OUTPUT_SCALE
) -> LlamaForCausalLM:
    """A random-initialised causal Llama (no download), fp32, in eval mode.

    Random weights alone attend almost as much to a token 200 positions back as to
    the previous one, which no trained LM does and which hides both what reuse
    gets wrong (a document's tokens attend to their own neighbourhood, whose
    context did not change) and what a missing RoPE correction breaks (nothing
    is position-sensitive). So the Q and K projections get one shared bias
    vector in the high-frequency rotary dims: its part of ``q . k`` is
    ``recency * sum(cos(theta_i * (m - n)))``, RoPE's long-term decay, so every head
    prefers nearby tokens, modulated by the random content terms. Everything
    else is the config's random initialisation.

    Args:
        seed: The torch seed of the initialisation.
        recency: Scale of the shared bias (0: plain random initialisation).
        output_scale: Factor on ``lm_head`` (see :data:`OUTPUT_SCALE`).
    """
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HEADS * HEAD_DIM,
        intermediate_size=4 * HEADS * HEAD_DIM,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITION,
        attention_bias=True,
        initializer_range=0.1,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    half = HEAD_DIM // 2
    bias = torch.zeros(HEAD_DIM)
    fast = half // 2  # the faster half of the frequencies: (i, i + half) for i < half / 2
    bias[:fast] = 1.0
    bias[half : half + fast] = 1.0
    bias *= math.sqrt(recency * math.sqrt(HEAD_DIM) / (2 * fast))
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.q_proj.bias.copy_(bias.repeat(HEADS))
            block.self_attn.k_proj.bias.copy_(bias.repeat(KV_HEADS))
        model.lm_head.weight.mul_(output_scale)
    return model


def rope_cache(model: LlamaForCausalLM) -> torch.Tensor:
    """The model's rotary table as vLLM's ``[max_position, head_dim]`` rows ``[cos | sin]``.

    This is what a vLLM worker registers with ``cb_register_rope`` (NeoX style:
    Llama's ``rotate_half`` pairs element ``i`` with ``i + head_dim / 2``).
    """
    positions = torch.arange(MAX_POSITION)[None]
    probe = torch.zeros(1, 1, HEAD_DIM)
    cos, sin = model.model.rotary_emb(probe, positions)
    half = HEAD_DIM // 2
    return torch.cat([cos[0, :, :half], sin[0, :, :half]], dim=-1).to(torch.float32)


def reference_kv(
    model: LlamaForCausalLM, tokens: Sequence[int]
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The model's own forward: logits ``[n, vocab]`` and its cache's K and V per layer.

    K and V are ``[kv_heads, n, head_dim]``; K carries RoPE at positions ``0..n-1``,
    as the engine's paged cache holds it.
    """
    with torch.no_grad():
        out = model(torch.tensor([list(tokens)]), use_cache=True)
    cache = out.cache  # transformers 5 (formerly past_key_values)
    keys = [layer.keys[0].clone() for layer in cache.layers]
    values = [layer.values[0].clone() for layer in cache.layers]
    return out.logits[0], keys, values


def _qkv(
    model: LlamaForCausalLM, layer: int, hidden: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q ``[heads, n, d]``, K and V ``[kv_heads, n, d]`` of ``hidden`` at ``positions``."""
    block = model.model.layers[layer]
    attn = block.self_attn
    x = block.input_layernorm(hidden)
    n = x.shape[0]
    q = attn.q_proj(x).view(n, HEADS, HEAD_DIM).transpose(0, 1)
    k = attn.k_proj(x).view(n, KV_HEADS, HEAD_DIM).transpose(0, 1)
    v = attn.v_proj(x).view(n, KV_HEADS, HEAD_DIM).transpose(0, 1)
    cos, sin = model.model.rotary_emb(x[None], positions[None])
    q, k = apply_rotary_pos_emb(q[None], k[None], cos, sin)
    return q[0], k[0], v


def _finish_layer(
    model: LlamaForCausalLM,
    layer: int,
    hidden: torch.Tensor,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Attention of ``q`` (at ``positions``) over all of ``keys``/``values``, then the MLP.

    ``keys`` and ``values`` hold every token ``0..N-1`` (row = position); causal: a
    query at position ``p`` sees rows ``<= p``.
    """
    block = model.model.layers[layer]
    rep = HEADS // KV_HEADS
    k = keys.repeat_interleave(rep, dim=0)
    v = values.repeat_interleave(rep, dim=0)
    scores = q @ k.transpose(1, 2) / math.sqrt(HEAD_DIM)
    visible = torch.arange(keys.shape[1])[None, :] <= positions[:, None]
    scores = scores.masked_fill(~visible[None], float("-inf"))
    out = (scores.softmax(dim=-1) @ v).transpose(0, 1).reshape(q.shape[1], HEADS * HEAD_DIM)
    hidden = hidden + block.self_attn.o_proj(out)
    return hidden + block.mlp(block.post_attention_layernorm(hidden))


def _logits(model: LlamaForCausalLM, hidden: torch.Tensor) -> torch.Tensor:
    logits: torch.Tensor = model.lm_head(model.model.norm(hidden))
    return logits


def manual_logits(model: LlamaForCausalLM, tokens: Sequence[int]) -> torch.Tensor:
    """A full forward through :func:`_qkv` and :func:`_finish_layer` (checks them)."""
    with torch.no_grad():
        ids = torch.tensor(list(tokens))
        positions = torch.arange(len(ids))
        hidden = model.model.embed_tokens(ids)
        for layer in range(LAYERS):
            q, k, v = _qkv(model, layer, hidden, positions)
            hidden = _finish_layer(model, layer, hidden, q, k, v, positions)
        return _logits(model, hidden)


@dataclass
class BlendOutput:
    """A blend forward's result.

    Attributes:
        logits: ``[len(recomputed), vocab]``: the logits at the recomputed positions.
        recomputed: The positions computed from the check layer on (sorted).
        deviation: Squared L2 deviation of fresh from reused K at the check layer,
            per position (``inf`` for holes).
    """

    logits: torch.Tensor
    recomputed: torch.Tensor
    deviation: torch.Tensor

    def at(self, positions: Sequence[int]) -> torch.Tensor:
        """The logits at ``positions`` (each must have been recomputed)."""
        index = {int(p): i for i, p in enumerate(self.recomputed)}
        return self.logits[[index[p] for p in positions]]


def blend_forward(
    model: LlamaForCausalLM,
    tokens: Sequence[int],
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    reused: torch.Tensor,
    ratio: float,
    check_layer: int = 1,
) -> BlendOutput:
    """CacheBlend's selective recompute over reused KV (see the module docstring).

    Args:
        model: The model.
        tokens: The whole prompt.
        keys: Per layer, ``[kv_heads, N, head_dim]``: the KV the server wrote (rows of
            holes are ignored).
        values: The same for V.
        reused: ``[N]`` bool: the positions whose KV came from the cache.
        ratio: Fraction of the reused tokens recomputed (those that deviate most).
        check_layer: The layer at which deviation is measured.
    """
    with torch.no_grad():
        ids = torch.tensor(list(tokens))
        count = len(ids)
        positions = torch.arange(count)
        hidden = model.model.embed_tokens(ids)
        active = positions
        deviation = torch.zeros(count)
        for layer in range(LAYERS):
            q, k, v = _qkv(model, layer, hidden, positions[active])
            if layer < check_layer:  # every token, nothing reused yet
                hidden = _finish_layer(model, layer, hidden, q, k, v, positions)
                continue
            if layer == check_layer:
                deviation = ((k - keys[layer]) ** 2).sum(dim=(0, 2))
                deviation[~reused] = math.inf
                picked = int((~reused).sum()) + math.ceil(ratio * int(reused.sum()))
                active = torch.topk(deviation, min(picked, count)).indices.sort().values
                hidden, q, k, v = hidden[active], q[:, active], k[:, active], v[:, active]
            mixed_k, mixed_v = keys[layer].clone(), values[layer].clone()
            mixed_k[:, active], mixed_v[:, active] = k, v
            hidden = _finish_layer(model, layer, hidden, q, mixed_k, mixed_v, positions[active])
        return BlendOutput(_logits(model, hidden), active, deviation)


def kl_divergence(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean ``KL(softmax(reference) || softmax(other))`` over rows, in nats."""
    log_p = reference.log_softmax(dim=-1)
    log_q = other.log_softmax(dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum(dim=-1).mean())


def top1_agreement(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Fraction of rows whose argmax agrees."""
    return float((reference.argmax(dim=-1) == other.argmax(dim=-1)).float().mean())
