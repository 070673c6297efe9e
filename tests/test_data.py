"""
Tests for tokenizer.py and the data/*/prepare.py scripts. CPU only, no network
(downloads are made to fail on purpose), outputs go to pytest's tmp_path.

    python -m pytest -q tests/test_data.py
"""

import importlib.util
import json
import os
import sys
import sysconfig

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
import tokenizer as T  # noqa: E402

STDLIB = sysconfig.get_paths()["stdlib"]

VARIED_TEXT = (
    "ROMEO: I'll say it's 42, she'd've said 3.14159!\n\n"
    "    indented    runs   of spaces\t\ttabs\r\nwindows line\n"
    "Ünïcödé: naïve café, 日本語のテキスト, emoji 🙂👍🏽, Ελληνικά, русский.\n"
    "we're they've you'll I'm 1234567890 x=y+1; f(a, b) -> [c] {d}\n   \n"
)


def load_script(rel_path, name):
    """Import a data/*/prepare.py script as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, rel_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stdlib_text(names, n_chars):
    """A few tens of KB of real text: stdlib source files read directly."""
    text = ""
    for name in names:
        with open(os.path.join(STDLIB, name), encoding="utf-8") as f:
            text += f.read()
    return text[:n_chars]


# -----------------------------------------------------------------------------
# char tokenizer

def test_char_roundtrip():
    text = "hello, world!\nHELLO?  é\t"
    tok = T.CharTokenizer.from_text(text)
    assert tok.chars == "".join(sorted(set(text)))
    assert tok.vocab_size == len(set(text)) and tok.kind == "char"
    ids = tok.encode("hello world")
    assert ids == [tok.chars.index(c) for c in "hello world"]
    assert tok.decode(ids) == "hello world"
    assert tok.decode(tok.encode(text)) == text


def test_char_unknown_character_and_id():
    tok = T.CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="'z' is not in this char vocabulary"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="token id 3 is out of range"):
        tok.decode([0, 3])


# -----------------------------------------------------------------------------
# BPE

def test_bpe_wikipedia_example():
    # en.wikipedia.org/wiki/Byte_pair_encoding: aa -> Z, ab -> Y, ZY -> X.
    # The second merge is a tie (Za and ab both occur twice); our rule picks the
    # pair with the smaller bytes, (b"a", b"b") < (b"aa", b"a"), as Wikipedia does.
    ranks = T.train_bpe("aaabdaaabac", 256 + 3)
    by_rank = {r: b for b, r in ranks.items()}
    assert [by_rank[r] for r in (256, 257, 258)] == [b"aa", b"ab", b"aaab"]
    enc = T.make_tiktoken_encoding(ranks)
    assert enc.encode_ordinary("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert T.bpe_encode_reference("aaabdaaabac", ranks) == [258, 100, 258, 97, 99]


def test_bpe_roundtrip_varied_text():
    train = VARIED_TEXT * 3 + stdlib_text(["textwrap.py"], 10_000)
    tok = T.BPETokenizer.train(train, 256 + 200)
    assert tok.vocab_size == 456 and tok.kind == "bpe"
    for text in (VARIED_TEXT, "unseen: Ωmega ∑ 𝔘 \u00a0nbsp\u3000ideographic\n", "", " ", "\n\n\n"):
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    assert len(tok.encode(VARIED_TEXT)) < len(VARIED_TEXT.encode("utf-8"))  # it compresses
    with pytest.raises(ValueError, match="token id 456 is out of range"):
        tok.decode([1, 456])


def test_tiktoken_matches_reference():
    train = stdlib_text(["textwrap.py", "string.py", "json/decoder.py"], 40_000)
    ranks = T.train_bpe(train, 256 + 500)
    enc = T.make_tiktoken_encoding(ranks)
    unseen = stdlib_text(["argparse.py"], 15_000)
    texts = [train[:8_000], unseen, VARIED_TEXT, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbb",
             "    def __init__(self, *args, **kwargs):\n        return None\n"]
    for text in texts:
        ids = enc.encode_ordinary(text)
        assert ids == T.bpe_encode_reference(text, ranks)
        assert enc.decode(ids) == text


def test_train_bpe_deterministic_and_bijective():
    text = stdlib_text(["string.py"], 20_000) + VARIED_TEXT
    a = T.train_bpe(text, 256 + 300)
    b = T.train_bpe(text, 256 + 300)
    assert list(a.items()) == list(b.items())
    assert sorted(a.values()) == list(range(len(a))) and len(a) == 556
    assert all(a[bytes([i])] == i for i in range(256))
    # every learned token is the concatenation of two lower-ranked tokens
    by_rank = {r: t for t, r in a.items()}
    for r in range(256, len(a)):
        t = by_rank[r]
        assert any(a.get(t[:k], r) < r and a.get(t[k:], r) < r for k in range(1, len(t)))


def test_train_bpe_small_vocab_and_exhaustion():
    with pytest.raises(ValueError, match="at least 256"):
        T.train_bpe("hello", 100)
    assert len(T.train_bpe("hello", 256)) == 256
    # "ab" can only produce one merge: training stops early instead of looping
    assert len(T.train_bpe("ab", 300)) == 257


def test_gpt2_offline_error(monkeypatch):
    def offline(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")
    monkeypatch.setattr(T.tiktoken, "get_encoding", offline)
    with pytest.raises(RuntimeError, match="could not load the GPT-2 vocabulary.*--tokenizer=bpe"):
        T.tokenizer_from_meta({"tokenizer": "gpt2", "vocab_size": 50257})


# -----------------------------------------------------------------------------
# prepare_dataset and meta.json

def test_prepare_dataset_char(tmp_path):
    text = VARIED_TEXT * 20
    meta = T.prepare_dataset(text, str(tmp_path), tokenizer="char", verbose=False)
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "val.bin", dtype=np.uint16)
    n_train = int(len(text) * 0.9)
    assert len(train) == n_train and len(val) == len(text) - n_train
    assert meta["train_tokens"] == len(train) and meta["val_tokens"] == len(val)

    on_disk = T.load_meta(str(tmp_path))
    assert on_disk == json.loads(json.dumps(meta))
    assert on_disk["tokenizer"] == "char" and on_disk["vocab_size"] == len(set(text))
    tok = T.tokenizer_from_meta(on_disk)
    assert tok.decode(train.tolist()) + tok.decode(val.tolist()) == text


def test_prepare_dataset_bpe_meta_roundtrip(tmp_path):
    text = stdlib_text(["textwrap.py"], 20_000) + VARIED_TEXT
    meta = T.prepare_dataset(text, str(tmp_path), tokenizer="bpe", vocab_size=400, verbose=False)
    assert meta["vocab_size"] == 400 and len(meta["merged_tokens"]) == 144
    tok = T.tokenizer_from_meta(T.load_meta(str(tmp_path)))
    n_train = int(len(text) * 0.9)
    # the vocabulary was trained on the train split only
    assert tok.ranks == T.train_bpe(text[:n_train], 400)
    val = np.fromfile(tmp_path / "val.bin", dtype=np.uint16)
    assert tok.decode(val.tolist()) == text[n_train:]


def test_prepare_dataset_bad_input(tmp_path):
    with pytest.raises(ValueError, match="between 256 and"):
        T.prepare_dataset("hello world " * 10, str(tmp_path), tokenizer="bpe", vocab_size=100)
    with pytest.raises(ValueError, match="unknown tokenizer 'words'"):
        T.prepare_dataset("hello world " * 10, str(tmp_path), tokenizer="words")
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        T.load_meta(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="unknown tokenizer"):
        T.tokenizer_from_meta({"tokenizer": "words", "vocab_size": 3})
    with pytest.raises(ValueError, match="needs the field.*chars"):
        T.tokenizer_from_meta({"tokenizer": "char", "vocab_size": 3})


# -----------------------------------------------------------------------------
# the prepare scripts

def test_shakespeare_prepare_offline_without_input(tmp_path, monkeypatch, capsys):
    prep = load_script("data/shakespeare_char/prepare.py", "shakespeare_prepare")
    monkeypatch.setattr(prep, "INPUT_PATH", str(tmp_path / "missing" / "input.txt"))

    def offline(url, path, timeout=None):  # what urllib raises with no network (URLError is an OSError)
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(prep, "download", offline)
    with pytest.raises(SystemExit) as exc:
        prep.main(["--out_dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--input" in err and "input.txt" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()

    # a missing --input file is a clear error too
    with pytest.raises(SystemExit) as exc:
        prep.main(["--input", str(tmp_path / "nope.txt"), "--out_dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert "--input file not found" in capsys.readouterr().err


def test_shakespeare_prepare_with_input(tmp_path, capsys):
    prep = load_script("data/shakespeare_char/prepare.py", "shakespeare_prepare")
    src = tmp_path / "play.txt"
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 50
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "bpe"
    meta = prep.main(["--input", str(src), "--tokenizer", "bpe", "--vocab_size", "300",
                      "--out_dir", str(out)])
    assert str(out) in capsys.readouterr().out
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] <= 300
    tok = T.tokenizer_from_meta(T.load_meta(str(out)))
    ids = np.concatenate([np.fromfile(out / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    # train and val are encoded separately, so decoding their concatenation gives the text back
    assert tok.decode(ids.tolist()) == text

    # --vocab_size is only meaningful for bpe
    with pytest.raises(SystemExit) as exc:
        prep.main(["--input", str(src), "--vocab_size", "300", "--out_dir", str(out)])
    assert exc.value.code == 2 and "--vocab_size only applies" in capsys.readouterr().err


def test_stdlib_prepare(tmp_path, capsys):
    prep = load_script("data/stdlib_char/prepare.py", "stdlib_prepare")
    files = prep.stdlib_source_files(STDLIB)
    assert files == sorted(files) and files
    assert not any(part in prep.SKIP_DIRS for f in files for part in f.split("/")[:-1])

    meta = prep.main(["--max_chars", "200000", "--out_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "files" in out and str(tmp_path) in out
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "val.bin", dtype=np.uint16)
    assert len(train) == 180_000 and len(val) == 20_000
    assert meta["train_tokens"] == 180_000 and meta["tokenizer"] == "char"
    tok = T.tokenizer_from_meta(T.load_meta(str(tmp_path)))
    text = tok.decode(train.tolist())
    assert text.startswith("# file: ") and text == prep.build_corpus(STDLIB, 200_000)[0][:180_000]
