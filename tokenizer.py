"""
Tokenizers for the datasets in data/, and the shared code that turns a text
corpus into train.bin / val.bin / meta.json.

Three kinds of tokenizer, all with the same small interface
(encode(str) -> list[int], decode(list[int]) -> str, vocab_size, kind, to_meta()):

- "char": one token per character; the vocabulary is the sorted set of the
  corpus's characters (what nanoGPT's shakespeare_char does).
- "bpe":  byte-level BPE trained here, in pure Python, with train_bpe(). The
  result is a tiktoken-style "mergeable ranks" table (bytes -> rank), which
  tiktoken then encodes with fast Rust code; bpe_encode_reference() is the
  plain-Python definition of what that encoding must produce.
- "gpt2": OpenAI's GPT-2 vocabulary via tiktoken.get_encoding("gpt2"). This
  needs the vocabulary files, which tiktoken downloads (and caches) on first use.

This file is a library: nothing runs at import. Data is prepared by:

    python data/shakespeare_char/prepare.py [--tokenizer char|bpe|gpt2] [--vocab_size N]
    python data/stdlib_char/prepare.py      [--tokenizer char|bpe|gpt2] [--vocab_size N]

and a prepared dataset's tokenizer is rebuilt with:

    from tokenizer import load_meta, tokenizer_from_meta
    tok = tokenizer_from_meta(load_meta("data/shakespeare_char"))
    print(tok.decode(tok.encode("ROMEO: hello")))

Tests: python -m pytest -q tests/test_data.py

meta.json (written by prepare_dataset) is a JSON object:
    {"tokenizer": "char" | "bpe" | "gpt2",
     "vocab_size": int,
     "chars": str,                  # char only: the vocabulary, in id order
     "pattern": str,                # bpe only: the regex that pre-splits text
     "merged_tokens": [str, ...],   # bpe only: base64 bytes of ranks 256, 257, ...
     "dtype": "uint16", "train_tokens": int, "val_tokens": int,
     "train_chars": int, "val_chars": int, "source": str,
     "task": str, "task_tokens": {task: char}}  # multi-task datasets only (multitask.py)
"""

import base64
import heapq
import json
import os
import time
from collections import Counter, defaultdict

import numpy as np
import regex  # the `regex` module (not `re`): it understands \p{L} / \p{N}
import tiktoken

# The pre-tokenization regex of GPT-2, character for character the pat_str of
# tiktoken's "gpt2" encoding. It cuts text into chunks (words with their
# leading space, numbers, punctuation runs, whitespace) and BPE never merges
# across chunk boundaries, so e.g. "dog." and "dog!" share the token " dog".
GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)

TOKENIZER_KINDS = ("char", "bpe", "gpt2")
MAX_UINT16_VOCAB = 2**16  # train.bin / val.bin store ids as uint16

# -----------------------------------------------------------------------------
# byte-level BPE: training


