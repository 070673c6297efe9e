"""train.py: config errors, LR schedules, micro-batching = full batch, exact resume (with a
negative control), atomic checkpoints, refusal of code-running pickles, the non-finite-loss
stop, fixed-batch evaluation, bf16 autocast, and sampling from a checkpoint."""

import json
import math
import os
import pickle
import subprocess
import sys

import pytest
import torch

import checkpoint
import config
import model
import train
from config import TrainConfig, load_config
from conftest import REPO, TINY
from errors import UserError
from step import get_lr


def run_train(args, out_dir, dataset):
    """Train in this process; returns the final eval row."""
    return train.train(load_config(TINY + [f"--dataset={dataset}", f"--out_dir={out_dir}"] + args))


def run_train_subprocess(args, out_dir, dataset):
    cmd = [sys.executable, os.path.join(REPO, "train.py")] + TINY + [f"--dataset={dataset}", f"--out_dir={out_dir}"] + args
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(out_dir):
    return [(r["iter"], r["loss"]) for r in read_metrics(out_dir) if "loss" in r]


def load_state(out_dir):
    return torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)


# ----------------------------------------------------------------------------------------
# config


def test_unknown_key_on_command_line_names_it_and_the_closest_key():
    with pytest.raises(UserError, match=r"unknown config key 'learing_rate' \(did you mean 'learning_rate'\?\)"):
        load_config(["--learing_rate=1e-3"])


def test_unknown_key_in_config_file(tmp_path):
    cfg = tmp_path / "bad.py"
    cfg.write_text("batch_size = 8\nlearing_rate = 1e-3\n_helper = 3\nimport math\n")
    with pytest.raises(UserError, match=r"bad.py: unknown config key 'learing_rate'.*'learning_rate'"):
        load_config([str(cfg)])


def test_wrong_types_name_key_type_and_value(tmp_path):
    with pytest.raises(UserError, match=r"'batch_size' expects int, got 'abc'"):
        load_config(["--batch_size=abc"])
    with pytest.raises(UserError, match=r"'batch_size' expects int, got '1.5'"):
        load_config(["--batch_size=1.5"])
    with pytest.raises(UserError, match=r"'dtype' expects one of 'auto', 'float32'.*got 'fp16'"):
        load_config(["--dtype=fp16"])
    cfg = tmp_path / "c.py"
    cfg.write_text("compile = 'yes'\n")
    with pytest.raises(UserError, match=r"'compile' expects bool, got 'yes'"):
        load_config([str(cfg)])


def test_values_convert_and_override_in_order(tmp_path):
    cfg = tmp_path / "c.py"
    cfg.write_text("learning_rate = 1\nbatch_size = 8\nout_dir = 'a'\n")
    tc, mc, pc, kc = load_config([str(cfg), "--batch_size=3", "--out_dir=123", "--bias=True", "--n_layer=3"])
    assert tc.learning_rate == 1.0 and isinstance(tc.learning_rate, float)
    assert tc.batch_size == 3 and tc.out_dir == "123" and mc.bias is True and mc.n_layer == 3
    assert tc.max_iters == TrainConfig.max_iters  # untouched keys keep the dataclass default


def test_bad_combinations():
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="float16.*needs a CUDA GPU"):
            load_config(["--dtype=float16", "--device=cpu"])
    with pytest.raises(UserError, match="n_embd=100 must be a multiple of n_head=6"):
        load_config(["--n_embd=100", "--n_head=6"])
    with pytest.raises(UserError, match="min_lr=0.1 is above learning_rate=0.01"):
        load_config(["--min_lr=0.1", "--learning_rate=0.01"])
    with pytest.raises(UserError, match=r"write options as --key=value"):
        load_config(["--compile"])


