"""attention.py: every kind's outputs and gradients = masked full attention (the reference
mask, allowed), a window or block past the context = full attention, causality through a
whole GPT, the pairs the fused calls really score = scored_pairs (linear for sliding), the
KV cache = the full forward at every position and generation with it = recomputation
(greedy and sampled, past the context's drop of its older half, MoE too; the sliding ring
stays at attn_window slots), the attention keys recorded in and frozen by checkpoints,
short train.py runs of the sparse kinds with dropout, gradient checkpointing (= the plain
path, bit for bit), LoRA, MoE and bf16, and attention dropout that is unbiased. Each test
that could pass by accident has its negative control."""

import json
import math
import os

import pytest
import torch
from torch.nn import functional as F

import attention
import model as model_module
import train
from attention import allowed, attend, scored_pairs, sliding_tile
from checkpoint import read_checkpoint
from config import load_config
from conftest import TINY, exit_code
from errors import UserError
from model import GPT, GPTConfig

SDPA = F.scaled_dot_product_attention  # the real one, before any test replaces it


def qkv(B, H, T, hs=8, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, hs, generator=g).requires_grad_(grad) for _ in range(3)]


def reference(q, k, v, mask):
    """Full attention with the (T, T) mask: what every kind must compute."""
    return SDPA(q, k, v, attn_mask=mask)


# ----------------------------------------------------------------------------------------
# outputs and gradients = masked full attention


# (kind, T, B, window, block, summary): T not a multiple of the window / block, shorter than
# one, an exact multiple; batch 1 and 3; summary 0 (blocks alone), 1, 2 and = block
CASES = [
    ("full", 13, 2, 0, 0, 0),
    ("sliding", 13, 1, 4, 0, 0),  # 4 chunks, the last one padded
    ("sliding", 3, 3, 4, 0, 0),  # shorter than one window
    ("sliding", 16, 3, 4, 0, 0),  # exactly 4 windows
    ("sliding", 17, 2, 5, 0, 0),
    ("sliding", 9, 2, 1, 0, 0),  # window 1: each position sees itself only
    # windows past 32 run in tiles shorter than the window (attention.sliding_tile)
    ("sliding", 150, 2, 48, 0, 0),  # tiles of 32 reading 64 + 32 keys: the window rounded up
    ("sliding", 200, 1, 64, 0, 0),  # tiles of 32, the last one partial
    ("sliding", 70, 2, 64, 0, 0),  # the head's two tiles and a partial tail, nothing between
    ("sliding", 640, 1, 128, 0, 0),  # tiles of 64: head, 6 whole tiles between, no tail
    ("blocksparse", 13, 1, 0, 4, 1),
    ("blocksparse", 3, 3, 0, 4, 2),  # shorter than one block
    ("blocksparse", 16, 3, 0, 4, 0),  # blocks alone, exactly 4 of them
    ("blocksparse", 14, 2, 0, 4, 4),  # summary = block: every earlier position
    ("blocksparse", 17, 2, 0, 5, 2),
    ("blocksparse", 10, 1, 0, 3, 0),
]


def case_id(c):
    kind, T, B, w, b, s = c
    return f"{kind}-T{T}-B{B}" + (f"-w{w}" if kind == "sliding" else f"-b{b}s{s}" if kind == "blocksparse" else "")


@pytest.mark.parametrize("kind,T,B,window,block,summary", CASES, ids=[case_id(c) for c in CASES])
def test_outputs_and_gradients_equal_masked_full_attention(kind, T, B, window, block, summary):
    q, k, v = qkv(B, 3, T, grad=True)
    mask = allowed(T, kind, window, block, summary)
    y = attend(q, k, v, kind, window, block, summary)
    ref = reference(q, k, v, mask)
    assert y.shape == (B, 3, T, 8)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))  # a random upstream gradient
    grads = torch.autograd.grad(y, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for name, a, r in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5, msg=f"d/d{name}")


@pytest.mark.parametrize("kind,T,window,block,summary", [
    ("sliding", 13, 4, 0, 0), ("sliding", 16, 4, 0, 0), ("blocksparse", 13, 0, 4, 1), ("blocksparse", 16, 0, 4, 2),
])
def test_an_off_by_one_pattern_gives_another_result(kind, T, window, block, summary):
    # the comparison above can fail: the mask of a window or summary one larger or one
    # smaller is another pattern, and attention with it is measurably different
    q, k, v = qkv(2, 3, T)
    y = attend(q, k, v, kind, window, block, summary)
    for d in (-1, 1):
        wrong = allowed(T, kind, window + d * (kind == "sliding"), block, summary + d * (kind == "blocksparse"))
        assert not torch.equal(wrong, allowed(T, kind, window, block, summary))
        assert (y - reference(q, k, v, wrong)).abs().max() > 1e-2


