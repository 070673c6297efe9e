"""
A small GPT, all of it in this file: GPT-2's architecture as nanoGPT writes it.

    learned token + position embeddings -> n_layer x [pre-LayerNorm attention, pre-LayerNorm GELU MLP]
    -> final LayerNorm -> output head tied to the token embedding

Used by train.py (pretraining, fine-tuning, distillation), sample.py and bench.py:

    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65))
    logits, loss = model(idx, targets)      # logits for every position: (B, T, vocab)

With moe_num_experts > 0, the MLP of every moe_every-th block is a mixture of experts
(moe.py); GPT.forward then adds the routers' weighted aux losses to its training loss.

Options that keep the defaults GPT-2's model exactly (README, "Sparse attention" and
"Parameter-lean models"):
    attention      full | sliding | blocksparse: which earlier positions a token sees (attention.py)
    n_kv_head      grouped-query attention (Ainslie et al. 2023): fewer key/value heads
    pos_emb        learned | rope (Su et al. 2021, `rope`) | none: positions in a table, a rotation, or not at all
    mlp_hidden     the MLP's width (0: 4 * n_embd) and head_dim, each head's (0: n_embd / n_head): prune.py's cuts
    emb_dim        ALBERT's factorized embedding (Lan et al. 2019): a V x E table, an E x n_embd projection
    share_layers   all (ALBERT) | immediate (MobileLLM, Liu et al. 2024): blocks stored once, run at several layers
    mup            muP (Yang et al. 2022; the rules: mup.py): init, attention and readout scaled with n_embd /
                   mup_base_width, and GPT.lr_scale for step.make_optimizer; at the base width, GPT-2 exactly
generate() keeps a KV cache (attention.KVCache) unless asked to recompute the context.

Two things differ from nanoGPT, both measured (see README):
- `forward` returns logits at every position even without targets (a distillation teacher
  needs all of them); `generate` alone keeps only the last position.
- On CPU, dropout draws its masks from 16 random bits per element (`dropout_mask`) and
  attention with dropout is written out by hand. Measured here: SDPA with dropout_p > 0
  leaves its fused CPU kernel for one 2.4x slower, and F.dropout's masks cost 1.8x ours;
  at nanoGPT's Shakespeare recipe (dropout 0.2) this makes the step ~1.18x faster than
  nanoGPT's, and at dropout 0 nothing changes.

References: GPT-2 (Radford et al. 2019), nanoGPT's model.py (layout and parameter names).
"""

import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from attention import KINDS, KVCache, attend, dropout_mask
from moe import MoE


