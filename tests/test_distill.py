"""distill.py: KD losses are 0 for student = teacher and equal their definitions; forward
KL's gradient is T (p_s - p_t) / N; kd_alpha = 0 with a teacher trains exactly as plain
training; the top-k cache with k = vocab equals online KD, and with small k follows its
documented tail handling; cached logits line up with the student's batches; a vocabulary
mismatch is a clear error; the teacher gets no gradients and stays unchanged."""

import os

import numpy as np
import pytest
import torch

import distill
import train
from batches import RandomWindows, load_dataset
from config import load_config
from conftest import TINY, exit_code
from distill import kd_loss, kd_loss_topk
from errors import UserError
from step import forward_backward


def logits_pair(seed=0, shape=(3, 5, 11)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 2, torch.randn(shape, generator=g) * 2


def reference(s, t, T, kind, beta=0.5):
    """The definitions, written out with probabilities."""
    p = torch.softmax(t.double() / T, -1)
    q = torch.softmax(s.double() / T, -1)
    kl = lambda a, b: (a * (a.log() - b.log())).sum(-1)  # noqa: E731
    if kind == "forward_kl":
        d = kl(p, q)
    elif kind == "reverse_kl":
        d = kl(q, p)
    else:
        m = beta * p + (1 - beta) * q
        d = beta * kl(p, m) + (1 - beta) * kl(q, m)
    return d.mean() * T * T


@pytest.mark.parametrize("kind", distill.KD_KINDS)
def test_kd_loss_is_zero_for_student_equal_teacher_and_matches_the_definition(kind):
    s, t = logits_pair()
    assert kd_loss(t, t, 2.0, kind).item() == pytest.approx(0.0, abs=1e-6)
    for T in (1.0, 2.0, 4.0):
        got = kd_loss(s, t, T, kind, beta=0.3)
        torch.testing.assert_close(got.double(), reference(s, t, T, kind, 0.3), rtol=1e-5, atol=1e-6)
    # the mask drops positions from the mean
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[:, 2:] = False
    torch.testing.assert_close(kd_loss(s, t, 1.0, kind, mask=mask).double(),
                               reference(s[:, :2], t[:, :2], 1.0, kind), rtol=1e-5, atol=1e-6)


def test_forward_kl_gradient_is_T_times_p_s_minus_p_t_over_N():
    s, t = logits_pair(1)
    s.requires_grad_(True)
    T = 3.0
    kd_loss(s, t, T, "forward_kl").backward()
    N = s.shape[0] * s.shape[1]
    expected = T * (torch.softmax(s.detach() / T, -1) - torch.softmax(t / T, -1)) / N
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", distill.KD_KINDS)
def test_topk_with_the_whole_vocabulary_equals_full_kd_and_small_k_renormalises(kind):
    s, t = logits_pair(2)
    v, i = t.topk(t.shape[-1], dim=-1)
    torch.testing.assert_close(kd_loss_topk(s, v, i, 2.0, kind), kd_loss(s, t, 2.0, kind), rtol=1e-5, atol=1e-6)
    # k = 3: the teacher renormalised over its top 3; forward KL against the student's full log-probs there
    v, i = t.topk(3, dim=-1)
    p = torch.softmax(v / 2.0, -1)
    log_q = torch.log_softmax(s / 2.0, -1).gather(-1, i)
    if kind == "forward_kl":
        expected = (p * (p.log() - log_q)).sum(-1).mean() * 4
        torch.testing.assert_close(kd_loss_topk(s, v, i, 2.0, kind), expected, rtol=1e-5, atol=1e-6)
    else:  # both renormalised over the same 3 tokens: equal to full KD on 3-token distributions
        sub = kd_loss(log_q * 2.0, v, 2.0, kind)  # log_softmax(log_q) = log_q renormalised
        torch.testing.assert_close(kd_loss_topk(s, v, i, 2.0, kind), sub, rtol=1e-5, atol=1e-6)


def bucketed_reference(s, t, k, T, kind, beta=0.5):
    """The "other" bucket by definition: both distributions collapsed onto the teacher's top k
    tokens plus one outcome for all the rest, with probabilities summed over the full vocabulary."""
    p = torch.softmax(t.double() / T, -1)
    q = torch.softmax(s.double() / T, -1)
    i = t.topk(k, dim=-1).indices
    collapse = lambda a: torch.cat([a.gather(-1, i), 1 - a.gather(-1, i).sum(-1, keepdim=True)], -1)  # noqa: E731
    return reference(collapse(q).log() * T, collapse(p).log() * T, T, kind, beta)


@pytest.mark.parametrize("kind", distill.KD_KINDS)
def test_topk_with_the_other_bucket_is_the_collapsed_distribution_and_exact_for_a_one_token_tail(kind):
    s, t = logits_pair(3)
    V = t.shape[-1]
    for k in (3, V - 1):
        v, i = t.topk(k, dim=-1)
        rest = t.scatter(-1, i, float("-inf"))
        for T in (1.0, 2.0):
            tail = torch.logsumexp(rest / T, -1)
            got = kd_loss_topk(s, v, i, T, kind, beta=0.3, tail_logsumexp=tail)
            torch.testing.assert_close(got.double(), bucketed_reference(s, t, k, T, kind, 0.3), rtol=1e-5, atol=1e-6)
            if k == V - 1:  # a tail of one token is known exactly: the full KD loss
                torch.testing.assert_close(got, kd_loss(s, t, T, kind, beta=0.3), rtol=1e-5, atol=1e-6)
    # the bucket keeps the tail's mass, renormalising drops it: they differ for small k
    v, i = t.topk(3, dim=-1)
    tail = torch.logsumexp(t.scatter(-1, i, float("-inf")) / 2.0, -1)
    assert abs(kd_loss_topk(s, v, i, 2.0, kind, tail_logsumexp=tail) - kd_loss_topk(s, v, i, 2.0, kind)) > 1e-2


# ----------------------------------------------------------------------------------------
# through train.py


def run(args, out_dir, dataset):
    return train.train(load_config(TINY + [f"--dataset={dataset}", f"--out_dir={out_dir}", "--eval_iters=2"] + args))


@pytest.fixture(scope="module")
def teacher_run(char_dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("distill") / "teacher")
    run(["--max_iters=20", "--eval_interval=20", "--learning_rate=3e-3", "--n_embd=48"], out, char_dataset)
    return out


def test_kd_alpha_zero_with_a_teacher_trains_exactly_like_plain_training(teacher_run, char_dataset, tmp_path):
    args = ["--max_iters=5", "--eval_interval=5", "--log_interval=1", "--dropout=0.1"]
    run(args, str(tmp_path / "plain"), char_dataset)
    run(args + [f"--teacher={teacher_run}", "--kd_alpha=0"], str(tmp_path / "kd0"), char_dataset)
    a = torch.load(tmp_path / "plain" / "ckpt.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "kd0" / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [r for r in train_rows(tmp_path / "kd0")]
    assert all("kd" in r and r["kd"] > 0 and r["ce"] == r["loss"] for r in rows)  # logged, weighted 0


def train_rows(out):
    import json

    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if '"loss"' in line]


def test_teacher_gets_no_gradients_and_stays_unchanged(teacher_run, char_dataset, tmp_path):
    before = torch.load(os.path.join(teacher_run, "ckpt.pt"), weights_only=True)["model"]
    _, _, meta = load_dataset(char_dataset)
    teacher, _ = distill.load_teacher(teacher_run, meta)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    run(["--max_iters=4", "--eval_interval=4", f"--teacher={teacher_run}", "--kd_alpha=0.9", "--kd_temperature=2"],
        str(tmp_path / "student"), char_dataset)
    after = torch.load(os.path.join(teacher_run, "ckpt.pt"), weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    rows = train_rows(tmp_path / "student")
    assert all(abs(r["loss"] - (0.9 * r["kd"] + 0.1 * r["ce"])) < 1e-5 for r in rows)


def test_cache_lines_up_with_the_students_batches_and_trains(teacher_run, char_dataset, tmp_path):
    data, _, meta = load_dataset(char_dataset)
    cache_dir = str(tmp_path / "cache")
    m = distill.build_cache(teacher_run, data, meta, cache_dir, k=meta["vocab_size"], batch_size=7)
    teacher, _ = distill.load_teacher(teacher_run, meta)
    cache = distill.CachedTeacher(cache_dir, meta, m["block_size"])
    windows = distill.AlignedWindows(data, 4, m["block_size"], "cpu", 0, cache.n_windows)
    x, y = windows.next()
    v, i, tail = cache.lookup(windows.last_starts, "cpu")
    assert tail is None  # every logit cached: no tail
    with torch.no_grad():
        logits, _ = teacher(x)
    ref_v, ref_i = logits.topk(v.shape[-1], dim=-1)
    torch.testing.assert_close(v, ref_v.half().float(), rtol=0, atol=0)  # the fp16 values of these very positions
    assert torch.equal(x[:, 1:], y[:, :-1]) and int(windows.last_starts[0]) % m["block_size"] == 0
    # with k = vocab, the cached KD equals the online KD on the same batch, up to fp16 rounding
    s = torch.randn_like(logits)
    torch.testing.assert_close(kd_loss_topk(s, v, i, 2.0), kd_loss(s, logits, 2.0), rtol=2e-3, atol=2e-4)
    # a student trains from it, with a small k
    row = run([f"--soft_labels={cache_dir}", "--kd_alpha=0.5", "--kd_top_k=8", "--max_iters=3", "--eval_interval=3"],
              str(tmp_path / "student"), char_dataset)
    assert np.isfinite(row["val_loss"])
    with pytest.raises(UserError, match="holds windows of 16 tokens; train the student with block_size=16"):
        run([f"--soft_labels={cache_dir}", "--kd_alpha=0.5", "--block_size=8", "--max_iters=1"],
            str(tmp_path / "bad"), char_dataset)


def test_cached_tail_mass_equals_the_teachers_at_every_k(teacher_run, char_dataset, tmp_path):
    """The bucket's tail from a k = 8 cache (stored tail.f32) and from a full cache cut to
    k = 8 (its cached logits past 8) both equal the teacher's own mass outside its top 8."""
    data, _, meta = load_dataset(char_dataset)
    V = meta["vocab_size"]
    small = distill.build_cache(teacher_run, data, meta, str(tmp_path / "k8"), k=8, tail_temperatures=[1, 2])
    distill.build_cache(teacher_run, data, meta, str(tmp_path / "all"), k=V, tail_temperatures=[])
    teacher, _ = distill.load_teacher(teacher_run, meta)
    a = distill.CachedTeacher(str(tmp_path / "k8"), meta, small["block_size"], tail="bucket", temperature=2.0)
    b = distill.CachedTeacher(str(tmp_path / "all"), meta, small["block_size"], k=8, tail="bucket", temperature=2.0)
    windows = distill.AlignedWindows(data, 3, small["block_size"], "cpu", 1, a.n_windows)
    x, _ = windows.next()
    with torch.no_grad():
        logits, _ = teacher(x)
    i = logits.topk(8, dim=-1).indices
    expected = torch.logsumexp(logits.scatter(-1, i, float("-inf")) / 2.0, -1)
    va, ia, ta = a.lookup(windows.last_starts, "cpu")
    vb, ib, tb = b.lookup(windows.last_starts, "cpu")
    assert torch.equal(ia, i) and torch.equal(ib, i) and torch.equal(va, vb)
    torch.testing.assert_close(ta, expected, rtol=0, atol=1e-5)  # stored in fp32
    torch.testing.assert_close(tb, expected, rtol=0, atol=5e-3)  # summed from fp16 logits
    # renorm needs no tail; a temperature the cache has no tail for is a clear error
    assert distill.CachedTeacher(str(tmp_path / "k8"), meta, 16, tail="renorm", temperature=3.0).lookup(
        windows.last_starts, "cpu")[2] is None
    with pytest.raises(ValueError, match=r"kd_tail=bucket at kd_temperature=3: .* for T in \[1.0, 2.0\]; remake it "
                                         r"with --tail_temperatures including 3, or set kd_tail=renorm"):
        distill.CachedTeacher(str(tmp_path / "k8"), meta, 16, tail="bucket", temperature=3.0)
    # the full cache needs no stored tail at any T: its logits past k are the tail
    assert distill.CachedTeacher(str(tmp_path / "all"), meta, 16, k=8, temperature=3.0).tail_column is None


def test_vocabulary_mismatch_is_a_clear_error(teacher_run, tmp_path):
    from tokenizer import prepare_dataset

    other = str(tmp_path / "other")
    prepare_dataset("abc def ghi\n" * 500, other, tokenizer="char", verbose=False)
    with pytest.raises(UserError, match=r"another vocabulary than the student's data: teacher char tokenizer "
                                              r"with vocab_size=\d+, data char tokenizer with vocab_size=11"):
        run([f"--teacher={teacher_run}", "--kd_alpha=0.5", "--max_iters=1"], str(tmp_path / "s"), other)


def test_kd_config_errors():
    with pytest.raises(UserError, match="kd_alpha=0.5 needs soft labels"):
        load_config(["--kd_alpha=0.5"])
    with pytest.raises(UserError, match="give one"):
        load_config(["--kd_alpha=0.5", "--teacher=a", "--soft_labels=b"])
    with pytest.raises(UserError, match=r"kd_alpha=1.5 must be in \[0, 1\]"):
        load_config(["--kd_alpha=1.5", "--teacher=a"])


@pytest.mark.parametrize("source", ["online", "cache"])
def test_the_kd_term_reaches_the_students_gradients(teacher_run, char_dataset, tmp_path, source):
    """With kd_alpha = 1 the step's gradient is the gradient of kd_loss against the teacher's
    logits, computed here directly (a KD term computed under no_grad would give zeros)."""
    from model import GPT, GPTConfig

    data, _, meta = load_dataset(char_dataset)
    kd = load_config(["--kd_alpha=1", f"--teacher={teacher_run}", "--kd_temperature=2"]).kd
    teacher_model, _ = distill.load_teacher(teacher_run, meta)
    if source == "online":
        teacher = distill.OnlineTeacher(teacher_model)
        windows = RandomWindows(data, 4, 16, "cpu", 0)
    else:
        distill.build_cache(teacher_run, data, meta, str(tmp_path / "c"), k=meta["vocab_size"])
        teacher = distill.CachedTeacher(str(tmp_path / "c"), meta, 16)
        windows = distill.AlignedWindows(data, 4, 16, "cpu", 0, teacher.n_windows)
    torch.manual_seed(0)
    student = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=meta["vocab_size"]))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    forward_backward(student, windows, torch.autocast("cpu", enabled=False), scaler, 1, teacher, kd)
    got = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()
    windows.generator.manual_seed(0)
    x, y = windows.next()
    with torch.no_grad():
        t_logits, _ = teacher_model(x)
    kd_loss(student(x)[0], t_logits, 2.0).backward()
    for n, p in student.named_parameters():
        assert got[n].abs().sum() > 0, n
        torch.testing.assert_close(got[n], p.grad, rtol=1e-3, atol=1e-5)  # cache: fp16 logits