def _merge_pair(ids, a, b, new_id):
    """Replace every occurrence of the adjacent pair (a, b) in ids by new_id,
    scanning left to right (so "aaa" with pair (a, a) becomes [aa, a])."""
    out = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == a and i + 1 < n and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(text, vocab_size, pattern=GPT2_SPLIT_PATTERN, verbose=False):
    """Train a byte-level BPE vocabulary of vocab_size tokens on text.

    Returns tiktoken-style mergeable ranks, a dict bytes -> rank: the 256
    single bytes at ranks 0..255, then each new token's bytes at the next
    rank, in the order the tokens were learned. Fewer than vocab_size tokens
    come back only if the text runs out of pairs to merge.

    How (and why it is fast enough in pure Python):
    - Split the text with `pattern` and count the distinct chunks; a chunk
      that occurs 500 times is stored once with weight 500.
    - Keep, for every adjacent token pair, its weighted count (pair_counts)
      and the ids of the distinct chunks containing it (pair_where).
    - Each merge rewrites only the chunks in pair_where[pair] and adjusts the
      counts of the pairs that changed in them, instead of recounting the
      whole corpus. Every rewrite shortens its chunk, so the total work over
      all merges is bounded by the total length of the distinct chunks.
    - The best pair comes from a lazy max-heap: entries are pushed whenever a
      count changes, and a popped entry whose count is no longer current is
      simply dropped.

    Tie-breaking (deterministic): the highest count wins; among equal counts,
    the pair whose (left token bytes, right token bytes) sorts first, e.g.
    (b"a", b"b") before (b"aa", b"a") because b"a" < b"aa".

    Duplicate bytes: two different pairs can spell the same bytes, e.g.
    (b"ab", b"c") and (b"a", b"bc"). When the most frequent pair spells bytes
    that are already a token, we merge it into that existing token (no new
    rank) and keep going, so ranks stays a bijection between distinct byte
    strings and 0..n-1. This matches how the ranks are used when encoding:
    any adjacent pair whose concatenation has a rank is merged into it.
    (With merges applied everywhere, left to right, inside chunks, we have not
    seen this happen on tiny shakespeare, the stdlib or random fuzzing - a
    token's bytes seem to always get the same split - so it is a safeguard.)
    """
    if vocab_size < 256:
        raise ValueError(
            f"BPE vocab_size must be at least 256 (the single bytes), got {vocab_size}"
        )
    t0 = time.time()

    # distinct chunks, in order of first appearance (deterministic)
    chunk_counts = Counter(regex.findall(pattern, text))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())

    vocab = [bytes([i]) for i in range(256)]  # token id (= rank) -> bytes
    ranks = {tok: i for i, tok in enumerate(vocab)}  # bytes -> rank

    pair_counts = defaultdict(int)  # (a, b) -> occurrences, weighted by chunk count
    pair_where = defaultdict(set)  # (a, b) -> ids of the distinct chunks holding it
    for wi, (ids, f) in enumerate(zip(words, freqs)):
        for p in zip(ids, ids[1:]):
            pair_counts[p] += f
            pair_where[p].add(wi)

    # heap entries: (-count, left bytes, right bytes, pair); the min is the best pair
    def heap_entry(p):
        return (-pair_counts[p], vocab[p[0]], vocab[p[1]], p)

    heap = [heap_entry(p) for p in pair_counts]
    heapq.heapify(heap)

    def pop_best_pair():
        while heap:
            neg_count, _, _, p = heapq.heappop(heap)
            if pair_counts.get(p) == -neg_count:  # else stale: the count moved on
                return p
        return None

    n_merges_wanted = vocab_size - 256
    n_reused = 0
    report_every = max(1, n_merges_wanted // 10)  # verbose: about ten progress lines
    next_report = report_every
    while len(vocab) < vocab_size:
        pair = pop_best_pair()
        if pair is None:
            if verbose:
                print(f"train_bpe: no pairs left to merge, stopping at {len(vocab)} tokens")
            break
        a, b = pair
        merged = vocab[a] + vocab[b]
        new_id = ranks.get(merged)
        if new_id is None:
            new_id = len(vocab)
            vocab.append(merged)
            ranks[merged] = new_id
        else:
            n_reused += 1
            if verbose:
                print(f"train_bpe: pair {vocab[a]!r} + {vocab[b]!r} spells the existing "
                      f"token {new_id} {merged!r}; merged into it, no new rank")

        # rewrite only the chunks that contain the pair, tracking count changes
        changed = set()
        for wi in pair_where.pop(pair):
            old = words[wi]
            new = _merge_pair(old, a, b, new_id)
            words[wi] = new
            old_pairs = Counter(zip(old, old[1:]))
            new_pairs = Counter(zip(new, new[1:]))
            for p in old_pairs.keys() | new_pairs.keys():
                delta = new_pairs[p] - old_pairs[p]
                if delta == 0:
                    continue
                pair_counts[p] += delta * freqs[wi]
                changed.add(p)
                if new_pairs[p] == 0:
                    pair_where[p].discard(wi)
                elif old_pairs[p] == 0:
                    pair_where[p].add(wi)
        for p in changed:
            if pair_counts[p] <= 0:  # gone from every chunk
                del pair_counts[p]
                pair_where.pop(p, None)
            else:
                heapq.heappush(heap, heap_entry(p))

        if verbose and len(vocab) - 256 >= next_report:
            print(f"train_bpe: {len(vocab) - 256}/{n_merges_wanted} new tokens, "
                  f"latest {merged!r}, {time.time() - t0:.1f}s")
            next_report += report_every

    if verbose:
        print(f"train_bpe: {len(vocab)} tokens from {len(words):,} distinct chunks in "
              f"{time.time() - t0:.1f}s ({n_reused} merges reused an existing token)")
    return ranks


# -----------------------------------------------------------------------------
# byte-level BPE: encoding


def bpe_encode_reference(text, ranks, pattern=GPT2_SPLIT_PATTERN):
    """The definition of BPE encoding with mergeable ranks, in plain (slow) Python.

    Split text with `pattern`; for each chunk start from its single bytes and
    repeatedly merge the adjacent pair whose concatenation has the lowest rank
    (the leftmost such pair on a tie) until no adjacent pair is in ranks.
    tiktoken implements the same procedure in Rust; the tests check they agree.
    """
    ids = []
    for chunk in regex.findall(pattern, text):
        parts = [bytes([b]) for b in chunk.encode("utf-8")]
        while len(parts) > 1:
            best_rank, best_i = None, None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best_i = r, i
            if best_i is None:
                break
            parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        ids.extend(ranks[p] for p in parts)
    return ids


def make_tiktoken_encoding(ranks, pattern=GPT2_SPLIT_PATTERN, name="bpe"):
    """Wrap mergeable ranks (bytes -> rank) in a tiktoken.Encoding (fast Rust
    encode/decode). No special tokens: every id is a byte string."""
    return tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={})


