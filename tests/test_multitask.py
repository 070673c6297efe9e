"""Multi-task training (multitask.py, data/multitask/prepare.py, batches.check_task_tokens):
a mixture's sampling hits the stated task proportions (counted over many draws, within
four binomial standard deviations); every task's prefix is one token of the shared
tokenizer and starts each example, and a dataset whose prefix is missing (from meta.json,
from the vocabulary or from its data) is refused in one line naming it; the sort generator
is seeded and its held-out questions are unseen; exact match is 1 for an oracle, 0 for a
model that is wrong by one character, and equals one-at-a-time greedy decoding with a real
GPT; the CLI counts a LoRA setup's shared base once. Tiny texts, no network, no ../shared."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import torch

import multitask
import train
from batches import MixtureWindows, load_mixture, parse_mixture
from config import load_config, read_config_file
from conftest import REPO, TINY, exit_code
from errors import UserError
from model import GPT, GPTConfig
from sample import generate_text
from tokenizer import CharTokenizer, tokenizer_from_meta

TASKS = ("shakespeare", "python", "sort")
SPEECH = "{who}:\nNow is the winter of our discontent, made glorious summer by this sun of {n}.\n\n"


def load_prepare():
    spec = importlib.util.spec_from_file_location("multitask_prepare", os.path.join(REPO, "data", "multitask",
                                                                                     "prepare.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """data/multitask's three folders from tiny texts, by the prepare script's own main()."""
    root = tmp_path_factory.mktemp("multitask")
    play = root / "input.txt"
    play.write_text("".join(SPEECH.format(who=("GLOUCESTER", "ANNE", "RICHARD")[n % 3], n=n) for n in range(150)))
    out = str(root / "data")
    # sort questions of 1 to 3 letters: a space small enough that a held-out set drawn without
    # excluding the training questions would repeat some
    load_prepare().main(["--input", str(play), "--python_chars=20000", "--sort_train=1500", "--sort_val=100",
                         "--sort_len=1,3", f"--out_dir={out}"])
    return out


def copy_tasks(tasks, tmp_path):
    out = str(tmp_path / "data")
    shutil.copytree(tasks, out)
    return out


def edit_meta(folder, change):
    path = os.path.join(folder, "meta.json")
    with open(path) as f:
        meta = json.load(f)
    change(meta)
    with open(path, "w") as f:
        json.dump(meta, f, ensure_ascii=False)


def mixture_of(folder, weights=(1, 1, 1)):
    return ",".join(f"{folder}/{t}:{w}" for t, w in zip(TASKS, weights))


# ----------------------------------------------------------------------------------------
# sampling and the data


@pytest.mark.parametrize("stated", ["config", "0.6,0.3,0.1"])
def test_mixture_sampling_hits_the_stated_task_proportions(stated):
    """Each sequence picks its task by the weights: over 64 x 300 = 19,200 draws each task's
    share is within 4 binomial standard deviations (sqrt(p (1 - p) / n), ~0.003) of its
    weight. Each task's data is its own constant token, so a window shows where it came from."""
    if stated == "config":  # the multi-task config's own weights (1:1:1)
        text = read_config_file(os.path.join(REPO, "configs", "multitask.py"))["datasets"]
    else:
        text = ",".join(f"{t}:{w}" for t, w in zip(TASKS, stated.split(",")))
    base = parse_mixture(text)
    names = list(base)
    datas = {n: np.full(500, i, dtype=np.uint16) for i, n in enumerate(names)}
    windows = MixtureWindows(datas, base, [], 64, 8, "cpu", seed=0)
    picks = torch.cat([windows.next()[0][:, 0] for _ in range(300)])
    n = len(picks)
    for i, name in enumerate(names):
        p = base[name] / sum(base.values())
        share = (picks == i).float().mean().item()
        assert abs(share - p) <= 4 * (p * (1 - p) / n) ** 0.5, (name, share, p)


