"""
Causal attention patterns, and the key-value cache generation reads them from: which
earlier positions each query sees, computed so that the pairs a pattern skips cost nothing.

    from attention import attend, allowed, scored_pairs, KVCache
    y = attend(q, k, v, "sliding", window=128)          # q, k, v: (B, heads, T, head size)
    allowed(8, "blocksparse", block=4, summary=1)        # the (T, T) bool mask it computes

Kinds (GPTConfig.attention; model.py's CausalSelfAttention calls attend):

    full         every earlier position and itself: T(T+1)/2 pairs, quadratic in T.
    sliding      the last `window` positions, itself included (local attention: Longformer,
                 Beltagy et al. 2020; Mistral 7B, Jiang et al. 2023): T * window pairs.
    blocksparse  the Sparse Transformer's "fixed" pattern (Child et al. 2019, section 4.2):
                 the positions of its own block of `block`, and the last `summary` positions
                 of every earlier block. Those summary positions have seen their whole block,
                 so information crosses the context in two layers.

    allowed(8, "sliding", window=3)     allowed(8, "blocksparse", block=4, summary=1)
        x . . . . . . .                     x . . . . . . .
        x x . . . . . .                     x x . . . . . .
        x x x . . . . .                     x x x . . . . .
        . x x x . . . .                     x x x x . . . .
        . . x x x . . .                     . . . x x . . .
        . . . x x x . .                     . . . x x x . .
        . . . . x x x .                     . . . x x x x .
        . . . . . x x x                     . . . x x x x x

How the sparse kinds are computed: in tiles, each a call of PyTorch's fused attention
(scaled_dot_product_attention) with a small mask shared by every tile, never a T x T mask.
  sliding      chunks of `window` queries; chunk c attends to the keys of chunks c-1 and c
               (2 * window of them) through a band mask; the first chunk is plain causal.
               Scored pairs: w(w+1)/2 + (n-1) * w * 2w for n = ceil(T / w) chunks: linear in T.
  blocksparse  each block of queries attends to [the summary keys of all blocks, its own
               block] with a mask (later blocks' summaries masked, its own block causal).
               Scored pairs: n * block * (n * summary + block), n = ceil(T / block): linear
               while n * summary stays below block, quadratic with a small constant after.
The tiles are batched: one fused call per kind and layer, the tiles folded into the batch
dimension (a 5-D call leaves the fused kernel; 4-D keeps it). scored_pairs gives each
kind's count, and tests/test_attention.py checks it against the calls actually made.

Dropout on the attention weights: SDPA applies it on CUDA; on CPU the tiles are computed by
hand with dropout_mask (CPU SDPA with dropout_p > 0 leaves its fused kernel; see model.py).

The KV cache (KVCache, one per layer) keeps the keys and values of the tokens generated so
far, so each new token runs alone through the model: full and blocksparse keep up to
block_size positions, sliding a ring of `window` slots (constant memory however long the
text). Attention is blind to the order of its keys (positions live in the embeddings), so a
ring needs no reordering.
"""

import math

import torch
from torch.nn import functional as F

KINDS = ("full", "sliding", "blocksparse")


# ----------------------------------------------------------------------------------------
# the patterns, as masks (the reference, the docs' pictures) and as pair counts


