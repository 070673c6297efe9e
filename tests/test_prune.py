"""prune.py (Minitron-style structured pruning): keeping every unit changes nothing; a pruned
MLP neuron or head equals a zeroed one and a pruned block a skipped one; the result is a plain
smaller GPT with the parameters its formula says; both importance kinds rank a planted
near-silent unit last; the command end to end (eval, sample, KD recovery) and its one-line
refusals. And model.py's new width keys at their defaults are today's model exactly."""

import os

import pytest
import torch

import prune
import sample
import train
from config import load_config
from conftest import TINY, exit_code
from errors import UserError
from model import GPT, GPTConfig

# TINY without the architecture: a fine-tune of a pruned folder inherits its (smaller) shape
NO_ARCH = [a for a in TINY if not a.startswith(("--n_layer", "--n_head", "--n_embd"))]


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=50), **kw})).eval()


def tokens(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50, (4, 16), generator=g) for _ in range(n)]


def with_hooks(model, hooks, x):
    """model(x)'s logits with forward hooks attached: [(module, pre?, fn)], removed after."""
    handles = [m.register_forward_pre_hook(fn) if pre else m.register_forward_hook(fn) for m, pre, fn in hooks]
    try:
        return model(x)[0]
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------------------
# the new GPTConfig keys


def test_the_width_keys_at_their_defaults_are_todays_model():
    """mlp_hidden=0 and head_dim=0 are GPT-2's 4C and C / n_head: the same shapes, the same
    init draws and the same logits as the keys spelled out."""
    default, spelled = tiny(), tiny(mlp_hidden=128, head_dim=8)
    shapes = {k: tuple(v.shape) for k, v in default.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in spelled.state_dict().items()}
    assert shapes["transformer.h.0.attn.c_attn.weight"] == (96, 32) and shapes["transformer.h.0.attn.c_proj.weight"] == (32, 32)
    assert shapes["transformer.h.0.mlp.c_fc.weight"] == (128, 32) and shapes["transformer.h.0.mlp.c_proj.weight"] == (32, 128)
    x = tokens(1)[0]
    assert torch.equal(default(x)[0], spelled(x)[0])
    assert default.flops_per_token(16) == spelled.flops_per_token(16)
    # head_dim frees n_embd from dividing by n_head (a pruned stream); without it, the old rule holds
    assert GPT(GPTConfig(n_layer=1, n_head=3, n_embd=20, head_dim=8, vocab_size=50)).transformer.h[0].attn.c_attn.weight.shape == (72, 20)
    with pytest.raises(ValueError, match="n_embd=20 must be a multiple of n_head=3"):
        GPTConfig(n_layer=1, n_head=3, n_embd=20)
    with pytest.raises(ValueError, match="head size .* = 7 must be even"):
        GPTConfig(n_head=2, n_embd=32, head_dim=7, pos_emb="rope")


# ----------------------------------------------------------------------------------------
# the surgery equals the masked original


@pytest.mark.parametrize("kw", [{}, {"bias": True, "n_kv_head": 2, "pos_emb": "rope"},
                                {"attention": "sliding", "attn_window": 4}])
def test_keeping_every_unit_changes_nothing(kw):
    m = tiny(**kw)
    full = prune.prune_model(m, prune.keep_indices(prune.magnitude_importance(m), 1.0, prune.DIMENSIONS))
    x = tokens(1)[0]
    torch.testing.assert_close(full(x)[0], m(x)[0], rtol=0, atol=1e-6)
    assert full.get_num_params() == m.get_num_params()


@pytest.mark.parametrize("kw", [{"bias": True}, {"n_kv_head": 2, "pos_emb": "rope"},
                                {"attention": "blocksparse", "attn_block": 4, "attn_summary": 1},
                                {"mup": True, "mup_base_width": 16}])
