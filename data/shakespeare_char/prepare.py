"""
Prepare tiny shakespeare (Karpathy's char-rnn corpus, ~1.1 MB, the one nanoGPT
uses) for training: writes train.bin, val.bin (uint16 token ids) and meta.json.

    python data/shakespeare_char/prepare.py                      # char -> data/shakespeare_char/
    python data/shakespeare_char/prepare.py --tokenizer bpe      # BPE, 2048 tokens -> data/shakespeare_bpe/
    python data/shakespeare_char/prepare.py --tokenizer bpe --vocab_size 4096
    python data/shakespeare_char/prepare.py --tokenizer gpt2     # needs tiktoken's GPT-2 files (network once)
    python data/shakespeare_char/prepare.py --input my.txt --out_dir /tmp/shk

The text comes from, in order: --input PATH; else input.txt beside this
script; else a download of the canonical file, saved as input.txt beside this
script. The split is the first 90% of the characters for training and the last
10% for validation, as in nanoGPT.

Default --vocab_size for bpe is 2048: the corpus is only ~1M characters, so a
larger vocabulary leaves many tokens seen a handful of times and spends model
parameters on embedding rows; 2048 is also a multiple of 64 (GPU friendly).

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
from tokenizer import TOKENIZER_KINDS, prepare_dataset  # noqa: E402

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


def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare tiny shakespeare for training.")
    parser.add_argument("--input", default=None, help="path to the corpus text "
                        "(default: input.txt beside this script, downloaded if missing)")
    parser.add_argument("--tokenizer", choices=TOKENIZER_KINDS, default="char")
    parser.add_argument("--vocab_size", type=int, default=None,
                        help=f"bpe only: total tokens incl. the 256 bytes (default {DEFAULT_BPE_VOCAB})")
    parser.add_argument("--out_dir", default=None,
                        help="output folder (default: data/shakespeare_<tokenizer>)")
    args = parser.parse_args(argv)

    try:
        if args.vocab_size is not None and args.tokenizer != "bpe":
            raise ValueError(f"--vocab_size only applies to --tokenizer=bpe "
                             f"(got --tokenizer={args.tokenizer})")
        vocab_size = DEFAULT_BPE_VOCAB if args.vocab_size is None else args.vocab_size
        out_dir = args.out_dir or os.path.join(DATA_ROOT, f"shakespeare_{args.tokenizer}")
        text, path = read_text(args.input)
        print(f"read {len(text):,} characters from {path}")
        meta = prepare_dataset(text, out_dir, tokenizer=args.tokenizer, vocab_size=vocab_size,
                               source=f"tiny shakespeare ({os.path.basename(path)})")
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    return meta


if __name__ == "__main__":
    main()