def test_the_masks_match_the_docstring_pictures():
    assert attention.describe(8, "sliding", window=3).splitlines()[3] == ". x x x . . . ."
    assert attention.describe(8, "blocksparse", block=4, summary=1).splitlines()[6] == ". . . x x x x ."
    # counts: sliding sees min(i + 1, w) keys; block-sparse 1 (T=8, b=4, c=1): 10 + 1*4 + 10
    assert allowed(8, "sliding", window=3).sum(1).tolist() == [1, 2, 3, 3, 3, 3, 3, 3]
    assert allowed(8, "blocksparse", block=4, summary=1).sum() == 24


@pytest.mark.parametrize("T", [1, 7, 16])
def test_a_window_or_block_past_the_context_is_full_attention(T):
    q, k, v = qkv(2, 2, T)
    full = attend(q, k, v, "full")
    torch.testing.assert_close(full, reference(q, k, v, allowed(T, "full")), rtol=1e-5, atol=1e-5)
    for w in (T, T + 5):
        assert torch.equal(allowed(T, "sliding", window=w), allowed(T, "full"))
        assert torch.equal(attend(q, k, v, "sliding", window=w), full)  # the same causal call
    for b, c in ((T, 0), (T, 1), (T + 3, 2)):
        assert torch.equal(allowed(T, "blocksparse", block=b, summary=c), allowed(T, "full"))
        assert torch.equal(attend(q, k, v, "blocksparse", block=b, summary=c), full)
    # and a summary of the whole block sees every earlier position whatever the block: full
    # attention, computed by the tiles (so equal up to float sums)
    assert torch.equal(allowed(T, "blocksparse", block=3, summary=3), allowed(T, "full"))
    torch.testing.assert_close(attend(q, k, v, "blocksparse", block=3, summary=3), full, rtol=1e-5, atol=1e-5)
    if T > 1:  # control: one position less is not full attention
        assert (attend(q, k, v, "sliding", window=T - 1) - full).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------
# causality through a whole GPT

KINDS = {  # GPTConfig keys of each kind, as the model tests use them (block_size 16)
    "full": {},
    "sliding": dict(attention="sliding", attn_window=4),
    "blocksparse": dict(attention="blocksparse", attn_block=4, attn_summary=1),
}


def tiny(kind, **kw):
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, dropout=0.0, **KINDS[kind])
    cfg.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**cfg))


