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
  SeqLenWindows   sequence-length warmup: shorter windows first, as many more of them, the
                  tokens per step unchanged (curriculum=seqlen)
  DifficultyWindows  whole windows ordered by a difficulty score (curriculum.py), drawn from a
                  pool that grows from the easiest (curriculum=difficulty) or the hardest (anti)
  MixtureWindows  random windows from several datasets by weights that stages change (datasets,
                  stages)
"""

import hashlib
import json
import math
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
    redo = f"prepare it again ({os.path.relpath(os.path.join(folder, 'prepare.py'))} or tokenizer.prepare_dataset)"
    try:
        with open(paths[2]) as f:
            meta = json.load(f)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{os.path.relpath(paths[2])} is not readable JSON ({e}); {redo}") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("vocab_size"), int)):
        raise UserError(f"{os.path.relpath(paths[2])} has no integer vocab_size; {redo}")
    train, val = (read_tokens(p, meta, split, redo) for p, split in zip(paths, ("train", "val")))
    return train, val, meta


def read_tokens(path, meta, split, redo):
    """A .bin file as uint16 tokens, refused (one line: what is wrong) when it is empty, cut
    mid-token, of another length than meta.json recorded, or holds ids beyond vocab_size."""
    size, where = os.path.getsize(path), os.path.relpath(path)
    if size == 0 or size % 2:
        raise UserError(f"{where} is {'empty' if size == 0 else f'truncated: {size:,} bytes, not whole uint16 tokens'}"
                        f"; {redo}")
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    expected = meta.get(f"{split}_tokens")  # recorded by prepare_dataset (older meta.json files lack it)
    if expected is not None and expected != len(tokens):
        raise UserError(f"{where} holds {len(tokens):,} tokens but meta.json records {expected:,} "
                        f"(truncated, or from another preparation); {redo}")
    top = int(tokens.max())
    if top >= meta["vocab_size"]:
        raise UserError(f"{where} holds token id {top}, beyond meta.json's vocab_size={meta['vocab_size']}: "
                        f"the .bin files and meta.json come from different preparations; {redo}")
    return tokens


def check_length(tokens, block_size, where):
    """One window needs block_size + 1 tokens (inputs and next-token targets)."""
    if len(tokens) < block_size + 1:
        raise UserError(f"{where} holds {len(tokens):,} tokens, fewer than the block_size + 1 = {block_size + 1} "
                        f"one window needs; use a smaller --block_size or more data")


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
        return self._draw(self.batch_size, self.block_size, self.offsets)

    def _draw(self, batch, length, offsets):
        # data parallel without a distributed sampler: every process draws the batches of all
        # `world` processes in rank order and keeps its own. All generators then stay in one
        # state (the one data position a checkpoint saves), and N processes see exactly the
        # micro-batches one process would draw in a row.
        starts = [torch.randint(len(self.data) - length, (batch,), generator=self.generator)
                  for _ in range(self.world)][self.rank]
        return windows_at(self.data, starts.numpy(), offsets, self.device)


# ----------------------------------------------------------------------------------------
# curricula: sequence-length warmup (Li et al. 2022, "The Stability-Efficiency Dilemma")


def pace(it, iters, pacing):
    """A curriculum's progress in [0, 1] at step `it` of `iters`, p = it / iters shaped by the
    pacing: linear p; root sqrt(p) (faster early); step floor(4 p) / 4 (four stages). 1 from
    `iters` on."""
    p = min(it / iters, 1.0)
    return {"linear": p, "root": math.sqrt(p), "step": math.floor(4 * p) / 4}[pacing]


def seqlen_at(it, start, block_size, iters, pacing, tokens):
    """The window length at optimizer step `it` of a sequence-length warmup: from `start` to
    block_size over `iters` steps by the pacing (`pace`), rounded down to a length that is a multiple of 8 and divides `tokens` (a micro-batch's
    tokens, batch_size * block_size), so that every micro-batch holds exactly `tokens` tokens
    (tokens / length sequences). block_size from step `iters` on."""
    if it >= iters:
        return block_size
    raw = start + pace(it, iters, pacing) * (block_size - start)
    return max(n for n in range(start, block_size + 1, 8) if tokens % n == 0 and n <= raw)


class SeqLenWindows(RandomWindows):
    """RandomWindows whose length grows with the optimizer step (`it`, set by the loop before
    each step): seqlen_at's length, and batch_size * block_size / length sequences of it, so
    the tokens per step stay those of the full windows. The length is a function of the step,
    so a checkpoint's step and generator state resume it exactly."""

    def __init__(self, data, batch_size, block_size, device, seed, start, iters, pacing):
        super().__init__(data, batch_size, block_size, device, seed)
        self.start, self.iters, self.pacing, self.it = start, iters, pacing, 0

    def length(self):
        return seqlen_at(self.it, self.start, self.block_size, self.iters, self.pacing,
                         self.batch_size * self.block_size)

    def next(self):
        n = self.length()
        return self._draw(self.batch_size * self.block_size // n, n, self.offsets[:n + 1])


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


def pool_fraction(it, start_frac, iters, pacing):
    """The share of the training windows a difficulty curriculum may draw from at step `it`:
    from start_frac to 1 over `iters` steps by the pacing (`pace`; Hacohen & Weinshall
    2019's pacing function: the pool of allowed examples grows from the easiest)."""
    return start_frac + pace(it, iters, pacing) * (1.0 - start_frac)


class DifficultyWindows(RandomWindows):
    """Whole windows [w T, (w + 1) T] of the split (as AlignedWindows), ordered by a score per
    window (curriculum.py: easy first; reversed for anti), drawn uniformly from the easiest
    pool_fraction of them at step `it` (set by the loop). The pool is a function of the step,
    so a checkpoint's step and generator state resume it exactly."""

    def __init__(self, data, batch_size, block_size, device, seed, scores, start_frac, iters, pacing, anti=False):
        super().__init__(data, batch_size, block_size, device, seed)
        order = np.argsort(-scores if anti else scores, kind="stable")  # window ids, easiest (or hardest) first
        self.order = torch.from_numpy(order.astype(np.int64))
        self.start_frac, self.iters, self.pacing, self.it = start_frac, iters, pacing, 0

    def pool(self):
        """How many windows (the easiest, or the hardest for anti) the next batch draws from."""
        return max(1, math.ceil(pool_fraction(self.it, self.start_frac, self.iters, self.pacing) * len(self.order)))

    def next(self):
        n = self.pool()
        picks = [torch.randint(n, (self.batch_size,), generator=self.generator) for _ in range(self.world)][self.rank]
        starts = self.order[picks].numpy() * self.block_size
        return windows_at(self.data, starts, self.offsets, self.device)


# ----------------------------------------------------------------------------------------
# data mixtures and stages (the Smol Training Playbook's multi-stage training)


def parse_mixture(text):
    """'shakespeare_char:0.7,stdlib_char:0.3' -> {name: weight}, in the order given."""
    out = {}
    for part in text.split(","):
        name, sep, w = part.strip().rpartition(":")
        try:
            weight = float(w)
        except ValueError:
            weight = -1.0
        if not sep or not name or not weight >= 0 or name in out:
            raise UserError(f"datasets='{text}': write NAME:WEIGHT,NAME:WEIGHT (weights >= 0, each name once)")
        out[name] = weight
    if not sum(out.values()) > 0:
        raise UserError(f"datasets='{text}': the weights sum to 0; give one a weight > 0")
    return out


def parse_stages(text, names):
    """'480:shakespeare_char=1,stdlib_char=0;...' -> [(iter, {name: weight})] sorted by iter:
    from that optimizer step on, the mixture's weights (a name left out weighs 0)."""
    stages = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        it, sep, rest = part.partition(":")
        try:
            weights = {n.strip(): float(w) for n, w in (kv.split("=") for kv in rest.split(","))}
            start = int(it)
        except ValueError:
            raise UserError(f"stages='{text}': write ITER:NAME=WEIGHT,NAME=WEIGHT;ITER:... "
                            f"(e.g. 480:shakespeare_char=1)") from None
        unknown = [n for n in weights if n not in names]
        if unknown or not sep or start < 0 or not all(w >= 0 for w in weights.values()) or not sum(weights.values()) > 0:
            raise UserError(f"stages='{text}': stage '{part}' needs a step >= 0 and weights >= 0 (not all 0) for "
                            f"names among datasets ({', '.join(names)})" + (f"; unknown: {unknown[0]}" if unknown else ""))
        stages.append((start, {n: weights.get(n, 0.0) for n in names}))
    return sorted(stages, key=lambda s: s[0])


TOKENIZER_KEYS = ("tokenizer", "vocab_size", "chars", "pattern", "merged_tokens", "dtype")  # meta.json: not its counts


def load_mixture(text):
    """{name: (train, val, meta)} of a mixture's datasets, refused unless they share one
    tokenizer (the same meta.json but for the counts and the source) and, where one of
    them is a task of a multi-task set, unless every one is (check_task_tokens)."""
    out = {name: load_dataset(name) for name in parse_mixture(text)}
    (first, (_, _, meta)), *rest = out.items()
    for name, (_, _, other) in rest:
        differ = [k for k in TOKENIZER_KEYS if meta.get(k) != other.get(k)]
        if differ:
            raise UserError(f"datasets: '{name}' has another tokenizer than '{first}' ({', '.join(differ)} differ); "
                            f"prepare them with one tokenizer")
    check_task_tokens(out)
    return out


def check_task_tokens(datasets):
    """A multi-task mixture (data/multitask/prepare.py: meta.json's "task" and "task_tokens",
    {task: its prefix character}) is refused, in one line naming the dataset, unless every
    dataset names its task, the task's prefix is one character of the shared vocabulary
    and its training split holds that prefix: a model is told the task by the prefix, so a
    dataset without one would be learnt as no task at all. Mixtures without task tokens
    pass untouched."""
    tagged = [n for n, (_, _, m) in datasets.items() if "task_tokens" in m]
    if not tagged:
        return
    redo = "prepare every task of the mixture together: python data/multitask/prepare.py"
    tokens = datasets[tagged[0]][2]["task_tokens"]
    for name, (train, _, meta) in datasets.items():
        task = meta.get("task")
        if meta.get("task_tokens") != tokens or task not in tokens:
            what = "no task prefix token" if task is None or "task_tokens" not in meta else (
                f"task '{task}' without a prefix among {sorted(tokens)}" if task not in meta["task_tokens"]
                else "other task tokens")
            raise UserError(f"datasets: '{name}' has {what} in its meta.json, unlike '{tagged[0]}'; {redo}")
        chars = meta.get("chars", "") if meta.get("tokenizer") == "char" else ""
        token = tokens[task]
        if not (isinstance(token, str) and len(token) == 1 and token in chars):
            raise UserError(f"datasets: '{name}': task '{task}''s prefix {token!r} is not a character of its "
                            f"char vocabulary; {redo}")
        if not (np.asarray(train) == chars.index(token)).any():
            raise UserError(f"datasets: '{name}': its train.bin never holds task '{task}''s prefix {token!r}; {redo}")


def mixture_at(it, base, stages):
    """The mixture's weights (normalised, in the order of base) at optimizer step it."""
    weights = base
    for start, w in stages:
        if it >= start:
            weights = w
    total = sum(weights.values())
    return {n: weights[n] / total for n in base}


class MixtureWindows:
    """Random windows from several datasets of one tokenizer: each sequence of a micro-batch
    picks its dataset by the mixture's weights at step `it` (set by the loop; stages change
    them), then a uniform window of it. One generator draws both, so a checkpoint's step and
    generator state resume it exactly; data parallel as RandomWindows (rank-ordered draws)."""

    rank, world = 0, 1

    def __init__(self, datas, base, stages, batch_size, block_size, device, seed):
        for name, data in datas.items():
            if len(data) <= block_size + 1:
                raise UserError(f"dataset '{name}' has {len(data)} training tokens; block_size={block_size} needs more")
        self.datas, self.base, self.stages, self.it = datas, base, stages, 0
        self.batch_size, self.block_size, self.device = batch_size, block_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self.offsets = np.arange(block_size + 1)

    def weights(self):
        return mixture_at(self.it, self.base, self.stages)

    def next(self):
        names, T = list(self.base), self.block_size
        probs = torch.tensor([self.weights()[n] for n in names], dtype=torch.float64)
        draws = [(torch.multinomial(probs, self.batch_size, replacement=True, generator=self.generator),
                  torch.rand(self.batch_size, generator=self.generator, dtype=torch.float64))
                 for _ in range(self.world)]
        picks, u = draws[self.rank]
        rows = np.stack([self.datas[names[d]][s:s + T + 1] for d, s in
                         ((int(d), int(x * (len(self.datas[names[int(d)]]) - T))) for d, x in zip(picks, u))])
        buf = torch.from_numpy(rows.astype(np.int64))
        if self.device != "cpu":
            buf = buf.pin_memory().to(self.device, non_blocking=True)
        return buf[:, :-1], buf[:, 1:]


def calibration_batches(dataset, meta, batch_size, block_size, n, seed):
    """n seeded (batch_size, block_size) input windows of a dataset's training split, for the
    tools that measure a trained model on a sample of its data (prune.py's importance,
    quantize.py's GPTQ). meta: the model's tokenizer, which the data must share."""
    train_split, _, data_meta = load_dataset(dataset)
    differ = [k for k in TOKENIZER_KEYS if meta.get(k) != data_meta.get(k)]
    if differ:
        raise UserError(f"dataset '{dataset}' has another tokenizer than the checkpoint ({', '.join(differ)} "
                        f"differ); give the run's own with --dataset")
    windows = RandomWindows(train_split, batch_size, block_size, "cpu", seed)
    return [windows.next()[0] for _ in range(n)]


# ----------------------------------------------------------------------------------------
# train.py's choice


def make_windows(tc, block_size, device, train_data, mixture=None, aligned=None, scores=None):
    """The sampler a run's settings (tc, a config.TrainConfig) ask for: the cache's aligned
    windows (aligned: their number), a mixture ({name: (train, val, meta)}), a curriculum
    (scores: a function that returns the windows' difficulty, curriculum.load_scores) or
    nanoGPT's random windows."""
    common = (tc.batch_size, block_size, device, tc.seed)
    if aligned is not None:
        return AlignedWindows(train_data, *common, aligned)
    if mixture:
        return MixtureWindows({n: d[0] for n, d in mixture.items()}, parse_mixture(tc.datasets),
                              parse_stages(tc.stages, list(mixture)), *common)
    if tc.curriculum in ("difficulty", "anti"):
        return DifficultyWindows(train_data, *common, scores(), tc.curriculum_start_frac, tc.curriculum_iters,
                                 tc.curriculum_pacing, anti=tc.curriculum == "anti")
    if tc.curriculum == "seqlen":
        return SeqLenWindows(train_data, *common, tc.curriculum_start_len, tc.curriculum_iters, tc.curriculum_pacing)
    return RandomWindows(train_data, *common)
