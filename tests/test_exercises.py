"""The exercises (python -m exercises): every grader passes the repo's own code, fails the
untouched stub, and catches planted common mistakes with the hint that names them."""

import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from exercises import COURSE
from exercises.__main__ import grade
from exercises.graders import kd_loss as kd_grader
from exercises.graders import lr_schedule as lr_grader


@pytest.mark.parametrize("name", COURSE)
def test_every_grader_passes_the_reference_and_fails_the_stub(name):
    ref = grade(name, reference=True)
    assert ref["status"] == "passing" and ref["cases"], ref
    stub = grade(name)
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def hints(grader, impl):
    return [h for _, ok, _, _, h in grader.cases(impl) if not ok]


def test_lr_schedule_mistakes_get_their_hints():
    ref = lr_grader.reference().get_lr

    def warmup_from_zero(it, learning_rate, min_lr, warmup_iters, decay_iters, schedule):
        return learning_rate * it / warmup_iters if it < warmup_iters else ref(it, learning_rate, min_lr, warmup_iters,
                                                                               decay_iters, schedule)

    def cosine_to_zero(it, learning_rate, min_lr, warmup_iters, decay_iters, schedule):
        if schedule == "cosine" and warmup_iters <= it < decay_iters:
            return 0.5 * (1 + math.cos(math.pi * (it - warmup_iters) / (decay_iters - warmup_iters))) * learning_rate
        return ref(it, learning_rate, min_lr, warmup_iters, decay_iters, schedule)

    got = hints(lr_grader, SimpleNamespace(get_lr=warmup_from_zero))
    assert got and all("(it + 1) / (warmup_iters + 1)" in h for h in got)
    got = hints(lr_grader, SimpleNamespace(get_lr=cosine_to_zero))
    assert got and all("must end at min_lr" in h for h in got)


def test_kd_loss_mistakes_get_their_hints():
    def forward(s, t, T):
        log_q, log_p = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean()

    def reverse(s, t, T):
        log_q, log_p = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
        return (log_q.exp() * (log_q - log_p)).sum(-1).mean() * T * T

    got = hints(kd_grader, SimpleNamespace(kd_loss=forward))  # T^2 forgotten: right at T = 1 only
    assert any("T^2 factor is missing" in h for h in got)
    assert all(ok for case, ok, *_ in kd_grader.cases(SimpleNamespace(kd_loss=forward)) if case == "value at T=1")
    got = hints(kd_grader, SimpleNamespace(kd_loss=reverse))
    assert any("reverse KL" in h for h in got)
    detached = SimpleNamespace(kd_loss=lambda s, t, T: torch.tensor(kd_grader.reference().kd_loss(s, t, T).item()))
    assert any("no .item(), no .detach()" in h for h in hints(kd_grader, detached))  # right values, no gradient


def test_the_command_line_exit_codes_and_json():
    run = lambda *a: subprocess.run([sys.executable, "-m", "exercises", *a], cwd=REPO, capture_output=True, text=True)
    r = run("check", "lr_schedule")
    assert r.returncode == 1 and "lr_schedule: not started" in r.stdout
    r = run("check", "--all", "--reference", "--json")
    assert r.returncode == 0 and '"status": "passing"' in r.stdout
    r = run("list")
    assert r.returncode == 0 and all(name in r.stdout for name in COURSE)


@pytest.mark.parametrize("name", COURSE)
def test_a_stub_holds_the_task_never_the_solution(name):
    # every function of the student's file is a docstring and `raise NotImplementedError`
    import ast
    import os

    with open(os.path.join(REPO, "exercises", f"{name}.py")) as f:
        tree = ast.parse(f.read())
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assert functions
    for fn in functions:
        body = [b for b in fn.body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]
        assert len(body) == 1 and isinstance(body[0], ast.Raise) and "NotImplementedError" in ast.unparse(body[0]), \
            f"exercises/{name}.py: {fn.name} holds code besides its docstring and the raise"
        assert ast.get_docstring(fn), f"exercises/{name}.py: {fn.name} has no docstring stating the task"


def test_train_runs_the_students_schedule_in_a_real_training(char_dataset, tmp_path):
    # --train: the repo's schedule and a correct copy train to the same val loss exactly; a
    # schedule stuck at warmup's first value (a rate ~1e-6: the model barely moves) lands far from it
    ref = lr_grader.reference()
    want = lr_grader.train(ref, str(tmp_path / "ref"), dataset=char_dataset)
    copy = SimpleNamespace(get_lr=lambda *a, **k: ref.get_lr(*a, **k))
    assert lr_grader.train(copy, str(tmp_path / "copy"), dataset=char_dataset) == want
    wild = SimpleNamespace(get_lr=lambda it, learning_rate, *rest: 1e-6)
    assert abs(lr_grader.train(wild, str(tmp_path / "wild"), dataset=char_dataset) - want) > 0.02
