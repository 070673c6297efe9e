"""
Prepare the multi-task datasets (multitask.py, README "Multi-task training"): three
character-level datasets with ONE shared vocabulary and a prefix character per task,

    data/multitask/shakespeare/   tiny shakespeare, the prefix before every speech
    data/multitask/python/        the standard library's source (as data/stdlib_char), the
                                  prefix before every block between blank lines
    data/multitask/sort/          generated here, seeded: "<prefix>dbca=abcd\\n", one example a
                                  line; the val split is held-out questions, none in train

    python data/multitask/prepare.py --input ../shared/data/tinyshakespeare/input.txt
    python data/multitask/prepare.py                          # input.txt as data/shakespeare_char finds it
    python data/multitask/prepare.py --python_chars 300000 --sort_train 20000   # smaller
    python data/multitask/prepare.py --out_dir /tmp/multitask --seed 7

Each folder holds train.bin, val.bin and meta.json; meta.json adds "task" (the folder's)
and "task_tokens" ({task: prefix}, the same in all three), which train.py's mixtures check
(batches.check_task_tokens) and multitask.py reads. Shakespeare and Python split 90/10 as
every prepare.py does; sort's val split is --sort_val questions drawn apart from the
training ones. The vocabulary is the union of the three texts' characters (with the
prefixes), so a model trained on any of them reads all three. The prefix characters are
removed from the source texts first (they occur in neither today; the count is printed).

Defaults: Shakespeare whole (1,115,394 characters), the first 1,115,394 characters of the
standard library (the curriculum experiment's mixture does the same), and 80,000 sort
examples of 3 to 8 letters (~1.1M characters): three tasks of about one size each.

Tiny shakespeare comes from --input, else input.txt beside data/shakespeare_char/prepare.py,
else a download (that script's read_text); the Python source from data/stdlib_char/prepare.py's
build_corpus. Both are loaded from their files (two scripts named prepare.py cannot both be
imported by name).
"""

import argparse
import importlib.util
import os
import sys
import sysconfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)
from multitask import TASK_TOKENS, prefix_chunks, prefix_coverage, sort_examples, sort_text  # noqa: E402
from tokenizer import CharTokenizer, prepare_dataset  # noqa: E402

DATA_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # data/
SHAKESPEARE_CHARS = 1_115_394  # tiny shakespeare's length: the Python text's default, one size per task


def load_script(name):
    """data/<name>/prepare.py as a module (both are called prepare: import by path)."""
    path = os.path.join(DATA_ROOT, name, "prepare.py")
    spec = importlib.util.spec_from_file_location(f"{name}_prepare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def strip_tokens(text, what):
    """text without any task prefix character (each would read as a task boundary)."""
    found = sum(text.count(t) for t in TASK_TOKENS.values())
    if found:
        print(f"{what}: removed {found} task-prefix characters from the source text")
        for t in TASK_TOKENS.values():
            text = text.replace(t, "")
    return text


def build_texts(shakespeare, python, sort_train, sort_val, sort_len, seed):
    """{task: (train text or whole text, held-out text or None)} with the prefixes in."""
    shakespeare, python = strip_tokens(shakespeare, "shakespeare"), strip_tokens(python, "python")
    train = sort_examples(sort_train, seed, *sort_len)
    val = sort_examples(sort_val, seed + 1, *sort_len, exclude=[q for q, _ in train])
    tok = TASK_TOKENS
    return {"shakespeare": (prefix_chunks(shakespeare, tok["shakespeare"]), None),
            "python": (prefix_chunks(python, tok["python"]), None),
            "sort": (sort_text(train, tok["sort"]), sort_text(val, tok["sort"]))}


def write_datasets(texts, out_root, sources, block_size=64):
    """data/multitask/<task>/ for each task of build_texts, one CharTokenizer for all.
    Returns {task: meta}."""
    everything = "".join(a + (b or "") for a, b in texts.values())
    tok = CharTokenizer.from_text(everything)
    metas = {}
    for task, (text, held_out) in texts.items():
        print(f"--- {task}")
        metas[task] = meta = prepare_dataset(text, os.path.join(out_root, task), tokenizer=tok, val_text=held_out,
                                             source=sources[task],
                                             extra_meta={"task": task, "task_tokens": TASK_TOKENS})
        n_train = meta["train_chars"]
        share = prefix_coverage(tok.encode(text[:n_train]), tok.stoi[TASK_TOKENS[task]], block_size)
        print(f"{text[:n_train].count(TASK_TOKENS[task]):,} prefixed examples in train; "
              f"{100 * share:.0f}% of {block_size}-token training windows hold the prefix")
    return metas


def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare the three multi-task datasets (one shared vocabulary).")
    parser.add_argument("--input", default=None, help="tiny shakespeare's text (default: as data/shakespeare_char/"
                        "prepare.py finds it: input.txt beside it, else a download)")
    parser.add_argument("--python_chars", type=int, default=SHAKESPEARE_CHARS,
                        help=f"characters of standard-library source (default {SHAKESPEARE_CHARS:,})")
    parser.add_argument("--sort_train", type=int, default=80_000, help="sort examples to train on (default 80,000)")
    parser.add_argument("--sort_val", type=int, default=1000, help="held-out sort examples (default 1,000)")
    parser.add_argument("--sort_len", default="3,8", help="MIN,MAX letters of a sort question (default 3,8)")
    parser.add_argument("--seed", type=int, default=1337, help="seeds the sort examples")
    parser.add_argument("--out_dir", default=os.path.join(DATA_ROOT, "multitask"), help="default: data/multitask")
    args = parser.parse_args(argv)

    try:
        try:
            sort_len = tuple(int(x) for x in args.sort_len.split(","))
        except ValueError:
            sort_len = ()
        if len(sort_len) != 2:
            raise ValueError(f"--sort_len={args.sort_len}: write MIN,MAX (e.g. 3,8)")
        if args.python_chars < 1000 or args.sort_train < 10 or args.sort_val < 10:
            raise ValueError("--python_chars must be >= 1000, --sort_train and --sort_val >= 10")
        shakespeare, path = load_script("shakespeare_char").read_text(args.input)
        print(f"read {len(shakespeare):,} characters of tiny shakespeare from {path}")
        stdlib_dir = sysconfig.get_paths()["stdlib"]
        python, n_files = load_script("stdlib_char").build_corpus(stdlib_dir, args.python_chars)
        print(f"read {n_files:,} files, {len(python):,} characters of Python source from {stdlib_dir}")
        texts = build_texts(shakespeare, python, args.sort_train, args.sort_val, sort_len, args.seed)
        sources = {"shakespeare": f"tiny shakespeare ({os.path.basename(path)}), a prefix per speech",
                   "python": f"python {sys.version_info.major}.{sys.version_info.minor} stdlib source, {n_files} "
                             f"files, {len(python)} chars, a prefix per block",
                   "sort": f"sort, seed {args.seed}, {args.sort_train} train and {args.sort_val} held-out "
                           f"examples of {sort_len[0]}..{sort_len[1]} letters"}
        metas = write_datasets(texts, args.out_dir, sources)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(f"vocabulary: {metas['sort']['vocab_size']} characters; task tokens: "
          + ", ".join(f"{t} {c!r}" for t, c in TASK_TOKENS.items()))
    return metas


if __name__ == "__main__":
    main()