def test_resume_errors(tmp_path, char_dataset):
    with pytest.raises(UserError, match="no checkpoint at .*ckpt.pt"):
        load_config(["--init_from=resume", f"--out_dir={tmp_path}/none"])
    out = str(tmp_path / "run")
    run_train(["--max_iters=2", "--eval_iters=1", "--eval_interval=2"], out, char_dataset)
    with pytest.raises(UserError, match="block_size=32 is larger than the checkpoint's 16"):
        load_config(["--init_from=resume", f"--out_dir={out}", "--block_size=32"])
    with pytest.raises(UserError, match="n_layer=3 differs from the checkpoint's n_layer=2"):
        load_config(["--init_from=resume", f"--out_dir={out}", "--n_layer=3"])
    # resume takes the run's own config as its base: nothing else needs repeating
    tc, mc, pc, kc = load_config(["--init_from=resume", f"--out_dir={out}"])
    assert (tc.max_iters, tc.dataset, mc.n_embd) == (2, char_dataset, 32)


def test_main_prints_one_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--batch_size=abc"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err


def test_missing_dataset_says_how_to_prepare_it(capsys, tmp_path):
    with pytest.raises(SystemExit):
        train.main(TINY + ["--dataset=shakespeare_nonexistent", f"--out_dir={tmp_path}"])
    assert "dataset 'shakespeare_nonexistent' is not prepared" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# learning-rate schedules


def sched(**kw):
    base = dict(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110, lr_decay_iters=0, decay_frac=0.2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("name", ["cosine", "linear", "wsd", "constant"])
def test_every_schedule_warms_up_linearly(name):
    cfg = sched(lr_schedule=name)
    assert get_lr(0, cfg) == pytest.approx(1 / 11)  # (it+1)/(warmup+1), as nanoGPT
    assert get_lr(9, cfg) == pytest.approx(10 / 11)
    assert get_lr(10, cfg) == pytest.approx(1.0)  # warmup over: the peak


def test_schedule_known_values():
    cos, lin, wsd, const = (sched(lr_schedule=s) for s in ("cosine", "linear", "wsd", "constant"))
    # decay runs from iter 10 to iter 110; its midpoint is iter 60
    assert get_lr(60, cos) == pytest.approx(0.1 + 0.5 * 0.9)
    assert get_lr(35, cos) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + 2**-0.5))  # a quarter: cos(pi/4)
    assert get_lr(60, lin) == pytest.approx(0.55)
    assert get_lr(85, lin) == pytest.approx(0.1 + 0.9 * 0.25)
    # wsd: stable until 110 - 0.2 * 110 = 88, then linear to min_lr at 110
    assert get_lr(60, wsd) == 1.0 and get_lr(88, wsd) == 1.0
    assert get_lr(99, wsd) == pytest.approx(0.55)
    assert get_lr(60, const) == 1.0 and get_lr(500, const) == 1.0
    for cfg in (cos, lin, wsd):
        assert get_lr(110, cfg) == pytest.approx(0.1) and get_lr(1000, cfg) == pytest.approx(0.1)
    assert get_lr(60, sched(lr_schedule="cosine", lr_decay_iters=60)) == pytest.approx(0.1)


def test_the_range_tests_exponential_schedule_is_geometric_from_min_lr_to_learning_rate():
    cfg = sched(lr_schedule="exponential", warmup_iters=0, min_lr=1e-4, max_iters=101)
    lrs = [get_lr(it, cfg) for it in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[100] == pytest.approx(1.0) and lrs[50] == pytest.approx(1e-2)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios)) == pytest.approx(10 ** 0.04)  # one factor per step
    for bad in (dict(warmup_iters=5), dict(min_lr=0.0)):
        with pytest.raises(ValueError, match="exponential.*needs min_lr > 0.*warmup_iters=0"):
            sched(lr_schedule="exponential", **{"warmup_iters": 0, "min_lr": 1e-4, **bad})


# ----------------------------------------------------------------------------------------
# micro-batching, resume, checkpoints


