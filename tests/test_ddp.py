"""Data parallel: train.py under torchrun (gloo, 2 CPU processes). Two processes with one
micro-batch each train like one process with two micro-batches (the same losses and
weights, up to the order of float sums; with sliding-window attention too); the two
processes really see different batches; a DDP run resumed from its checkpoint (dropout on,
so each process's own random stream matters) continues exactly as the uninterrupted one;
an accumulation count the processes cannot share is a clear error."""

import json
import os
import subprocess
import sys

import pytest
import torch

import train
from config import load_config
from errors import UserError
from conftest import REPO, TINY

COMMON = ["--gradient_accumulation_steps=2", "--eval_interval=3", "--eval_iters=2", "--log_interval=1",
          "--warmup_iters=2", "--lr_decay_iters=6"]


def launch(args, out_dir, dataset, processes):
    script = [os.path.join(REPO, "train.py")] + TINY + [f"--dataset={dataset}", f"--out_dir={out_dir}"] + args
    if processes == 1:
        cmd = [sys.executable] + script
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] + script
    # one thread per process in both cases, as torchrun sets for each of its processes
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def rows(out_dir, key):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [(r["iter"], r[key]) for r in map(json.loads, f) if key in r]


def weights(out_dir):
    return torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)["model"]


def test_two_processes_train_like_one_with_two_micro_batches(tmp_path, char_dataset):
    one, two, single_micro = (str(tmp_path / n) for n in ("one", "two", "single_micro"))
    args = COMMON + ["--max_iters=6", "--dropout=0"]
    launch(args, one, char_dataset, 1)
    r = launch(args, two, char_dataset, 2)
    assert "data parallel: 2 processes x 1 micro-batches" in r.stdout
    want, got = rows(one, "loss"), rows(two, "loss")
    assert [i for i, _ in got] == [i for i, _ in want] == list(range(6))
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5)
    assert [i for i, _ in rows(two, "val_loss")] == [i for i, _ in rows(one, "val_loss")] == [0, 3, 6]
    assert [v for _, v in rows(two, "val_loss")] == pytest.approx([v for _, v in rows(one, "val_loss")], rel=1e-5)
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    # the two processes saw different batches: the loss of the first step is not that of
    # the first micro-batch alone (what one process with one micro-batch of the same seed sees)
    launch(["--gradient_accumulation_steps=1", "--max_iters=1", "--eval_interval=1", "--eval_iters=1",
            "--log_interval=1", "--dropout=0"], single_micro, char_dataset, 1)
    assert abs(rows(single_micro, "loss")[0][1] - got[0][1]) > 1e-3


def test_ddp_resume_continues_exactly(tmp_path, char_dataset):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    args = COMMON + ["--dropout=0.1"]
    launch(args + ["--max_iters=6"], straight, char_dataset, 2)
    launch(args + ["--max_iters=3"], split, char_dataset, 2)
    ckpt = torch.load(os.path.join(split, "ckpt.pt"), weights_only=True)
    assert len(ckpt["rng"]["torch_ranks"]) == 2  # each process's dropout stream
    assert not torch.equal(*ckpt["rng"]["torch_ranks"])
    launch(args + ["--max_iters=6", "--init_from=resume"], split, char_dataset, 2)
    assert rows(split, "loss") == rows(straight, "loss")  # exactly
    a, b = weights(straight), weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_accumulation_the_processes_cannot_share_is_an_error(tmp_path, char_dataset, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_config(TINY + [f"--dataset={char_dataset}", f"--out_dir={tmp_path}", "--max_iters=1"])
    with pytest.raises(UserError, match=r"gradient_accumulation_steps=1 must be a multiple of the 2 processes"):
        train.train(cfg)


def two_processes_equal_one(args, dataset, tmp_path):
    """Three steps of 2 processes x 1 micro-batch = 1 process x 2 micro-batches: every loss
    and every weight. Returns the 2-process run's folder."""
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    launch(args, one, dataset, 1)
    assert "data parallel: 2 processes x 1 micro-batches" in launch(args, two, dataset, 2).stdout
    want, got = rows(one, "loss"), rows(two, "loss")
    assert [i for i, _ in got] == [i for i, _ in want] == [0, 1, 2]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5)
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    return two


@pytest.mark.parametrize("kind", [["--attention=sliding", "--attn_window=4"],
                                  ["--attention=sliding", "--attn_window=4", "--share_layers=all", "--n_kv_head=1",
                                   "--pos_emb=rope", "--emb_dim=16"]], ids=["sliding", "sliding-lean"])
def test_two_processes_train_like_one_with_two_micro_batches_sparse_attention(tmp_path, char_dataset, kind):
    # the tiled attention (and the lean options: a shared block's gradients are summed over
    # its runs before DDP averages them) under DDP: the same equality as above (~7 s each)
    two = two_processes_equal_one(COMMON + ["--max_iters=3", "--dropout=0"] + kind, char_dataset, tmp_path)
    ckpt = torch.load(os.path.join(two, "ckpt.pt"), weights_only=True)
    assert (ckpt["model_config"]["attention"], ckpt["model_config"]["attn_window"]) == ("sliding", 4)


@pytest.mark.parametrize("kind", ["seqlen", "difficulty", "mixture"])
def test_two_processes_train_like_one_with_two_micro_batches_under_a_curriculum(tmp_path, char_dataset, kind):
    # every curriculum sampler draws all processes' batches in rank order (as RandomWindows), so
    # 2 processes x 1 micro-batch see what 1 process x 2 micro-batches sees (~7 s each)
    import shutil

    data = str(tmp_path / "data")
    shutil.copytree(char_dataset, data)  # the difficulty cache and the mixture's second dataset go beside it
    extra = {"seqlen": ["--curriculum=seqlen", "--curriculum_iters=2"],
             "difficulty": ["--curriculum=difficulty", "--curriculum_iters=2", "--curriculum_start_frac=0.3"],
             "mixture": [f"--datasets={data}:0.5,{char_dataset}:0.5", f"--stages=2:{data}=1"]}[kind]
    two_processes_equal_one(COMMON + ["--max_iters=3", "--dropout=0"] + extra, data, tmp_path)
