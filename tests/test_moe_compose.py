"""Every technique composes with an MoE model (or refuses where the combination has no
meaning): full fine-tuning, LoRA (on attention and on the router), adapters (after an MoE
sublayer, whose output is a (y, aux) pair and whose last Linear is the router), BitFit (the
experts' biases) with export to a plain GPT, resume, sampling and an MoE teacher.

Each test starts from one tiny MoE base run and checks a number: a PEFT model starts equal
to its base, an export computes what the PEFT model computes, a changed MoE key is refused
in one line before anything is written."""

import json
import math
import os

import pytest
import torch

import distill
import export
import train
from batches import load_dataset
from checkpoint import read_checkpoint, restore_model
from config import load_config
from conftest import TINY, exit_code
from model import GPT, GPTConfig
from peft import Adapted, LoRALinear

MOE = ["--moe_num_experts=4", "--moe_top_k=2", "--moe_every=1"]


def run(args, out_dir, dataset):
    return train.train(load_config(TINY + [f"--dataset={dataset}", f"--out_dir={out_dir}", "--eval_iters=2"] + args))


@pytest.fixture(scope="module")
def moe_base(char_dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("moe_compose") / "base")
    run(MOE + ["--max_iters=4", "--eval_interval=4", "--learning_rate=3e-3", "--bias=False"], out, char_dataset)
    return out


def logits_of(model, seed=0):
    model.eval()
    x = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)[0]


def base_model(moe_base):
    return restore_model(read_checkpoint(os.path.join(moe_base, "ckpt.pt")), "test", dropout=0.0)


def test_full_fine_tuning_of_an_moe_base_keeps_its_experts(moe_base, char_dataset, tmp_path):
    out = str(tmp_path / "ft")
    row = run([f"--init_from={moe_base}", "--max_iters=0", "--eval_only=True"], out, char_dataset)
    with open(os.path.join(moe_base, "metrics.jsonl")) as f:
        base_row = [r for r in map(json.loads, f) if "val_loss" in r][-1]
    assert row["val_loss"] == base_row["val_loss"]  # the base's MoE model, not a dense one
    run([f"--init_from={moe_base}", "--max_iters=2", "--eval_interval=2"], out, char_dataset)
    ckpt = read_checkpoint(os.path.join(out, "ckpt.pt"))
    assert ckpt["model_config"]["moe_num_experts"] == 4 and "transformer.h.0.mlp.moe.w_fc" in ckpt["model"]


@pytest.mark.parametrize("method,args", [
    ("lora", ["--peft=lora", "--lora_targets=c_attn[q,v],router"]),
    ("adapter", ["--peft=adapter", "--adapter_targets=attn,mlp"]),
    ("bitfit", ["--peft=bitfit"]),
])
def test_each_peft_method_on_an_moe_base_starts_equal_trains_and_exports(method, args, moe_base, char_dataset,
                                                                        tmp_path, capsys):
    import sample

    out = str(tmp_path / method)
    run([f"--init_from={moe_base}", "--max_iters=0", "--eval_only=True"] + args, out, char_dataset)
    run([f"--init_from={moe_base}", "--max_iters=3", "--eval_interval=3", "--learning_rate=1e-2"] + args, out,
        char_dataset)
    ckpt = read_checkpoint(os.path.join(out, "ckpt.pt"))
    peft_model = restore_model(ckpt, "test", dropout=0.0)
    trained = list(ckpt["model"].values())
    assert trained and all(t.abs().sum() > 0 for t in trained if t.dim() > 1 or method == "bitfit"), list(ckpt["model"])
    if method == "lora":
        assert isinstance(peft_model.transformer.h[0].mlp.moe.router, LoRALinear)
    if method == "adapter":
        mlp = peft_model.transformer.h[0].mlp
        assert isinstance(mlp, Adapted) and mlp.adapter_up.out_features == 32  # n_embd, not the router's 4 experts
    if method == "bitfit":
        assert {"transformer.h.0.mlp.moe.b_fc", "transformer.h.0.mlp.moe.b_proj"} <= set(ckpt["model"])
        assert "transformer.h.0.mlp.moe.router.bias" not in ckpt["model"]
    # it differs from the base now, and samples
    assert not torch.allclose(logits_of(peft_model), logits_of(base_model(moe_base)))
    sample.main([f"--out_dir={out}", "--max_new_tokens=5", "--num_samples=1"])
    # export: a plain GPT computing exactly what the PEFT model computes (adapters: refused, as for a dense model)
    if method == "adapter":
        with pytest.raises(SystemExit) as e:
            export.main([f"--out_dir={out}", f"--to={tmp_path / 'exp'}"])
        assert e.value.code == 2 and "cannot be merged" in capsys.readouterr().err
        return
    export.main([f"--out_dir={out}", f"--to={tmp_path / 'exp'}"])
    plain = read_checkpoint(str(tmp_path / "exp" / "ckpt.pt"))
    model = GPT(GPTConfig(**{**plain["model_config"], "dropout": 0.0}))
    model.load_state_dict(plain["model"])
    torch.testing.assert_close(logits_of(model), logits_of(peft_model), rtol=1e-5, atol=1e-5)