def test_accumulated_micro_batches_equal_one_big_batch(tmp_path, char_dataset):
    common = ["--max_iters=3", "--eval_iters=1", "--eval_interval=100", "--log_interval=1", "--dropout=0.0",
              "--grad_clip=1.0"]
    run_train(common + ["--batch_size=8", "--gradient_accumulation_steps=1"], str(tmp_path / "a"), char_dataset)
    run_train(common + ["--batch_size=2", "--gradient_accumulation_steps=4"], str(tmp_path / "b"), char_dataset)
    a, b = load_state(tmp_path / "a"), load_state(tmp_path / "b")
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-5, atol=1e-6, msg=name)
    la, lb = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert [i for i, _ in la] == [i for i, _ in lb] == [0, 1, 2]
    for (_, x), (_, y) in zip(la, lb):
        assert x == pytest.approx(y, rel=1e-5)
    # and accumulation did change something: a different batch gives other weights
    run_train(common + ["--batch_size=2", "--gradient_accumulation_steps=1"], str(tmp_path / "c"), char_dataset)
    assert not torch.equal(load_state(tmp_path / "c")["model"]["lm_head.weight"], a["model"]["lm_head.weight"])


def test_resume_is_bit_for_bit_and_the_test_can_fail(tmp_path, char_dataset):
    common = ["--eval_interval=5", "--eval_iters=2", "--log_interval=1", "--dropout=0.1",
              "--lr_decay_iters=20", "--warmup_iters=3"]
    straight, split, broken = (str(tmp_path / n) for n in ("straight", "split", "broken"))
    run_train_subprocess(common + ["--max_iters=20"], straight, char_dataset)
    run_train_subprocess(common + ["--max_iters=10"], split, char_dataset)
    # a broken copy of the iter-10 checkpoint: RNG and data position from another seed
    os.makedirs(broken)
    ckpt = load_state(split)
    other = torch.Generator().manual_seed(999)
    ckpt["rng"]["data"] = other.get_state()
    torch.manual_seed(999)
    ckpt["rng"]["torch"] = torch.get_rng_state()
    torch.save(ckpt, os.path.join(broken, "ckpt.pt"))
    # fresh processes resume both
    run_train_subprocess(["--init_from=resume", "--max_iters=20"], split, char_dataset)
    run_train_subprocess(["--init_from=resume", "--max_iters=20"], broken, char_dataset)

    want = train_losses(straight)
    assert [i for i, _ in want] == list(range(20))
    assert train_losses(split) == want  # every iteration's loss, exactly
    a, b = load_state(straight)["model"], load_state(split)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    evals = [(r["iter"], r["val_loss"]) for r in read_metrics(split) if "val_loss" in r]
    assert evals == [(r["iter"], r["val_loss"]) for r in read_metrics(straight) if "val_loss" in r]
    # negative control: without the saved RNG/data position the same resume diverges
    got = [r for r in train_losses(broken) if r[0] >= 10]
    assert [i for i, _ in got] == list(range(10, 20))
    assert got != want[10:]
    assert not torch.equal(load_state(broken)["model"]["lm_head.weight"], a["lm_head.weight"])


def test_checkpoint_holds_plain_keys_config_and_tokenizer(tmp_path, char_dataset):
    out = str(tmp_path / "run")
    run_train(["--max_iters=2", "--eval_iters=1"], out, char_dataset)
    ckpt = load_state(out)  # weights_only=True loads it
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])
    assert ckpt["iter_num"] == 2 and ckpt["config"]["max_iters"] == 2
    assert ckpt["meta"]["vocab_size"] == ckpt["model_config"]["vocab_size"]
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["n_layer"] == 2
    # a new run in the same folder: metrics.jsonl then holds that run's rows only
    first = read_metrics(out)
    run_train(["--max_iters=2", "--eval_iters=1"], out, char_dataset)
    assert [r["iter"] for r in read_metrics(out)] == [r["iter"] for r in first]