# ----------------------------------------------------------------------------------------
# mismatches refused before any file is written; an MoE student keeps its routing losses


def test_an_online_teacher_with_a_shorter_context_is_refused_before_any_file(teacher_run, char_dataset, tmp_path,
                                                                              capsys):
    out = tmp_path / "student"
    code, err = exit_code(train.main, TINY + [f"--dataset={char_dataset}", f"--out_dir={out}", "--block_size=32",
                                       f"--teacher={teacher_run}", "--kd_alpha=0.5", "--max_iters=2"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "reads at most 16 tokens of context, the student 32" in err and "block_size <= 16" in err
    assert not out.exists()  # no config.json, metrics.jsonl or ckpt.pt


def test_a_cache_made_on_other_data_with_the_same_tokenizer_is_refused(teacher_run, char_dataset, tmp_path, capsys):
    import json
    import shutil

    data, _, meta = load_dataset(char_dataset)
    cache = str(tmp_path / "cache")
    distill.build_cache(teacher_run, data, meta, cache, k=8, tail_temperatures=[1.0])
    # another text in the same vocabulary: the same tokens in reverse order
    other = tmp_path / "other"
    shutil.copytree(char_dataset, other)
    np.asarray(data)[::-1].copy().tofile(other / "train.bin")
    args = TINY + [f"--soft_labels={cache}", "--kd_alpha=0.5", "--max_iters=1", "--eval_iters=1"]
    code, err = exit_code(train.main, args + [f"--dataset={other}", f"--out_dir={tmp_path / 'a'}"], capsys)
    assert code == 2 and "was made on another training split" in err and "remake it" in err, err
    assert not (tmp_path / "a").exists()
    # the data it was made on is accepted
    code, err = exit_code(train.main, args + [f"--dataset={char_dataset}", f"--out_dir={tmp_path / 'b'}"], capsys)
    assert code == 0, err
    # a cache that does not say what it was made on cannot be checked: refused too
    with open(os.path.join(cache, "meta.json")) as f:
        m = json.load(f)
    del m["data_sha256"]
    with open(os.path.join(cache, "meta.json"), "w") as f:
        json.dump(m, f)
    code, err = exit_code(train.main, args + [f"--dataset={char_dataset}", f"--out_dir={tmp_path / 'c'}"], capsys)
    assert code == 2 and "does not record which data" in err, err


MOE_STUDENT = ["--moe_num_experts=4", "--moe_top_k=2", "--moe_aux_loss_coef=1.0", "--moe_z_loss_coef=0.1"]


@pytest.mark.parametrize("alpha", [0.9, 1.0])
def test_an_moe_students_routing_losses_keep_their_weight_under_kd(teacher_run, char_dataset, alpha):
    """The objective is alpha KD + (1 - alpha) CE + aux: the balancing and z losses are not
    scaled by 1 - alpha (at alpha = 1 they would vanish). Reference gradients come from
    the model's summed loss, with its CE computed here from the logits."""
    from torch.nn import functional as F

    from model import GPT

    data, _, meta = load_dataset(char_dataset)
    cfg = load_config(TINY + MOE_STUDENT + [f"--kd_alpha={alpha}", f"--teacher={teacher_run}", "--kd_temperature=2"])
    cfg.model.vocab_size = meta["vocab_size"]
    teacher_model, _ = distill.load_teacher(teacher_run, meta)
    torch.manual_seed(0)
    student = GPT(cfg.model)
    windows = RandomWindows(data, 4, 16, "cpu", 0)
    forward_backward(student, windows, torch.autocast("cpu", enabled=False), torch.amp.GradScaler("cpu", enabled=False),
                     1, distill.OnlineTeacher(teacher_model), cfg.kd)
    got = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()
    windows.generator.manual_seed(0)
    x, y = windows.next()
    with torch.no_grad():
        t_logits, _ = teacher_model(x)
    logits, total = student(x, y)  # CE + aux
    ce = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
    aux = total - ce
    assert aux.item() > 0.5  # the balancing loss at coefficient 1 is ~1
    (alpha * kd_loss(logits, t_logits, 2.0) + (1 - alpha) * ce + aux).backward()
    for n, p in student.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)


def test_an_moe_student_logs_ce_kd_and_its_routing_losses_apart(teacher_run, char_dataset, tmp_path):
    import json

    out = tmp_path / "student"
    run(MOE_STUDENT + ["--max_iters=3", "--eval_interval=3", "--log_interval=1", f"--teacher={teacher_run}",
                       "--kd_alpha=0.7", "--gradient_accumulation_steps=2"], str(out), char_dataset)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl") if '"loss"' in line]
    assert len(rows) == 3
    for r in rows:
        assert {"ce", "kd", "moe_loss", "aux_loss", "z_loss", "load"} <= set(r)
        # the logged loss is exactly the objective, from its logged parts; ce is the CE alone
        assert r["loss"] == pytest.approx(0.7 * r["kd"] + 0.3 * r["ce"] + r["moe_loss"], abs=1e-5)
        assert r["moe_loss"] > 0.5 and abs(r["loss"] - (0.7 * r["kd"] + 0.3 * (r["ce"] + r["moe_loss"]))) > 0.3


# ----------------------------------------------------------------------------------------
# sequence-level KD: distill.py generate


def test_the_teacher_writes_a_dataset_a_student_trains_on(teacher_run, char_dataset, tmp_path, capsys):
    from tokenizer import prepare_dataset, same_tokenizer, tokenizer_from_meta

    out, again = str(tmp_path / "seqkd"), str(tmp_path / "again")
    argv = ["generate", f"--teacher={teacher_run}", "--tokens=600", "--prompt_len=4", "--batch_size=8", "--seed=3"]
    assert exit_code(distill.main, argv + [f"--out={out}"], capsys)[0] == 0
    train_split, val_split, meta = load_dataset(out)  # counts, ids and meta.json all checked there
    teacher_meta = torch.load(os.path.join(teacher_run, "ckpt.pt"), weights_only=True)["meta"]
    assert same_tokenizer(meta, teacher_meta) and "teacher-generated" in meta["source"]
    # 8 samples of 16 tokens per batch (4 real, 12 generated), joined by newlines: at least 600 tokens
    assert len(train_split) + len(val_split) >= 600
    # the first sample: the first seeded prompt (4 tokens of the data), then 12 the teacher wrote, then a newline
    prompt = RandomWindows(load_dataset(char_dataset)[0], 8, 4, "cpu", 3).next()[0][0].tolist()
    tok = tokenizer_from_meta(meta)
    assert train_split[:4].tolist() == prompt and tok.decode(train_split[16:17].tolist()) == "\n"
    # seeded: the same corpus again, byte for byte
    assert exit_code(distill.main, argv + [f"--out={again}"], capsys)[0] == 0
    for f in ("train.bin", "val.bin"):
        assert open(os.path.join(out, f), "rb").read() == open(os.path.join(again, f), "rb").read()
    run(["--max_iters=2", "--eval_interval=2"], str(tmp_path / "student"), out)  # the ordinary loop trains on it
    # a prompt dataset of another tokenizer is refused in one line
    other = str(tmp_path / "other")
    prepare_dataset("abc def\n" * 400, other, tokenizer="char", verbose=False)
    code, err = exit_code(distill.main, argv + [f"--out={tmp_path / 'x'}", f"--dataset={other}"], capsys)
    assert code == 2 and err.count("\n") == 1 and "another vocabulary" in err, err
    code, err = exit_code(distill.main, ["generate", f"--teacher={teacher_run}", f"--out={tmp_path / 'y'}",
                                         "--prompt_len=16"], capsys)
    assert code == 2 and "--prompt_len=16 must be in [1, block_size=16)" in err, err


# ----------------------------------------------------------------------------------------
# judging generations: the teacher's log-likelihood of a text


def test_teacher_log_likelihood_equals_a_plain_loop_and_ranks_the_teachers_text_above_noise(teacher_run, capsys):
    from checkpoint import read_checkpoint, restore_model
    from model import GPT

    teacher = restore_model(read_checkpoint(os.path.join(teacher_run, "ckpt.pt")), "test", dropout=0.0).eval()
    T, V = teacher.config.block_size, teacher.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (2 * T + 5,), generator=g).tolist()  # longer than one context
    got, n = distill.teacher_log_likelihood(teacher, ids, n_prompt=3, batch_size=4)
    want = []
    with torch.no_grad():
        for t in range(3, len(ids)):  # each token given at most the T before it, one forward each
            ctx = torch.tensor(ids[max(0, t - T):t])[None]
            want.append(teacher(ctx)[0][0, -1].log_softmax(-1)[ids[t]].item())
    assert n == len(want) and got == pytest.approx(sum(want) / len(want), abs=1e-5)
    # the teacher's own (greedy) text scores higher than an untrained model's of its shape (this
    # teacher trained 20 steps: its sampled text is still close to noise)
    torch.manual_seed(1)
    noise_model = GPT(teacher.config).eval()
    prompt = torch.tensor([[ids[0]]])
    own, noise = (distill.teacher_log_likelihood(teacher, m.generate(prompt, 3 * T, temperature=0)[0].tolist(), 1)[0]
                  for m in (teacher, noise_model))
    assert own > noise + 0.1, (own, noise)
    import sample

    code, _ = exit_code(sample.main, [f"--out_dir={teacher_run}", f"--score_with={teacher_run}", "--num_samples=2",
                                      "--max_new_tokens=20"], capsys)
    assert code == 0


