"""Fault injection: each fault is real (a process signalled or killed, a file truncated or
corrupted, a filesystem that is full or read-only, a second process, a dataset that is
broken), never a mock. Each test checks the message, the exit code, that the last good
checkpoint still loads, and that no more than the step in flight was lost: SIGTERM ->
exit 143 with a checkpoint at that step, and the resumed run equals the uninterrupted one
bit for bit (also under 2-process DDP); SIGKILL in the middle of a save; a truncated,
corrupted or all-damaged set of checkpoints; a full and a read-only filesystem; a second
run into a locked folder and a stale lock; bad data and a changed architecture; a loss
spike rewound past."""

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train
from config import load_config
from conftest import REPO, TINY

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # every run at one thread: runs compare bit for bit
FAST = ["--eval_interval=50", "--eval_iters=2", "--log_interval=1", "--warmup_iters=5", "--lr_decay_iters=300"]


def command(out, dataset, args, processes=1):
    script = [os.path.join(REPO, "train.py")] + TINY + [f"--dataset={dataset}", f"--out_dir={out}"] + args
    if processes == 1:
        return [sys.executable] + script
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] + script


def run(out, dataset, args, processes=1, code=0):
    """train.py to its end; asserts its exit code, returns stdout + stderr."""
    r = subprocess.run(command(out, dataset, args, processes), capture_output=True, text=True, cwd=REPO, env=ENV,
                       timeout=300)
    assert r.returncode == code, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def main(out, dataset, args, capsys, code=0):
    """train.py's main in this process (for the faults that need no signal): asserts its
    exit code, returns what it printed."""
    capsys.readouterr()
    try:
        train.main(TINY + [f"--dataset={dataset}", f"--out_dir={out}"] + args)
        got = 0
    except SystemExit as e:
        got = e.code
    printed = capsys.readouterr()
    assert got == code, printed.out[-3000:] + printed.err[-3000:]
    return printed.out + printed.err


@pytest.fixture
def start():
    """start(out, dataset, args, processes=1): train.py running in its own process group,
    which is killed at the end of the test if still there (a failed test leaves no run)."""
    procs = []

    def launch(out, dataset, args, processes=1):
        procs.append(subprocess.Popen(command(out, dataset, args, processes), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, cwd=REPO, env=ENV, start_new_session=True))
        return procs[-1]

    yield launch
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def metrics(out):
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def rows(out, key):
    return [(r["iter"], r[key]) for r in metrics(out) if key in r]


def wait_for(proc, condition, what, timeout=120):
    t0 = time.time()
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stdout.read()[-2000:]}"
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.005)