def test_interrupted_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    checkpoint.save_checkpoint({"w": torch.arange(3)}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint({"w": torch.arange(5)}, path)
    assert torch.equal(checkpoint.read_checkpoint(path)["w"], torch.arange(3))
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling this would create the marker file


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "ckpt.pt")
    with open(path, "wb") as f:
        pickle.dump({"model": RunsCode(marker)}, f, protocol=2)
    with pytest.raises(UserError, match="refusing to load"):
        checkpoint.read_checkpoint(path)
    assert not os.path.exists(marker)


def test_non_finite_loss_stops_before_the_optimizer_step(tmp_path, char_dataset, monkeypatch):
    out = str(tmp_path / "run")
    real_forward = model.GPT.forward
    calls = {"forward": 0, "step": 0}

    def forward(self, idx, targets=None):
        logits, loss = real_forward(self, idx, targets)
        if self.training:
            calls["forward"] += 1
            if calls["forward"] == 4:  # the 4th training step goes bad
                loss = loss * float("nan")
        return logits, loss

    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        calls["step"] += 1
        return real_step(self, *a, **k)

    monkeypatch.setattr(model.GPT, "forward", forward)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(train.NonFiniteLossError, match="loss is nan at iter 3: stopped before the optimizer step"):
        run_train(["--max_iters=10", "--eval_iters=1", "--eval_interval=2"], out, char_dataset)
    assert calls["step"] == 3  # steps 0, 1, 2; never the bad one
    assert load_state(out)["iter_num"] == 2  # the checkpoint of the last eval is intact


def test_two_evaluations_of_the_same_weights_agree(tmp_path, char_dataset):
    out = str(tmp_path / "run")
    run_train(["--max_iters=2", "--eval_iters=3"], out, char_dataset)
    files_before = {f: open(os.path.join(out, f)).read() for f in ("metrics.jsonl", "config.json")}
    first = run_train(["--eval_only=True", "--init_from=resume", "--eval_iters=3"], out, char_dataset)
    second = run_train(["--eval_only=True", "--init_from=resume", "--eval_iters=3"], out, char_dataset)
    assert first["val_loss"] == second["val_loss"]
    assert first["train_loss"] == second["train_loss"]
    # an eval_only run is a measurement: the run's own files stay as they were
    assert files_before == {f: open(os.path.join(out, f)).read() for f in ("metrics.jsonl", "config.json")}


def test_bf16_autocast_on_cpu_trains_close_to_fp32(tmp_path, char_dataset):
    common = ["--max_iters=6", "--eval_iters=2", "--log_interval=1", "--learning_rate=3e-3", "--warmup_iters=0"]
    run_train(common + ["--dtype=float32"], str(tmp_path / "fp32"), char_dataset)
    run_train(common + ["--dtype=bfloat16"], str(tmp_path / "bf16"), char_dataset)
    a, b = train_losses(tmp_path / "fp32"), train_losses(tmp_path / "bf16")
    assert b[-1][1] < b[0][1] - 0.1  # it trains
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) < 0.03  # and follows fp32 (bf16 keeps ~3 significant digits)
    assert a != b  # autocast was really on


def test_sample_from_checkpoint_is_deterministic(tmp_path, char_dataset, capsys):
    import sample

    out = str(tmp_path / "run")
    run_train(["--max_iters=2", "--eval_iters=1"], out, char_dataset)
    args = [f"--out_dir={out}", "--start=def ", "--num_samples=2", "--max_new_tokens=20", "--seed=3"]
    capsys.readouterr()
    sample.main(args)
    first = capsys.readouterr().out
    sample.main(args)
    assert capsys.readouterr().out == first
    texts = first.split("---------------\n")
    assert texts[0].startswith("def ") and len(texts[0].rstrip("\n")) >= len("def ") + 20 - 1
    with pytest.raises(SystemExit):
        sample.main([f"--out_dir={tmp_path}/none"])
    assert "no checkpoint at" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# the repo's own configs and docs


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py")))
def test_every_shipped_config_loads(name):
    path = os.path.join(REPO, "configs", name)
    args = [path, "--device=cpu", "--dtype=float32"]
    if config.read_config_file(path).get("init_from", "scratch") not in ("scratch", "resume"):
        args.append("--init_from=scratch")  # a fine-tune config: its base run does not exist in a clean checkout
    load_config(args)


