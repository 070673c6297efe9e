"""muP (mup.py, model.py, step.make_optimizer): at its base width it is the standard model
bit for bit; away from it each rule of mup.py's table holds; the coordinate check is flat
under muP and grows under the standard parameterization; the options are checked."""

import math

import pytest
import torch

import train
from config import TrainConfig, load_config
from conftest import TINY, exit_code
from model import GPT, GPTConfig
from mup import coord_check, growth
from step import make_optimizer


def gpt(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50), **kw}))


def idx(seed=0, B=3, T=16):
    return torch.randint(0, 50, (B, T), generator=torch.Generator().manual_seed(seed))


def train_steps(model, steps=4, lr=1e-2):
    opt = make_optimizer(model, TrainConfig(learning_rate=lr, weight_decay=0.1))
    for i in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        x = idx(i)
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return opt


@pytest.mark.parametrize("kw", [{}, dict(attention="sliding", attn_window=4, pos_emb="rope", n_kv_head=1)])
def test_at_its_base_width_mup_is_the_standard_model_exactly(kw):
    sp, mup = gpt(**kw), gpt(mup=True, mup_base_width=32, **kw)
    sd_sp, sd_mup = sp.state_dict(), mup.state_dict()
    assert all(torch.equal(sd_sp[k], sd_mup[k]) for k in sd_sp)  # the same init
    x = idx()
    assert torch.equal(sp(x, x)[0], mup(x, x)[0])  # the same forward
    opt_sp, opt_mup = train_steps(sp), train_steps(mup)  # and the same training
    assert [g["lr_scale"] for g in opt_mup.param_groups] == [g["lr_scale"] for g in opt_sp.param_groups] == [1.0, 1.0]
    assert all(torch.equal(a, b) for a, b in zip(sp.parameters(), mup.parameters()))


def test_away_from_the_base_width_each_rule_of_the_table_holds():
    base, wide = gpt(n_embd=32), gpt(n_embd=128, mup=True, mup_base_width=32)  # width_mult = 4
    sp_wide = gpt(n_embd=128)
    # rule 2: hidden matrices start at GPT-2's std / sqrt(width_mult); rule 1: the embedding keeps 0.02
    for name, p in wide.named_parameters():
        ref = dict(sp_wide.named_parameters())[name]
        if name.startswith("transformer.h.") and p.dim() == 2:
            assert torch.equal(p, ref * 0.5), name
        else:
            assert torch.equal(p, ref), name
    # rule 2: Adam's learning rate of the hidden matrices is base / width; the rest keep it
    opt = make_optimizer(wide, TrainConfig(weight_decay=0.1))
    scales = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    for name, p in wide.named_parameters():
        hidden = name.startswith("transformer.h.") and p.dim() == 2
        assert scales[id(p)] == (0.25 if hidden else 1.0), name
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.1, 0.0]
    # rule 3: logits = W h / width_mult
    h = torch.randn(2, 5, 128)
    assert torch.allclose(wide.logits(h), (h @ wide.lm_head.weight.t()) / 4, atol=1e-6)
    # rule 4: attention logits q.k * sqrt(d_base) / d: the layer equals softmax written out with that scale
    attn = wide.transformer.h[0].attn
    x = torch.randn(2, 7, 128)
    q, k, v = attn.c_attn(x).split(128, dim=2)
    q, k, v = (t.view(2, 7, 2, 64).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, d=64); d_base = 16
    att = (q @ k.transpose(-2, -1)) * (math.sqrt(16) / 64)
    att = att.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(2, 7, 128)
    assert torch.allclose(attn(x), attn.c_proj(y), atol=1e-5)
    assert base.config.width_mult() == 1.0 and wide.config.width_mult() == 4.0


def test_coordinate_check_is_flat_under_mup_and_grows_under_the_standard_parameterization():
    # 4 Adam steps at lr 1e-2, widths 64 and 256: the mean |coordinate| of each layer's output
    sp = growth(coord_check([64, 256], mup=False, base_width=64))
    mup = growth(coord_check([64, 256], mup=True, base_width=64))
    for layer in ("block 0", "block 1"):
        assert sp[layer] > 4.0, sp  # measured ~13-25x: Adam's update of a 4x wider matrix adds 4x the terms
        assert 0.5 < mup[layer] < 2.0, mup  # measured ~0.6-0.9x
    assert sp["logits"] > 1.5 and 0.5 < mup["logits"] < 1.5, (sp, mup)
    assert 0.8 < sp["embedding"] < 1.25 and 0.8 < mup["embedding"] < 1.25  # inputs: the same rule in both


def test_mup_kv_cache_generation_equals_recomputation():
    m = gpt(n_embd=64, mup=True, mup_base_width=16).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    a = m.generate(idx(B=1, T=3), 20, temperature=0.0)
    assert torch.equal(a, m.generate(idx(B=1, T=3), 20, temperature=0.0, kv_cache=False))


def test_mup_options_are_checked_and_fixed_on_resume(char_dataset, tmp_path, capsys):
    for args, says in ((["--mup=True"], "mup=True needs mup_base_width"),
                       (["--mup_base_width=64"], "mup_base_width is a setting of mup=True but mup=False"),
                       (["--mup=True", "--mup_base_width=16", "--moe_num_experts=2"], "set moe_num_experts=0"),
                       (["--mup=True", "--mup_base_width=16", "--emb_dim=8"], "and emb_dim=0")):
        code, err = exit_code(train.main, TINY + [f"--dataset={char_dataset}", f"--out_dir={tmp_path / 'x'}"] + args,
                              capsys)
        assert code == 2 and err.count("\n") == 1 and says in err, err
    out = str(tmp_path / "mup")
    row = train.train(load_config(TINY + [f"--dataset={char_dataset}", f"--out_dir={out}", "--max_iters=2",
                                          "--eval_iters=1", "--mup=True", "--mup_base_width=16"]))
    assert math.isfinite(row["val_loss"])
    for change in ("--mup=False", "--mup_base_width=32"):
        code, err = exit_code(train.main, ["--init_from=resume", f"--out_dir={out}", "--max_iters=3", change], capsys)
        assert code == 2 and f"differs from the checkpoint's {change[2:].split('=')[0]}=" in err, err
    row = train.train(load_config(["--init_from=resume", f"--out_dir={out}", "--max_iters=3"]))
    assert row["iter"] == 3 and math.isfinite(row["val_loss"])