def state(path):
    return torch.load(path, weights_only=True)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def same_weights(a, b):
    wa, wb = state(a)["model"], state(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ----------------------------------------------------------------------------------------
# signals


def test_sigterm_saves_this_step_exits_143_and_resume_is_bit_for_bit(tmp_path, char_dataset, start):
    straight, cut = str(tmp_path / "straight"), str(tmp_path / "cut")
    args = FAST + ["--max_iters=300", "--dropout=0.1"]
    run(straight, char_dataset, args)
    proc = start(cut, char_dataset, args)
    wait_for(proc, lambda: len(rows(cut, "loss")) >= 20, "20 steps")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out
    saved = state(os.path.join(cut, "ckpt.pt"))
    k = saved["iter_num"]
    # a checkpoint at the step the signal found: every finished step is in it, none is lost
    assert rows(cut, "loss")[-1][0] == k - 1 and 20 <= k < 300
    assert f"SIGTERM: saved {cut}/ckpt.pt at iter {k}; resume with: python train.py --out_dir={cut} " \
           f"--init_from=resume" in out
    assert not os.path.exists(os.path.join(cut, "run.lock"))  # the lock went with the run
    run(cut, char_dataset, ["--init_from=resume"])
    assert rows(cut, "loss") == rows(straight, "loss")  # exactly, dropout included
    assert rows(cut, "val_loss") == rows(straight, "val_loss")
    assert same_weights(os.path.join(cut, "ckpt.pt"), os.path.join(straight, "ckpt.pt"))


def test_sigterm_under_ddp_stops_every_process_at_one_step_and_resumes_exactly(tmp_path, char_dataset, start):
    straight, cut = str(tmp_path / "straight"), str(tmp_path / "cut")
    args = FAST + ["--max_iters=200", "--dropout=0.1", "--gradient_accumulation_steps=2"]
    run(straight, char_dataset, args, processes=2)
    proc = start(cut, char_dataset, args, processes=2)
    wait_for(proc, lambda: len(rows(cut, "loss")) >= 20, "20 steps")
    # to process 1 alone: the flag rides on the loss's all-reduce, so process 0 stops after the
    # same step and saves (a preemption's SIGTERM reaches torchrun, which forwards it to both)
    os.kill(worker(proc.pid, rank=1), signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0 and out.count("SIGTERM: saved") == 1, out  # torchrun reports the failed processes
    k = state(os.path.join(cut, "ckpt.pt"))["iter_num"]
    assert rows(cut, "loss")[-1][0] == k - 1 and f"saved {cut}/ckpt.pt at iter {k}" in out
    assert len(state(os.path.join(cut, "ckpt.pt"))["rng"]["torch_ranks"]) == 2
    run(cut, char_dataset, ["--init_from=resume"], processes=2)
    assert rows(cut, "loss") == rows(straight, "loss")
    assert same_weights(os.path.join(cut, "ckpt.pt"), os.path.join(straight, "ckpt.pt"))


def worker(launcher, rank):
    """The PID of torchrun's process of this rank (read from /proc: its children's RANK)."""
    for task in os.listdir(f"/proc/{launcher}/task"):
        with open(f"/proc/{launcher}/task/{task}/children") as f:
            for pid in map(int, f.read().split()):
                with open(f"/proc/{pid}/environ", "rb") as e:
                    if f"RANK={rank}".encode() in e.read().split(b"\0"):
                        return pid
    raise AssertionError(f"no process of rank {rank} under torchrun {launcher}")


def test_a_second_ctrl_c_exits_at_once_and_leaves_the_checkpoint_as_it_was(tmp_path, char_dataset, start):
    out = str(tmp_path / "run")
    # ~3 s steps (many micro-batches of the tiny model), so that the later signals land inside one
    proc = start(out, char_dataset, ["--gradient_accumulation_steps=2000", "--max_iters=50", "--eval_iters=1",
                                     "--log_interval=1"])
    wait_for(proc, lambda: len(rows(out, "loss")) >= 1, "a step")
    before = sha(os.path.join(out, "ckpt.pt"))
    wait_for(proc, lambda: len(rows(out, "loss")) >= 2, "the next step")  # a step has just begun
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)  # handled: a second SIGINT sent at once would merge with it in the kernel
    proc.send_signal(signal.SIGINT)  # within a second: the same Ctrl-C delivered twice (torchrun forwards it)
    time.sleep(1.1)
    assert proc.poll() is None  # still finishing its step
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=30)
    assert time.time() - t0 < 5 and proc.returncode == 130, text
    assert "interrupted: the last checkpoint written is intact" in text and "saved" not in text
    assert sha(os.path.join(out, "ckpt.pt")) == before  # the iter-0 checkpoint, untouched
    assert [f for f in os.listdir(out) if ".tmp" in f] == []


# ----------------------------------------------------------------------------------------
# damaged checkpoints