def test_pruned_neurons_heads_and_blocks_equal_zeroed_neurons_heads_and_skipped_blocks(kw):
    """Drop MLP neurons, heads (with GQA: whole groups) and a block by hand-picked indices:
    the small model equals the original with c_fc's rows (and biases) of the dropped neurons
    zeroed, the dropped heads' outputs zeroed before c_proj, the dropped block passing its
    input through. Also with the KV cache."""
    m = tiny(**kw)
    c = m.config
    G, per_group = c.kv_heads(), c.n_head // c.kv_heads()
    # 64 of 128 neurons in each block (one mlp_hidden for all), one head group per block, blocks 0 and 2
    kept = {"mlp": torch.stack([torch.tensor([1, 5, 9, 30] + list(range(40, 100))), torch.arange(0, 128, 2),
                                torch.arange(64, 128)]),
            "heads": torch.tensor([[1], [0], [G - 1]]), "depth": torch.tensor([0, 2])}
    small = prune.prune_model(m, kept)
    assert (small.config.n_layer, small.config.mlp_hidden, small.config.n_head) == (2, 64, per_group)
    hooks = []
    zeroed = tiny(**kw)
    with torch.no_grad():
        for l, block in enumerate(zeroed.transformer.h):
            drop = torch.ones(128, dtype=torch.bool)
            drop[kept["mlp"][l]] = False
            block.mlp.c_fc.weight[drop] = 0  # GELU(0) = 0: the neuron writes nothing
            if block.mlp.c_fc.bias is not None:
                block.mlp.c_fc.bias[drop] = 0
            heads = torch.zeros(G)
            heads[kept["heads"][l]] = 1
            mask = heads.repeat_interleave(per_group * c.head_size())  # (nh * hs,): the heads side by side
            hooks.append((block.attn.c_proj, True, lambda mod, args, mask=mask: (args[0] * mask,)))
    hooks.append((zeroed.transformer.h[1], False, lambda mod, args, out: (args[0], None)))  # block 1 skipped
    for x in tokens(2):
        torch.testing.assert_close(small(x)[0], with_hooks(zeroed, hooks, x), rtol=0, atol=1e-5)
    # generation with and without the cache: the smaller attention keeps the KV cache's shapes right
    prompt = tokens(1)[0][:1, :4]
    assert torch.equal(small.generate(prompt, 20, temperature=0), small.generate(prompt, 20, temperature=0, kv_cache=False))


def test_a_pruned_model_has_the_parameters_of_its_formula():
    m = tiny(n_layer=4)
    scores = prune.magnitude_importance(m)
    small = prune.prune_model(m, prune.keep_indices(scores, 0.5, prune.DIMENSIONS))
    L, C, nh, hs, H, V, T = 2, 16, 2, 8, 64, 50, 16
    per_block = 2 * C + C * 3 * nh * hs + nh * hs * C + 2 * C * H  # LayerNorms, c_attn, c_proj, the MLP
    assert small.get_num_params(non_embedding=False) == V * C + T * C + L * per_block + C
    assert (small.config.n_layer, small.config.n_embd, small.config.n_head, small.config.head_dim,
            small.config.mlp_hidden) == (L, C, nh, hs, H)


def test_keep_indices_keep_the_most_important_in_their_original_order():
    scores = {"mlp": torch.tensor([[0.1, 0.7, 0.5, 0.9], [1.0, 3.0, 2.0, 4.0]]), "depth": torch.tensor([2.0, 1.0, 3.0])}
    kept = prune.keep_indices(scores, 0.5, ["mlp", "depth"])  # the top ones, not in the order of their scores
    assert kept["mlp"].tolist() == [[1, 3], [1, 3]] and kept["depth"].tolist() == [0, 2]  # 1.5 rounds up to 2
    assert [prune.keep_count(n, k) for n, k in [(6, 0.5), (5, 0.5), (3, 0.01), (10, 1.0), (10, 0.25)]] == [3, 3, 1, 10, 3]


# ----------------------------------------------------------------------------------------
# importance