# ----------------------------------------------------------------------------------------
# on-policy distillation (kd_on_policy)


def test_on_policy_turns_take_their_share_decided_by_the_count_alone():
    for share, want in ((0.0, 0), (0.25, 25), (0.5, 50), (1.0, 100)):
        turns = [distill.on_policy_turn(k, share) for k in range(100)]
        assert sum(turns) == want
        assert turns == [distill.on_policy_turn(k, share) for k in range(100)]


def test_a_rollout_keeps_the_prompt_masks_it_and_carries_no_gradient(teacher_run):
    from checkpoint import read_checkpoint, restore_model

    student = restore_model(read_checkpoint(os.path.join(teacher_run, "ckpt.pt")), "test", dropout=0.1).train()
    x = torch.randint(0, student.config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    xr, yr = distill.rollout(student, x, rollout_len=6)
    torch.manual_seed(5)
    again = distill.rollout(student, x, rollout_len=6)
    assert torch.equal(xr, again[0]) and torch.equal(yr, again[1])  # the global RNG: seeded, so resumable
    P = 16 + 1 - 6  # prompt tokens
    assert xr.shape == yr.shape == (3, 16) and torch.equal(xr[:, :P], x[:, :P])  # the prompt, as it was
    assert (yr[:, :P - 1] == -1).all() and (yr[:, P - 1:] >= 0).all()  # targets: the 6 generated tokens only
    assert torch.equal(yr[:, P - 1:-1], xr[:, P:])  # y is x shifted by one
    assert not xr.requires_grad and student.training  # no graph through sampling; train mode restored
    with pytest.raises(ValueError, match="kd_rollout_len=17 leaves no prompt"):
        distill.rollout(student, x, rollout_len=17)


def test_the_on_policy_loss_is_the_per_token_reverse_kl_on_the_generated_positions(teacher_run):
    from checkpoint import read_checkpoint, restore_model

    teacher = restore_model(read_checkpoint(os.path.join(teacher_run, "ckpt.pt")), "test", dropout=0.0).eval()
    torch.manual_seed(0)
    student = restore_model(read_checkpoint(os.path.join(teacher_run, "ckpt.pt")), "test", dropout=0.0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # a student that differs from its teacher
    x = torch.randint(0, teacher.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    xr, yr = distill.rollout(student, x, rollout_len=5)
    kd = distill.KDConfig(teacher=teacher_run, kd_loss="reverse_kl", kd_on_policy=1.0)
    got = distill.OnlineTeacher(teacher).loss(student(xr)[0], xr, yr, None, kd)
    s_logits, t_logits = student(xr)[0], teacher(xr)[0]
    terms = []
    for b in range(2):  # a plain loop over the generated positions: KL(p_s || p_t)
        for t in range(16):
            if yr[b, t] != -1:
                ps, pt = s_logits[b, t].softmax(-1), t_logits[b, t].softmax(-1)
                terms.append((ps * (ps.log() - pt.log())).sum())
    assert len(terms) == 2 * 5 and got.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_on_policy_training_resumes_exactly_and_zero_is_off_policy(teacher_run, char_dataset, tmp_path):
    def losses(out):
        import json

        with open(os.path.join(out, "metrics.jsonl")) as f:
            return [(r["iter"], r["loss"]) for r in map(json.loads, f) if "loss" in r]

    common = [f"--teacher={teacher_run}", "--kd_alpha=0.5", "--kd_loss=reverse_kl",
              "--eval_interval=3", "--log_interval=1", "--warmup_iters=1", "--lr_decay_iters=6",
              "--gradient_accumulation_steps=2", "--dropout=0.1"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    run(common + ["--kd_on_policy=0.5", "--kd_rollout_len=6", "--max_iters=6"], straight, char_dataset)
    run(common + ["--kd_on_policy=0.5", "--kd_rollout_len=6", "--max_iters=3"], split, char_dataset)
    run(["--init_from=resume", "--max_iters=6"], split, char_dataset)
    assert losses(split) == losses(straight)  # the rollouts' sampling resumes exactly too
    off, zero = str(tmp_path / "off"), str(tmp_path / "zero")
    run(common + ["--max_iters=3"], off, char_dataset)
    run(common + ["--kd_on_policy=0", "--max_iters=3"], zero, char_dataset)
    assert losses(zero) == losses(off) != losses(straight)[:3]
    with pytest.raises(UserError, match="kd_on_policy=0.5 needs an online teacher"):
        load_config(TINY + [f"--dataset={char_dataset}", "--kd_on_policy=0.5"])
    with pytest.raises(UserError, match="kd_rollout_len=40 leaves no prompt"):
        load_config(TINY + [f"--dataset={char_dataset}", f"--teacher={teacher_run}", "--kd_on_policy=0.5",
                            "--kd_rollout_len=40"])


@pytest.fixture(scope="module")
def prompt_dataset(char_dataset, tmp_path_factory):
    """Another text in char_dataset's vocabulary: its characters in reverse order."""
    from tokenizer import prepare_dataset, tokenizer_from_meta

    train_data, _, meta = load_dataset(char_dataset)
    tok = tokenizer_from_meta(meta)
    out = str(tmp_path_factory.mktemp("prompts"))
    prepare_dataset(tok.decode(train_data[::-1][:20000].tolist()), out, tokenizer=tok)
    return out


def test_kd_prompts_take_the_rollouts_prompts_from_another_dataset_drawn_by_the_count_alone(
        teacher_run, char_dataset, prompt_dataset, tmp_path):
    from tokenizer import prepare_dataset

    train_data, _, meta = load_dataset(char_dataset)
    prompts = load_dataset(prompt_dataset)[0]
    kd = distill.KDConfig(teacher=teacher_run, kd_on_policy=1.0, kd_rollout_len=5, kd_prompts=prompt_dataset)
    teacher = distill.make_teacher(kd, meta, 16, "cpu", train_data, seed=7)
    x, y = RandomWindows(train_data, 3, 16, "cpu", 0).next()

    def prompts_of(k, global_seed):
        torch.manual_seed(global_seed)  # the sampling's RNG: it must not choose the prompts
        xr, yr, on_policy = teacher.on_policy_batch(teacher.model, x, y, k, kd)
        assert on_policy and (yr[:, :11] == -1).all() and (yr[:, 11:] >= 0).all()
        return xr[:, :12]  # the 16 + 1 - 5 prompt tokens

    a = prompts_of(4, 0)
    assert torch.equal(a, prompts_of(4, 1)) and not torch.equal(a, prompts_of(5, 0))

    def is_window_of(row, data):
        return any(np.array_equal(data[s:s + len(row)], row) for s in np.flatnonzero(data == row[0]))

    assert all(is_window_of(r.numpy(), prompts) and not is_window_of(r.numpy(), train_data) for r in a)
    other = str(tmp_path / "other")  # another vocabulary
    prepare_dataset("abc abc abc " * 500, other, tokenizer="char")
    with pytest.raises(ValueError, match=f"kd_prompts={other} is tokenized with char"):
        distill.make_teacher(distill.KDConfig(teacher=teacher_run, kd_on_policy=1.0, kd_prompts=other),
                             meta, 16, "cpu", train_data)
    with pytest.raises(ValueError, match="needs kd_on_policy > 0"):
        distill.KDConfig(teacher=teacher_run, kd_prompts=prompt_dataset)


def test_on_policy_training_with_kd_prompts_resumes_exactly(teacher_run, char_dataset, prompt_dataset, tmp_path):
    common = [f"--teacher={teacher_run}", "--kd_alpha=0", "--kd_loss=reverse_kl", f"--kd_prompts={prompt_dataset}",
              "--kd_on_policy=0.5", "--kd_rollout_len=6", "--eval_interval=2", "--log_interval=1",
              "--warmup_iters=1", "--lr_decay_iters=4"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    run(common + ["--max_iters=4"], straight, char_dataset)
    run(common + ["--max_iters=2"], split, char_dataset)
    run(["--init_from=resume", "--max_iters=4"], split, char_dataset)
    a = torch.load(os.path.join(straight, "ckpt.pt"), weights_only=True)["model"]
    b = torch.load(os.path.join(split, "ckpt.pt"), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = train_rows(straight)
    assert all(r["teacher_s"] > 0 for r in rows)  # the teacher's seconds, logged apart from the rollouts'
    assert [("rollout_s" in r, r["loss"] == r["kd"]) for r in rows] == [(False, False), (True, True)] * 2
