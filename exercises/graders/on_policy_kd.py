"""Grader of exercises/on_policy_kd.py: against distill.rollout (its masking, through a
stand-in student that "samples" known tokens) and distill.kd_loss(kind="reverse_kl") on
seeded logits, its value and its gradient with respect to the student's logits."""

import torch

from exercises.graders import call


class _Writer:
    """A stand-in student whose generate appends known tokens: rollout's masking alone."""

    def __init__(self, seq):
        self.seq, self.training = seq, True

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def generate(self, prompts, n):
        return self.seq


def reference():
    from types import SimpleNamespace

    import distill

    def rollout_batch(seq, prompt_len):
        T = seq.shape[1] - 1
        return distill.rollout(_Writer(seq), seq[:, :T], T + 1 - prompt_len)

    def reverse_kl(student_logits, teacher_logits, y):
        return distill.kd_loss(student_logits, teacher_logits, 1.0, "reverse_kl", 0.5, y != -1)

    return SimpleNamespace(rollout_batch=rollout_batch, reverse_kl=reverse_kl)


def _close(a, b, tol=1e-5):
    return torch.is_tensor(a) and a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=tol, rtol=tol)


def cases(impl):
    ref = reference()
    seq = torch.arange(1, 23).view(2, 11)  # B = 2, T = 10
    for prompt_len in (4, 1, 10):
        want = ref.rollout_batch(seq, prompt_len)
        got, error = call(impl.rollout_batch, seq, prompt_len)
        ok = error is None and isinstance(got, tuple) and len(got) == 2 and all(
            torch.is_tensor(g) and torch.equal(g, w) for g, w in zip(got, want))
        hint = error
        if not ok and error is None and isinstance(got, tuple) and len(got) == 2 and torch.is_tensor(got[1]):
            gy, wy = got[1], want[1]
            masked_got, masked_want = int((gy == -1).sum(1)[0]), int((wy == -1).sum(1)[0])
            if gy.shape == wy.shape and masked_got == masked_want + 1:
                hint = "one target too many masked: y[:, t] = seq[:, t + 1], so the first generated token is y[:, prompt_len - 1]"
            elif gy.shape == wy.shape and masked_got == masked_want - 1:
                hint = "one prompt target left in: mask y[:, :prompt_len - 1] (their targets are prompt tokens)"
            elif gy.shape == wy.shape and masked_got == 0:
                hint = "mask the prompt's targets with -1: the student's loss is on what it wrote only"
            else:
                hint = "x = seq[:, :-1], y = seq[:, 1:] (copies), then y[:, :prompt_len - 1] = -1"
        elif not ok and error is None:
            hint = "return a pair (x, y) of (B, T) tensors"
        yield f"rollout_batch(prompt_len={prompt_len})", ok, [w.tolist() for w in want], got if error else \
            ([g.tolist() if torch.is_tensor(g) else g for g in got] if isinstance(got, tuple) else got), \
            None if ok else hint
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 6, 11, generator=g) * 2
    t = torch.randn(2, 6, 11, generator=g) * 2
    y = torch.tensor([[-1, -1, 3, 4, 5, 6], [-1, -1, 1, 2, 3, -1]])
    want = ref.reverse_kl(s, t, y)
    got, error = call(impl.reverse_kl, s.clone().requires_grad_(), t, y)
    ok = error is None and _close(got, want)
    hint = error
    if not ok and error is None and torch.is_tensor(got) and got.dim() == 0:
        ls, lt = s.log_softmax(-1), t.log_softmax(-1)
        mask = y != -1
        forward = (lt.exp() * (lt - ls)).sum(-1)
        reverse = (ls.exp() * (ls - lt)).sum(-1)
        if _close(got, forward[mask].mean()):
            hint = "that is forward KL, KL(p_t || p_s): on-policy distillation weights by the student's p_s (mode-seeking)"
        elif _close(got, reverse.mean()):
            hint = "average over the generated positions only (y != -1), not every position"
        elif _close(got, reverse[mask].sum()):
            hint = "the mean over the generated positions, not their sum"
        else:
            hint = "sum over the vocabulary of p_s (log p_s - log p_t) per position, then the mean where y != -1"
    elif not ok and error is None:
        hint = "return a scalar tensor (0-dimensional)"
    yield "reverse_kl on the generated positions", ok, want.item(), got.item() if ok or (
        error is None and torch.is_tensor(got) and got.numel() == 1) else (error or got), None if ok else hint
    if ok:  # the gradient with respect to the student's logits, against the reference's
        want_s = s.clone().requires_grad_()
        ref.reverse_kl(want_s, t, y).backward()
        student = s.clone().requires_grad_()
        out, error = call(impl.reverse_kl, student, t, y)
        fine = error is None and torch.is_tensor(out) and out.requires_grad
        if fine:
            out.backward()
            fine = student.grad is not None and torch.allclose(student.grad, want_s.grad, atol=1e-6)
        yield "the gradient with respect to the student's logits", fine, "the reference's", \
            "equal" if fine else "missing or different", None if fine else (
                error or "keep the student's graph: no .detach(), .item() or torch.no_grad() on its side")