@pytest.mark.parametrize("kind", list(KINDS))
def test_changing_token_t_leaves_earlier_logits_bit_identical(kind):
    m = tiny(kind).eval()
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    base, _ = m(idx)
    for t in (0, 3, 4, 9, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 50
        out, _ = m(changed)
        assert torch.equal(out[:, :t], base[:, :t]), t
        assert not torch.equal(out[:, t], base[:, t])  # the change does reach position t


def test_one_sliding_layer_does_not_see_past_its_window():
    # the pattern's other side: with one layer, position t + window no longer sees token t
    m = tiny("sliding", n_layer=1).eval()
    idx = torch.randint(0, 50, (1, 16), generator=torch.Generator().manual_seed(0))
    changed = idx.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 50
    a, b = m(idx)[0], m(changed)[0]
    assert not torch.equal(a[:, 8], b[:, 8])  # 8 - 5 < 4: in the window
    assert torch.equal(a[:, 9:], b[:, 9:])  # 9 - 5 = 4: out of it


# ----------------------------------------------------------------------------------------
# the pairs the fused calls score


def scored_by_calls(monkeypatch, T, kind, window=0, block=0, summary=0, B=2, H=3):
    """Run attend with SDPA replaced by a spy: (pairs scored per sequence and head, the calls
    as (batch dims, L, S, is_causal, mask shape)). A causal call scores its lower triangle
    L(L+1)/2 per tile, a masked one L*S."""
    calls = []

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        calls.append((tuple(q.shape[:-2]), q.shape[-2], k.shape[-2], is_causal,
                      None if attn_mask is None else tuple(attn_mask.shape)))
        return SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    flash = attention._flash

    def flash_spy(q, k, v, ok):  # the tiled CPU path: a group of tiles per call
        calls.append((tuple(q.shape[:-2]), q.shape[-2], k.shape[-2], False, tuple(ok.shape)))
        return flash(q, k, v, ok)

    q, k, v = qkv(B, H, T, hs=4)
    with monkeypatch.context() as mp:
        mp.setattr(attention.F, "scaled_dot_product_attention", spy)
        mp.setattr(attention, "_flash", flash_spy)
        attend(q, k, v, kind, window, block, summary)
    pairs = 0
    for batch, L, S, causal, _ in calls:
        if causal:
            assert L == S  # the lower triangle of a square tile
        pairs += math.prod(batch) * (L * (L + 1) // 2 if causal else L * S)
    assert pairs % (B * H) == 0
    return pairs // (B * H), calls


@pytest.mark.parametrize("kind,window,block,summary", [
    ("full", 0, 0, 0), ("sliding", 4, 0, 0), ("sliding", 5, 0, 0), ("sliding", 1, 0, 0), ("sliding", 48, 0, 0),
    ("sliding", 64, 0, 0),
    ("blocksparse", 0, 4, 1), ("blocksparse", 0, 4, 0), ("blocksparse", 0, 5, 2), ("blocksparse", 0, 4, 4),
])
def test_pairs_scored_by_the_calls_equal_scored_pairs(monkeypatch, kind, window, block, summary):
    for T in (1, 3, 4, 5, 13, 16, 17, 40) + ((70, 100, 130, 150) if window > 32 else ()):
        pairs, calls = scored_by_calls(monkeypatch, T, kind, window, block, summary)
        assert pairs == scored_pairs(T, kind, window, block, summary), T
        # the tiles cover every pair the pattern needs (test 1 shows they compute them right)
        assert allowed(T, kind, window, block, summary).sum() <= pairs
        # whole tiles per call: the tile length is sliding_tile(window) or the block
        tile = {"full": T, "sliding": sliding_tile(window) if T > window else T, "blocksparse": min(block, T)}[kind]
        assert all(L == tile for _, L, _, _, _ in calls), calls


def test_sliding_costs_linear_pairs_and_full_quadratic(monkeypatch):
    T, w = 4096, 128
    full, _ = scored_by_calls(monkeypatch, T, "full", B=1, H=1)
    assert full == scored_pairs(T, "full") == T * (T + 1) // 2
    sliding, calls = scored_by_calls(monkeypatch, T, "sliding", window=w, B=1, H=1)
    assert sliding == scored_pairs(T, "sliding", window=w) <= 2 * T * w
    assert sliding < full / 8
    assert allowed(T, "sliding", window=w).sum() <= sliding
    # no T x T mask: tiles of 64 queries reading 128 + 64 keys, each call's mask (1, its
    # tiles or 1 shared by all, 64, 192), and the calls cover the T / 64 tiles once
    assert all(c[1:3] == (64, 192) and c[4][0] == 1 and c[4][1] in (1, c[0][1]) for c in calls), calls
    assert sum(c[0][1] for c in calls) == T // 64, calls
    sparse, _ = scored_by_calls(monkeypatch, T, "blocksparse", block=64, summary=8, B=1, H=1)
    assert sparse == scored_pairs(T, "blocksparse", block=64, summary=8) == 64 * 64 * (63 * 8 + 64)
    assert allowed(T, "blocksparse", block=64, summary=8).sum() <= sparse < full / 3


# ----------------------------------------------------------------------------------------
# the KV cache = recomputing the context


GEN_KINDS = {
    "full": {},
    "sliding-w4": dict(attention="sliding", attn_window=4),
    "sliding-w5": dict(attention="sliding", attn_window=5),  # the ring wraps unevenly in 16
    "sliding-w32": dict(attention="sliding", attn_window=32),  # past block_size: 16 slots
    "blocksparse-b4s1": dict(attention="blocksparse", attn_block=4, attn_summary=1),
    "blocksparse-b5s0": dict(attention="blocksparse", attn_block=5, attn_summary=0),
    "blocksparse-b4s4": dict(attention="blocksparse", attn_block=4, attn_summary=4),
}


def sharp(m):
    """m with its matrices drawn at std 0.3: GPT-2's init (0.02) gives near-uniform attention
    and logits that hardly depend on the context, so a cache that read the wrong positions
    could still produce the same tokens. Here attention and sampling both depend on them."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3, generator=g)
    return m.eval()


def generate_both(m, prompt, temperature, n=40, seed=3):
    """Tokens with and without the cache, each from a generator of the same seed."""
    out = [m.generate(prompt, n, temperature=temperature, top_k=10, generator=torch.Generator().manual_seed(seed),
                      kv_cache=kv) for kv in (True, False)]
    return out


def recording_caches(monkeypatch):
    made = []

    class Recorded(attention.KVCache):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(model_module, "KVCache", Recorded)
    return made


@pytest.mark.parametrize("name", list(GEN_KINDS))
def test_kv_cache_generates_the_tokens_of_recomputation(name, monkeypatch):
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, **GEN_KINDS[name])
    torch.manual_seed(0)
    m = sharp(GPT(GPTConfig(**cfg)))
    g = torch.Generator().manual_seed(1)
    short, long = torch.randint(0, 50, (2, 3), generator=g), torch.randint(0, 50, (2, 21), generator=g)
    made = recording_caches(monkeypatch)
    # greedy from a short prompt; sampled (temperature 1, top_k) from one longer than block_size.
    # 40 new tokens: the context fills and drops its older half several times
    for prompt, temperature in ((short, 0.0), (long, 1.0)):
        made.clear()
        cached, recomputed = generate_both(m, prompt, temperature)
        assert cached.shape == (2, prompt.size(1) + 40) and torch.equal(cached[:, :prompt.size(1)], prompt)
        assert torch.equal(cached, recomputed)
        # the cache really was used: a new context (one cache per layer) at the start and
        # at each drop, and one-token steps in between (40 tokens, contexts of 9 to 16)
        assert len(made) % 2 == 0 and 2 * 4 <= len(made) <= 2 * 6
        assert all(c.length <= 16 for c in made)
        # the ring of a sliding cache: min(window, block_size) slots however long the text
        slots = min(cfg.get("attn_window", 16), 16) if name.startswith("sliding") else 16
        assert all(c.k.shape == c.v.shape == (2, 2, slots, 16) for c in made)
    # control: another seed samples other tokens, so equality above is not a coincidence of top_k
    other = m.generate(long, 40, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(other, cached)


@pytest.mark.parametrize("name", list(GEN_KINDS))
def test_cache_prefill_and_steps_equal_the_full_forward_at_every_position(name):
    # the numbers under the tokens above: a 5-token prefill, then one token at a time
    torch.manual_seed(0)
    c = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, **GEN_KINDS[name])
    m = sharp(GPT(c))
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = m.hidden_states(idx)
        caches = [attention.KVCache(c.attention, 16, c.attn_window, c.attn_block, c.attn_summary) for _ in range(2)]
        steps = [m._trunk(idx[:, :5], caches)[0]] + [m._trunk(idx[:, t:t + 1], caches)[0] for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_kv_cache_with_moe_generates_the_tokens_of_recomputation(kind):
    m = sharp(tiny(kind, moe_num_experts=4, moe_top_k=2, moe_router="topk"))
    prompt = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(2))
    for temperature in (0.0, 1.0):
        cached, recomputed = generate_both(m, prompt, temperature)
        assert torch.equal(cached, recomputed)


def test_sliding_cache_memory_stays_at_the_window(monkeypatch):
    m = tiny("sliding", block_size=64, attn_window=8).eval()
    made = recording_caches(monkeypatch)
    out = m.generate(torch.zeros(1, 1, dtype=torch.long), 200, temperature=1.0,
                     generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 201)
    assert made and all(c.k.shape == c.v.shape == (1, 2, 8, 16) for c in made)
    # slots 8, yet a context reaches 64 positions: the ring wrapped
    assert max(c.length for c in made) == 64
    # a full cache, by contrast, holds block_size positions
    made.clear()
    tiny("full", block_size=64).eval().generate(torch.zeros(1, 1, dtype=torch.long), 5, temperature=0.0)
    assert all(c.k.shape[2] == 64 for c in made)


# ----------------------------------------------------------------------------------------
# checkpoints record the kind and freeze it


def run(args, out_dir, dataset):
    return train.train(load_config(TINY + [f"--dataset={dataset}", f"--out_dir={out_dir}", "--eval_iters=1",
                                           "--eval_interval=100", "--log_interval=1", "--warmup_iters=0"] + args))


RUN_KINDS = {
    "sliding": ["--attention=sliding", "--attn_window=4"],
    "blocksparse": ["--attention=blocksparse", "--attn_block=4", "--attn_summary=1"],
}


@pytest.fixture(scope="module")
def base_runs(char_dataset, tmp_path_factory):
    """A 2-step run of each sparse kind (the base of the resume and fine-tune tests)."""
    runs = {}
    for kind, args in RUN_KINDS.items():
        runs[kind] = str(tmp_path_factory.mktemp("attention") / kind)
        run(args + ["--max_iters=2"], runs[kind], char_dataset)
    return runs


def test_checkpoint_records_the_kind_and_resume_or_fine_tune_cannot_change_it(base_runs, char_dataset, tmp_path,
                                                                                capsys):
    out = base_runs["sliding"]
    ckpt = read_checkpoint(os.path.join(out, "ckpt.pt"))
    assert (ckpt["model_config"]["attention"], ckpt["model_config"]["attn_window"]) == ("sliding", 4)
    with open(os.path.join(out, "config.json")) as f:
        saved = json.load(f)
    assert (saved["attention"], saved["attn_window"]) == ("sliding", 4)
    bs = read_checkpoint(os.path.join(base_runs["blocksparse"], "ckpt.pt"))["model_config"]
    assert (bs["attention"], bs["attn_block"], bs["attn_summary"]) == ("blocksparse", 4, 1)
    # another kind or window on resume, or on a fine-tune: one line, exit code 2, naming the key
    ft = [f"--init_from={out}", f"--out_dir={tmp_path / 'ft'}", f"--dataset={char_dataset}"]
    for args, key in (
        (["--init_from=resume", f"--out_dir={out}", "--attention=full"], "attention=full"),
        (["--init_from=resume", f"--out_dir={out}", "--attn_window=8"], "attn_window=8"),
        (ft + ["--attention=full"], "attention=full"),
        (ft + ["--attention=blocksparse"], "attention=blocksparse"),
        (ft + ["--attn_window=2"], "attn_window=2"),
    ):
        code, err = exit_code(train.main, args, capsys)
        assert code == 2, args
        assert err.count("\n") == 1 and err.startswith("error: "), err
        was = key.split("=")[0] + "=" + str(saved[key.split("=")[0]])
        assert f"{key} differs from the checkpoint's {was}" in err
    # control: the checkpoint's own settings are accepted, and a fine-tune inherits them
    cfg = load_config(["--init_from=resume", f"--out_dir={out}", "--attention=sliding", "--attn_window=4"])
    assert (cfg.model.attention, cfg.model.attn_window) == ("sliding", 4)
    cfg = load_config(ft)
    assert (cfg.model.attention, cfg.model.attn_window) == ("sliding", 4)


@pytest.mark.parametrize("args,kind", [
    (["--attn_window=8"], "sliding"),
    (["--attn_window=8", "--attention=blocksparse"], "sliding"),
    (["--attn_block=8"], "blocksparse"),
    (["--attn_summary=2", "--attention=sliding"], "blocksparse"),
])
def test_a_setting_of_another_kind_is_refused(args, kind, capsys, tmp_path):
    code, err = exit_code(train.main, TINY + [f"--out_dir={tmp_path}"] + args, capsys)
    key = args[0][2:].split("=")[0]
    assert code == 2 and err.count("\n") == 1
    assert f"{key} is a setting of attention='{kind}'" in err and f"add --attention={kind}" in err
    # control: with its kind it is accepted
    cfg = load_config(TINY + [f"--out_dir={tmp_path}", f"--attention={kind}", args[0]])
    assert getattr(cfg.model, key) == int(args[0].split("=")[1])


def test_a_summary_longer_than_its_block_is_refused():
    with pytest.raises(UserError, match=r"attn_summary=5 must be in \[0, attn_block=4\]"):
        load_config(["--attention=blocksparse", "--attn_block=4", "--attn_summary=5"])


# ----------------------------------------------------------------------------------------
# the sparse kinds through train.py, with the features they combine with


def losses(out_dir, *keys):
    """The losses of metrics.jsonl in order: training rows' loss, evals' train_loss and val_loss."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r[k] for r in rows for k in (keys or ("loss", "train_loss", "val_loss")) if k in r]


FEATURES = {
    "dropout": ["--dropout=0.1"],
    "moe": ["--moe_num_experts=4", "--moe_top_k=2"],
    "bf16": ["--dtype=bfloat16"],
    "moe-dropout-bf16-checkpointing": ["--moe_num_experts=4", "--dropout=0.1", "--dtype=bfloat16",
                                       "--grad_checkpointing=True"],
}


@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("kind", list(RUN_KINDS))
def test_sparse_kind_trains_to_a_finite_loss(kind, feature, char_dataset, tmp_path):
    out = str(tmp_path / "run")
    row = run(RUN_KINDS[kind] + FEATURES[feature] + ["--max_iters=3"], out, char_dataset)
    values = losses(out)
    assert row["iter"] == 3 and len(values) >= 3 + 2 * 2  # 3 training rows, 2 evals of 2 splits
    assert all(math.isfinite(x) for x in values)
    assert read_checkpoint(os.path.join(out, "ckpt.pt"))["model_config"]["attention"] == kind


@pytest.mark.parametrize("kind", list(RUN_KINDS))
def test_lora_fine_tune_of_a_sparse_base_trains_to_a_finite_loss(kind, base_runs, char_dataset, tmp_path):
    out = str(tmp_path / "lora")
    run([f"--init_from={base_runs[kind]}", "--peft=lora", "--lora_targets=c_attn[q,v]", "--max_iters=2"], out,
        char_dataset)
    assert all(math.isfinite(x) for x in losses(out))
    ckpt = read_checkpoint(os.path.join(out, "ckpt.pt"))
    assert ckpt["model_config"]["attention"] == kind  # inherited from the base
    assert ckpt["model"] and all("lora_" in k for k in ckpt["model"])  # a LoRA checkpoint


@pytest.mark.parametrize("kind", list(RUN_KINDS))
def test_grad_checkpointing_trains_bit_for_bit_like_the_plain_path(kind, char_dataset, tmp_path):
    args = RUN_KINDS[kind] + ["--dropout=0.1", "--max_iters=3"]
    plain, ckpt, no_drop = (str(tmp_path / n) for n in ("plain", "ckpt", "no_drop"))
    run(args, plain, char_dataset)
    run(args + ["--grad_checkpointing=True"], ckpt, char_dataset)
    assert losses(plain) == losses(ckpt)  # exactly
    a, b = (read_checkpoint(os.path.join(d, "ckpt.pt"))["model"] for d in (plain, ckpt))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # control: dropout was on (the recomputed masks had something to match)
    run(RUN_KINDS[kind] + ["--dropout=0.0", "--max_iters=3"], no_drop, char_dataset)
    assert losses(no_drop, "loss")[0] != losses(plain, "loss")[0]  # the first step's training loss


@pytest.mark.parametrize("kind", list(KINDS))
def test_grad_checkpointing_matches_plain_path_with_dropout(kind):
    # test_model.py's test for full attention, for every kind: gradients bit for bit
    idx = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(0))
    results = []
    for ckpt in (False, True):
        m = tiny(kind, dropout=0.2, grad_checkpointing=ckpt)
        torch.manual_seed(123)
        _, loss = m(idx, idx)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)
    m = tiny(kind, dropout=0.2)
    torch.manual_seed(124)
    assert not torch.equal(m(idx, idx)[1], loss_a)