def plant(m, dim):
    """Scale one unit's weights to ~0: (the unit, where its scores are). mlp: neuron 7 of block
    1; heads: head 2 of block 0; embd: channel 5 everywhere; depth: block 1's residual writes."""
    with torch.no_grad():
        b = m.transformer.h
        if dim == "mlp":
            b[1].mlp.c_fc.weight[7] *= 1e-3
            b[1].mlp.c_proj.weight[:, 7] *= 1e-3
            return 7, 1
        if dim == "heads":
            for rows in (slice(16, 24), slice(48, 56), slice(80, 88)):  # head 2's q, k, v (hs = 8)
                b[0].attn.c_attn.weight[rows] *= 1e-3
            b[0].attn.c_proj.weight[:, 16:24] *= 1e-3
            return 2, 0
        if dim == "embd":
            for t in (m.transformer.wte.weight, m.transformer.wpe.weight):
                t[:, 5] *= 1e-3
            for block in b:
                for w in (block.attn.c_attn.weight, block.mlp.c_fc.weight):
                    w[:, 5] *= 1e-3
                for w in (block.attn.c_proj.weight, block.mlp.c_proj.weight):
                    w[5] *= 1e-3
            return 5, None
        b[1].attn.c_proj.weight *= 1e-3
        b[1].mlp.c_proj.weight *= 1e-3
        return 1, None


@pytest.mark.parametrize("kind", prune.KINDS)
@pytest.mark.parametrize("dim", prune.DIMENSIONS)
def test_a_near_silent_unit_ranks_least_important(dim, kind):
    m = tiny()
    unit, block = plant(m, dim)
    scores = prune.importance(m, tokens(2), kind)[dim]
    scores = scores[block] if block is not None else scores
    assert scores.argmin().item() == unit, scores
    kept = prune.keep_indices({dim: scores}, 0.75, [dim])[dim]
    assert unit not in kept.tolist() and len(kept) == prune.keep_count(len(scores), 0.75)


def test_activation_scores_are_the_means_they_claim():
    """Neuron scores are mean |GELU| over tokens, read independently from the MLP's c_fc."""
    m = tiny()
    xs = tokens(2)
    scores = prune.activation_importance(m, xs)
    pre = []  # c_fc's outputs (B, T, H), before GELU
    for x in xs:
        with_hooks(m, [(m.transformer.h[0].mlp.c_fc, False, lambda mod, args, out: pre.append(out))], x)
    acts = torch.nn.functional.gelu(torch.cat(pre).flatten(0, 1)).abs()  # (tokens, H)
    torch.testing.assert_close(scores["mlp"][0], acts.mean(0), rtol=1e-5, atol=1e-7)
    assert scores["heads"].shape == (3, 4) and scores["embd"].shape == (32,) and (scores["depth"] > 0).all()


@pytest.mark.parametrize("kw,what,match", [
    ({"moe_num_experts": 4}, ["mlp"], "moe_num_experts=4"),
    ({"share_layers": "all"}, ["heads"], "share_layers='all'"),
    ({"emb_dim": 16}, ["mlp"], "emb_dim=16"),
    ({"mup": True, "mup_base_width": 16}, ["embd"], "muP model"),
    ({"n_kv_head": 1}, ["heads"], "n_kv_head=1 .multi-query"),
])
def test_what_cannot_be_pruned_is_refused_in_one_line(kw, what, match):
    with pytest.raises(UserError, match=match) as e:
        prune.check_prunable(GPTConfig(n_layer=2, n_head=4, n_embd=32, **kw), what)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------
# the command