def test_task_prefixes_are_in_the_tokenizer_and_start_every_example(tasks):
    metas = {t: json.load(open(os.path.join(tasks, t, "meta.json"))) for t in TASKS}
    assert {m["task"] for m in metas.values()} == set(TASKS)
    assert all(m["task_tokens"] == multitask.TASK_TOKENS for m in metas.values())
    tok = tokenizer_from_meta(metas["sort"])
    assert all(tokenizer_from_meta(m).chars == tok.chars for m in metas.values())  # one shared vocabulary
    for task, meta in metas.items():
        token = meta["task_tokens"][task]
        assert len(tok.encode(token)) == 1  # one token of the vocabulary, not a string of them
        text = tok.decode(np.fromfile(os.path.join(tasks, task, "train.bin"), dtype=np.uint16).tolist())
        examples = text.split("\n" if task == "sort" else "\n\n")
        assert all(e.startswith(token) for e in examples if e.strip()), task  # every example, speech, block
        others = [v for k, v in meta["task_tokens"].items() if k != task]
        assert not any(o in text for o in others)  # and no other task's prefix
    # sort's val split is held-out questions: none of them in train
    split = {k: tok.decode(np.fromfile(os.path.join(tasks, "sort", f"{k}.bin"), dtype=np.uint16).tolist())
             for k in ("train", "val")}
    token = metas["sort"]["task_tokens"]["sort"]
    val_q = {p for p, _ in multitask.parse_examples(split["val"], token)}
    assert len(val_q) == 100 and not val_q & {p for p, _ in multitask.parse_examples(split["train"], token)}
    # they mix: one tokenizer, every prefix present
    mixture = load_mixture(mixture_of(tasks))
    assert [m["task"] for _, _, m in mixture.values()] == list(TASKS)


@pytest.mark.parametrize("mistake", ["no task", "task without a token", "other task tokens",
                                     "token not in the vocabulary", "token not in the data"])
def test_a_missing_task_prefix_is_refused_in_one_line_naming_the_dataset(tasks, tmp_path, capsys, mistake):
    data = copy_tasks(tasks, tmp_path)
    sort = os.path.join(data, "sort")
    if mistake == "no task":
        edit_meta(sort, lambda m: m.pop("task"))
    elif mistake == "task without a token":
        edit_meta(sort, lambda m: m["task_tokens"].pop("sort"))
    elif mistake == "other task tokens":
        edit_meta(sort, lambda m: m["task_tokens"].update(sort="s"))
    elif mistake == "token not in the vocabulary":  # every dataset agrees on a prefix the vocabulary lacks
        for t in TASKS:
            edit_meta(os.path.join(data, t), lambda m: m["task_tokens"].update(sort="\u2603"))
    else:  # the prefix replaced by "a" in the training split (meta.json unchanged)
        meta = json.load(open(os.path.join(sort, "meta.json")))
        ids = np.fromfile(os.path.join(sort, "train.bin"), dtype=np.uint16)
        ids[ids == meta["chars"].index(meta["task_tokens"]["sort"])] = meta["chars"].index("a")
        ids.tofile(os.path.join(sort, "train.bin"))
    with pytest.raises(UserError, match=f"'{sort}'"):
        load_mixture(mixture_of(data))
    code, err = exit_code(train.main, TINY + [f"--datasets={mixture_of(data)}", f"--out_dir={tmp_path / 'x'}"],
                          capsys)
    assert code == 2 and err.count("\n") == 1 and "data/multitask/prepare.py" in err, err
    assert not os.path.exists(tmp_path / "x" / "ckpt.pt")


def test_a_mixture_without_task_tokens_is_untouched(char_dataset, tmp_path):
    other = str(tmp_path / "other")
    shutil.copytree(char_dataset, other)
    assert list(load_mixture(f"{char_dataset}:1,{other}:2")) == [char_dataset, other]


def test_the_sort_task_is_seeded_sorted_and_its_held_out_questions_unseen():
    a = multitask.sort_examples(300, seed=3)
    assert a == multitask.sort_examples(300, seed=3)
    assert a != multitask.sort_examples(300, seed=4)
    assert all(ans == "".join(sorted(q)) and 3 <= len(q) <= 8 for q, ans in a)
    assert len({q for q, _ in a}) == 300
    # held out: a small space (3 + 9 + 27 strings of 1..3 of "abc"), so that drawing without the
    # exclusion would repeat training questions; with it, train and held-out cover it exactly
    small = dict(min_len=1, max_len=3, alphabet="abc")
    train_q = {q for q, _ in multitask.sort_examples(25, seed=4, **small)}
    held = {q for q, _ in multitask.sort_examples(14, seed=5, exclude=train_q, **small)}
    assert len(train_q) == 25 and len(held) == 14 and not held & train_q
    token = multitask.TASK_TOKENS["sort"]
    assert multitask.parse_examples(multitask.sort_text(a, token), token) == [(token + q + "=", ans) for q, ans in a]
    with pytest.raises(ValueError, match="only 8 strings"):
        multitask.sort_examples(9, seed=0, min_len=3, max_len=3, alphabet="ab")


def test_prefix_coverage_counts_the_windows_that_hold_the_prefix():
    ids = np.random.default_rng(0).integers(0, 6, 400)
    for block in (1, 7, 30):
        brute = np.mean([(ids[s:s + block + 1] == 5).any() for s in range(len(ids) - block)])
        assert multitask.prefix_coverage(ids, 5, block) == pytest.approx(brute)