def test_sigkill_in_the_middle_of_a_save_leaves_the_previous_checkpoint_and_a_stale_lock(tmp_path, char_dataset, start):
    out = str(tmp_path / "run")
    # a larger model, so that a save takes long enough to be caught in the middle
    larger = ["--n_embd=128", "--n_layer=4"]
    args = FAST + larger + ["--max_iters=100000", "--ckpt_interval=2"]
    for attempt in range(5):
        proc = start(out, char_dataset, args + ([] if attempt == 0 else ["--init_from=resume"]))
        wait_for(proc, lambda: len(rows(out, "loss")) >= 3, "3 steps")
        wait_for(proc, lambda: any(".tmp" in f and f.startswith("ckpt") for f in os.listdir(out)), "a save")
        proc.kill()  # SIGKILL while the new checkpoint is half-written: no handler runs
        proc.wait()
        if any(f.startswith("ckpt.pt.tmp") for f in os.listdir(out)):
            break
    else:
        pytest.fail("never caught a save in flight")
    assert os.path.exists(os.path.join(out, "run.lock"))  # left behind by the killed run
    k = state(os.path.join(out, "ckpt.pt"))["iter_num"]  # the previous checkpoint loads
    text = run(out, char_dataset, larger + ["--init_from=resume", f"--max_iters={k + 2}"])
    assert "note: taking over the stale lock" in text and f"resuming {out} at iter {k}" in text
    assert [f for f in os.listdir(out) if ".tmp" in f] == []  # the half-written file is cleared


TWO = ["--eval_interval=10", "--eval_iters=2", "--log_interval=1", "--warmup_iters=2", "--lr_decay_iters=30"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, char_dataset):
    base = tmp_path_factory.mktemp("two")
    for name, iters in (("run", 20), ("straight", 30)):
        train.train(load_config(TINY + [f"--dataset={char_dataset}", f"--out_dir={base / name}", f"--max_iters={iters}"]
                                + TWO))
    return base


