"""sample.py: an empty prompt samples exactly as the prompt "\\n" (char and BPE checkpoints),
a tokenizer without a newline asks for --start, --kv_cache=False prints exactly the text
--kv_cache=True does (past block_size, where the context drops its older half), and every
bad sampling flag is one `error:` line, raised before the checkpoint is read. (Determinism
and the PEFT paths are tested in test_train.py and test_peft.py.)"""

import inspect
import textwrap

import pytest
import torch

import sample
import train
from config import load_config
from errors import UserError
from model import GPT, GPTConfig
from tokenizer import CharTokenizer, prepare_dataset

# a 1-layer, 16-wide model: sampling needs a checkpoint, not a trained one
SMALL = ["--n_layer=1", "--n_head=1", "--n_embd=16", "--block_size=16", "--batch_size=2", "--max_iters=2",
         "--eval_iters=1", "--device=cpu", "--dtype=float32", "--progress=False", "--compile=False"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"char": run folder, "bpe": run folder}: one tiny checkpoint per tokenizer kind."""
    # a tab sorts before "\n", so token 0 of this char vocabulary is "\t": a prompt that
    # fell back to token 0 would show here (in tiny shakespeare's vocabulary, 0 is "\n")
    text = inspect.getsource(textwrap) + "\tan indented line\n"
    out = {}
    for kind in ("char", "bpe"):
        data = str(tmp_path_factory.mktemp(f"{kind}_data"))
        meta = prepare_dataset(text, data, tokenizer=kind, vocab_size=300, verbose=False)
        if kind == "char":
            assert meta["chars"][:2] == "\t\n"
        out[kind] = str(tmp_path_factory.mktemp(f"{kind}_run"))
        train.train(load_config(SMALL + [f"--dataset={data}", f"--out_dir={out[kind]}"]))
    return out


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_an_empty_prompt_samples_exactly_as_the_prompt_newline(runs, kind, capsys):
    common = [f"--out_dir={runs[kind]}", "--num_samples=2", "--max_new_tokens=12", "--seed=5"]
    capsys.readouterr()
    sample.main(common + ["--start="])
    empty = capsys.readouterr().out
    sample.main(common + ["--start=\n"])
    newline = capsys.readouterr().out
    assert empty == newline
    assert empty[0] == "\n"  # not token 0: "\t" (char) or the NUL byte (BPE)
    # the library call too: the decoded text starts with the newline it was prompted with
    model, tok = sample.load_model(runs[kind])
    texts = sample.generate_text(model, tok, "", 1, 12, 0.8, None, seed=5)
    assert texts == sample.generate_text(model, tok, "\n", 1, 12, 0.8, None, seed=5)
    assert texts[0][0] == "\n"


def test_an_empty_prompt_without_a_newline_in_the_vocabulary_asks_for_start():
    tok = CharTokenizer("abc")
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=16, block_size=8, vocab_size=3)).eval()
    with pytest.raises(UserError, match=r"^this checkpoint's tokenizer cannot encode a newline, the start of "
                                        r"an empty prompt; give a prompt with --start=TEXT$"):
        sample.generate_text(model, tok, "", 1, 4, 0.8, None, seed=0)
    assert sample.generate_text(model, tok, "ab", 1, 4, 0.8, None, seed=0)[0][:2] == "ab"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_kv_cache_false_prints_exactly_the_text_of_kv_cache_true(runs, kind, capsys, monkeypatch):
    # 40 new tokens from a block_size=16 model: the context fills and drops its older half
    # (GPT.generate) more than once, and the cache must restart exactly where the recompute does
    seen = []  # the kv_cache each generate call was given: the flag must reach the model
    generate = GPT.generate

    def recording(self, *args, **kwargs):
        seen.append(kwargs["kv_cache"])
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "generate", recording)
    common = [f"--out_dir={runs[kind]}", "--num_samples=2", "--max_new_tokens=40", "--seed=3", "--start=def "]
    capsys.readouterr()
    texts = {}
    for flag in ("--kv_cache=False", "--kv_cache=True", "--kv_cache=false", None):  # None: the default
        sample.main(common + ([flag] if flag else []))
        texts[flag] = capsys.readouterr().out
    assert seen == [False, False, True, True, False, False, True, True]
    assert texts["--kv_cache=False"] == texts["--kv_cache=True"] == texts["--kv_cache=false"] == texts[None]
    assert texts[None].count("---------------") == 2 and len(texts[None]) > 2 * 40  # two samples, 40 tokens each


BAD_FLAGS = {
    "--top_k=-1": "error: --top_k=-1 must be >= 0 (0 samples from the whole vocabulary)",
    "--num_samples=0": "error: --num_samples=0 must be >= 1",
    "--max_new_tokens=0": "error: --max_new_tokens=0 must be >= 1 (each sample adds at least one token to the prompt)",
    "--temperature=-0.5": "error: --temperature=-0.5 must be a finite number >= 0 (0 is greedy)",
    "--temperature=nan": "error: --temperature=nan must be a finite number >= 0 (0 is greedy)",
    "--temperature=inf": "error: --temperature=inf must be a finite number >= 0 (0 is greedy)",
    "--kv_cache=yes": "error: --kv_cache=yes must be True or False",
    "--kv_cache=1": "error: --kv_cache=1 must be True or False",
    "--kv_cache=": "error: --kv_cache= must be True or False",
}


@pytest.mark.parametrize("flag", list(BAD_FLAGS))
def test_a_bad_sampling_flag_is_one_error_line_before_the_checkpoint_is_read(flag, tmp_path, capsys):
    # out_dir holds no checkpoint: had it been read first, the error would say so instead
    with pytest.raises(SystemExit) as e:
        sample.main([f"--out_dir={tmp_path / 'none'}", flag])
    assert e.value.code == 2
    assert capsys.readouterr().err == BAD_FLAGS[flag] + "\n"
