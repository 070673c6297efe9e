"""
A small GPT, all of it in this file: GPT-2's architecture as nanoGPT writes it.

    learned token + position embeddings -> n_layer x [pre-LayerNorm attention, pre-LayerNorm GELU MLP]
    -> final LayerNorm -> output head tied to the token embedding

Used by train.py (pretraining, fine-tuning, distillation), sample.py and bench.py:

    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65))
    logits, loss = model(idx, targets)      # logits for every position: (B, T, vocab)

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
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


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

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")


# ----------------------------------------------------------------------------------------
# dropout


def dropout_mask(shape, p, device):
    """(bool mask, True where an element is dropped; the scale 1/(1-p) for the rest).

    F.dropout on CPU draws one float per element through bernoulli_ (~9 ns each here);
    we draw 64-bit integers instead (~4 ns per 8 bytes) and read them as int16, so one
    draw covers 4 elements. p is rounded to a multiple of 1/65536 and the scale uses the
    rounded p, so the expectation stays exact. The draws come from torch's global
    generator: torch.manual_seed and gradient checkpointing's RNG replay govern them
    exactly as they govern F.dropout."""
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    bits = bits.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    n_drop = min(round(p * 65536), 65535)  # how many of the 65536 values mean "drop"
    return bits < n_drop - 32768, 65536.0 / (65536 - n_drop)


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
# the transformer


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        # query, key and value for all heads in one matmul, then the output projection
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True  # marker: GPT-2's scaled init, see GPT._init_weights
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x):
        B, T, C = x.size()  # batch, time, channels (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if self.training and self.dropout > 0.0 and not x.is_cuda:
            y = self._attention_with_dropout(q, k, v)
        else:
            # flash attention (CUDA) / fused CPU kernel; on CUDA it applies dropout itself
            p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
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
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True
        self.dropout = config.dropout

    def forward(self, x):
        x = F.gelu(self.c_fc(x))  # (B, T, 4C); exact erf GELU, as nanoGPT
        return dropout(self.c_proj(x), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        # pre-LayerNorm residual block (GPT-2, section 2.3)
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
                wpe=nn.Embedding(config.block_size, config.n_embd),  # learned positions
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying (Press & Wolf 2017): the output head reads the token embedding matrix
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)

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

    def get_num_params(self, non_embedding=True):
        """Parameters, counted once (the tied head is the embedding). Position embeddings
        are left out by default: they are a lookup, not a matmul, so they cost no FLOPs."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def hidden_states(self, idx):
        """(B, T) token ids -> (B, T, n_embd) after the final LayerNorm."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size={self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C) + (T, C)
        x = dropout(x, self.config.dropout, self.training)
        # checkpointing only when a backward will follow; RNG state is saved and replayed
        # (preserve_rng_state defaults to True), so recomputed dropout masks match
        recompute = self.config.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.transformer.h:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None):
        """idx, targets: (B, T) int64. Returns logits (B, T, vocab) and the mean
        cross-entropy over positions whose target is not -1 (or None without targets)."""
        logits = self.lm_head(self.hidden_states(idx))  # (B, T, vocab)
        loss = None
        if targets is not None:
            # in fp32 even under autocast: a bf16 log-softmax loses ~3 significant digits
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
            )
        return logits, loss

    def crop_block_size(self, block_size):
        """Use fewer positions than the model was built with (e.g. fine-tuning on shorter
        windows): keep the first block_size learned positions."""
        if block_size > self.config.block_size:
            raise ValueError(
                f"block_size={block_size} is larger than the model's {self.config.block_size} positions"
            )
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())

    def flops_per_token(self, T):
        """Training FLOPs per token (forward + backward) at context T, as in the PaLM paper
        (Chowdhery et al. 2022, appendix B): 6N for the weight matmuls plus 12 * L * T * C for
        attention's two (T x T) matmuls, counting the masked half as most reports do."""
        N = self.get_num_params()
        L, C = self.config.n_layer, self.config.n_embd
        return 6 * N + 12 * L * T * C

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Extend idx (B, T) by max_new_tokens sampled tokens. temperature=0 is greedy.
        Pass a seeded torch.Generator for reproducible samples. Call model.eval() first."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]  # the model sees at most block_size tokens
            logits = self.lm_head(self.hidden_states(context)[:, -1, :]).float()  # (B, vocab)
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