@pytest.fixture
def two_checkpoints(two_runs, tmp_path):
    """A run with ckpt.pt at iter 20 and ckpt-10.pt, and its uninterrupted twin trained to 30."""
    out, straight = str(tmp_path / "run"), str(two_runs / "straight")
    shutil.copytree(two_runs / "run", out)
    assert sorted(f for f in os.listdir(out) if f.startswith("ckpt")) == ["ckpt-10.pt", "ckpt.pt"]
    return out, straight


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(two_checkpoints, char_dataset, capsys):
    out, straight = two_checkpoints
    path = os.path.join(out, "ckpt.pt")
    os.truncate(path, os.path.getsize(path) // 2)
    text = main(out, char_dataset, ["--init_from=resume", "--max_iters=30"], capsys)
    assert f"{path} is damaged" in text and "truncated" in text
    assert f"resuming from {out}/ckpt-10.pt (iter 10) instead" in text
    assert os.path.exists(path + ".damaged")  # kept to look at, out of the rotation
    # ckpt.pt became the checkpoint resumed from; the saves since rotated it without leftovers
    assert sorted(f for f in os.listdir(out) if f.startswith("ckpt")) == ["ckpt-20.pt", "ckpt.pt", "ckpt.pt.damaged"]
    # resumed from iter 10: from there on, exactly the uninterrupted run
    assert rows(out, "loss") == rows(straight, "loss")
    assert same_weights(path, os.path.join(straight, "ckpt.pt"))


def test_a_corrupted_newest_checkpoint_is_caught_by_its_checksum(two_checkpoints, char_dataset, capsys):
    out, straight = two_checkpoints
    path = os.path.join(out, "ckpt.pt")
    with open(path, "r+b") as f:  # one flipped byte in the middle of the tensors' data
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    torch.load(path, weights_only=True)  # torch loads it without a word: only the checksum tells
    text = main(out, char_dataset, ["--init_from=resume", "--max_iters=30"], capsys)
    assert "its sha256 is not the one recorded when it was saved" in text and "ckpt-10.pt (iter 10) instead" in text
    assert rows(out, "loss") == rows(straight, "loss")


def test_all_checkpoints_damaged_is_an_error_that_lists_them_and_changes_nothing(two_checkpoints, char_dataset, capsys):
    out, _ = two_checkpoints
    for name in ("ckpt.pt", "ckpt-10.pt"):
        os.truncate(os.path.join(out, name), 1000)
    before = {f: sha(os.path.join(out, f)) for f in os.listdir(out)}
    text = main(out, char_dataset, ["--init_from=resume", "--max_iters=30"], capsys, code=2)
    assert text.count("\n") == 1 and text.startswith("error: --init_from=resume: no loadable checkpoint in")
    assert "tried: ckpt.pt is damaged" in text and "ckpt-10.pt is damaged" in text
    assert {f: sha(os.path.join(out, f)) for f in os.listdir(out)} == before  # not a silent fresh start


def test_a_folder_from_before_rotation_still_resumes_and_then_rotates(two_checkpoints, char_dataset, capsys):
    out, straight = two_checkpoints
    os.remove(os.path.join(out, "checkpoints.json"))
    os.remove(os.path.join(out, "ckpt-10.pt"))
    main(out, char_dataset, ["--init_from=resume", "--max_iters=30"], capsys)
    assert rows(out, "loss") == rows(straight, "loss")
    assert sorted(f for f in os.listdir(out) if f.startswith("ckpt")) == ["ckpt-20.pt", "ckpt.pt"]


def test_rotation_keeps_the_last_k_with_their_checksums(tmp_path, char_dataset, capsys):
    out = str(tmp_path / "run")
    main(out, char_dataset, ["--eval_interval=10", "--ckpt_interval=4", "--keep_last=3", "--max_iters=20",
                             "--eval_iters=1"], capsys)
    # saves at 0, 4, 8, 10 (eval), 12, 16, 20: the newest three remain
    assert sorted(f for f in os.listdir(out) if f.startswith("ckpt")) == ["ckpt-12.pt", "ckpt-16.pt", "ckpt.pt"]
    with open(os.path.join(out, "checkpoints.json")) as f:
        records = json.load(f)["checkpoints"]
    assert [(r["file"], r["iter"]) for r in records] == [("ckpt.pt", 20), ("ckpt-16.pt", 16), ("ckpt-12.pt", 12)]
    for r in records:
        assert r["sha256"] == sha(os.path.join(out, r["file"])) and state(os.path.join(out, r["file"]))["iter_num"] == r["iter"]
    # a new run in the folder replaces the old run's checkpoints at its first save
    main(out, char_dataset, ["--eval_interval=10", "--max_iters=10", "--eval_iters=1", "--seed=7"], capsys)
    assert sorted(f for f in os.listdir(out) if f.startswith("ckpt")) == ["ckpt-0.pt", "ckpt.pt"]


# ----------------------------------------------------------------------------------------
# failing saves


@contextlib.contextmanager
def small_filesystem(path, size, read_only=False):
    """A tmpfs of `size` mounted at path (root only), unmounted afterwards."""
    os.makedirs(path)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not root'}): the full-disk case needs one")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)


def test_a_full_disk_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path, char_dataset):
    # room for two checkpoints of the tiny model (~380 kB with AdamW's state), not three
    with small_filesystem(str(tmp_path / "disk"), "1000k") as disk:
        out = os.path.join(disk, "run")
        args = FAST + ["--eval_interval=5", "--max_iters=100"]
        text = run(out, char_dataset, args, code=1)
        failed = int(re.search(r"could not save the checkpoint of iter (\d+)", text).group(1))
        assert text.count("error:") == 1 and failed >= 10 and "No space left on device" in text
        assert f"{out}/ckpt.pt (iter {failed - 5}) is intact" in text  # the one before stays whole
        assert state(os.path.join(out, "ckpt.pt"))["iter_num"] == failed - 5
        assert rows(out, "loss")[-1][0] == failed - 1  # stopped at the failing save
        assert [f for f in os.listdir(out) if ".tmp" in f] == []
        # on_save_error=continue: warned, trained on, and the final save fails loudly
        text = run(out, char_dataset, args + ["--on_save_error=continue"], code=1)
        assert "warning: could not save the checkpoint of iter" in text and "training on" in text
        assert rows(out, "loss")[-1][0] == 99 and "could not save the checkpoint of iter 100" in text


