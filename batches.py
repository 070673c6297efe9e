"""
Data on disk and the batches drawn from it: a prepared dataset (data/<name>/train.bin,
val.bin, meta.json, written by a prepare.py) and the samplers that cut it into windows.

    from batches import RandomWindows, load_dataset
    train_data, val_data, meta = load_dataset("shakespeare_char")   # uint16 memmaps + the tokenizer
    windows = RandomWindows(train_data, batch_size=12, block_size=64, device="cpu", seed=1337)
    x, y = windows.next()                                          # (12, 64) inputs, next-token targets

Samplers (one interface: next() -> (x, y); .generator is the data position a checkpoint
saves; .rank and .world let data-parallel processes share one stream):
  RandomWindows   uniform random windows of block_size + 1 tokens (nanoGPT's get_batch)
  AlignedWindows  whole consecutive windows [w*T, (w+1)*T], the ones a soft-label cache
                  was made on (distill.py), so the student sees the teacher's contexts
Curriculum samplers (sequence-length warmup, ordering by difficulty, mixtures) go here too.
"""

import hashlib
import json
import os

import numpy as np
import torch

from errors import UserError

REPO_DIR = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------------------
# datasets


def dataset_dir(name):
    """'shakespeare_char' -> data/shakespeare_char; an existing path is used as it is."""
    if os.path.isdir(name):
        return name
    return os.path.join(REPO_DIR, "data", name)


def load_dataset(name):
    """(train tokens, val tokens, meta) of a prepared dataset, or a UserError saying how to
    prepare it."""
    folder = dataset_dir(name)
    paths = [os.path.join(folder, f) for f in ("train.bin", "val.bin", "meta.json")]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        prepare = os.path.join(folder, "prepare.py")
        how = f"run: python {os.path.relpath(prepare)}" if os.path.exists(prepare) else "see README.md, Datasets"
        raise UserError(f"dataset '{name}' is not prepared: {os.path.relpath(missing[0])} is missing; {how}")
    train = np.memmap(paths[0], dtype=np.uint16, mode="r")
    val = np.memmap(paths[1], dtype=np.uint16, mode="r")
    with open(paths[2]) as f:
        meta = json.load(f)
    return train, val, meta


def tokens_sha256(tokens):
    """The hex sha256 of a token array's bytes (for a split loaded by load_dataset, the
    sha256 of its .bin file): what a soft-label cache records of the data it was made on."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(tokens))).hexdigest()


# ----------------------------------------------------------------------------------------
# samplers


def windows_at(data, starts, offsets, device):
    """The (B, T + 1) windows of data beginning at starts (B,), as inputs and next-token
    targets, (B, T) int64 each, on device."""
    rows = data[starts[:, None] + offsets]  # one gather: (B, T + 1) uint16
    buf = torch.from_numpy(rows.astype(np.int64))
    if device != "cpu":
        buf = buf.pin_memory().to(device, non_blocking=True)
    return buf[:, :-1], buf[:, 1:]


class RandomWindows:
    """Batches of random (block_size + 1)-token windows from a token array, drawn with a
    generator of its own: its state is the data position that a checkpoint saves."""

    rank, world = 0, 1  # data parallel: set by train.py to this process's rank and the number of processes

    def __init__(self, data, batch_size, block_size, device, seed):
        if len(data) <= block_size + 1:
            raise UserError(f"a split has {len(data)} tokens; block_size={block_size} needs more")
        self.data, self.batch_size, self.block_size, self.device = data, batch_size, block_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self.offsets = np.arange(block_size + 1)

    def next(self):
        # data parallel without a distributed sampler: every process draws the batches of all
        # `world` processes in rank order and keeps its own. All generators then stay in one
        # state (the one data position a checkpoint saves), and N processes see exactly the
        # micro-batches one process would draw in a row.
        starts = [torch.randint(len(self.data) - self.block_size, (self.batch_size,), generator=self.generator)
                  for _ in range(self.world)][self.rank]
        return windows_at(self.data, starts.numpy(), self.offsets, self.device)


class AlignedWindows:
    """Batches of whole cached windows: window w is tokens [w*T, (w+1)*T] of the split, the
    same context the teacher saw when the soft-label cache was made (distill.py). Same
    interface as RandomWindows, plus last_starts (the batch's window starts, for the cache
    lookup)."""

    rank, world = 0, 1  # data parallel, as RandomWindows

    def __init__(self, data, batch_size, block_size, device, seed, n_windows):
        self.data, self.batch_size, self.block_size, self.device = data, batch_size, block_size, device
        self.n_windows = n_windows
        self.generator = torch.Generator().manual_seed(seed)
        self.offsets = np.arange(block_size + 1)
        self.last_starts = None

    def next(self):
        # data parallel: every process draws all processes' batches and keeps its own (as RandomWindows)
        w = [torch.randint(self.n_windows, (self.batch_size,), generator=self.generator) for _ in range(self.world)]
        self.last_starts = w[self.rank].numpy() * self.block_size
        return windows_at(self.data, self.last_starts, self.offsets, self.device)