@pytest.mark.parametrize("kind,kw", [
    ("full", {}), ("sliding", dict(window=4)), ("blocksparse", dict(block=4, summary=1)),
    ("blocksparse", dict(block=4, summary=0)),
])
def test_attention_dropout_is_unbiased_and_seeded(kind, kw):
    q, k, v = qkv(1, 2, 11)  # 11: padded chunks / blocks too
    ref = attend(q, k, v, kind, **kw)
    # N copies in one batch draw N independent masks, as N seeds would
    N = 4000
    torch.manual_seed(0)
    y = attend(*(t.expand(N, -1, -1, -1).contiguous() for t in (q, k, v)), kind, p=0.5, **kw)
    mean = y.mean(0, keepdim=True)

    def rel(a):  # relative distance from the output without dropout
        return ((a - ref).norm() / ref.norm()).item()

    assert rel(mean) < 0.06  # measured ~0.015 (4000 samples of p = 0.5)
    assert rel(ref * 0.5) > 0.06 * 5  # control: a forgotten 1/(1-p) would be caught
    # dropout happened at every position of every head (of every tile), seeded by torch.manual_seed
    assert (y.std(0).amax(-1) > 1e-2).all()
    torch.manual_seed(1)
    a = attend(q, k, v, kind, p=0.5, **kw)
    torch.manual_seed(2)
    b = attend(q, k, v, kind, p=0.5, **kw)
    torch.manual_seed(1)
    assert not torch.equal(a, b) and torch.equal(a, attend(q, k, v, kind, p=0.5, **kw))