# -----------------------------------------------------------------------------
# the tokenizer objects


class Tokenizer:
    """Common interface: encode(str) -> list[int], decode(list[int]) -> str,
    vocab_size (int), kind ("char" | "bpe" | "gpt2"), to_meta() -> dict."""

    kind = None
    vocab_size = None

    def encode(self, text):
        raise NotImplementedError

    def decode(self, ids):
        raise NotImplementedError

    def to_meta(self):
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    """One token per character; id = position in the sorted character list."""

    kind = "char"

    def __init__(self, chars):
        self.chars = "".join(chars)
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("char vocabulary has repeated characters")
        self.vocab_size = len(self.chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def encode(self, text):
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            raise ValueError(
                f"character {e.args[0]!r} is not in this char vocabulary "
                f"({self.vocab_size} characters); only characters of the training "
                f"corpus can be encoded"
            ) from None

    def decode(self, ids):
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"token id {i} is out of range for this char vocabulary "
                    f"(ids 0..{self.vocab_size - 1})"
                )
            out.append(self.chars[i])
        return "".join(out)

    def to_meta(self):
        return {"tokenizer": "char", "vocab_size": self.vocab_size, "chars": self.chars}


class BPETokenizer(Tokenizer):
    """Byte-level BPE from mergeable ranks; tiktoken does the actual work."""

    kind = "bpe"

    def __init__(self, ranks, pattern=GPT2_SPLIT_PATTERN):
        self.ranks = ranks
        self.pattern = pattern
        self.vocab_size = len(ranks)
        self.enc = make_tiktoken_encoding(ranks, pattern, name=f"bpe{len(ranks)}")

    @classmethod
    def train(cls, text, vocab_size, pattern=GPT2_SPLIT_PATTERN, verbose=False):
        return cls(train_bpe(text, vocab_size, pattern, verbose=verbose), pattern)

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range for this bpe vocabulary "
                             f"(ids 0..{self.vocab_size - 1})")
        # invalid UTF-8 (e.g. a sample cut inside a character) becomes U+FFFD
        return self.enc.decode(ids)

    def to_meta(self):
        by_rank = sorted(self.ranks.items(), key=lambda kv: kv[1])
        merged = [base64.b64encode(tok).decode("ascii") for tok, _ in by_rank[256:]]
        return {"tokenizer": "bpe", "vocab_size": self.vocab_size,
                "pattern": self.pattern, "merged_tokens": merged}


