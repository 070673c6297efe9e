"""model.py: shapes, loss at init, causality, weight tying, generation, the CPU dropout,
hand-written attention = SDPA (no drops) and = the masked softmax over 1 - p (real drops),
and gradient checkpointing = the plain path."""

import math

import pytest
import torch

import model as model_module
from model import GPT, GPTConfig, dropout


def tiny(**kw):
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, dropout=0.0)
    cfg.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**cfg))


def test_shapes_and_loss_at_init_is_log_vocab():
    m = tiny()
    idx, targets = torch.randint(0, 50, (2, 4, 16))
    logits, loss = m(idx, targets)
    assert logits.shape == (4, 16, 50)  # every position, not just the last
    assert loss.shape == ()
    # N(0, 0.02) weights give near-uniform predictions: loss ~ ln(vocab)
    assert abs(loss.item() - math.log(50)) < 0.05
    logits2, loss2 = m(idx)
    assert loss2 is None and torch.equal(logits, logits2)


def test_causality_changing_token_t_leaves_earlier_logits_unchanged():
    m = tiny().eval()
    idx = torch.randint(0, 50, (2, 16))
    base, _ = m(idx)
    for t in (0, 7, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 50
        out, _ = m(changed)
        assert torch.equal(out[:, :t], base[:, :t])
        assert not torch.equal(out[:, t], base[:, t])


def test_weights_are_tied_and_stay_tied_after_a_step():
    m = tiny()
    assert m.lm_head.weight is m.transformer.wte.weight
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    idx = torch.randint(0, 50, (4, 16))
    m(idx, idx)[1].backward()
    opt.step()
    assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr()
    # counted once: embedding 50*32 + positions 16*32 + 2 blocks + final LayerNorm
    per_block = 2 * 32 + 32 * 96 + 32 * 32 + 32 * 128 + 128 * 32
    assert m.get_num_params(non_embedding=False) == 50 * 32 + 16 * 32 + 2 * per_block + 32


def test_residual_projections_get_scaled_init():
    m = tiny(n_layer=8, n_embd=64, n_head=2)
    expect = 0.02 / math.sqrt(2 * 8)
    assert abs(m.transformer.h[0].attn.c_proj.weight.std().item() - expect) < 0.2 * expect
    assert abs(m.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.1 * 0.02


def test_generate_length_and_determinism_with_seed():
    m = tiny().eval()
    prompt = torch.randint(0, 50, (1, 5))
    a = m.generate(prompt, 30, generator=torch.Generator().manual_seed(1))
    b = m.generate(prompt, 30, generator=torch.Generator().manual_seed(1))
    c = m.generate(prompt, 30, generator=torch.Generator().manual_seed(2))
    assert a.shape == (1, 35) and torch.equal(a[:, :5], prompt)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # longer than block_size: the context is cropped, generation goes on
    assert m.generate(a, 3, temperature=0.0).shape == (1, 38)
    # greedy = argmax of forward's last position
    nxt = m.generate(prompt, 1, temperature=0.0)[0, -1]
    assert nxt == m(prompt)[0][0, -1].argmax()


def test_dropout_rate_scale_and_identity_when_off():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = dropout(x, 0.2, True)
    drop = round(0.2 * 65536)
    kept = y[y != 0]
    assert torch.all(kept == 65536.0 / (65536 - drop))  # survivors scaled exactly by 1/(1-p)
    assert abs((y == 0).float().mean().item() - 0.2) < 0.003  # 1e6 draws: 3 sigma ~ 0.0012
    assert abs(y.mean().item() - 1.0) < 0.005  # unbiased
    assert dropout(x, 0.2, False) is x and dropout(x, 0.0, True) is x
    torch.manual_seed(5)
    a = dropout(x, 0.5, True)
    torch.manual_seed(5)
    assert torch.equal(a, dropout(x, 0.5, True))  # governed by torch.manual_seed


def test_hand_written_attention_equals_sdpa(monkeypatch):
    m = tiny(dropout=0.1)
    attn = m.transformer.h[0].attn
    q, k, v = (torch.randn(2, 2, 16, 16) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    # isolate the attention math: a mask that drops nothing
    monkeypatch.setattr(model_module, "dropout_mask", lambda shape, p, device: (torch.zeros(shape, dtype=torch.bool), 1.0))
    torch.testing.assert_close(attn._attention_with_dropout(q, k, v), ref, rtol=1e-5, atol=1e-6)


def test_hand_written_attention_with_dropout_equals_the_masked_softmax_over_1_minus_p():
    # the test above drops nothing, so it cannot see the 1/(1-p) scale; here p is real
    p = 0.25  # a multiple of 1/65536: dropout_mask uses it unrounded, the scale is exactly 4/3
    m = tiny(dropout=p)
    attn = m.transformer.h[0].attn
    B, nh, T, hs = 2, 2, 16, 16
    q, k, v = (torch.randn(B, nh, T, hs) for _ in range(3))
    torch.manual_seed(7)
    y = attn._attention_with_dropout(q, k, v)
    # the reference, written independently: the same mask, re-drawn from the same seed
    # (the mask is the method's only draw), applied to the weights with 1/(1-p) written out
    torch.manual_seed(7)
    drop, _ = model_module.dropout_mask((B * nh, T, T), p, "cpu")
    drop = drop.view(B, nh, T, T)
    assert abs(drop.float().mean().item() - p) < 0.05  # it really drops (2048 draws: 3 sigma ~ 0.03)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    att = (q @ k.transpose(-2, -1) / math.sqrt(hs)).masked_fill(~causal, float("-inf")).softmax(-1)
    ref = (att.masked_fill(drop, 0.0) / (1 - p)) @ v
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


def test_grad_checkpointing_matches_plain_path_with_dropout():
    idx = torch.randint(0, 50, (4, 16))
    results = []
    for ckpt in (False, True):
        m = tiny(dropout=0.2, grad_checkpointing=ckpt)
        torch.manual_seed(123)  # same dropout masks in both runs
        _, loss = m(idx, idx)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=0, msg=name)
    # and dropout really was on: another seed gives another loss
    m = tiny(dropout=0.2)
    torch.manual_seed(124)
    assert not torch.equal(m(idx, idx)[1], loss_a)


def test_crop_block_size():
    m = tiny()
    m.crop_block_size(8)
    assert m.transformer.wpe.weight.shape == (8, 32)
    with pytest.raises(ValueError, match="longer than block_size=8"):
        m(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="larger than the model's 8 positions"):
        m.crop_block_size(16)