def test_a_read_only_folder_is_refused_before_anything_changes(tmp_path, char_dataset):
    with small_filesystem(str(tmp_path / "disk"), "4m") as disk:
        out = os.path.join(disk, "run")
        run(out, char_dataset, FAST + ["--max_iters=10"])
        before = {f: sha(os.path.join(out, f)) for f in os.listdir(out)}
        subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
        text = run(out, char_dataset, ["--init_from=resume", "--max_iters=20"], code=2)
        assert text.count("error:") == 1 and f"error: cannot write to {out}: Read-only file system" in text
        assert {f: sha(os.path.join(out, f)) for f in os.listdir(out)} == before


# ----------------------------------------------------------------------------------------
# one run per folder


def test_a_second_run_into_a_running_runs_folder_is_refused(tmp_path, char_dataset, start):
    out = str(tmp_path / "run")
    first = start(out, char_dataset, FAST + ["--max_iters=100000"])
    wait_for(first, lambda: len(rows(out, "loss")) >= 1, "a step")
    text = run(out, char_dataset, FAST + ["--max_iters=10"], code=2)
    assert text.count("error:") == 1 and f"error: {out} is in use by another run (PID {first.pid} on " in text
    assert first.poll() is None  # the first run goes on (the fixture stops it)


# ----------------------------------------------------------------------------------------
# bad data and config


def broken_copy(src, dst, change):
    shutil.copytree(src, dst)
    change(dst)
    return dst


def cut(name, size):
    return lambda d: os.truncate(os.path.join(d, name), size)


def write(name, content):
    def change(d):
        with open(os.path.join(d, name), "w" if isinstance(content, str) else "wb") as f:
            f.write(content)
    return change


def test_each_bad_dataset_is_one_line_and_exit_2(tmp_path, char_dataset, capsys):
    n_train = os.path.getsize(os.path.join(char_dataset, "train.bin")) // 2
    with open(os.path.join(char_dataset, "meta.json")) as f:
        vocab = json.load(f)["vocab_size"]
    cases = {
        "empty": (cut("train.bin", 0), "train.bin is empty"),
        "odd": (cut("train.bin", 1001), "train.bin is truncated: 1,001 bytes, not whole uint16 tokens"),
        "short": (cut("train.bin", 1000), f"train.bin holds 500 tokens but meta.json records {n_train:,}"),
        "json": (write("meta.json", '{"vocab_size": 6'), "meta.json is not readable JSON"),
        "novocab": (write("meta.json", "[]"), "meta.json has no integer vocab_size"),
        "ids": (write("val.bin", np.full(100, vocab + 3, np.uint16).tobytes()), f"val.bin holds token id {vocab + 3}"),
        "missing": (lambda d: os.remove(os.path.join(d, "train.bin")), "train.bin is missing"),
    }
    for name, (change, message) in cases.items():
        data = broken_copy(char_dataset, str(tmp_path / name), change)
        if name == "ids":  # the count check would fire first: record the new count
            meta = json.load(open(os.path.join(data, "meta.json")))
            json.dump({**meta, "val_tokens": 100}, open(os.path.join(data, "meta.json"), "w"))
        text = main(str(tmp_path / f"out-{name}"), data, ["--max_iters=2"], capsys, code=2)
        assert text.count("\n") == 1 and text.startswith("error: ") and message in text, (name, text)
    # a dataset shorter than one window
    text = main(str(tmp_path / "out-window"), char_dataset, ["--max_iters=2", "--block_size=100000"], capsys, code=2)
    assert text.count("\n") == 1 and "fewer than the block_size + 1 = 100001 one window needs" in text, text