def test_readme_documents_every_config_key():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    missing = [k for k in config.FIELD_TYPES if f"`{k}`" not in readme]
    assert not missing, f"README's config table lacks {missing}"


def test_fine_tune_starts_from_the_base_weights(tmp_path, char_dataset):
    base = str(tmp_path / "base")
    final = run_train(["--max_iters=3", "--eval_iters=2"], base, char_dataset)
    # a new run initialised from base: its iter-0 evaluation is base's final one, exactly
    first = run_train([f"--init_from={base}", "--max_iters=1", "--eval_iters=2", "--dropout=0.1"],
                      str(tmp_path / "ft"), char_dataset)
    rows = [r for r in read_metrics(tmp_path / "ft") if "val_loss" in r]
    assert rows[0]["iter"] == 0 and rows[0]["val_loss"] == final["val_loss"]
    assert first["iter"] == 1 and load_state(tmp_path / "ft")["iter_num"] == 1
    with pytest.raises(UserError, match="n_embd=64 differs from the checkpoint's n_embd=32"):
        load_config([f"--init_from={base}", "--n_embd=64", "--n_head=2"])


def test_resuming_on_fp16_a_run_saved_without_a_scaler_starts_a_fresh_one(tmp_path, char_dataset, monkeypatch,
                                                                          capsys):
    """A run begun in fp32 (or bf16) saves its disabled GradScaler as {}; resuming it where
    dtype=auto picks fp16 (a CUDA GPU) enables the scaler, which refuses an empty state.
    The GPU's choice is simulated here: CPU autocast runs fp16 too."""
    out = str(tmp_path / "run")
    run_train(["--max_iters=2", "--eval_iters=1", "--eval_interval=2"], out, char_dataset)
    assert load_state(out)["scaler"] == {}
    monkeypatch.setattr(train, "resolve_system", lambda device, dtype: ("cpu", "float16"))
    capsys.readouterr()
    row = train.train(load_config(["--init_from=resume", f"--out_dir={out}", "--max_iters=3"]))
    assert row["iter"] == 3 and math.isfinite(row["val_loss"])
    assert "no GradScaler state" in capsys.readouterr().out
    assert load_state(out)["scaler"]["scale"] > 0  # the fresh scaler, saved


def test_fine_tuning_into_the_base_folder_is_refused_before_anything_is_written(tmp_path, char_dataset, capsys,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = str(tmp_path / "out")  # the default out_dir's name
    run_train(["--max_iters=2", "--eval_iters=1", "--eval_interval=2"], base, char_dataset)
    before = checkpoint.file_sha256(os.path.join(base, "ckpt.pt"))
    files = sorted(os.listdir(base))
    # the same folder, spelled four ways (the default out_dir included); full fine-tuning and PEFT alike
    for init_from, out_dir, extra in [("out", None, ["--peft=lora"]), (base, base, ["--peft=adapter"]),
                                      (base, base + "/", []), ("./out", base, ["--peft=bitfit"])]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            train.main(TINY + [f"--dataset={char_dataset}", f"--init_from={init_from}", "--max_iters=1"] + extra
                       + ([f"--out_dir={out_dir}"] if out_dir else []))
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and "would overwrite the checkpoint it starts from" in err
    assert checkpoint.file_sha256(os.path.join(base, "ckpt.pt")) == before and sorted(os.listdir(base)) == files
