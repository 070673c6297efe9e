"""
Prepare an offline corpus that every Python installation has: the standard
library's own .py source. Writes train.bin, val.bin (uint16 token ids) and
meta.json; no network needed.

    python data/stdlib_char/prepare.py                       # char, 3M chars -> data/stdlib_char/
    python data/stdlib_char/prepare.py --max_chars 500000    # a smaller corpus
    python data/stdlib_char/prepare.py --tokenizer bpe       # BPE, 2048 tokens -> data/stdlib_bpe/
    python data/stdlib_char/prepare.py --out_dir /tmp/stdlib

The corpus is deterministic for a given Python version: the .py files under
sysconfig.get_paths()["stdlib"], in sorted relative-path order, skipping
site-packages / dist-packages, test and tests packages, idlelib, lib2to3,
__pycache__ and any file that is not valid UTF-8. Each file is preceded by a
"# file: relpath" line; the concatenation is cut at --max_chars characters.
A different Python version gives a (slightly) different corpus. The split is
the first 90% of the characters for training and the last 10% for validation,
so train and val come from different files.

Default --vocab_size for bpe is 2048 (a small corpus; a multiple of 64).

The shared code lives in tokenizer.py at the repo root, which this script
imports by putting the repo root (two folders up) at the front of sys.path.
"""

import argparse
import os
import sys
import sysconfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)
from tokenizer import TOKENIZER_KINDS, prepare_dataset  # noqa: E402

DATA_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # data/
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
             "__pycache__"}
DEFAULT_MAX_CHARS = 3_000_000
DEFAULT_BPE_VOCAB = 2048


def stdlib_source_files(stdlib_dir):
    """Relative paths (POSIX style, sorted) of the stdlib .py files we use."""
    rel_paths = []
    for dirpath, dirnames, filenames in os.walk(stdlib_dir):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]  # prune, don't descend
        for name in filenames:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, name), stdlib_dir)
                rel_paths.append(rel.replace(os.sep, "/"))
    return sorted(rel_paths)


def build_corpus(stdlib_dir, max_chars):
    """Concatenate '# file: relpath' + source for each file until max_chars.
    Returns (text, number of files used); the last file may be cut short."""
    pieces, n_chars, n_files = [], 0, 0
    for rel in stdlib_source_files(stdlib_dir):
        if n_chars >= max_chars:
            break
        try:
            with open(os.path.join(stdlib_dir, rel), encoding="utf-8") as f:
                source = f.read()
        except (UnicodeDecodeError, OSError):
            continue  # e.g. a deliberately non-UTF-8 test fixture, or unreadable
        if not source.endswith("\n"):
            source += "\n"
        piece = f"# file: {rel}\n{source}\n"
        pieces.append(piece)
        n_chars += len(piece)
        n_files += 1
    return "".join(pieces)[:max_chars], n_files


def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare the Python stdlib source as a corpus.")
    parser.add_argument("--tokenizer", choices=TOKENIZER_KINDS, default="char")
    parser.add_argument("--vocab_size", type=int, default=None,
                        help=f"bpe only: total tokens incl. the 256 bytes (default {DEFAULT_BPE_VOCAB})")
    parser.add_argument("--max_chars", type=int, default=DEFAULT_MAX_CHARS,
                        help=f"corpus size in characters (default {DEFAULT_MAX_CHARS:,})")
    parser.add_argument("--out_dir", default=None,
                        help="output folder (default: data/stdlib_<tokenizer>)")
    args = parser.parse_args(argv)

    try:
        if args.vocab_size is not None and args.tokenizer != "bpe":
            raise ValueError(f"--vocab_size only applies to --tokenizer=bpe "
                             f"(got --tokenizer={args.tokenizer})")
        if args.max_chars < 1000:
            raise ValueError(f"--max_chars must be at least 1000, got {args.max_chars}")
        vocab_size = DEFAULT_BPE_VOCAB if args.vocab_size is None else args.vocab_size
        out_dir = args.out_dir or os.path.join(DATA_ROOT, f"stdlib_{args.tokenizer}")
        stdlib_dir = sysconfig.get_paths()["stdlib"]
        text, n_files = build_corpus(stdlib_dir, args.max_chars)
        if not text:
            raise ValueError(f"found no readable .py files under {stdlib_dir}")
        print(f"read {n_files:,} files, {len(text):,} characters from {stdlib_dir}")
        source = (f"python {sys.version_info.major}.{sys.version_info.minor} stdlib source, "
                  f"{n_files} files, {len(text)} chars")
        meta = prepare_dataset(text, out_dir, tokenizer=args.tokenizer, vocab_size=vocab_size,
                               source=source)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    return meta


if __name__ == "__main__":
    main()