@dataclass
class GPTConfig:
    block_size: int = 256  # longest context; also the number of learned positions
    vocab_size: int = 65  # set from the dataset's meta.json by train.py
    n_layer: int = 6  # transformer blocks
    n_head: int = 6  # attention heads; n_embd must divide by it
    n_embd: int = 384  # width of the residual stream
    dropout: float = 0.0  # on embeddings, attention weights and both residual branches
    bias: bool = False  # biases in Linear and LayerNorm (GPT-2: True; nanoGPT: False is a bit better)
    grad_checkpointing: bool = False  # recompute each block in backward: less memory, ~1/3 more compute
    # which earlier positions a token attends to (attention.py)
    attention: Literal["full", "sliding", "blocksparse"] = "full"  # sparse kinds cost ~T * window, not T^2
    attn_window: int = 128  # sliding: the last attn_window positions, itself included
    attn_block: int = 64  # blocksparse: block length
    attn_summary: int = 8  # blocksparse: the last attn_summary positions of each earlier block (0: blocks alone)
    # the widths structured pruning (prune.py) shrinks; 0 = GPT-2's
    mlp_hidden: int = 0  # the MLP's hidden width; 0 = 4 * n_embd
    head_dim: int = 0  # each head's width; 0 = n_embd // n_head (q, k, v are n_head * head_dim wide, c_proj maps back)
    # parameter-lean attention (issue 13); the defaults are GPT-2's
    n_kv_head: int = 0  # key/value heads, dividing n_head: grouped-query attention; 1 = multi-query; 0 = n_head
    pos_emb: Literal["learned", "rope", "none"] = "learned"  # a position table, rotary (RoPE), or none (NoPE)
    rope_theta: float = 10000.0  # RoPE: the base of its frequencies
    emb_dim: int = 0  # factorized embedding (ALBERT): a vocab x emb_dim table and an emb_dim x n_embd projection; 0 = none
    share_layers: Literal["none", "all", "immediate"] = "none"  # blocks stored once, run several times (n_layer: runs)
    share_repeat: int = 2  # immediate: each stored block runs this many times in a row (MobileLLM)
    # muP (Tensor Programs V; the rules: mup.py, applied in GPT.__init__, GPT.logits, GPT.lr_scale, q_mult)
    mup: bool = False  # maximal-update parameterization: a learning rate tuned at mup_base_width carries to other widths
    mup_base_width: int = 0  # muP: the n_embd at which muP equals the standard model exactly (required with mup)
    # mixture of experts (moe.py): off at moe_num_experts = 0
    moe_num_experts: int = 0  # experts per MoE layer; 0 = a dense MLP in every block
    moe_top_k: int = 2  # experts per token (the Switch router takes 1)
    moe_router: Literal["topk", "switch"] = "topk"  # dropless top-k, or Switch top-1 with capacity
    moe_hidden: int = 0  # each expert's hidden width; 0 = 4 * n_embd / moe_top_k (the dense MLP's active size)
    moe_capacity_factor: float = 1.25  # Switch: tokens per expert = ceil(factor * tokens / experts), training
    moe_eval_capacity_factor: float = 2.0  # the same, in eval
    moe_aux_loss_coef: float = 1e-2  # load-balancing loss weight (Switch: 1e-2)
    moe_z_loss_coef: float = 1e-3  # router z-loss weight (ST-MoE: 1e-3)
    moe_every: int = 1  # every moe_every-th block gets an MoE (2: every other one, as Switch and GShard)
    moe_shared_expert: bool = False  # add one always-on expert (DeepSeekMoE)
    moe_noisy: bool = False  # noisy top-k gating, training only (Shazeer et al. 2017)
    moe_init_scale: float = 1.0  # scale the experts' init (Switch section 2.6 uses 0.1)

    def __post_init__(self):
        # every key's domain; each check reads "not (inside the domain)", so a NaN fails it too
        for key in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "moe_top_k", "moe_every", "attn_window",
                    "attn_block"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 1")
        if not self.head_dim and self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        if not 0 <= self.attn_summary <= self.attn_block:
            raise ValueError(f"attn_summary={self.attn_summary} must be in [0, attn_block={self.attn_block}]")
        if not 0 <= self.n_kv_head <= self.n_head or (self.n_kv_head and self.n_head % self.n_kv_head):
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} (0: n_head)")
        if not 0 <= self.emb_dim <= self.n_embd:
            raise ValueError(f"emb_dim={self.emb_dim} must be in [0, n_embd={self.n_embd}] (0: no factorization)")
        if self.share_repeat < 1:
            raise ValueError(f"share_repeat={self.share_repeat} must be >= 1")
        if self.share_layers == "immediate" and self.n_layer % self.share_repeat:
            raise ValueError(f"share_layers='immediate' runs each stored block share_repeat={self.share_repeat} times: "
                             f"n_layer={self.n_layer} (the blocks run) must be a multiple of it")
        if self.share_layers != "none" and self.moe_num_experts > 0 and self.moe_every > 1:
            raise ValueError(f"share_layers='{self.share_layers}' with moe_every={self.moe_every}: a shared block "
                             f"would be MoE in some runs and dense in others; use moe_every=1")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta={self.rope_theta} must be > 0")
        if self.pos_emb not in ("learned", "rope", "none"):
            raise ValueError(f"pos_emb='{self.pos_emb}': use learned, rope or none")
        if self.pos_emb == "rope" and self.head_size() % 2:
            raise ValueError(f"pos_emb='rope' rotates pairs of dimensions: the head size (head_dim, or n_embd / "
                             f"n_head) = {self.head_size()} must be even")
        if self.mup and self.mup_base_width < 1:
            raise ValueError("mup=True needs mup_base_width: the n_embd whose tuned learning rate the others reuse "
                             "(e.g. --mup_base_width=128)")
        if self.mup and (self.moe_num_experts or self.emb_dim):
            # a router and a factorized embedding each have one finite side: their muP rules are not worked out here
            raise ValueError("mup=True is written for dense models with a plain embedding: set moe_num_experts=0 "
                             "and emb_dim=0")
        if self.attention not in KINDS:
            raise ValueError(f"attention='{self.attention}': use one of {', '.join(KINDS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        for key in ("mlp_hidden", "head_dim", "moe_num_experts", "moe_hidden", "moe_aux_loss_coef", "moe_z_loss_coef"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 0")
        for key in ("moe_capacity_factor", "moe_eval_capacity_factor", "moe_init_scale"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key}={getattr(self, key)} must be > 0")
        if self.moe_num_experts > 0:
            if self.moe_router == "switch" and self.moe_top_k != 1:
                raise ValueError(f"moe_router='switch' routes each token to one expert: set moe_top_k=1 (got {self.moe_top_k})")
            if not self.moe_top_k <= self.moe_num_experts:
                raise ValueError(f"moe_top_k={self.moe_top_k} must be between 1 and moe_num_experts={self.moe_num_experts}")
            if self.moe_every > self.n_layer:
                # block i is MoE when (i + 1) % moe_every == 0: none would be, a dense model in disguise
                raise ValueError(f"moe_every={self.moe_every} is above n_layer={self.n_layer}: no block would get "
                                 f"the experts; use moe_every <= {self.n_layer}")

    def is_moe_block(self, i):
        """Block i (0-based) has an MoE feed-forward: every moe_every-th block, the last of each group."""
        return self.moe_num_experts > 0 and (i + 1) % self.moe_every == 0

    def stored_block(self, i):
        """The stored block that runs as layer i (0-based): ALBERT's all-shared one, or
        MobileLLM's immediate repetition (layers i*r .. i*r+r-1 share stored block i)."""
        return {"all": 0, "immediate": i // self.share_repeat}.get(self.share_layers, i)

    def n_stored_blocks(self):
        return self.stored_block(self.n_layer - 1) + 1

    def kv_heads(self):
        return self.n_kv_head or self.n_head

    def head_size(self):
        return self.head_dim or self.n_embd // self.n_head

    def width_mult(self):
        """muP's n_embd / mup_base_width (1.0 without muP): the factor its rules scale by."""
        return self.n_embd / self.mup_base_width if self.mup else 1.0

    def expert_hidden(self):
        return self.moe_hidden or max(1, 4 * self.n_embd // self.moe_top_k)


# ----------------------------------------------------------------------------------------
# dropout


def dropout(x, p, training):
    """Inverted dropout (Srivastava et al. 2014): zero each element with probability p and
    scale the survivors by 1/(1-p), so the expected value is unchanged. F.dropout on CUDA;
    on CPU, dropout_mask's cheaper draws."""
    if not training or p == 0.0:
        return x
    if x.is_cuda:
        return F.dropout(x, p, True)
    drop, scale = dropout_mask(x.shape, p, x.device)
    return x.masked_fill(drop, 0.0) * scale  # backward keeps the 1-byte mask, not a float one


# ----------------------------------------------------------------------------------------
# rotary position embedding (RoPE, Su et al. 2021)


def rope(x, start, theta):
    """Rotate each pair (x_i, x_{i + hs/2}) of x (B, heads, T, hs) by the angle
    position * theta^(-2i/hs) (Su et al. 2021, eq. 34, in the rotate-half layout of
    GPT-NeoX), positions start .. start+T-1. q.k then depends on the positions only
    through their difference; norms are unchanged. Computed in fp32."""
    T, hs = x.shape[-2], x.shape[-1]
    freqs = theta ** (-torch.arange(0, hs, 2, device=x.device, dtype=torch.float32) / hs)  # (hs/2,)
    angles = torch.arange(start, start + T, device=x.device, dtype=torch.float32)[:, None] * freqs  # (T, hs/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


# ----------------------------------------------------------------------------------------
# the transformer


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        # query, key and value for all heads in one matmul (with grouped-query attention,
        # n_kv_head key and value heads), then the output projection; q_dim = n_embd but in a pruned model
        self.hs = config.head_size()
        self.q_dim, self.kv_dim = config.n_head * self.hs, config.kv_heads() * self.hs
        self.c_attn = nn.Linear(config.n_embd, self.q_dim + 2 * self.kv_dim, bias=config.bias)
        self.c_attn.part_sizes = (self.q_dim, self.kv_dim, self.kv_dim)  # q | k | v, for LoRA's c_attn[q,v]
        self.c_proj = nn.Linear(self.q_dim, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True  # marker: GPT-2's scaled init, see GPT._init_weights
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.kind = (config.attention, config.attn_window, config.attn_block, config.attn_summary)
        self.n_kv_head = config.kv_heads()
        self.rope_theta = config.rope_theta if config.pos_emb == "rope" else None
        # muP: attention logits q.k / d rather than / sqrt(d) (mup.py, rule 4), written as q scaled by
        # sqrt(d_base / d) = width_mult ** -0.5 before the usual 1 / sqrt(d): then every attention
        # kind and the KV cache get it, and at the base width nothing changes
        self.q_mult = config.width_mult() ** -0.5

    def forward(self, x, cache=None):
        """(B, T, C) -> (B, T, C). cache (attention.KVCache, generation): an empty one takes
        x as the whole context from position 0; a filled one takes x as the next token."""
        B, T, C = x.size()  # batch, time, channels (n_embd)
        q, k, v = self.c_attn(x).split((self.q_dim, self.kv_dim, self.kv_dim), dim=2)
        q = q.view(B, T, self.n_head, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.hs).transpose(1, 2)  # (B, n_kv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.hs).transpose(1, 2)  # (B, n_kv, T, hs)
        if self.rope_theta is not None:  # rotate q and k by their positions (the cache's tokens come first)
            start = cache.length if cache is not None else 0
            q, k = rope(q, start, self.rope_theta), rope(k, start, self.rope_theta)
        if self.q_mult != 1.0:
            q = q * self.q_mult
        if cache is None and self.n_kv_head != self.n_head:
            # grouped-query attention: each key/value head serves n_head / n_kv_head query heads
            k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=1) for t in (k, v))
        if cache is not None:
            y = cache.step(q, k, v) if cache.length else cache.prefill(q, k, v)
        elif self.kind[0] != "full":
            y = attend(q, k, v, *self.kind, p=self.dropout if self.training else 0.0)
        elif self.training and self.dropout > 0.0 and not x.is_cuda:
            y = self._attention_with_dropout(q, k, v)
        else:
            # flash attention (CUDA) / fused CPU kernel; on CUDA it applies dropout itself
            p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, self.q_dim)  # heads side by side again: (B, T, nh * hs)
        return dropout(self.c_proj(y), self.dropout, self.training)

    def _attention_with_dropout(self, q, k, v):
        # softmax(q k^T / sqrt(hs) + causal mask), dropout on the weights, times v: written
        # out because CPU SDPA with dropout_p > 0 leaves its fused kernel for a slower one
        B, nh, T, hs = q.shape
        q, k, v = (t.reshape(B * nh, T, hs) for t in (q, k, v))
        future = torch.full((T, T), float("-inf"), device=q.device).triu_(1)  # -inf above the diagonal
        att = torch.baddbmm(future, q, k.transpose(1, 2), alpha=1.0 / math.sqrt(hs))  # (B*nh, T, T)
        att = att.softmax(dim=-1)
        drop, scale = dropout_mask(att.shape, self.dropout, att.device)
        y = att.masked_fill(drop, 0.0) @ v  # (B*nh, T, T) x (B*nh, T, hs) -> (B*nh, T, hs)
        return (y * scale).view(B, nh, T, hs)  # 1/(1-p) applied to the T x hs output, not the T x T weights


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = config.mlp_hidden or 4 * config.n_embd  # GPT-2's 4C, or what prune.py kept
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True
        self.dropout = config.dropout

    def forward(self, x):
        x = F.gelu(self.c_fc(x))  # (B, T, 4C or mlp_hidden); exact erf GELU, as nanoGPT
        return dropout(self.c_proj(x), self.dropout, self.training)


