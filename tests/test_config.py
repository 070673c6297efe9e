"""config.py checks every numeric key's domain. Each int and float key is fed zero, a
negative value, a huge one and a value of the wrong type (floats also NaN and inf, through
a config file, since the command line reads "nan" as a string), through train.py's main as
a user would type it. A value is either refused, with one line on stderr naming the key and
exit code 2, or listed in LEGAL below with the reason it is a setting; a legal value then
trains one step (or, where that would take hours, must at least load). Nothing may end in
a traceback."""

import math

import pytest

import config
import distill
import train
from batches import load_dataset
from config import load_config
from conftest import TINY, exit_code
from errors import UserError

HUGE_INT = 10**30
PROBES = {  # name -> (value as typed on the command line, or a float written into a config file)
    int: {"zero": "0", "negative": "-1", "huge": str(HUGE_INT), "wrong type": "1.5", "text": "abc"},
    float: {"zero": "0", "negative": "-1", "huge": "1e30", "nan": float("nan"), "inf": float("inf"), "text": "abc"},
}
SLOW = "legal, but it would run for hours: loaded, not trained"
# (key, probe): why the value is a setting. Every probe not listed here must be refused.
LEGAL = {
    ("eval_interval", "huge"): "evaluate only at the end",
    ("eval_iters", "huge"): SLOW,
    ("log_interval", "huge"): "a training row only at the last step",
    ("gradient_accumulation_steps", "huge"): SLOW,
    ("max_iters", "zero"): "nothing to train: the run says so and stops",
    ("max_iters", "huge"): SLOW,
    ("weight_decay", "zero"): "no decay",
    ("beta1", "zero"): "AdamW without momentum",
    ("beta2", "zero"): "AdamW's second moment of this step only",
    ("grad_clip", "zero"): "no clipping",
    ("grad_clip", "huge"): "a bound that never binds",
    ("warmup_iters", "zero"): "no warmup",
    ("warmup_iters", "huge"): "the run never leaves its warmup",
    ("lr_decay_iters", "zero"): "0 means max_iters",
    ("lr_decay_iters", "huge"): "the decay ends after the run",
    ("min_lr", "zero"): "decay to zero",
    ("seed", "zero"): "a seed",
    ("seed", "negative"): "a seed (torch takes it modulo 2**64)",
    ("dropout", "zero"): "no dropout",
    ("moe_num_experts", "zero"): "a dense model",
    ("moe_hidden", "zero"): "0 means 4 * n_embd / moe_top_k",
    ("moe_capacity_factor", "huge"): "no token is ever dropped",
    ("moe_eval_capacity_factor", "huge"): "no token is ever dropped in eval",
    ("moe_aux_loss_coef", "zero"): "no balancing loss (the MoE experiment's collapse row)",
    ("moe_aux_loss_coef", "huge"): "a weight; one that swamps the loss ends in the non-finite-loss stop",
    ("moe_z_loss_coef", "zero"): "no z-loss",
    ("moe_z_loss_coef", "huge"): "a weight; one that swamps the loss ends in the non-finite-loss stop",
    ("moe_init_scale", "huge"): "an init scale; one that overflows ends in the non-finite-loss stop",
    ("lora_alpha", "huge"): "a scale; one that overflows ends in the non-finite-loss stop",
    ("lora_dropout", "zero"): "no dropout on the LoRA branch",
    ("kd_alpha", "zero"): "no KD term (KD is still logged)",
    ("kd_temperature", "huge"): "both distributions near uniform",
    ("kd_top_k", "zero"): "every logit the cache holds",
    ("attn_window", "huge"): "a window past the context: full causal attention",
    ("attn_block", "huge"): "one block past the context: full causal attention",
    ("attn_summary", "zero"): "blocks that see only themselves",
    ("n_kv_head", "zero"): "0 means n_head: multi-head attention",
    ("rope_theta", "huge"): "a base so large that all but the first pair barely rotate",
    ("emb_dim", "zero"): "0 means no factorization",
    ("mlp_hidden", "zero"): "0 means 4 * n_embd",
    ("head_dim", "zero"): "0 means n_embd // n_head",
    ("keep_last", "huge"): "keep every checkpoint",
    ("ckpt_interval", "zero"): "save at evals only",
    ("ckpt_interval", "huge"): "no save between evals",
    ("spike_factor", "zero"): "only a non-finite loss is a spike",
    ("spike_factor", "huge"): "only a non-finite loss is a spike, in practice",
    ("spike_window", "huge"): "the mean never fills: only a non-finite loss is a spike",
    ("max_rewinds", "zero"): "stop at the first spike",
    ("max_rewinds", "huge"): "rewind at every spike",
    ("qat_bits", "zero"): "no quantization-aware training",
    ("kd_on_policy", "zero"): "off-policy distillation, as before",
    ("qat_group_size", "zero"): "one scale per row",
}
# settings under which a key matters, so that a refusal is about the key and not its context
CONTEXT = {
    "moe_": ["--moe_num_experts=4"],
    "attn_window": ["--attention=sliding"],
    "attn_block": ["--attention=blocksparse"],
    "attn_summary": ["--attention=blocksparse"],
    "rope_theta": ["--pos_emb=rope"],
    "share_repeat": ["--share_layers=immediate"],
    "lora_": ["--peft=lora", "--init_from={base}"],
    "adapter_": ["--peft=adapter", "--init_from={base}"],
    "kd_alpha": ["--teacher={base}"],
    "kd_temperature": ["--teacher={base}", "--kd_alpha=0.5"],
    "kd_jsd_beta": ["--teacher={base}", "--kd_alpha=0.5", "--kd_loss=jsd"],
    "kd_top_k": ["--soft_labels={cache}", "--kd_alpha=0.5", "--kd_tail=renorm"],
    "spike_": ["--on_spike=rewind"],
    "max_rewinds": ["--on_spike=rewind"],
    "qat_group_size": ["--qat_bits=4"],
    "kd_on_policy": ["--teacher={base}"],
    "kd_rollout_len": ["--teacher={base}", "--kd_on_policy=0.5"],
}
CASES = [(key, probe) for key, tp in config.FIELD_TYPES.items() if tp in PROBES for probe in PROBES[tp]]


