"""Shared fixtures: a small real corpus (standard-library source, so no network and no
files from outside the repo) prepared as a character-level dataset, and tiny model settings."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# 2 layers, 32 wide: every test model is this size unless it says otherwise
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=4",
        "--dtype=float32", "--device=cpu", "--progress=False", "--compile=False"]


@pytest.fixture(scope="session")
def char_dataset(tmp_path_factory):
    """A char-level dataset (train.bin, val.bin, meta.json) from ~60 KB of stdlib source."""
    import inspect
    import json
    import textwrap
    import string

    from tokenizer import prepare_dataset

    text = "".join(inspect.getsource(m) for m in (json.decoder, textwrap, string))
    out = tmp_path_factory.mktemp("char_dataset")
    prepare_dataset(text, str(out), tokenizer="char")
    return str(out)


def exit_code(main, args, capsys):
    """A command's main(args) as a user runs it: (exit code, what it printed to stderr)."""
    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err