class GPT2Tokenizer(Tokenizer):
    """OpenAI's GPT-2 BPE (50257 tokens) through tiktoken."""

    kind = "gpt2"

    def __init__(self):
        try:
            self.enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # requests' ConnectionError, HTTPError, ... when offline
            raise RuntimeError(
                f"tiktoken could not load the GPT-2 vocabulary (probably offline: "
                f"{type(e).__name__}); use --tokenizer=bpe or --tokenizer=char instead"
            ) from None
        self.vocab_size = self.enc.n_vocab

    def encode(self, text):
        # encode_ordinary: "<|endoftext|>" in the text is plain text, not the special token
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode([int(i) for i in ids])

    def to_meta(self):
        return {"tokenizer": "gpt2", "vocab_size": self.vocab_size}


def tokenizer_from_meta(meta):
    """Rebuild the tokenizer described by a meta.json dict."""
    kind = meta.get("tokenizer")
    needed = {"char": ["chars"], "bpe": ["pattern", "merged_tokens"]}.get(kind, [])
    missing = [key for key in needed if key not in meta]
    if missing:
        raise ValueError(f"meta.json: a {kind} tokenizer needs the field(s) {', '.join(missing)}; "
                         f"re-run the dataset's prepare.py")
    if kind == "char":
        tok = CharTokenizer(meta["chars"])
    elif kind == "bpe":
        ranks = {bytes([i]): i for i in range(256)}
        for rank, b64 in enumerate(meta["merged_tokens"], start=256):
            tok_bytes = base64.b64decode(b64)
            if tok_bytes in ranks:
                raise ValueError(f"meta.json: bpe token {rank} {tok_bytes!r} is listed twice")
            ranks[tok_bytes] = rank
        tok = BPETokenizer(ranks, meta["pattern"])
    elif kind == "gpt2":
        tok = GPT2Tokenizer()
    else:
        raise ValueError(f"meta.json: unknown tokenizer {kind!r}; expected one of "
                         f"{', '.join(TOKENIZER_KINDS)}")
    if "vocab_size" in meta and meta["vocab_size"] != tok.vocab_size:
        raise ValueError(f"meta.json: vocab_size is {meta['vocab_size']} but the stored "
                         f"{kind} vocabulary has {tok.vocab_size} tokens")
    return tok


# the meta.json fields that define a tokenizer: equal fields, equal token ids
TOKENIZER_META_KEYS = ["tokenizer", "vocab_size", "chars", "pattern", "merged_tokens"]


def same_tokenizer(meta_a, meta_b):
    """True if two meta.json dicts describe the same tokenizer (a model trained on one can
    read data made with the other)."""
    return all(meta_a.get(k) == meta_b.get(k) for k in TOKENIZER_META_KEYS)


def load_meta(data_dir):
    """Read data_dir/meta.json into a dict."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no meta.json in {data_dir}; run the dataset's prepare.py first "
            f"(e.g. python data/shakespeare_char/prepare.py)"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def build_tokenizer(kind, train_text, full_text=None, vocab_size=4096, verbose=False):
    """Make a tokenizer of the given kind. BPE is trained on train_text only
    (so the validation text stays unseen); the char vocabulary is taken from
    full_text (default train_text) so every validation character has an id,
    as in nanoGPT's shakespeare_char - this reveals only the character set."""
    if kind == "char":
        return CharTokenizer.from_text(train_text if full_text is None else full_text)
    if kind == "bpe":
        if not 256 <= vocab_size <= MAX_UINT16_VOCAB:
            raise ValueError(f"--vocab_size for bpe must be between 256 and "
                             f"{MAX_UINT16_VOCAB}, got {vocab_size}")
        return BPETokenizer.train(train_text, vocab_size, verbose=verbose)
    if kind == "gpt2":
        return GPT2Tokenizer()
    raise ValueError(f"unknown tokenizer {kind!r}; expected one of {', '.join(TOKENIZER_KINDS)}")