@pytest.fixture(scope="module")
def runs(char_dataset, tmp_path_factory):
    """A tiny trained base run (for PEFT and as a KD teacher) and a soft-label cache of it."""
    root = tmp_path_factory.mktemp("domains")
    base, cache = str(root / "base"), str(root / "cache")
    train.train(load_config(TINY + [f"--dataset={char_dataset}", f"--out_dir={base}", "--max_iters=1",
                                    "--eval_iters=1"]))
    data, _, meta = load_dataset(char_dataset)
    distill.build_cache(base, data, meta, cache, k=8, tail_temperatures=[1.0])
    return {"base": base, "cache": cache}


def test_every_numeric_key_is_probed():
    keys = {key for key, _ in CASES}
    assert {"learning_rate", "batch_size", "n_layer", "n_embd", "block_size", "beta2", "moe_top_k", "lora_r",
            "kd_temperature", "seed"} <= keys
    assert all(key in keys and probe in PROBES[config.FIELD_TYPES[key]] for key, probe in LEGAL)


@pytest.mark.parametrize("key,probe", CASES)
def test_a_value_outside_its_domain_is_one_line_and_exit_2(key, probe, runs, char_dataset, tmp_path, capsys):
    value = PROBES[config.FIELD_TYPES[key]][probe]
    context = [a.format(**runs) for prefix, args in CONTEXT.items() if key.startswith(prefix) for a in args]
    args = TINY + [f"--dataset={char_dataset}", f"--out_dir={tmp_path / 'run'}", "--max_iters=1", "--eval_iters=1",
                   "--eval_interval=1000"] + context
    if isinstance(value, float):  # NaN and inf: real floats, from a config file
        path = tmp_path / "probe.py"
        path.write_text(f"{key} = float('{value}')\n")
        args.append(str(path))
    else:
        args.append(f"--{key}={value}")
    if LEGAL.get((key, probe)) == SLOW:
        load_config(args)  # accepted; training it would take hours
        return
    code, err = exit_code(train.main, args, capsys)
    if (key, probe) in LEGAL:
        # a setting: it trains, or stops at a non-finite loss with the one-line message
        assert code == 0 or (code == 2 and err.count("\n") == 1 and "stopped before the optimizer step" in err), err
    else:
        assert code == 2, f"--{key}={value} was accepted (exit {code}); refuse it, or list it in LEGAL with a reason"
        assert err.count("\n") == 1 and err.startswith("error: ") and key in err, err


def test_memory_bound_names_the_keys_and_accepts_the_recipes(char_dataset):
    """check_memory refuses what cannot fit and accepts nanoGPT's own GPU recipe here."""
    cfg = load_config(["configs/shakespeare_char.py", "--device=cpu", "--dtype=float32"])
    config.check_memory(cfg, 65, "cpu")  # 10.6M parameters, batch 64 x 256: fits
    big = load_config(["--n_layer=100000", "--n_embd=4096", "--n_head=32", "--device=cpu"])
    with pytest.raises(UserError, match=r"needs at least [\d,.]+ GiB .*n_layer=100000, n_embd=4096"):
        config.check_memory(big, 65, "cpu")


def test_nan_and_inf_are_refused_by_the_type_check_too():
    for bad in (float("nan"), float("inf"), -math.inf):
        with pytest.raises(UserError, match="'learning_rate' expects a finite float"):
            config.check_value("learning_rate", bad)
    with pytest.raises(UserError, match="'learning_rate' expects a finite float, got 'nan'"):
        load_config(["--learning_rate=nan"])


@pytest.mark.parametrize("source,where,what", [
    ("n_layer = 2\nn_embd = 32 +\n", "line 2", "invalid syntax"),
    ("n_layer = 2\n\nn_embd = width * 2\n", "line 3", "NameError: name 'width' is not defined"),
    ("import nonexistent_module_xyz\n", "line 1", "ModuleNotFoundError"),
    ("n_layer = 1 // 0\n", "line 1", "ZeroDivisionError"),
])
def test_a_config_file_that_does_not_run_is_one_line_naming_file_and_line(source, where, what, tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text(source)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train.main([str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {path}, {where}: ") and what in err, err


def test_a_decay_that_ends_inside_the_warmup_is_refused():
    # warmup 5, decay over by iter 3: the rate would climb to 5/6 of the peak and drop straight to min_lr
    for decay in (3, 5):
        with pytest.raises(UserError, match=f"lr_decay_iters={decay} ends the schedule before warmup_iters=5 does"):
            load_config(["--warmup_iters=5", f"--lr_decay_iters={decay}"])
    load_config(["--warmup_iters=5", "--lr_decay_iters=6"])  # one step of decay
    load_config(["--warmup_iters=5", "--lr_decay_iters=3", "--lr_schedule=constant"])  # constant never decays
    load_config(["--warmup_iters=100", "--max_iters=10"])  # 0 = max_iters: a run that ends in its warmup
