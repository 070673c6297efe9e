"""
A run folder (out_dir) and who may write it: one run at a time, under a lock that names
its owner, and the files the loop keeps there besides the checkpoints (checkpoint.py).

    from rundir import RunLock, open_metrics
    with RunLock("out-quickstart"):          # refused while another run holds the folder
        metrics = open_metrics("out-quickstart", resume_iter=None)   # metrics.jsonl, for appending

The lock is out_dir/run.lock: an exclusive flock on it, held while the run lives, plus
its owner's PID, host, start time and command written inside. A second run into the
folder is refused with those details. The kernel drops a flock when its process dies,
however it dies (SIGKILL included), so a lock file nobody holds is stale: the next run
takes it over and says whose it was. (flock does not reach across machines on every
network filesystem: two hosts sharing one folder should use different out_dirs.)
"""

import datetime
import fcntl
import json
import os
import socket
import sys

import torch

from checkpoint import clear_partial_saves, set_aside
from errors import UserError
from system import all_mean, barrier

LOCK = "run.lock"


class RunLock:
    """Hold out_dir/run.lock for the life of a run (a context manager; release() also works)."""

    def __init__(self, out_dir):
        self.path, self.fd = os.path.join(out_dir, LOCK), None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self):
        while True:
            try:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # a read-only folder or filesystem, a full disk, no permission
                raise UserError(f"cannot write to {os.path.dirname(self.path)}: {e.strerror or e} "
                                f"({self.path}); nothing was changed") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = read_owner(fd)
                os.close(fd)
                raise UserError(f"{os.path.dirname(self.path)} is in use by another run ({describe(owner)}); "
                                f"wait for it, stop it, or use another --out_dir") from None
            # the holder we waited on may have deleted the file as it left: lock the file that is there now
            if os.path.exists(self.path) and os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                break
            os.close(fd)
        owner = read_owner(fd)
        if owner:  # a file left by a run that died without releasing it
            print(f"note: taking over the stale lock {self.path} of a run that is gone ({describe(owner)})")
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self.fd = fd

    def release(self):
        if self.fd is not None:
            try:
                os.remove(self.path)  # before the flock goes: a run waiting on it re-checks the inode
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = None


def read_owner(fd):
    """The owner a lock file names ({} when empty or unreadable)."""
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        return {}


def describe(owner):
    if not owner:
        return "no owner recorded"
    return (f"PID {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}: "
            f"{owner.get('command', '?')}")


def hold_folder(tc, rank, world):
    """One run per out_dir: process 0 takes its lock (RunLock) before the run writes anything
    there, and clears what a killed save left; every process stops if it could not. An
    eval_only run writes nothing and takes no lock."""
    if tc.eval_only:
        return None
    lock, refusal = None, None
    if rank == 0:
        try:
            lock = RunLock(tc.out_dir)
            lock.acquire()
            clear_partial_saves(tc.out_dir)
        except UserError as e:
            lock, refusal = None, e
    if world > 1 and all_mean(torch.tensor([float(refusal is None)]), world).item() < 1:
        raise refusal or UserError(f"process 0 could not take the lock of {tc.out_dir} (see its message)")
    if refusal is not None:
        raise refusal
    return lock


def recover_folder(resumed, tc, rank, world):
    """Resuming past damaged newer checkpoints: say which and why, then (process 0, once
    every process has read what it needs) set them aside (checkpoint.set_aside). resumed:
    the "path" and "iter_num" resumed from and the "passed_over" (path, why) pairs of
    checkpoint.find_checkpoint; tc: the run's config.TrainConfig. Nothing to do for a fresh
    run, a whole newest checkpoint, or an eval_only run (which writes nothing)."""
    if tc.eval_only or not (resumed and resumed["passed_over"]):
        return
    barrier(world)
    if rank == 0:
        for path, problem in resumed["passed_over"]:
            print(f"warning: {path} {problem}; passed over")
        print(f"resuming from {resumed['path']} (iter {resumed['iter_num']}) instead; the damaged file(s) are kept as "
              f"<name>.damaged")
        set_aside(tc.out_dir, resumed["path"], resumed["passed_over"])


# ----------------------------------------------------------------------------------------
# metrics.jsonl


def open_metrics(out_dir, resume_iter=None):
    """metrics.jsonl open for appending: on resume, without the rows past the checkpoint
    at resume_iter (written after the last save by a run that then died), so the file reads
    as one uninterrupted run; a new run in an old run's folder starts the file afresh."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if resume_iter is not None:
        trim_metrics(path, resume_iter)
    elif os.path.exists(path):
        os.remove(path)
    return open(path, "a")


def trim_metrics(path, start_iter):
    """Keep the rows before start_iter (and start_iter's eval row: that state was evaluated)."""
    if not os.path.exists(path):
        return
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:  # the half-written last line of a run killed mid-write
                pass
    keep = [r for r in rows if r["iter"] < start_iter or ("val_loss" in r and r["iter"] == start_iter)]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
    os.replace(path + ".tmp", path)