def allowed(T, kind, window=0, block=0, summary=0, device="cpu"):
    """(T, T) bool: query i may attend to key j. The reference every kind must equal."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    causal = j <= i
    if kind == "full":
        return causal
    if kind == "sliding":
        return causal & (j > i - window)
    if kind == "blocksparse":
        own = (j // block) == (i // block)
        summary_col = (j % block) >= block - summary  # the last `summary` positions of a block
        return causal & (own | summary_col)
    raise ValueError(f"attention='{kind}': use one of {', '.join(KINDS)}")


def scored_pairs(T, kind, window=0, block=0, summary=0):
    """Query-key pairs the implementation scores for one sequence and head (a causal
    tile counts its lower triangle, as the fused causal kernel skips the rest)."""
    if kind == "full" or (kind == "sliding" and T <= window) or (kind == "blocksparse" and T <= block):
        return T * (T + 1) // 2
    if kind == "sliding":
        n = -(-T // window)
        return window * (window + 1) // 2 + (n - 1) * window * 2 * window
    n = -(-T // block)
    return n * block * (n * summary + block)


def describe(T, kind, window=0, block=0, summary=0):
    """The mask as text, 'x' allowed and '.' not (the module docstring's pictures)."""
    m = allowed(T, kind, window, block, summary)
    return "\n".join(" ".join("x" if a else "." for a in row) for row in m.tolist())


# ----------------------------------------------------------------------------------------
# dropout masks (model.py's residual dropout and attention dropout use them too)


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


# ----------------------------------------------------------------------------------------
# computing them


def _tiles(q, k, v, mask=None, causal=False, p=0.0):
    """Attention over a batch of tiles, (N, H, L, hs) x (N, H, S, hs) -> (N, H, L, hs); mask
    (L, S) or broadcastable, True = may attend. Fused SDPA, or by hand for CPU dropout."""
    if p == 0.0 or q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
    L, S = q.shape[-2], k.shape[-2]
    if causal:
        mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (N, H, L, S)
    att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    drop, scale = dropout_mask(att.shape, p, att.device)
    return (att.masked_fill(drop, 0.0) @ v) * scale


def sliding_attention(q, k, v, window, p=0.0):
    """Each query attends to the last `window` positions, itself included. (B, H, T, hs)."""
    B, H, T, hs = q.shape
    w = window
    if T <= w:  # every query sees every earlier position: plain causal attention
        return _tiles(q, k, v, causal=True, p=p)
    n = -(-T // w)  # chunks of w queries; padding at the end is seen by padding queries only
    pad = n * w - T
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    qc, kc, vc = (t.view(B, H, n, w, hs) for t in (q, k, v))
    first = _tiles(qc[:, :, 0], kc[:, :, 0], vc[:, :, 0], causal=True, p=p)  # (B, H, w, hs)
    # chunk c >= 1 attends to the keys of chunks c-1 and c: (B*H*(n-1), 1, 2w, hs), a 4-D
    # batch of tiles (SDPA keeps its fused kernel in 4-D, not in 5-D)
    k2 = torch.cat([kc[:, :, :-1], kc[:, :, 1:]], dim=3).reshape(B * H * (n - 1), 1, 2 * w, hs)
    v2 = torch.cat([vc[:, :, :-1], vc[:, :, 1:]], dim=3).reshape(B * H * (n - 1), 1, 2 * w, hs)
    q2 = qc[:, :, 1:].reshape(B * H * (n - 1), 1, w, hs)
    # query r of a chunk (absolute c*w + r) sees key s of the 2w (absolute (c-1)*w + s)
    # when r < s <= r + w: the band of the last w positions
    r = torch.arange(w, device=q.device)[:, None]
    s = torch.arange(2 * w, device=q.device)[None, :]
    band = (s > r) & (s <= r + w)  # (w, 2w), the same for every chunk
    rest = _tiles(q2, k2, v2, mask=band, p=p).view(B, H, (n - 1) * w, hs)
    return torch.cat([first, rest], dim=2)[:, :, :T]


def blocksparse_attention(q, k, v, block, summary, p=0.0):
    """Sparse Transformer "fixed" pattern: own block (causal) + the last `summary`
    positions of every earlier block. (B, H, T, hs)."""
    B, H, T, hs = q.shape
    b, c = block, summary
    if T <= b:  # one block: plain causal attention
        return _tiles(q, k, v, causal=True, p=p)
    n = -(-T // b)
    pad = n * b - T
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    qb, kb, vb = (t.reshape(B * H, n, b, hs) for t in (q, k, v))  # blocks as "heads" of a B*H batch
    if c == 0:
        y = _tiles(qb, kb, vb, causal=True, p=p)
    else:
        ks = kb[:, :, b - c:].reshape(B * H, 1, n * c, hs).expand(-1, n, -1, -1)  # every block's summary keys
        vs = vb[:, :, b - c:].reshape(B * H, 1, n * c, hs).expand(-1, n, -1, -1)
        k2 = torch.cat([ks, kb], dim=2)  # (B*H, n, n*c + b, hs)
        v2 = torch.cat([vs, vb], dim=2)
        blk = torch.arange(n, device=q.device)
        earlier = (torch.arange(n * c, device=q.device) // c)[None, :] < blk[:, None]  # (n, n*c): earlier blocks' summaries
        causal = torch.ones(b, b, dtype=torch.bool, device=q.device).tril()
        mask = torch.cat([earlier[:, None, :].expand(n, b, n * c), causal.expand(n, b, b)], dim=2)  # (n, b, n*c + b)
        y = _tiles(qb, k2, v2, mask=mask, p=p)
    return y.reshape(B, H, n * b, hs)[:, :, :T]


def attend(q, k, v, kind, window=0, block=0, summary=0, p=0.0):
    """Causal attention of the given kind; q, k, v: (B, H, T, hs) -> (B, H, T, hs)."""
    if kind == "full":
        return _tiles(q, k, v, causal=True, p=p)
    if kind == "sliding":
        return sliding_attention(q, k, v, window, p)
    if kind == "blocksparse":
        return blocksparse_attention(q, k, v, block, summary, p)
    raise ValueError(f"attention='{kind}': use one of {', '.join(KINDS)}")


# ----------------------------------------------------------------------------------------
# generation: the key-value cache


class KVCache:
    """One layer's keys and values of the context so far. `length` is the number of
    tokens seen (the position of the next one). full, blocksparse: slots 0..capacity-1 hold
    positions 0..capacity-1; sliding: a ring of `window` slots, position t in slot t % window."""

    def __init__(self, kind, capacity, window=0, block=0, summary=0):
        self.kind, self.window, self.block, self.summary = kind, window, block, summary
        self.slots = min(window, capacity) if kind == "sliding" else capacity
        self.k = self.v = None
        self.length = 0

    def prefill(self, q, k, v, p=0.0):
        """Attention over a whole prompt from position 0 (the cache must be empty); its keys
        and values are kept. (B, H, T, hs) -> (B, H, T, hs)."""
        assert self.length == 0, "prefill starts a context: use a fresh cache"
        B, H, T, hs = k.shape
        self.k = k.new_zeros(B, H, self.slots, hs)
        self.v = v.new_zeros(B, H, self.slots, hs)
        self._write(k, v)
        return attend(q, k, v, self.kind, self.window, self.block, self.summary, p)

    def step(self, q, k, v):
        """One new token: q, k, v (B, H, 1, hs) -> (B, H, 1, hs), attending to what its
        kind allows of the cached positions and itself."""
        t = self.length  # this token's position
        self._write(k, v)
        if self.kind == "sliding":
            n = min(t + 1, self.slots)  # the ring's filled slots: exactly the last window positions
            keys, values = self.k[:, :, :n], self.v[:, :, :n]
        elif self.kind == "blocksparse":
            start = t - t % self.block  # this token's block
            summaries = [j for j in range(start) if j % self.block >= self.block - self.summary]
            index = torch.tensor(summaries + list(range(start, t + 1)), device=k.device)
            keys, values = self.k[:, :, index], self.v[:, :, index]
        else:
            keys, values = self.k[:, :, : t + 1], self.v[:, :, : t + 1]
        return F.scaled_dot_product_attention(q, keys, values)

    def _write(self, k, v):
        T = k.shape[2]
        pos = torch.arange(self.length, self.length + T, device=k.device)
        if self.kind == "sliding":
            pos, k, v = pos[-self.slots:], k[:, :, -self.slots:], v[:, :, -self.slots:]  # the ring keeps the last
            pos = pos % self.slots
        if int(pos.max()) >= self.k.shape[2]:
            raise ValueError(f"the cache holds {self.k.shape[2]} positions; the context is longer")
        self.k[:, :, pos] = k
        self.v[:, :, pos] = v
        self.length += T
