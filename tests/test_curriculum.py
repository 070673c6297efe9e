"""Curricula (batches.py, curriculum.py): sequence-length warmup's lengths at known steps and
its constant tokens per step; the difficulty pool, easiest (or hardest) first, growing to every
window; the scorers and their cache; exact resume through train.py for each kind."""

import numpy as np
import pytest
import torch

import train
from batches import DifficultyWindows, RandomWindows, SeqLenWindows, seqlen_at
from config import load_config
from conftest import TINY, exit_code
from test_train import load_state, read_metrics, run_train_subprocess, train_losses


def resumed_equals_straight(common, data, tmp_path):
    """20 steps straight = 10 + resume in a fresh process + 10: every step's loss and every
    weight exactly. Returns the straight run's folder."""
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    run_train_subprocess(common + ["--max_iters=20"], straight, data)
    run_train_subprocess(common + ["--max_iters=10"], split, data)
    run_train_subprocess(["--init_from=resume", "--max_iters=20"], split, data)
    assert train_losses(split) == train_losses(straight)
    a, b = load_state(straight)["model"], load_state(split)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    return straight


def test_seqlen_lengths_at_known_steps():
    # batch 12 x block 64 = 768 tokens: the lengths that are multiples of 8 and divide 768
    allowed = [n for n in range(8, 65, 8) if 768 % n == 0]
    assert allowed == [8, 16, 24, 32, 48, 64]
    at = lambda it, pacing: seqlen_at(it, 8, 64, 100, pacing, 768)
    # linear: 8 + p * 56, rounded down to an allowed length
    assert [at(it, "linear") for it in (0, 25, 50, 75, 99, 100, 500)] == [8, 16, 32, 48, 48, 64, 64]  # 22, 36, 50, 63.4
    # root: 8 + sqrt(p) * 56 (p = 0.04 -> 19.2, 0.25 -> 36, 0.81 -> 58.4)
    assert [at(it, "root") for it in (4, 25, 81)] == [16, 32, 48]
    # step: four stages, 8 + {0, 14, 28, 42} -> 8, 16 (22), 32 (36), 48 (50)
    assert [at(it, "step") for it in (0, 24, 25, 49, 50, 74, 75, 99, 100)] == [8, 8, 16, 16, 32, 32, 48, 48, 64]


@pytest.mark.parametrize("pacing", ["linear", "root", "step"])
def test_seqlen_windows_keep_the_tokens_per_step_and_reach_block_size_at_curriculum_iters(pacing):
    data = np.arange(5000, dtype=np.uint16)  # token i is i: a window's tokens must be consecutive
    w = SeqLenWindows(data, 12, 64, "cpu", 0, 8, 40, pacing)
    lengths = []
    for it in range(45):
        w.it = it
        x, y = w.next()
        assert x.numel() == y.numel() == 12 * 64  # the same tokens per micro-batch at every length
        assert x.shape[1] == w.length() and w.length() % 8 == 0
        assert torch.equal(y, x + 1)  # next-token targets of consecutive windows
        lengths.append(x.shape[1])
    assert lengths[0] == 8 and lengths == sorted(lengths)  # never shrinks
    assert max(lengths[:40]) < 64 and lengths[40:] == [64] * 5  # block_size exactly from curriculum_iters on


def test_random_windows_draw_as_before():
    # the draw was factored out of RandomWindows.next for SeqLenWindows: the same windows as torch.randint gives
    data = np.arange(5000, dtype=np.uint16)
    x, _ = RandomWindows(data, 4, 16, "cpu", 7).next()
    starts = torch.randint(5000 - 16, (4,), generator=torch.Generator().manual_seed(7))
    assert torch.equal(x[:, 0], starts) and torch.equal(x[:, 5], starts + 5)


def test_seqlen_resume_is_bit_for_bit_mid_curriculum(tmp_path, char_dataset):
    common = ["--eval_interval=5", "--eval_iters=2", "--log_interval=1", "--curriculum=seqlen",
              "--curriculum_start_len=8", "--curriculum_iters=16", "--lr_decay_iters=20", "--warmup_iters=3"]
    straight = resumed_equals_straight(common, char_dataset, tmp_path)
    # TINY: batch 4 x block 16 = 64 tokens; lengths 8 and 16 divide it; 8 until 8 + p * 8 reaches 16
    lengths = [r["seq_len"] for r in read_metrics(straight) if "loss" in r]
    assert lengths == [8] * 16 + [16] * 4