def test_a_peft_model_on_an_moe_base_starts_exactly_equal_to_it(moe_base):
    from peft import PEFTConfig, apply_peft

    ref = logits_of(base_model(moe_base))
    for cfg in (PEFTConfig(peft="lora", lora_targets="c_attn,c_proj,router"), PEFTConfig(peft="adapter"),
                PEFTConfig(peft="bitfit", bitfit_layernorm=True)):
        model = apply_peft(base_model(moe_base), cfg)
        assert torch.equal(logits_of(model), ref), cfg.peft


def test_lora_on_the_experts_is_refused_with_what_lora_can_wrap(moe_base, char_dataset, tmp_path, capsys):
    code, err = exit_code(train.main, TINY + [f"--dataset={char_dataset}", f"--init_from={moe_base}", "--peft=lora",
                                  "--lora_targets=w_fc", f"--out_dir={tmp_path / 'x'}"], capsys)
    assert code == 2 and "matches no Linear module" in err and "router" in err, err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("key,value", [("moe_num_experts", 8), ("moe_top_k", 1), ("moe_hidden", 16),
                                       ("moe_shared_expert", True), ("moe_router", "switch")])
@pytest.mark.parametrize("mode", ["resume", "fine-tune"])
def test_changing_what_the_experts_are_is_refused_in_one_line(key, value, mode, moe_base, char_dataset, tmp_path,
                                                              capsys):
    if mode == "resume":
        out = tmp_path / "run"
        run(MOE + ["--max_iters=1", "--eval_interval=1"], str(out), char_dataset)
        before = sorted(os.listdir(out)), os.path.getmtime(out / "ckpt.pt")
        args = ["--init_from=resume", f"--out_dir={out}", "--max_iters=2"]
    else:
        out = tmp_path / "ft"
        args = TINY + [f"--dataset={char_dataset}", f"--init_from={moe_base}", f"--out_dir={out}", "--max_iters=1"]
    extra = ["--moe_top_k=1"] if key == "moe_router" else []
    code, err = exit_code(train.main, args + [f"--{key}={value}"] + extra, capsys)
    assert code == 2 and err.count("\n") == 1 and f"differs from the checkpoint's" in err, err
    if mode == "resume":
        assert (sorted(os.listdir(out)), os.path.getmtime(out / "ckpt.pt")) == before
    else:
        assert not out.exists()


def test_moe_training_settings_may_change_on_resume_and_fine_tune(moe_base, char_dataset, tmp_path):
    out = str(tmp_path / "ft")
    run([f"--init_from={moe_base}", "--max_iters=1", "--eval_interval=1", "--moe_aux_loss_coef=0.1"], out,
        char_dataset)
    cfg = load_config(["--init_from=resume", f"--out_dir={out}", "--max_iters=2", "--moe_z_loss_coef=0"])
    assert (cfg.model.moe_num_experts, cfg.model.moe_aux_loss_coef, cfg.model.moe_z_loss_coef) == (4, 0.1, 0.0)
    train.train(cfg)


@pytest.mark.parametrize("source", ["online", "cache"])
def test_an_moe_teacher_distils_into_a_dense_student(source, moe_base, char_dataset, tmp_path):
    data, _, meta = load_dataset(char_dataset)
    if source == "online":
        kd = [f"--teacher={moe_base}"]
    else:
        distill.build_cache(moe_base, data, meta, str(tmp_path / "cache"), k=8, tail_temperatures=[1.0])
        kd = [f"--soft_labels={tmp_path / 'cache'}"]
    teacher, _ = distill.load_teacher(moe_base, meta)
    assert teacher.moe_layers()
    row = run(kd + ["--kd_alpha=0.5", "--max_iters=2", "--eval_interval=2", "--log_interval=1"],
              str(tmp_path / "student"), char_dataset)
    assert math.isfinite(row["val_loss"])
    # the MoE teacher's soft labels reached the loss: a KD term on every row, mixed in as logged
    with open(tmp_path / "student" / "metrics.jsonl") as f:
        rows = [r for r in map(json.loads, f) if "loss" in r]
    assert len(rows) == 2 and all(r["kd"] > 0 and r["loss"] == pytest.approx(0.5 * r["kd"] + 0.5 * r["ce"], abs=1e-5)
                                  for r in rows)
