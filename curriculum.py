"""
Difficulty scores for the ordered curricula (curriculum=difficulty, easy first, and anti,
hard first; batches.DifficultyWindows draws them): one number per training window
[w T, (w + 1) T] of the split, computed once and cached beside the data with the identity of
the data and of the scorer.

    python train.py configs/shakespeare_char_cpu.py --curriculum=difficulty --curriculum_scorer=bigram
    python train.py configs/shakespeare_char_cpu.py --curriculum=difficulty --curriculum_scorer=out-proxy

Scorers (curriculum_scorer):
  bigram    model-free: the window's mean -log p(token | previous token) under an add-one
            smoothed bigram model of the whole training split (frequent pairs are easy)
  zlib      model-free: the window's bytes compressed by zlib over its raw size (text that
            repeats itself compresses well and counts as easy)
  <folder>  a reference run's mean cross-entropy on the window: a small proxy trained for a
            few hundred steps, or a distillation teacher (its block_size must cover T)

The cache is data/<dataset>/difficulty-<scorer>-T<block_size>.npy plus a .json that records
the split's sha256 and, for a model, its weights' sha256: a cache made on other data or by
other weights is refused (delete it to recompute) rather than silently reused.
"""

import hashlib
import json
import os
import zlib

import numpy as np
import torch

from batches import dataset_dir, tokens_sha256
from checkpoint import read_checkpoint, restore_model
from errors import UserError


def windows_of(data, T):
    """(n, T + 1) int64 view of the whole windows [w T, (w + 1) T] of a split (inputs and targets)."""
    n = (len(data) - 1) // T
    idx = np.arange(n)[:, None] * T + np.arange(T + 1)
    return np.asarray(data[idx], dtype=np.int64)


def bigram_scores(data, T, vocab_size):
    """Mean -log p(next | token) per window under add-one bigram counts of the whole split."""
    tokens = np.asarray(data, dtype=np.int64)
    counts = np.ones((vocab_size, vocab_size), dtype=np.float64)  # add-one (Laplace) smoothing
    np.add.at(counts, (tokens[:-1], tokens[1:]), 1.0)
    logp = np.log(counts / counts.sum(axis=1, keepdims=True))  # (V, V): row = previous token
    w = windows_of(data, T)
    return -logp[w[:, :-1], w[:, 1:]].mean(axis=1)  # (n,)


def zlib_scores(data, T):
    """Compressed size / raw size of each window's uint16 bytes (level 9)."""
    w = windows_of(data, T)[:, :-1].astype(np.uint16)
    return np.array([len(zlib.compress(row.tobytes(), 9)) / row.nbytes for row in w])


@torch.no_grad()
def model_scores(data, T, run_folder, device, batch=64):
    """A reference run's mean cross-entropy on each window, in eval mode."""
    ckpt = read_checkpoint(os.path.join(run_folder, "ckpt.pt"), why=f"curriculum_scorer={run_folder}")
    if ckpt["model_config"]["block_size"] < T and ckpt["model_config"].get("pos_emb", "learned") == "learned":
        raise UserError(f"curriculum_scorer={run_folder} has block_size={ckpt['model_config']['block_size']}, "
                        f"shorter than the windows' {T}; score with a run of block_size >= {T}")
    model = restore_model(ckpt, "curriculum.py", dropout=0.0).to(device).eval()
    w = torch.from_numpy(windows_of(data, T))
    out = []
    for i in range(0, len(w), batch):
        x, y = w[i:i + batch, :-1].to(device), w[i:i + batch, 1:].to(device)
        logits, _ = model(x)
        ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (b, T)
        out.append(ce.mean(dim=1).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def weights_sha256(path):
    """The sha256 of a checkpoint's weights (names and bytes, in name order): the same model
    retrained to the same weights keeps its cache, whatever else its file records (times)."""
    h = hashlib.sha256()
    state = read_checkpoint(path, why="curriculum_scorer")["model"]
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_scores(dataset, data, T, scorer, vocab_size, device):
    """The scores of the split's windows by `scorer`, from the cache beside the data or
    computed and cached now (written atomically: a temporary file, then a rename)."""
    is_model = scorer not in ("bigram", "zlib")
    if is_model and not os.path.exists(os.path.join(scorer, "ckpt.pt")):
        raise UserError(f"curriculum_scorer='{scorer}': use bigram, zlib, or a run folder with a ckpt.pt")
    name = os.path.basename(os.path.normpath(scorer)) if is_model else scorer
    path = os.path.join(dataset_dir(dataset), f"difficulty-{name}-T{T}")
    ident = {"data_sha256": tokens_sha256(data), "scorer": scorer, "block_size": T,
             "scorer_sha256": weights_sha256(os.path.join(scorer, "ckpt.pt")) if is_model else None}
    if os.path.exists(path + ".json") and os.path.exists(path + ".npy"):
        with open(path + ".json") as f:
            saved = json.load(f)
        for key, what in (("data_sha256", "other data"), ("scorer_sha256", "another checkpoint")):
            if saved.get(key) != ident[key]:
                raise UserError(f"{path}.npy was scored on {what} than today's; delete it (and its .json) to "
                                f"score again")
        return np.load(path + ".npy")
    if scorer == "bigram":
        scores = bigram_scores(data, T, vocab_size)
    elif scorer == "zlib":
        scores = zlib_scores(data, T)
    else:
        scores = model_scores(data, T, scorer, device)
    for ext, write in ((".npy", lambda f: np.save(f, scores)), (".json", lambda f: f.write(json.dumps(ident).encode()))):
        with open(path + ext + ".tmp", "wb") as f:
            write(f)
        os.replace(path + ext + ".tmp", path + ext)
    return scores
