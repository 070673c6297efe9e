"""peft.py and PEFT through train.py, sample.py and export.py: each method starts equal to
the base; merged LoRA = unmerged; merge then unmerge restores the base; the base stays
bit-identical through training; only PEFT parameters get gradients and optimizer state;
PEFT state dicts round-trip; LoRA under gradient checkpointing gets the same gradients;
resume is exact; the merged export samples the same tokens; adapters switch on one base."""

import copy
import os

import pytest
import torch

import sample
import train
from checkpoint import file_sha256, read_checkpoint, restore_model, save_checkpoint
from config import load_config
from conftest import TINY
from errors import UserError
from export import export_merged
from model import GPT, GPTConfig
from peft import (
    LoRALinear,
    apply_adapters,
    apply_bitfit,
    apply_lora,
    load_peft_state_dict,
    merge_lora,
    merged_state_dict,
    peft_parameters,
    peft_state_dict,
    trainable_summary,
    unmerge_lora,
)
from step import make_optimizer

METHODS = {
    "lora_qv": lambda m: apply_lora(m, "c_attn[q,v]", r=4, alpha=8),
    "lora_all": lambda m: apply_lora(m, "c_attn,c_proj,c_fc", r=4, alpha=8),
    "lora_k_rslora": lambda m: apply_lora(m, "attn.c_attn[k]", r=4, alpha=8, rslora=True),
    "adapter": lambda m: apply_adapters(m, "attn,mlp", size=8),
    "bitfit": lambda m: apply_bitfit(m),
    "bitfit_ln": lambda m: apply_bitfit(m, layernorm=True),
}


def tiny_gpt(bias=False, seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, bias=bias, **kw))


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 50, (3, 16), generator=g)
    return x, torch.randint(0, 50, (3, 16), generator=g)