class MoEFeedForward(nn.Module):
    """moe.MoE as a block's feed-forward, with the block's residual dropout."""

    def __init__(self, config):
        super().__init__()
        c = config
        self.moe = MoE(c.n_embd, c.expert_hidden(), c.moe_num_experts, c.moe_top_k, c.moe_router,
                       c.moe_capacity_factor, c.moe_eval_capacity_factor, c.moe_aux_loss_coef,
                       c.moe_z_loss_coef, c.moe_noisy, c.moe_shared_expert, c.moe_init_scale, c.bias)
        self.dropout = c.dropout
        self.out_features = c.n_embd  # the output width, for an adapter (peft.apply_adapters)

    def forward(self, x):
        y, aux = self.moe(x)
        return dropout(y, self.dropout, self.training), aux


class Block(nn.Module):
    def __init__(self, config, moe=False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MoEFeedForward(config) if moe else MLP(config)
        self.is_moe = moe

    def forward(self, x, cache=None):
        """(B, T, C) -> (B, T, C), and the MoE's aux dict (None for a dense block). cache:
        this block's attention.KVCache, in generation."""
        # pre-LayerNorm residual block (GPT-2, section 2.3)
        x = x + self.attn(self.ln_1(x), cache)
        if self.is_moe:
            y, aux = self.mlp(self.ln_2(x))
            return x + y, aux
        return x + self.mlp(self.ln_2(x)), None


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.emb_dim or config.n_embd),  # token embedding
                **({"emb_proj": nn.Linear(config.emb_dim, config.n_embd, bias=False)}  # ALBERT's factorization
                   if config.emb_dim else {}),
                **({"wpe": nn.Embedding(config.block_size, config.n_embd)}  # learned positions
                   if config.pos_emb == "learned" else {}),
                h=nn.ModuleList([Block(config, config.is_moe_block(i)) for i in range(config.n_stored_blocks())]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.emb_dim or config.n_embd, config.vocab_size, bias=False)
        # weight tying (Press & Wolf 2017): the output head reads the token embedding matrix
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        if config.mup and config.width_mult() != 1.0:
            # muP rule 2 (mup.py): hidden matrices (every Linear inside a block) start with variance
            # proportional to 1 / fan_in, i.e. GPT-2's std times sqrt(base / width); the embedding keeps 0.02
            with torch.no_grad():
                for block in self.transformer.h:
                    for m in block.modules():
                        if isinstance(m, nn.Linear):
                            m.weight.mul_(config.width_mult() ** -0.5)

    def _init_weights(self, module):
        # GPT-2: N(0, 0.02) everywhere; the projections that write into the residual stream
        # get std 0.02 / sqrt(2 * n_layer), since each block adds two of them to the stream
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_projection", False):
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, MoE):
            # each expert as a dense MLP would be, times moe_init_scale (Switch uses 0.1)
            s = self.config.moe_init_scale
            nn.init.normal_(module.w_fc, mean=0.0, std=0.02 * s)
            nn.init.normal_(module.w_proj, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer) * s)

    def get_num_params(self, non_embedding=True, active=False, executed=False):
        """Parameters, counted once (the tied head is the embedding, a shared block once).
        Position embeddings are left out by default: they are a lookup, not a matmul, so they
        cost no FLOPs. active=True counts what one token uses: of each MoE layer's experts,
        top_k. executed=True counts a shared block once per layer it runs at (the compute)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        if active:
            n -= sum(_inactive(m) for m in self.modules() if isinstance(m, MoE))
        if executed:
            runs = Counter(self.config.stored_block(i) for i in range(self.config.n_layer))  # stored block -> runs
            for j, block in enumerate(self.transformer.h):
                per_run = sum(p.numel() for p in block.parameters())
                if active:
                    per_run -= sum(_inactive(m) for m in block.modules() if isinstance(m, MoE))
                n += (runs[j] - 1) * per_run
        return n

    def logits(self, h):
        """(..., n_embd) -> (..., vocab): the tied output head; with a factorized embedding,
        back through its projection first (n_embd -> emb_dim, its transpose) and then the table."""
        if "emb_proj" in self.transformer:
            h = F.linear(h, self.transformer.emb_proj.weight.t())  # (..., emb_dim)
        if self.config.mup and self.config.width_mult() != 1.0:
            h = h * (1.0 / self.config.width_mult())  # muP rule 3 (mup.py): the readout times base / width
        return self.lm_head(h)

    def lr_scale(self, name, p):
        """The factor on the learning rate of parameter `name` (step.make_optimizer): 1, but
        under muP base / width for the hidden matrices, every >= 2-D tensor inside a block
        (mup.py, rule 2: Adam's update of a fan_in-wide matrix adds up fan_in coordinates)."""
        if self.config.mup and name.startswith("transformer.h.") and p.dim() >= 2:
            return 1.0 / self.config.width_mult()
        return 1.0

    def hidden_states(self, idx):
        """(B, T) token ids -> (B, T, n_embd) after the final LayerNorm."""
        return self._trunk(idx)[0]

    def _trunk(self, idx, caches=None):
        """(B, T) -> ((B, T, n_embd) after the final LayerNorm, the MoE layers' aux dicts).
        caches (generation): one attention.KVCache per block; idx continues their context."""
        B, T = idx.size()
        start = caches[0].length if caches else 0  # the position of idx's first token
        if start + T > self.config.block_size and "wpe" in self.transformer:  # RoPE and NoPE have no table to run past
            raise ValueError(f"sequence of length {start + T} is longer than block_size={self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C), or (B, T, emb_dim) ...
        if "emb_proj" in self.transformer:
            x = self.transformer.emb_proj(x)  # ... projected up to (B, T, C)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(start, start + T, dtype=torch.long, device=idx.device))  # + (T, C)
        x = dropout(x, self.config.dropout, self.training)
        # checkpointing only when a backward will follow; RNG state is saved and replayed
        # (preserve_rng_state defaults to True), so recomputed dropout masks match
        recompute = self.config.grad_checkpointing and self.training and torch.is_grad_enabled()
        auxes = []
        for i in range(self.config.n_layer):
            block = self.transformer.h[self.config.stored_block(i)]  # a shared block runs at several layers
            if caches:
                x, aux = block(x, caches[i])
            else:
                x, aux = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            if aux is not None:
                auxes.append(aux)
        return self.transformer.ln_f(x), auxes

    def forward(self, idx, targets=None, loss_parts=False):
        """idx, targets: (B, T) int64. Returns logits (B, T, vocab) and the mean
        cross-entropy over positions whose target is not -1 (or None without targets).
        With MoE layers, in training mode, the loss also holds their weighted balancing
        and z losses; in eval mode it is the cross-entropy alone, so val losses compare
        with a dense model's. Routing statistics of this forward: self.moe_stats.
        loss_parts=True returns the loss as {"ce": cross-entropy, "aux": the MoE losses
        (training mode, MoE layers only)} instead of their sum, for a caller that weights
        the cross-entropy itself (distillation: step.forward_backward)."""
        x, auxes = self._trunk(idx)
        logits = self.logits(x)  # (B, T, vocab)
        loss = aux = None
        if targets is not None:
            # in fp32 even under autocast: a bf16 log-softmax loses ~3 significant digits
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
            )
        if auxes:
            # for logging only, replaced by every forward (the losses travel in the return value);
            # kept as tensors, since reading them would sync a GPU on every forward
            self.moe_stats = {k: torch.stack([a[k] for a in auxes]) for k in ("aux_loss", "z_loss", "dropped",
                                                                             "entropy", "load")}
            if loss is not None:
                self.moe_stats["ce"] = loss.detach()
            if loss is not None and self.training:
                aux = sum(a["loss"] for a in auxes)
        if loss_parts:
            return logits, {"ce": loss, **({"aux": aux} if aux is not None else {})}
        return logits, (loss if aux is None else loss + aux)

    def moe_layers(self):
        return [m for m in self.modules() if isinstance(m, MoE)]

    def crop_block_size(self, block_size):
        """Use fewer positions than the model was built with (e.g. fine-tuning on shorter
        windows): keep the first block_size learned positions."""
        if block_size > self.config.block_size:
            raise ValueError(
                f"block_size={block_size} is larger than the model's {self.config.block_size} positions"
            )
        self.config.block_size = block_size
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())

    def flops_per_token(self, T):
        """Training FLOPs per token (forward + backward) at context T, as in the PaLM paper
        (Chowdhery et al. 2022, appendix B): 6N for the weight matmuls plus 12 * L * T * C for
        attention's two (T x T) matmuls, counting the masked half as most reports do."""
        N = self.get_num_params(active=True, executed=True)  # top_k experts; a shared block at every layer it runs
        L, C = self.config.n_layer, self.config.n_head * self.config.head_size()  # n_embd, unless pruned
        return 6 * N + 12 * L * T * C

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, kv_cache=True):
        """Extend idx (B, T) by max_new_tokens sampled tokens. temperature=0 is greedy.
        Pass a seeded torch.Generator for reproducible samples. Call model.eval() first.

        The context: at most block_size tokens (the last block_size of a longer prompt).
        Positions are learned and absolute, so a context cannot slide one token at a time
        without recomputing every position; when it is full it drops its older half and
        restarts at position 0 (each token is predicted from between block_size/2 and
        block_size tokens). kv_cache=True keeps each layer's keys and values (attention.KVCache)
        and runs only the new token through the model, re-reading the context once per
        block_size/2 tokens; kv_cache=False recomputes the whole context for every token.
        Both give the same tokens (tests/test_attention.py)."""
        L = self.config.block_size
        start = max(0, idx.size(1) - L)  # the context is idx[:, start:]
        caches = None
        for _ in range(max_new_tokens):
            if idx.size(1) - start > L:  # full: drop the older half
                start, caches = max(start + L // 2, idx.size(1) - L), None
            if not kv_cache:
                h = self._trunk(idx[:, start:])[0]
            elif caches is None:  # a new context: read it whole, keeping its keys and values
                c = self.config
                caches = [KVCache(c.attention, L, c.attn_window, c.attn_block, c.attn_summary) for _ in range(c.n_layer)]
                h = self._trunk(idx[:, start:], caches)[0]
            else:  # only the newest token
                h = self._trunk(idx[:, -1:], caches)[0]
            logits = self.logits(h[:, -1, :]).float()  # (B, vocab)
            if temperature == 0.0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, next_id), dim=1)
        return idx


def _inactive(moe):
    """The expert parameters a token does not use: those of n_experts - top_k experts."""
    expert = [moe.w_fc, moe.w_proj] + [b for b in (moe.b_fc, moe.b_proj) if b is not None]
    return sum(p.numel() for p in expert) * (moe.n_experts - moe.top_k) // moe.n_experts


def moe_statistics(stats):
    """GPT.moe_stats as plain numbers: the unweighted balancing and z losses, the dropped
    fraction and the router entropy (means over MoE layers), each layer's expert load, and
    the cross-entropy without the aux losses."""
    out = {k: stats[k].mean().item() for k in ("aux_loss", "z_loss", "dropped", "entropy")}
    out["load"] = stats["load"].tolist()
    if "ce" in stats:
        out["ce"] = stats["ce"].item()
    return out