def test_seqlen_settings_are_checked(char_dataset, tmp_path, capsys):
    base = TINY + [f"--dataset={char_dataset}", f"--out_dir={tmp_path / 'x'}"]
    for args, says in ((["--curriculum_iters=5"], "curriculum_iters is a setting of curriculum='seqlen'"),
                       (["--curriculum=seqlen", "--curriculum_start_len=12"], "must be a multiple of 8"),
                       (["--curriculum=seqlen", "--curriculum_start_len=24"], "a start length dividing 64"),
                       (["--curriculum=seqlen", "--curriculum_iters=0"], "curriculum_iters=0 must be >= 1")):
        code, err = exit_code(train.main, base + args, capsys)
        assert code == 2 and err.count("\n") == 1 and says in err, err
    load_config(base + ["--curriculum=seqlen", "--curriculum_start_len=16"])  # 16 divides 64 and is <= block 16


# ----------------------------------------------------------------------------------------
# ordering by difficulty


def test_difficulty_draws_from_the_easiest_pool_growing_to_all_and_anti_from_the_hardest():
    T, n = 8, 50
    data = np.arange(n * T + 1, dtype=np.uint16)  # window w holds tokens w*8 .. w*8+8
    scores = np.random.default_rng(0).permutation(n).astype(float)  # window w's difficulty rank
    easy = DifficultyWindows(data, 16, T, "cpu", 0, scores, 0.1, 100, "linear")
    hard = DifficultyWindows(data, 16, T, "cpu", 0, scores, 0.1, 100, "linear", anti=True)
    seen = {}
    for it in (0, 50, 100):
        easy.it = hard.it = it
        ws, hs = set(), set()
        for _ in range(40):
            ws |= set((easy.next()[0][:, 0] // T).tolist())
            hs |= set((hard.next()[0][:, 0] // T).tolist())
        seen[it] = (ws, hs)
    pool0 = {w for w in range(n) if scores[w] < 5}  # 10% of 50: the 5 easiest
    assert seen[0][0] == pool0 and seen[0][1] == {w for w in range(n) if scores[w] >= 45}
    # halfway: 0.1 + 0.5 * 0.9 = 55% -> the 28 easiest (ceil), every one of them drawn in 40 batches
    assert seen[50][0] == {w for w in range(n) if scores[w] < 28}
    assert easy.pool() == n and seen[100][0] == seen[100][1] == set(range(n))  # every window reachable by the end


def test_model_free_scores_rank_repetitive_text_as_easy():
    from curriculum import bigram_scores, zlib_scores

    rng = np.random.default_rng(0)
    T = 64
    repetitive = np.tile(np.arange(4), T // 4 * 20)  # 20 windows of a 4-token cycle
    noise = rng.integers(0, 30, T * 20)  # 20 windows of random tokens
    data = np.concatenate([repetitive, noise, [0]]).astype(np.uint16)
    for scores in (bigram_scores(data, T, 30), zlib_scores(data, T)):
        assert len(scores) == 40 and scores[:20].max() < scores[20:].min()
    # bigram: a window whose every pair has probability 1/2 under the counts scores ln 2
    flip = np.array([0, 1] * 200 + [0], dtype=np.uint16)  # pairs 0->1 and 1->0 only; add-one over V = 2
    assert bigram_scores(flip, 8, 2)[0] == pytest.approx(-np.log(201 / 202))


def test_scores_are_cached_and_refused_when_the_data_or_the_scorer_changed(char_dataset, tmp_path):
    import shutil

    from batches import load_dataset
    from curriculum import load_scores
    from errors import UserError

    data_dir = str(tmp_path / "data")
    shutil.copytree(char_dataset, data_dir)
    train_data, _, meta = load_dataset(data_dir)
    first = load_scores(data_dir, train_data, 16, "zlib", meta["vocab_size"], "cpu")
    again = load_scores(data_dir, train_data, 16, "zlib", meta["vocab_size"], "cpu")  # from the cache
    assert np.array_equal(first, again) and (tmp_path / "data" / "difficulty-zlib-T16.npy").exists()
    changed = np.array(train_data)
    changed[0] += 1
    with pytest.raises(UserError, match="scored on other data"):
        load_scores(data_dir, changed, 16, "zlib", meta["vocab_size"], "cpu")
    # a model scorer: its scores are its per-window loss; another checkpoint in that folder is refused
    ref = str(tmp_path / "ref")
    run_train_subprocess(["--max_iters=2", "--eval_iters=1"], ref, data_dir)
    scores = load_scores(data_dir, train_data, 16, ref, meta["vocab_size"], "cpu")
    from checkpoint import read_checkpoint, restore_model

    model = restore_model(read_checkpoint(f"{ref}/ckpt.pt"), "test").eval()
    w = torch.from_numpy(np.asarray(train_data[3 * 16: 4 * 16 + 1], dtype=np.int64))[None]
    with torch.no_grad():
        assert scores[3] == pytest.approx(model(w[:, :-1], w[:, 1:])[1].item(), rel=1e-5)
    run_train_subprocess(["--init_from=resume", "--max_iters=3", "--eval_iters=1"], ref, data_dir)
    with pytest.raises(UserError, match="scored on another checkpoint"):
        load_scores(data_dir, train_data, 16, ref, meta["vocab_size"], "cpu")


@pytest.mark.parametrize("kind", ["difficulty", "anti"])
def test_difficulty_resume_is_bit_for_bit_mid_curriculum(kind, tmp_path, char_dataset):
    import shutil

    data_dir = str(tmp_path / "data")
    shutil.copytree(char_dataset, data_dir)  # the score cache goes beside the data
    common = ["--eval_interval=5", "--eval_iters=2", "--log_interval=1", f"--curriculum={kind}",
              "--curriculum_iters=16", "--curriculum_start_frac=0.2", "--lr_decay_iters=20", "--warmup_iters=3"]
    straight = resumed_equals_straight(common, data_dir, tmp_path)
    pools = [r["pool"] for r in read_metrics(straight) if "loss" in r]
    assert pools[0] == pytest.approx(0.2, abs=0.01) and pools[-1] == 1.0 and pools == sorted(pools)


# ----------------------------------------------------------------------------------------
# mixtures and stages


def test_mixture_frequencies_match_the_weights_and_stages_switch_at_their_step():
    from batches import MixtureWindows, mixture_at, parse_mixture, parse_stages

    a, b = np.zeros(1000, dtype=np.uint16), np.ones(1000, dtype=np.uint16)  # which dataset a window came from
    base = parse_mixture("a:0.7,b:0.3")
    stages = parse_stages("100:a=1;200:a=0.2,b=0.8", list(base))
    w = MixtureWindows({"a": a, "b": b}, base, stages, 64, 8, "cpu", 0)
    share = lambda: np.mean([w.next()[0][:, 0].float().mean().item() for _ in range(100)])  # b's share
    # 6,400 draws: the standard error of a share is ~0.006; a fixed seed makes the test exact
    assert share() == pytest.approx(0.3, abs=0.02)
    w.it = 99
    assert mixture_at(99, base, stages) == {"a": 0.7, "b": 0.3}
    w.it = 100
    assert share() == 0.0 and w.weights() == {"a": 1.0, "b": 0.0}  # the switch happens at step 100 exactly
    w.it = 250
    assert share() == pytest.approx(0.8, abs=0.02)


def test_mixture_settings_and_a_tokenizer_mismatch_are_one_line_errors(char_dataset, tmp_path, capsys):
    import json
    import shutil

    other = str(tmp_path / "other")
    shutil.copytree(char_dataset, other)
    base = TINY + [f"--out_dir={tmp_path / 'x'}"]
    with open(f"{other}/meta.json") as f:
        meta = json.load(f)
    meta["chars"] = meta["chars"][::-1]  # the same size, another vocabulary
    with open(f"{other}/meta.json", "w") as f:
        json.dump(meta, f)
    for args, says in (([f"--datasets={char_dataset}:1,{other}:1"], "has another tokenizer than"),
                       ([f"--datasets={char_dataset}"], "write NAME:WEIGHT"),
                       ([f"--datasets={char_dataset}:0"], "the weights sum to 0"),
                       (["--stages=5:x=1"], "give --datasets"),
                       ([f"--datasets={char_dataset}:1", "--stages=5:nope=1"], "unknown: nope")):
        code, err = exit_code(train.main, base + args, capsys)
        assert code == 2 and err.count("\n") == 1 and says in err, err


def test_a_mixture_logs_each_datasets_val_loss_and_resumes_bit_for_bit_mid_stage(char_dataset, tmp_path):
    import shutil

    other = str(tmp_path / "other")
    shutil.copytree(char_dataset, other)
    tokens = np.fromfile(f"{other}/train.bin", dtype=np.uint16)
    tokens[::-1].tofile(f"{other}/train.bin")  # the same tokenizer, other text (reversed)
    np.fromfile(f"{other}/val.bin", dtype=np.uint16)[::-1].tofile(f"{other}/val.bin")
    common = ["--eval_interval=5", "--eval_iters=2", "--log_interval=1", f"--datasets={char_dataset}:0.5,{other}:0.5",
              f"--stages=8:{char_dataset}=1", "--lr_decay_iters=20", "--warmup_iters=3"]
    straight = resumed_equals_straight(common, char_dataset, tmp_path)
    rows = read_metrics(straight)
    evals = [r for r in rows if "val_loss" in r]
    assert all(r["val_loss"] == r[f"val_loss_{char_dataset}"] and f"val_loss_{other}" in r for r in evals)
    mixes = [r["mixture"][other] for r in rows if "loss" in r]
    assert mixes == [0.5] * 8 + [0.0] * 12