def perturb_peft(model, seed=2):
    """Give the PEFT parameters random values, as if trained (B = 0 would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in peft_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


# ----------------------------------------------------------------------------------------
# the library


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_starts_exactly_equal_to_the_base(method, bias):
    base = tiny_gpt(bias)
    x, y = batch()
    ref_logits, ref_loss = base(x, y)
    model = copy.deepcopy(base)
    METHODS[method](model)
    logits, loss = model(x, y)
    assert torch.equal(logits, ref_logits) and torch.equal(loss, ref_loss)
    assert 0 < trainable_summary(model)["trainable_params"] < sum(p.numel() for p in base.parameters())


def test_lora_delta_is_exactly_scaling_times_BA_on_the_chosen_parts():
    model = tiny_gpt()
    apply_lora(model, "h.0.attn.c_attn[q,v]", r=4, alpha=8)
    perturb_peft(model)
    layer = model.transformer.h[0].attn.c_attn
    x = torch.randn(5, 32)
    A, B = layer.lora_A.view(2, 4, 32), layer.lora_B  # (2 parts, r, in), (2 parts, 32, r)
    expected = layer.base(x).clone()
    expected[:, 0:32] += 2.0 * x @ (B[0] @ A[0]).t()  # q: columns 0..31, scaling alpha/r = 2
    expected[:, 64:96] += 2.0 * x @ (B[1] @ A[1]).t()  # v: columns 64..95; k untouched
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(layer(x)[:, 32:64], layer.base(x)[:, 32:64])


@pytest.mark.parametrize("targets", ["c_attn[q,v]", "c_attn,c_proj,c_fc"])
def test_lora_merged_equals_unmerged_and_unmerge_restores_the_base(targets):
    base = tiny_gpt(bias=True)
    model = copy.deepcopy(base)
    apply_lora(model, targets, r=4, alpha=8)
    perturb_peft(model)
    x, _ = batch()
    unmerged, _ = model(x)
    merge_lora(model)
    merged, _ = model(x)
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=2e-6)
    assert not torch.equal(merged, base(x)[0])  # the update is not zero
    unmerge_lora(model)
    restored = {k.replace(".base.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
    assert restored.keys() == base.state_dict().keys()
    for k, v in base.state_dict().items():
        torch.testing.assert_close(restored[k], v, rtol=0, atol=1e-7)


def test_eval_mode_does_not_merge_and_its_state_dict_reloads_to_the_same_outputs():
    model = tiny_gpt()
    apply_lora(model, "c_attn,c_fc", r=4, alpha=8)
    perturb_peft(model)
    weight_before = model.transformer.h[0].attn.c_attn.base.weight.clone()
    model.eval()
    assert torch.equal(model.transformer.h[0].attn.c_attn.base.weight, weight_before)
    state = model.state_dict()  # saved in eval mode
    x, _ = batch()
    expected, _ = model(x)
    fresh = tiny_gpt(seed=5)  # other random weights: everything must come from the state dict
    apply_lora(fresh, "c_attn,c_fc", r=4, alpha=8)
    fresh.load_state_dict(state)
    fresh.eval()
    assert torch.equal(fresh(x)[0], expected)


def test_peft_state_dict_round_trips_onto_a_fresh_base_and_is_small():
    base = tiny_gpt()
    tuned = copy.deepcopy(base)
    apply_lora(tuned, "c_attn[q,v]", r=2, alpha=4)
    perturb_peft(tuned)
    x, _ = batch()
    expected, _ = tuned(x)
    small = peft_state_dict(tuned)
    assert set(small) == {f"transformer.h.{i}.attn.c_attn.{n}" for i in range(2) for n in ("lora_A", "lora_B")}
    fresh = copy.deepcopy(base)
    apply_lora(fresh, "c_attn[q,v]", r=2, alpha=4)
    load_peft_state_dict(fresh, small)
    assert torch.equal(fresh(x)[0], expected)
    peft_bytes = sum(t.numel() * t.element_size() for t in small.values())
    full_bytes = sum(t.numel() * t.element_size() for t in base.state_dict().values())
    assert peft_bytes < 0.05 * full_bytes


def test_load_peft_state_dict_rejects_other_settings_and_merged_models():
    model = tiny_gpt()
    apply_lora(model, "c_attn[q,v]", r=2, alpha=4)
    other = tiny_gpt()
    apply_lora(other, "c_attn[q,v]", r=4, alpha=4)
    with pytest.raises(ValueError, match="does not fit"):
        load_peft_state_dict(model, peft_state_dict(other))  # same keys, other r
    with pytest.raises(ValueError, match=r"missing PEFT keys \['transformer.h.1"):
        load_peft_state_dict(model, {k: v for k, v in peft_state_dict(model).items() if ".h.0." in k})
    with pytest.raises(ValueError, match="unexpected keys"):
        load_peft_state_dict(model, {**peft_state_dict(model), "transformer.wte.weight": torch.zeros(50, 32)})
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        load_peft_state_dict(model, peft_state_dict(model))


@pytest.mark.parametrize("method", ["lora_qv", "adapter", "bitfit"])
def test_only_peft_parameters_get_gradients_and_optimizer_state(method):
    model = tiny_gpt()
    METHODS[method](model)
    perturb_peft(model)  # at init B = 0 (and W_up = 0), which zeroes A's (W_down's) gradient
    peft_ids = {id(p) for p in peft_parameters(model).values()}
    x, y = batch()
    model(x, y)[1].backward()
    for name, p in model.named_parameters():
        if id(p) in peft_ids:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    tc = load_config([]).train
    opt = make_optimizer(model, tc)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == peft_ids


def test_bitfit_trains_only_biases_and_adds_zero_biases_to_a_bias_free_model():
    model = tiny_gpt(bias=False)
    names = apply_bitfit(model)
    assert names and all(n.endswith(".bias") for n in names)
    # a bias=False GPT gets exactly the parameters of a bias=True one
    assert set(dict(model.named_parameters())) == set(dict(tiny_gpt(bias=True).named_parameters()))
    assert "lm_head.bias" not in names  # the output head is tied to the embedding: left alone
    with_ln = tiny_gpt(bias=False)
    names_ln = apply_bitfit(with_ln, layernorm=True)
    assert set(names_ln) - set(names) == {n.replace(".bias", ".weight") for n in names if ".ln_" in n}


def test_lora_under_gradient_checkpointing_gets_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        model = tiny_gpt(grad_checkpointing=ckpt)
        apply_lora(model, "c_attn[q,v],c_fc", r=4, alpha=8)
        perturb_peft(model)
        x, y = batch()
        model(x, y)[1].backward()
        grads.append({n: p.grad for n, p in peft_parameters(model).items()})
    assert grads[1] and all(g is not None for g in grads[1].values())
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)


def test_a_pattern_that_matches_nothing_lists_the_modules():
    with pytest.raises(ValueError, match=r"'c_atn' matches no Linear module.*transformer\.h\.\*\.attn\.c_attn \(x2\)"
                                         r".*transformer\.h\.\*\.mlp\.c_fc \(x2\).*lm_head: left out, weight tied"):
        apply_lora(tiny_gpt(), "c_atn")
    with pytest.raises(ValueError, match="matches no Linear module"):
        apply_lora(tiny_gpt(), "lm_head")  # the tied output head is never wrapped
    with pytest.raises(ValueError, match=r"the parts of c_attn are q, k, v"):
        apply_lora(tiny_gpt(), "c_attn[q,x]")
    with pytest.raises(ValueError, match=r"not a fused projection"):
        apply_lora(tiny_gpt(), "c_fc[q]")
    with pytest.raises(ValueError, match=r"adapter target 'atn' matches no module.*transformer\.h\.\*\.attn"):
        apply_adapters(tiny_gpt(), "atn")


def test_merged_state_dict_loads_into_a_bare_gpt_and_refuses_adapters():
    model = tiny_gpt()
    apply_lora(model, "c_attn,c_fc", r=4, alpha=8)
    perturb_peft(model)
    plain = tiny_gpt(seed=9)
    plain.load_state_dict(merged_state_dict(model))  # strict
    x, _ = batch()
    torch.testing.assert_close(plain(x)[0], model(x)[0], rtol=0, atol=2e-6)
    assert not any(isinstance(m, LoRALinear) for m in plain.modules())
    adapted = tiny_gpt()
    apply_adapters(adapted)
    with pytest.raises(ValueError, match="nonlinear"):
        merged_state_dict(adapted)


# ----------------------------------------------------------------------------------------
# through train.py, sample.py and export.py


def run(args, out_dir, dataset):
    return train.train(load_config(TINY + [f"--dataset={dataset}", f"--out_dir={out_dir}", "--eval_iters=2"] + args))


@pytest.fixture(scope="module")
def base_run(char_dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("peft") / "base")
    run(["--max_iters=30", "--eval_interval=30", "--learning_rate=3e-3"], out, char_dataset)
    return out


def finetune(base_run, char_dataset, out, args, iters=6):
    ft = ["--init_from=" + base_run, f"--max_iters={iters}", "--eval_interval=3", "--warmup_iters=0",
          "--learning_rate=1e-2", "--weight_decay=0"]
    return run(ft + args, out, char_dataset)


def base_weights(base_run):
    return read_checkpoint(os.path.join(base_run, "ckpt.pt"))["model"]


@pytest.mark.parametrize("args", [
    ["--peft=lora", "--lora_targets=c_attn[q,v],c_fc", "--lora_r=4"],
    ["--peft=adapter", "--adapter_size=8"],
    ["--peft=bitfit", "--bitfit_layernorm=True"],
])
def test_peft_run_keeps_the_base_bit_identical_and_saves_only_peft_tensors(base_run, char_dataset, tmp_path, args):
    before = {k: v.clone() for k, v in base_weights(base_run).items()}
    out = str(tmp_path / "ft")
    finetune(base_run, char_dataset, out, args)
    assert all(torch.equal(before[k], v) for k, v in base_weights(base_run).items())  # the file is untouched
    ckpt = read_checkpoint(os.path.join(out, "ckpt.pt"))
    model = restore_model(ckpt, "test")
    names = set(peft_parameters(model))
    assert set(ckpt["model"]) == names
    # the optimizer state covers exactly the PEFT tensors
    assert len(ckpt["optimizer"]["state"]) == len(names)
    assert ckpt["peft_base"]["sha256"] == file_sha256(os.path.join(base_run, "ckpt.pt"))
    # every non-PEFT weight of the fine-tuned model is the base's, bit for bit; PEFT ones moved
    state = model.state_dict()
    for k, v in state.items():
        key = k.replace(".sublayer.", ".").replace(".base.", ".")
        if k not in names and key in before:
            assert torch.equal(v, before[key]), k
    # and the PEFT tensors that start at zero (LoRA's B, the adapter's up-projection, the
    # biases BitFit adds to this bias-free base) have moved: training reached them
    zero_init = [k for k in names if k.endswith(("lora_B", "adapter_up.weight", "adapter_up.bias", ".bias"))]
    assert zero_init and all(state[k].abs().sum() > 0 for k in zero_init)
    cfg = read_checkpoint(os.path.join(out, "ckpt.pt"))["config"]
    assert cfg["trainable"]["trainable_params"] == sum(t.numel() for t in ckpt["model"].values())


def test_lora_training_moves_B_away_from_zero_and_changes_the_output(base_run, char_dataset, tmp_path):
    out = str(tmp_path / "lora")
    finetune(base_run, char_dataset, out, ["--peft=lora"])
    model, _ = sample.load_model(out)
    assert all(m.lora_B.abs().sum() > 0 for m in model.modules() if isinstance(m, LoRALinear))
    base, _ = sample.load_model(base_run)
    x, _ = batch()
    x = x % base.config.vocab_size
    assert not torch.equal(model(x)[0], base(x)[0])


def test_peft_checkpoint_is_a_small_fraction_of_a_full_finetune(base_run, char_dataset, tmp_path):
    finetune(base_run, char_dataset, str(tmp_path / "full"), [])
    finetune(base_run, char_dataset, str(tmp_path / "lora"), ["--peft=lora", "--lora_r=2"])
    full = os.path.getsize(tmp_path / "full" / "ckpt.pt")
    lora = os.path.getsize(tmp_path / "lora" / "ckpt.pt")
    assert lora < 0.25 * full  # at this tiny size the RNG states and the tokenizer are most of it


def test_peft_resume_equals_uninterrupted(base_run, char_dataset, tmp_path):
    args = ["--peft=lora", "--lora_targets=c_attn,c_fc", "--lora_dropout=0.1", "--lr_decay_iters=8"]
    finetune(base_run, char_dataset, str(tmp_path / "straight"), args, iters=8)
    finetune(base_run, char_dataset, str(tmp_path / "split"), args, iters=4)
    run(["--init_from=resume", "--max_iters=8"], str(tmp_path / "split"), char_dataset)
    a = read_checkpoint(str(tmp_path / "straight" / "ckpt.pt"))
    b = read_checkpoint(str(tmp_path / "split" / "ckpt.pt"))
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["peft_base"] == a["peft_base"]


def test_peft_with_bf16_accumulation_and_checkpointing_trains(base_run, char_dataset, tmp_path):
    out = str(tmp_path / "bf16")
    row = finetune(base_run, char_dataset, out, ["--peft=lora", "--dtype=bfloat16", "--gradient_accumulation_steps=2",
                                                 "--grad_checkpointing=True"], iters=4)
    assert row["val_loss"] == row["val_loss"]  # finite
    ckpt = read_checkpoint(os.path.join(out, "ckpt.pt"))
    assert all(v.abs().sum() > 0 for k, v in ckpt["model"].items() if k.endswith("lora_B"))


def test_merged_export_samples_the_same_tokens_as_base_plus_lora(base_run, char_dataset, tmp_path):
    out = str(tmp_path / "lora")
    finetune(base_run, char_dataset, out, ["--peft=lora", "--lora_targets=c_attn,c_proj,c_fc"])
    export_merged(out, str(tmp_path / "merged"))
    plain = read_checkpoint(str(tmp_path / "merged" / "ckpt.pt"))
    bare = GPT(GPTConfig(**plain["model_config"]))
    bare.load_state_dict(plain["model"])  # no PEFT code involved
    texts = []
    for d in (out, str(tmp_path / "merged")):
        model, tok = sample.load_model(d)
        texts.append(sample.generate_text(model, tok, "def ", 2, 60, 0.8, None, seed=3))
    assert texts[0] == texts[1]
    # BitFit on a bias=False base exports as a bias=True GPT
    finetune(base_run, char_dataset, str(tmp_path / "bitfit"), ["--peft=bitfit"])
    export_merged(str(tmp_path / "bitfit"), str(tmp_path / "bitfit_merged"))
    assert read_checkpoint(str(tmp_path / "bitfit_merged" / "ckpt.pt"))["model_config"]["bias"] is True
    finetune(base_run, char_dataset, str(tmp_path / "adapter"), ["--peft=adapter"])
    with pytest.raises(UserError, match="nonlinear"):
        export_merged(str(tmp_path / "adapter"), str(tmp_path / "adapter_merged"))


def test_several_adapters_switch_on_one_base_read_once(base_run, char_dataset, tmp_path, monkeypatch):
    runs = []
    for i, args in enumerate([["--peft=lora", "--seed=1"], ["--peft=lora", "--seed=2"], ["--peft=adapter"]]):
        runs.append(str(tmp_path / f"run{i}"))
        finetune(base_run, char_dataset, runs[-1], args)
    alone = []
    for d in runs:
        model, tok = sample.load_model(d)
        alone.append(sample.generate_text(model, tok, "def ", 1, 40, 0.8, None, seed=5))
    reads = []
    real = sample.read_base_checkpoint
    monkeypatch.setattr(sample, "read_base_checkpoint", lambda *a: reads.append(a) or real(*a))
    together = [sample.generate_text(m, tok, "def ", 1, 40, 0.8, None, seed=5) for _, m, tok in sample.load_adapters(runs)]
    assert together == alone
    assert len(reads) == 1
    assert alone[0] != alone[1]  # different adapters, different text


def test_a_changed_base_is_refused(base_run, char_dataset, tmp_path):
    import shutil

    base_copy = str(tmp_path / "base")
    shutil.copytree(base_run, base_copy)
    out = str(tmp_path / "lora")
    finetune(base_copy, char_dataset, out, ["--peft=lora"], iters=2)
    ckpt = read_checkpoint(os.path.join(base_copy, "ckpt.pt"))
    ckpt["model"]["lm_head.weight"].add_(1e-3)
    save_checkpoint(ckpt, os.path.join(base_copy, "ckpt.pt"))
    with pytest.raises(UserError, match="has changed since the PEFT run was trained on it"):
        sample.load_model(out)
    os.remove(os.path.join(base_copy, "ckpt.pt"))
    with pytest.raises(UserError, match="which is gone"):
        sample.load_model(out)


def test_peft_config_errors(base_run, char_dataset, tmp_path):
    with pytest.raises(UserError, match="peft='lora' adapts a trained model: set init_from"):
        load_config(["--peft=lora"])
    with pytest.raises(UserError, match="lora_r is a setting of peft='lora' but peft='adapter'"):
        load_config(["--peft=adapter", "--lora_r=4", f"--init_from={base_run}"])
    with pytest.raises(UserError, match="lora_r=0 must be >= 1"):
        load_config(["--peft=lora", "--lora_r=0", f"--init_from={base_run}"])
    with pytest.raises(UserError, match="matches no Linear module; the ones LoRA can wrap are"):
        finetune(base_run, char_dataset, str(tmp_path / "bad"), ["--peft=lora", "--lora_targets=c_atn"])
    out = str(tmp_path / "lora")
    finetune(base_run, char_dataset, out, ["--peft=lora"], iters=2)
    with pytest.raises(UserError, match="is a PEFT run: its ckpt.pt holds only PEFT tensors"):
        finetune(out, char_dataset, str(tmp_path / "again"), [])
    with pytest.raises(UserError, match="lora_r=2 differs from the checkpoint's lora_r=8"):
        load_config(["--init_from=resume", f"--out_dir={out}", "--lora_r=2"])
    export_merged(out, str(tmp_path / "merged"))
    with pytest.raises(UserError, match="exported checkpoint"):
        run(["--init_from=resume", "--max_iters=9"], str(tmp_path / "merged"), char_dataset)


def test_lora_scaling_is_alpha_over_sqrt_r_with_rslora_and_alpha_over_r_without():
    # with B = 0 (the start) any scaling gives the same output: B gets random values here,
    # and r = 4 tells the two apart (sqrt(4) = 2 != 4)
    for rslora, scaling in ((True, 8 / 2), (False, 8 / 4)):  # alpha = 8, r = 4
        torch.manual_seed(0)
        base = torch.nn.Linear(16, 12)
        layer = LoRALinear(base, r=4, alpha=8, rslora=rslora)
        with torch.no_grad():
            layer.lora_B.normal_()
        x = torch.randn(5, 16)
        A, B = layer.lora_A, layer.lora_B[0]  # (r, in), (out, r): one part covers the whole output
        torch.testing.assert_close(layer(x) - base(x), scaling * x @ A.t() @ B.t(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("targets,parts", [("c_attn[q],c_attn[v]", [0, 2]), ("c_attn[v], c_attn[q]", [0, 2]),
                                           ("c_attn,c_attn[q]", None), ("c_attn[k],c_attn", None),
                                           ("c_attn[q],h.1.attn.c_attn[k]", [0])])
def test_two_lora_patterns_on_one_module_adapt_the_union_of_their_parts(targets, parts):
    """The last pattern used to win: c_attn[q],c_attn[v] adapted v only."""
    model = tiny_gpt()
    apply_lora(model, targets, r=2)
    layer = model.transformer.h[0].attn.c_attn
    if parts is None:  # the whole projection: one update over all 96 outputs
        assert layer.covers_all and tuple(layer.lora_B.shape) == (1, 96, 2)
    else:
        assert layer.k == len(parts) and layer.lora_cols.view(len(parts), -1)[:, 0].tolist() == [32 * p for p in parts]
    if targets.startswith("c_attn[q],h.1"):
        assert model.transformer.h[1].attn.c_attn.lora_cols.view(2, -1)[:, 0].tolist() == [0, 32]  # q and k


@pytest.mark.parametrize("key,value", [("lora_alpha", 64.0), ("lora_rslora", True)])
def test_resuming_a_lora_run_with_another_scale_is_refused(key, value, base_run, char_dataset, tmp_path, capsys):
    """lora_alpha and lora_rslora set what the saved A and B mean (the update is scaling B A):
    a resume that changed them would continue from another model, its first eval skipped."""
    out = str(tmp_path / "lora")
    finetune(base_run, char_dataset, out, ["--peft=lora", "--lora_targets=c_attn"], iters=2)
    before = file_sha256(os.path.join(out, "ckpt.pt"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train.main(["--init_from=resume", f"--out_dir={out}", "--max_iters=4", f"--{key}={value}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and f"{key}={value} differs from the checkpoint's" in err, err
    assert file_sha256(os.path.join(out, "ckpt.pt")) == before
    # lora_dropout does not change what the tensors mean: it may change on resume
    train.train(load_config(["--init_from=resume", f"--out_dir={out}", "--max_iters=3", "--lora_dropout=0.1"]))