@pytest.fixture(scope="module")
def run(char_dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prune") / "run")
    train.train(load_config(TINY + [f"--dataset={char_dataset}", f"--out_dir={out}", "--max_iters=2", "--eval_iters=1"]))
    return out


def test_prune_then_evaluate_sample_and_recover_by_distillation(run, char_dataset, tmp_path, capsys):
    pruned = str(tmp_path / "pruned")
    code, _ = exit_code(prune.main, [f"--out_dir={run}", "--keep=0.5", f"--to={pruned}", "--calib_batches=2"], capsys)
    assert code == 0
    ckpt = torch.load(os.path.join(pruned, "ckpt.pt"), weights_only=True)
    # a plain smaller GPT: no pruning code needed to load it, strictly
    small = GPT(GPTConfig(**ckpt["model_config"]))
    small.load_state_dict(ckpt["model"])
    C, L, H, V, T = 32, 2, 64, ckpt["meta"]["vocab_size"], 16
    assert (small.config.mlp_hidden, small.config.n_head, small.config.head_dim) == (H, 1, 16)
    per_block = 2 * C + C * 3 * 16 + 16 * C + 2 * C * H
    assert small.get_num_params(non_embedding=False) == V * C + T * C + L * per_block + C
    assert ckpt["config"]["mlp_hidden"] == H and ckpt["config"]["init_from"] == "pruned"
    assert ckpt["pruned_from"] == {"run": os.path.abspath(run), "keep": 0.5, "what": ["mlp", "heads"],
                                   "importance": "activation"}
    args = NO_ARCH + [f"--dataset={char_dataset}", "--eval_iters=1"]
    row = train.train(load_config(args + [f"--init_from={pruned}", "--eval_only=True", f"--out_dir={tmp_path / 'ev'}"]))
    assert row["val_loss"] > 0
    code, _ = exit_code(sample.main, [f"--out_dir={pruned}", "--num_samples=1", "--max_new_tokens=8"], capsys)
    assert code == 0
    # recovery: the pruned student, its teacher the run it came from; it inherits the pruned widths
    kd = str(tmp_path / "kd")
    row = train.train(load_config(args + [f"--init_from={pruned}", f"--teacher={run}", "--kd_alpha=0.5",
                                          "--max_iters=2", f"--out_dir={kd}"]))
    assert row["iter"] == 2
    student = torch.load(os.path.join(kd, "ckpt.pt"), weights_only=True)
    assert {k: student["model_config"][k] for k in prune.SHAPE_KEYS} == {k: ckpt["model_config"][k] for k in prune.SHAPE_KEYS}


def test_keep_1_through_the_command_evaluates_as_the_run_did(run, char_dataset, tmp_path, capsys):
    same = str(tmp_path / "same")
    code, _ = exit_code(prune.main, [f"--out_dir={run}", "--keep=1", f"--to={same}", "--what=mlp,heads,embd,depth",
                                     "--importance=magnitude"], capsys)
    assert code == 0
    args = NO_ARCH + [f"--dataset={char_dataset}", "--eval_iters=1", "--eval_only=True"]
    rows = [train.train(load_config(args + [f"--init_from={src}", f"--out_dir={tmp_path / name}"]))
            for src, name in ((run, "a"), (same, "b"))]
    assert rows[0]["val_loss"] == rows[1]["val_loss"]


@pytest.mark.parametrize("flags,match", [
    (["--keep=0"], "--keep=0.0 must be in (0, 1]"),
    (["--keep=1.5"], "--keep=1.5 must be in (0, 1]"),
    (["--keep=nan"], "--keep=nan must be in (0, 1]"),
    (["--keep=0.5", "--what=mlp,wings"], "--what=mlp,wings: give some of mlp, heads, embd, depth"),
    (["--keep=0.5", "--importance=taylor"], "--importance=taylor: use one of activation, magnitude"),
    (["--keep=0.5", "--calib_batches=0"], "--calib_batches=0 must be >= 1"),
    (["--keep=0.5", "--to={run}"], "--to must be another folder"),
    (["--keep=0.5", "--out_dir={peft}"], "is a PEFT run: its ckpt.pt holds only PEFT tensors. Export it first"),
])
def test_bad_flags_are_one_line_errors_with_exit_2(flags, match, run, char_dataset, tmp_path, capsys):
    peft = str(tmp_path / "peft")
    if any("{peft}" in f for f in flags):
        train.train(load_config(TINY + [f"--dataset={char_dataset}", f"--init_from={run}", "--peft=lora",
                                        "--max_iters=1", "--eval_iters=1", f"--out_dir={peft}"]))
    args = [f"--out_dir={run}", f"--to={tmp_path / 'out'}"] + [f.format(run=run, peft=peft) for f in flags]
    code, err = exit_code(prune.main, args, capsys)
    assert code == 2 and err.count("\n") == 1 and match in err, err
    assert not os.path.exists(tmp_path / "out")
