"""
Prepare tiny shakespeare (Karpathy's char-rnn corpus, ~1.1 MB, the one nanoGPT
uses) for training: writes train.bin, val.bin (uint16 token ids) and meta.json.

    python data/shakespeare_char/prepare.py                      # char -> data/shakespeare_char/
    python data/shakespeare_char/prepare.py --tokenizer bpe      # BPE, 2048 tokens -> data/shakespeare_bpe/
    python data/shakespeare_char/prepare.py --tokenizer bpe --vocab_size 4096
    python data/shakespeare_char/prepare.py --tokenizer gpt2     # needs tiktoken's GPT-2 files (network once)
    python data/shakespeare_char/prepare.py --input my.txt --out_dir /tmp/shk
    python data/shakespeare_char/prepare.py --hold_out GLOUCESTER,JULIET  # -> data/shakespeare_voices/

The text comes from, in order: --input PATH; else input.txt beside this
script; else a download of the canonical file, saved as input.txt beside this
script. The split is the first 90% of the characters for training and the last
10% for validation, as in nanoGPT.

Default --vocab_size for bpe is 2048: the corpus is only ~1M characters, so a
larger vocabulary leaves many tokens seen a handful of times and spends model
parameters on embedding rows; 2048 is also a multiple of 64 (GPU friendly).

--hold_out NAME,NAME splits the play text by speaker, for fine-tuning on one character's
voice (experiments/peft_experiment.py): data/shakespeare_voices/base gets every speech except those
characters', and data/shakespeare_voices/<name> each held-out character's own speeches
(each split 90/10 as above). A speech is a block of lines after a blank line whose first
line is "NAME:". All of them share one character vocabulary, taken from the whole text,
so a model trained on one can be fine-tuned on another.

The shared code lives in tokenizer.py at the repo root, which this script
imports by putting the repo root (two folders up) at the front of sys.path,
so it runs from any working directory without installing anything.
"""

import argparse
import os
import sys
import urllib.request

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)
from tokenizer import TOKENIZER_KINDS, CharTokenizer, prepare_dataset  # noqa: E402

DATA_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
HERE = os.path.dirname(os.path.abspath(__file__))
INPUT_PATH = os.path.join(HERE, "input.txt")  # a module constant so tests can point it elsewhere
DATA_ROOT = os.path.dirname(HERE)  # data/, where the default out_dir goes
DEFAULT_BPE_VOCAB = 2048
DOWNLOAD_TIMEOUT_S = 10


def download(url, path, timeout=DOWNLOAD_TIMEOUT_S):
    """Fetch url and save it to path (temp name + rename, so an interrupted
    download never leaves a truncated input.txt behind)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        data = resp.read()
    data.decode("utf-8")  # refuse to save something that is not text
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_text(input_path):
    """The corpus text: --input, else input.txt beside the script, else download.
    Raises ValueError with a one-line message if none of these works."""
    if input_path is not None:
        if not os.path.isfile(input_path):
            raise ValueError(f"--input file not found: {input_path}")
        path = input_path
    else:
        path = INPUT_PATH
        if not os.path.isfile(path):
            print(f"downloading tiny shakespeare from {DATA_URL}")
            try:
                download(DATA_URL, path)
            except (OSError, ValueError) as e:  # URLError, timeouts, bad bytes, unwritable dir
                raise ValueError(
                    f"could not download {DATA_URL} ({e}); provide the text with "
                    f"--input PATH or place input.txt at {path}"
                ) from None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None


def split_speakers(text, names):
    """(the speeches of everyone not in names, {name: that character's speeches}), each a
    text of "NAME:\nlines" blocks joined by blank lines, in the play's order."""
    speeches = [s for s in text.split("\n\n") if s.strip()]
    speaker = [s.split("\n", 1)[0].rstrip(":") for s in speeches]
    for name in names:
        if name not in speaker:
            counts = {}
            for who in speaker:
                counts[who] = counts.get(who, 0) + 1
            top = sorted(counts, key=counts.get, reverse=True)[:8]
            raise ValueError(f"--hold_out: no speech by '{name}'; the most frequent speakers are {', '.join(top)}")
    rest = [s for s, who in zip(speeches, speaker) if who not in names]
    held = {name: [s for s, who in zip(speeches, speaker) if who == name] for name in names}
    return "\n\n".join(rest) + "\n", {n: "\n\n".join(v) + "\n" for n, v in held.items()}


def prepare_voices(text, names, out_root, source):
    """data/shakespeare_voices/{base, <name>...} with one shared character vocabulary."""
    tok = CharTokenizer.from_text(text)  # the whole text's characters: every split gets the same ids
    rest, held = split_speakers(text, names)
    print(f"base: everyone but {', '.join(names)} ({len(rest):,} characters)")
    prepare_dataset(rest, os.path.join(out_root, "base"), tokenizer=tok, source=f"{source}, without {', '.join(names)}")
    for name, part in held.items():
        print(f"{name}: {part.count(name + ':'):,} speeches ({len(part):,} characters)")
        prepare_dataset(part, os.path.join(out_root, name.lower().replace(" ", "_")), tokenizer=tok,
                        source=f"{source}, {name}'s speeches")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare tiny shakespeare for training.")
    parser.add_argument("--input", default=None, help="path to the corpus text "
                        "(default: input.txt beside this script, downloaded if missing)")
    parser.add_argument("--tokenizer", choices=TOKENIZER_KINDS, default="char")
    parser.add_argument("--vocab_size", type=int, default=None,
                        help=f"bpe only: total tokens incl. the 256 bytes (default {DEFAULT_BPE_VOCAB})")
    parser.add_argument("--out_dir", default=None,
                        help="output folder (default: data/shakespeare_<tokenizer>, with --hold_out data/shakespeare_voices)")
    parser.add_argument("--hold_out", default=None,
                        help="comma-separated speakers (e.g. GLOUCESTER,JULIET): write a base dataset without "
                             "their speeches and one dataset of each one's speeches (char tokenizer)")
    args = parser.parse_args(argv)

    try:
        if args.vocab_size is not None and args.tokenizer != "bpe":
            raise ValueError(f"--vocab_size only applies to --tokenizer=bpe "
                             f"(got --tokenizer={args.tokenizer})")
        vocab_size = DEFAULT_BPE_VOCAB if args.vocab_size is None else args.vocab_size
        if args.hold_out is not None and args.tokenizer != "char":
            raise ValueError(f"--hold_out writes character-level datasets; drop --tokenizer={args.tokenizer}")
        out_dir = args.out_dir or os.path.join(DATA_ROOT, f"shakespeare_{args.tokenizer}")
        text, path = read_text(args.input)
        print(f"read {len(text):,} characters from {path}")
        if args.hold_out is not None:
            names = [n.strip() for n in args.hold_out.split(",") if n.strip()]
            out_root = args.out_dir or os.path.join(DATA_ROOT, "shakespeare_voices")
            return prepare_voices(text, names, out_root, source=f"tiny shakespeare ({os.path.basename(path)})")
        meta = prepare_dataset(text, out_dir, tokenizer=args.tokenizer, vocab_size=vocab_size,
                               source=f"tiny shakespeare ({os.path.basename(path)})")
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    return meta


if __name__ == "__main__":
    main()