# -----------------------------------------------------------------------------
# dataset preparation shared by data/*/prepare.py


def _write_atomic(path, data):
    """Write bytes to path via a temporary name + os.replace, so a crash never
    leaves a half-written file under the real name."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def prepare_dataset(text, out_dir, tokenizer="char", vocab_size=4096, val_fraction=0.1,
                    source=None, verbose=True, val_text=None, extra_meta=None):
    """Tokenize text and write out_dir/{train.bin, val.bin, meta.json}. tokenizer is a
    kind ('char', 'bpe', 'gpt2') or a ready Tokenizer, for datasets that must share ids.

    The first (1 - val_fraction) of the characters are the training split and
    the rest validation (nanoGPT's shakespeare_char: first 90% / last 10%); with
    val_text, text is the whole training split and val_text the validation split (a
    generated task's held-out examples). extra_meta: more fields for meta.json (a
    multi-task dataset's task and task_tokens, data/multitask/prepare.py).
    Ids are stored as np.uint16, as nanoGPT's train.py expects. meta.json is
    written last, so its presence means both .bin files are complete.
    Returns the meta dict.
    """
    t0 = time.time()
    if not isinstance(tokenizer, Tokenizer) and tokenizer not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; expected one of "
                         f"{', '.join(TOKENIZER_KINDS)}")
    if tokenizer == "bpe" and not 256 <= vocab_size <= MAX_UINT16_VOCAB:
        # checked here too so a bad flag fails before any slow work
        raise ValueError(f"--vocab_size for bpe must be between 256 and "
                         f"{MAX_UINT16_VOCAB}, got {vocab_size}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if val_text is None:
        n = len(text)
        n_train = int(n * (1 - val_fraction))
        if n_train == 0 or n_train == n:
            raise ValueError(f"text of {n} characters is too short to split into train and val")
        train_text, val_text = text[:n_train], text[n_train:]
    elif not (text and val_text):
        raise ValueError("train and val text must both be non-empty")
    else:
        train_text, text = text, text + val_text

    if verbose and tokenizer == "bpe":
        print(f"training BPE to {vocab_size} tokens on {len(train_text):,} characters...")
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else build_tokenizer(
        tokenizer, train_text, full_text=text, vocab_size=vocab_size)
    train_ids = tok.encode(train_text)
    val_ids = tok.encode(val_text)

    os.makedirs(out_dir, exist_ok=True)
    for split, ids in (("train", train_ids), ("val", val_ids)):
        arr = np.array(ids, dtype=np.int64)
        if arr.size and arr.max() >= MAX_UINT16_VOCAB:
            raise ValueError(f"token id {arr.max()} does not fit in uint16; the vocabulary "
                             f"must have at most {MAX_UINT16_VOCAB} tokens")
        _write_atomic(os.path.join(out_dir, f"{split}.bin"), arr.astype(np.uint16).tobytes())

    meta = tok.to_meta()
    meta.update(dtype="uint16", train_tokens=len(train_ids), val_tokens=len(val_ids),
                train_chars=len(train_text), val_chars=len(val_text))
    if source is not None:
        meta["source"] = source
    meta.update(extra_meta or {})
    _write_atomic(os.path.join(out_dir, "meta.json"),
                  json.dumps(meta, indent=1, ensure_ascii=False).encode("utf-8"))

    if verbose:
        print(f"tokenizer: {meta['tokenizer']}, vocab_size: {tok.vocab_size:,}")
        print(f"train: {len(train_ids):,} tokens ({len(train_text):,} chars), "
              f"val: {len(val_ids):,} tokens ({len(val_text):,} chars)")
        print(f"wrote train.bin, val.bin, meta.json to {out_dir} in {time.time() - t0:.1f}s")
    return meta