def test_resume_names_every_changed_architecture_key_and_logs_changed_settings(tmp_path, char_dataset, capsys):
    out = str(tmp_path / "run")
    main(out, char_dataset, ["--max_iters=4", "--eval_interval=2", "--eval_iters=1"], capsys)
    text = main(out, char_dataset, ["--init_from=resume", "--n_layer=3", "--n_embd=64"], capsys, code=2)
    assert text.count("\n") == 1
    assert "n_layer=3 differs from the checkpoint's n_layer=2, n_embd=64 differs from the checkpoint's n_embd=32" in text
    assert "(drop --n_layer --n_embd)" in text
    text = main(out, char_dataset, ["--init_from=resume", "--max_iters=6", "--learning_rate=0.001"], capsys)
    assert "changed since the checkpoint: learning_rate 0.0006 -> 0.001, max_iters 4 -> 6" in text


# ----------------------------------------------------------------------------------------
# loss spikes


@pytest.fixture(scope="module")
def spiky_dataset(tmp_path_factory):
    """Text that repeats one short line (learnt in a few dozen steps), with a stretch of
    random characters in the middle: a batch that reaches it has a loss many times the
    recent mean, a planted spike."""
    from tokenizer import prepare_dataset

    rng = np.random.default_rng(0)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:!?"))
    noise = "".join(rng.choice(alphabet, 200))
    text = "the cat sat on the mat.\n" * 600 + noise + "the cat sat on the mat.\n" * 600
    out = str(tmp_path_factory.mktemp("spiky"))
    prepare_dataset(text, out, tokenizer="char")
    return out


def test_a_planted_spike_is_rewound_past_and_training_goes_on(tmp_path, spiky_dataset):
    out = str(tmp_path / "run")
    args = ["--max_iters=300", "--eval_interval=100", "--eval_iters=1", "--ckpt_interval=5", "--log_interval=1",
            "--learning_rate=3e-3", "--warmup_iters=10", "--on_spike=rewind", "--spike_factor=4",
            "--spike_window=10", "--max_rewinds=50"]
    text = run(out, spiky_dataset, args)
    rewinds = [r for r in metrics(out) if "rewind" in r]
    assert rewinds, text  # the noise was reached, and judged a spike
    losses = dict(rows(out, "loss"))
    for r in rewinds:
        # back to the newest checkpoint (every 5 steps), the spike's batches skipped
        assert r["to_iter"] == r["iter"] // 5 * 5 and r["skipped_batches"] == r["iter"] - r["to_iter"] + 1
        assert f"spike at iter {r['iter']}" in text and "rewound to ckpt.pt" in text
    assert [r["rewind"] for r in rewinds] == list(range(1, len(rewinds) + 1))
    assert max(losses) == 299 and np.isfinite(list(losses.values())).all()
    # the spike's step was never taken: its iteration was redone with other batches
    final = state(os.path.join(out, "ckpt.pt"))
    assert final["iter_num"] == 300 and final["rewinds"] == len(rewinds)
    # with on_spike=stop (the default) the same data trains through the noise: a finite spike is not a fault
    run(str(tmp_path / "stop"), spiky_dataset, args[:-4])


def test_running_out_of_rewinds_stops_with_the_checkpoint_intact(tmp_path, spiky_dataset):
    out = str(tmp_path / "run")
    args = ["--max_iters=300", "--eval_interval=100", "--eval_iters=1", "--ckpt_interval=5", "--log_interval=1",
            "--learning_rate=3e-3", "--warmup_iters=10", "--on_spike=rewind", "--spike_factor=4",
            "--spike_window=10", "--max_rewinds=0"]
    text = run(out, spiky_dataset, args, code=2)
    assert "after 0 rewinds (max_rewinds=0): stopped before the optimizer step" in text
    state(os.path.join(out, "ckpt.pt"))
