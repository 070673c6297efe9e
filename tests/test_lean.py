"""Parameter-lean attention (issue 13, first part): grouped-query attention (n_kv_head) and
the positional encodings (pos_emb = learned | rope | none). Each option's parameter count
equals its formula; n_kv_head = n_head is today's model exactly; GQA equals a reference
written with repeated key/value heads; RoPE's scores depend only on relative position and
keep norms; RoPE and NoPE run past block_size where a position table cannot; the KV cache
(n_head / n_kv_head times smaller) generates the tokens of recomputation; checkpoints record
the options, refuse a change, and old checkpoints (without the keys) load as before."""

import math

import pytest
import torch
from torch.nn import functional as F

import train
from checkpoint import read_checkpoint, restore_model, save_checkpoint
from config import load_config
from conftest import TINY, exit_code
from model import GPT, GPTConfig, rope


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50, **kw))


def idx(T=16, seed=1):
    return torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_kv_head,pos_emb", [(0, "learned"), (2, "learned"), (1, "rope"), (4, "none")])
def test_parameter_count_equals_its_formula(n_kv_head, pos_emb):
    m = tiny(n_kv_head=n_kv_head, pos_emb=pos_emb)
    V, C, L, T, H = 50, 32, 2, 16, 4
    kv = (n_kv_head or H) * (C // H)
    per_block = (C * (C + 2 * kv)) + C * C + 8 * C * C + 2 * C  # c_attn, c_proj, the MLP, two LayerNorm gains
    expected = V * C + (T * C if pos_emb == "learned" else 0) + L * per_block + C  # + ln_f
    assert sum(p.numel() for p in m.parameters()) == expected
    assert ("transformer.wpe.weight" in m.state_dict()) == (pos_emb == "learned")


def test_n_kv_head_equal_to_n_head_is_todays_model_exactly():
    a, b = tiny(), tiny(n_kv_head=4)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = idx()
    assert torch.equal(a(x, x)[1], b(x, x)[1])


def reference_gqa(attn, x):
    """Causal attention written out, each key/value head repeated for its query heads."""
    B, T, C = x.shape
    nh, nkv, hs = attn.n_head, attn.n_kv_head, C // attn.n_head
    q, k, v = attn.c_attn(x).split((C, nkv * hs, nkv * hs), dim=2)
    q = q.view(B, T, nh, hs).transpose(1, 2)
    k, v = (t.view(B, T, nkv, hs).transpose(1, 2) for t in (k, v))
    group = nh // nkv
    k = torch.stack([k[:, h // group] for h in range(nh)], dim=1)  # query head h reads kv head h // group
    v = torch.stack([v[:, h // group] for h in range(nh)], dim=1)
    att = (q @ k.transpose(-2, -1) / math.sqrt(hs)).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
    y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
    return attn.c_proj(y)


@pytest.mark.parametrize("n_kv_head", [1, 2])
@pytest.mark.parametrize("attention", ["full", "sliding"])
def test_grouped_query_attention_equals_repeating_the_kv_heads(n_kv_head, attention):
    m = tiny(n_kv_head=n_kv_head, attention=attention, attn_window=32).eval()
    attn = m.transformer.h[0].attn
    assert attn.c_attn.out_features == 32 + 2 * n_kv_head * 8
    x = torch.randn(2, 16, 32)
    torch.testing.assert_close(attn(x), reference_gqa(attn, x), rtol=1e-5, atol=1e-6)


def test_rope_scores_depend_only_on_relative_position_and_keep_norms():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    scores = rope(q, 0, 10000.0) @ rope(k, 0, 10000.0).transpose(-2, -1)
    shifted = rope(q, 37, 10000.0) @ rope(k, 37, 10000.0).transpose(-2, -1)  # every position + 37
    torch.testing.assert_close(shifted, scores, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rope(q, 5, 10000.0).norm(dim=-1), q.norm(dim=-1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(rope(q, 1, 10000.0), q)  # it does rotate
    # the same q and k at other positions give other scores (position 0 rotates nothing)
    assert not torch.allclose(rope(q, 0, 10000.0) @ rope(k, 3, 10000.0).transpose(-2, -1), scores, atol=1e-3)


@pytest.mark.parametrize("pos_emb", ["rope", "none"])
def test_without_a_position_table_a_model_runs_past_block_size(pos_emb):
    m = tiny(pos_emb=pos_emb).eval()
    x = idx(32)  # twice block_size
    logits, loss = m(x, x)
    assert logits.shape == (2, 32, 50) and math.isfinite(loss.item())
    with pytest.raises(ValueError, match="longer than block_size=16"):
        tiny()(x)


@pytest.mark.parametrize("kw", [dict(n_kv_head=2), dict(n_kv_head=1, pos_emb="rope"), dict(pos_emb="none"),
                                dict(pos_emb="rope", attention="sliding", attn_window=5),
                                dict(n_kv_head=2, pos_emb="rope", attention="blocksparse", attn_block=4, attn_summary=1)])
def test_kv_cache_generation_equals_recomputation_and_keeps_the_kv_heads_only(kw):
    m = tiny(**kw).eval()
    with torch.no_grad():  # sharper weights, so that the tokens depend on the context (see test_attention.py)
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    prompt = idx(3)
    for temperature in (0.0, 1.0):
        a = m.generate(prompt, 40, temperature=temperature, generator=torch.Generator().manual_seed(3))
        b = m.generate(prompt, 40, temperature=temperature, generator=torch.Generator().manual_seed(3), kv_cache=False)
        assert torch.equal(a, b)
    from attention import KVCache

    c = m.config
    caches = [KVCache(c.attention, 16, c.attn_window, c.attn_block, c.attn_summary) for _ in range(c.n_layer)]
    with torch.no_grad():
        m._trunk(prompt, caches)
    assert all(cache.k.shape[1] == c.kv_heads() for cache in caches)  # n_head / n_kv_head times smaller


def test_lora_parts_of_a_gqa_projection_are_refused_and_the_whole_projection_works():
    from peft import apply_lora

    with pytest.raises(ValueError, match=r"unequal widths \(32, 16, 16\).*adapt the whole c_attn"):
        apply_lora(tiny(n_kv_head=2), "c_attn[q,v]")
    m = tiny(n_kv_head=2)
    apply_lora(m, "c_attn", r=2)
    x = idx()
    assert torch.equal(m(x, x)[1], tiny(n_kv_head=2)(x, x)[1])  # B = 0: the base model


def test_checkpoints_record_the_options_refuse_a_change_and_old_ones_load(char_dataset, tmp_path, capsys):
    out = str(tmp_path / "rope")
    train.train(load_config(TINY + [f"--dataset={char_dataset}", f"--out_dir={out}", "--max_iters=2", "--eval_iters=1",
                                    "--n_kv_head=1", "--pos_emb=rope", "--rope_theta=500"]))
    ckpt = read_checkpoint(f"{out}/ckpt.pt")
    assert (ckpt["model_config"]["n_kv_head"], ckpt["model_config"]["pos_emb"], ckpt["config"]["rope_theta"]) == (1, "rope", 500.0)
    for change in ("--pos_emb=learned", "--n_kv_head=2", "--rope_theta=10000"):
        code, err = exit_code(train.main, ["--init_from=resume", f"--out_dir={out}", "--max_iters=3", change], capsys)
        key = change[2:].split("=")[0]
        assert code == 2 and err.count("\n") == 1 and f"differs from the checkpoint's {key}=" in err, err
    # a checkpoint from before these keys: its configs lack them; it loads as the model it was
    base = str(tmp_path / "old")
    train.train(load_config(TINY + [f"--dataset={char_dataset}", f"--out_dir={base}", "--max_iters=2", "--eval_iters=1"]))
    old = read_checkpoint(f"{base}/ckpt.pt")
    for key in ("n_kv_head", "pos_emb", "rope_theta"):
        del old["model_config"][key], old["config"][key]
    save_checkpoint(old, f"{base}/ckpt.pt")
    model = restore_model(read_checkpoint(f"{base}/ckpt.pt"), "test")
    assert model.config.kv_heads() == model.config.n_head and "wpe" in model.transformer
    row = train.train(load_config(["--init_from=resume", f"--out_dir={base}", "--max_iters=3"]))
    assert row["iter"] == 3 and math.isfinite(row["val_loss"])


def test_rope_trains_with_checkpointing_bf16_and_moe(char_dataset, tmp_path):
    row = train.train(load_config(TINY + [f"--dataset={char_dataset}", f"--out_dir={tmp_path / 'r'}", "--max_iters=2",
                                          "--eval_iters=1", "--pos_emb=rope", "--n_kv_head=1", "--dtype=bfloat16",
                                          "--grad_checkpointing=True", "--moe_num_experts=4", "--dropout=0.1"]))
    assert math.isfinite(row["val_loss"])


# ----------------------------------------------------------------------------------------
# factorized embedding (ALBERT) and shared blocks (ALBERT, MobileLLM)


def test_a_factorized_embedding_has_v_e_plus_e_h_parameters_and_ties_the_head_through_it():
    full, fact = tiny(), tiny(emb_dim=8)
    V, C, E = 50, 32, 8
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in fact.parameters()) == V * C - (V * E + E * C)
    assert fact.lm_head.weight is fact.transformer.wte.weight and fact.transformer.wte.weight.shape == (V, E)
    # the logits are the table's rows against the hidden state taken back through the projection
    h = torch.randn(3, C)
    P = fact.transformer.emb_proj.weight  # (C, E)
    torch.testing.assert_close(fact.logits(h), h @ P @ fact.transformer.wte.weight.t())
    x = idx()
    logits, loss = fact(x, x)
    assert logits.shape == (2, 16, 50) and math.isfinite(loss.item())
    with pytest.raises(ValueError, match=r"emb_dim=64 must be in \[0, n_embd=32\]"):
        tiny(emb_dim=64)


@pytest.mark.parametrize("share,repeat,stored", [("all", 2, 1), ("immediate", 2, 2), ("immediate", 4, 1)])
def test_shared_blocks_are_stored_once_and_their_gradient_sums_over_their_uses(share, repeat, stored):
    torch.manual_seed(0)
    cfg = dict(n_layer=4, n_head=4, n_embd=32, block_size=16, vocab_size=50, dropout=0.0)
    shared = GPT(GPTConfig(**cfg, share_layers=share, share_repeat=repeat))
    assert len(shared.transformer.h) == stored
    n_block = sum(p.numel() for p in shared.transformer.h[0].parameters())
    assert shared.get_num_params() == GPT(GPTConfig(**cfg)).get_num_params() - (4 - stored) * n_block
    assert shared.get_num_params(executed=True) == GPT(GPTConfig(**cfg)).get_num_params()  # the compute of 4 blocks
    # one tensor per shared weight in the state dict and in the optimizer
    assert sum(k.startswith("transformer.h.") for k in shared.state_dict()) == stored * len(shared.transformer.h[0].state_dict())
    opt = torch.optim.AdamW(shared.parameters())
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in shared.parameters())
    # the reference: an unshared model whose layers are copies of the stored blocks
    plain = GPT(GPTConfig(**cfg))
    sd = {k: v for k, v in shared.state_dict().items() if not k.startswith("transformer.h.")}
    for i in range(4):
        j = shared.config.stored_block(i)
        sd.update({f"transformer.h.{i}.{k}": v for k, v in shared.transformer.h[j].state_dict().items()})
    plain.load_state_dict(sd)
    x = idx()
    _, loss_s = shared(x, x)
    _, loss_p = plain(x, x)
    torch.testing.assert_close(loss_s, loss_p, rtol=0, atol=0)
    loss_s.backward()
    loss_p.backward()
    for j, block in enumerate(shared.transformer.h):
        uses = [i for i in range(4) if shared.config.stored_block(i) == j]
        assert len(uses) == 4 // stored
        for name, p in block.named_parameters():
            summed = sum(plain.transformer.h[i].get_parameter(name).grad for i in uses)
            torch.testing.assert_close(p.grad, summed, rtol=1e-5, atol=1e-7, msg=name)
    # a wrong sharing (the last stored block at every layer) gives another loss
    other = GPT(GPTConfig(**cfg))
    other.load_state_dict({**sd, **{f"transformer.h.{i}.{k}": v for i in range(4)
                                     for k, v in plain.transformer.h[3 - i].state_dict().items()}})
    if stored > 1:
        assert not torch.equal(other(x, x)[1], loss_p)


def test_flops_count_every_run_of_a_shared_block():
    cfg = dict(n_layer=4, n_head=4, n_embd=32, block_size=16, vocab_size=50)
    assert GPT(GPTConfig(**cfg, share_layers="all")).flops_per_token(16) == GPT(GPTConfig(**cfg)).flops_per_token(16)


@pytest.mark.parametrize("kw", [dict(share_layers="all"), dict(share_layers="immediate", emb_dim=8, n_kv_head=2,
                                                             pos_emb="rope")])
def test_shared_and_factorized_models_generate_with_the_cache_and_train(kw, char_dataset, tmp_path):
    m = tiny(**kw).eval()
    prompt = idx(3)
    a = m.generate(prompt, 30, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = m.generate(prompt, 30, temperature=1.0, generator=torch.Generator().manual_seed(3), kv_cache=False)
    assert torch.equal(a, b)
    args = [f"--{k}={v}" for k, v in kw.items()]
    row = train.train(load_config(TINY + [f"--dataset={char_dataset}", f"--out_dir={tmp_path / 'run'}", "--max_iters=2",
                                          "--eval_iters=1", "--grad_checkpointing=True"] + args))
    assert math.isfinite(row["val_loss"])
    ckpt = read_checkpoint(str(tmp_path / "run" / "ckpt.pt"))
    assert all(ckpt["model_config"][k] == v for k, v in kw.items())
    # LoRA on a shared block: one adapter, trained by every layer the block runs at
    from peft import apply_lora

    lora = apply_lora(restore_model(ckpt, "test"), "c_attn", r=2)
    assert len(lora) == len(m.transformer.h)


@pytest.mark.parametrize("pos_emb", ["rope", "none", "learned"])
def test_a_checkpoint_without_a_position_table_evaluates_at_twice_its_context(pos_emb, char_dataset, tmp_path):
    out = str(tmp_path / pos_emb)
    train.train(load_config(TINY + [f"--dataset={char_dataset}", f"--out_dir={out}", "--max_iters=3", "--eval_iters=2",
                                    f"--pos_emb={pos_emb}"]))
    args = ["--init_from=resume", f"--out_dir={out}", "--eval_only=True", "--eval_iters=2", "--block_size=32"]
    if pos_emb == "learned":
        with pytest.raises(Exception, match="larger than the checkpoint's 16 learned positions"):
            load_config(args)
        return
    cfg = load_config(args)
    row = train.train(cfg)  # windows of 32 tokens through a model trained on 16
    assert cfg.model.block_size == 32 and math.isfinite(row["val_loss"])