# ----------------------------------------------------------------------------------------
# exact match


class Writer(torch.nn.Module):
    """A planted "model" whose greedy answer to "<prefix>QUESTION=" is answer(QUESTION),
    then a newline, then padding: exact_match sees only its generate()."""

    def __init__(self, tok, answer):
        super().__init__()
        self.tok, self.answer = tok, answer

    def generate(self, idx, max_new_tokens, temperature=1.0, **_):
        assert temperature == 0.0  # greedy
        rows = []
        for row in idx.tolist():
            question = self.tok.decode(row)[1:-1]
            out = self.tok.encode((self.answer(question) + "\n" + "a" * max_new_tokens)[:max_new_tokens])
            rows.append(row + out)
        return torch.tensor(rows)


def test_exact_match_is_1_for_an_oracle_0_for_a_model_one_character_off_and_counts_each_example():
    token = multitask.TASK_TOKENS["sort"]
    examples = multitask.parse_examples(multitask.sort_text(multitask.sort_examples(300, seed=1), token), token)
    tok = CharTokenizer.from_text(token + "=\n" + multitask.SORT_ALPHABET)
    sort = lambda q: "".join(sorted(q))  # noqa: E731
    assert multitask.exact_match(Writer(tok, sort), tok, examples, batch_size=7) == (1.0, [a for _, a in examples])
    assert multitask.exact_match(Writer(tok, lambda q: sort(q) + "a"), tok, examples)[0] == 0.0  # one letter too many
    assert multitask.exact_match(Writer(tok, lambda q: sort(q)[:-1]), tok, examples)[0] == 0.0  # one too few
    # right on the questions of even length only: the score is exactly their share
    even = lambda q: sort(q) if len(q) % 2 == 0 else sort(q)[::-1] + "z"  # noqa: E731
    share = sum(len(q) % 2 == 0 for q, _ in multitask.sort_examples(300, seed=1)) / 300
    assert multitask.exact_match(Writer(tok, even), tok, examples, batch_size=5)[0] == share


def test_exact_match_equals_greedy_decoding_one_prompt_at_a_time():
    """Batched by prompt length = sample.generate_text's greedy text, one prompt at a time."""
    token = multitask.TASK_TOKENS["sort"]
    examples = multitask.parse_examples(multitask.sort_text(multitask.sort_examples(24, seed=2), token), token)
    tok = CharTokenizer.from_text(token + "=\n" + multitask.SORT_ALPHABET)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    _, preds = multitask.exact_match(model, tok, examples, batch_size=4)
    for (prompt, answer), pred in zip(examples, preds):
        text = generate_text(model, tok, prompt, 1, len(max(examples, key=lambda e: len(e[1]))[1]) + 1, 0.0, None, 0)
        assert pred == text[0][len(prompt):].partition("\n")[0]


# ----------------------------------------------------------------------------------------
# the command


def test_the_cli_reports_every_task_and_counts_a_shared_base_once(tasks, tmp_path, capsys):
    shared, lora = str(tmp_path / "shared"), str(tmp_path / "lora-sort")
    common = TINY + ["--eval_iters=2", "--eval_interval=6", "--max_iters=6", "--warmup_iters=1"]
    train.train(load_config(common + [f"--datasets={mixture_of(tasks)}", f"--out_dir={shared}"]))
    train.train(load_config(common + [f"--datasets={tasks}/sort:1", f"--out_dir={lora}", f"--init_from={shared}",
                                      "--peft=lora", "--lora_r=2", "--lora_targets=c_attn"]))
    rows, total = multitask.main([f"--out_dir={shared}", f"--data={tasks}", "--eval_iters=2", "--max_examples=20"])
    assert [r["task"] for r in rows] == list(TASKS) and 0 <= rows[2]["exact_match"] <= 1
    base = rows[0]["params"]
    assert total == base and all(r["params"] == base for r in rows)
    assert "| sort |" in capsys.readouterr().out
    runs = f"shakespeare:{shared},python:{shared},sort:{lora}"
    rows2, total2 = multitask.main([f"--task_runs={runs}", f"--data={tasks}", "--eval_iters=2", "--max_examples=20"])
    assert rows2[0]["val_loss"] == rows[0]["val_loss"]  # the same model on the same windows
    model, _ = multitask.load_run(lora)
    adapters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert adapters > 0 and rows2[2]["params"] == base + adapters
    assert total2 == base + adapters  # the base once, though two runs stand on it
    code, err = exit_code(multitask.main, [f"--task_runs=chess:{shared}", f"--data={tasks}"], capsys)
    assert code == 2 and err.count("\n") == 1 and "chess:" in err, err
