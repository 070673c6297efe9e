"""Grader of exercises/grad_accumulation.py: micro-batch gradients against one big batch's.

The reference is written here, inline, from step.py's idea: forward_backward divides each
micro-batch's loss by accumulation_steps before backward, and optimizer_step clips the global
norm once, after accumulation (step.forward_backward itself draws its micro-batches from a
windows object, so it is not called here)."""

import math

import torch

N_MICRO = 4
CLIP_IN_LOOP = (1.0, 0.5, 2.0, 5.0)  # max_norms a clip inside the loop is recognised at (1.0: the repo's grad_clip)


def reference():
    from types import SimpleNamespace

    def accumulate_gradients(model, batches, loss_fn):
        total = 0.0
        for x, y in batches:
            loss = loss_fn(model, x, y)
            (loss / len(batches)).backward()  # as step.forward_backward: loss / accumulation_steps
            total += loss.item()
        return total / len(batches)

    def clip_after_accumulation(model, max_norm):
        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))  # as step.optimizer_step

    return SimpleNamespace(accumulate_gradients=accumulate_gradients, clip_after_accumulation=clip_after_accumulation)


def problem(kind):
    """A fresh seeded model, N_MICRO micro-batches and a loss_fn(model, x, y) (the micro-batch's mean loss)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "linear":
        model = torch.nn.Linear(6, 3)
        # large inputs: gradient norms well above 1, so that a clip inside the loop shows
        x, y = torch.randn(N_MICRO * 3, 6, generator=g) * 10, torch.randn(N_MICRO * 3, 3, generator=g) * 10
        loss_fn = lambda m, x, y: torch.nn.functional.mse_loss(m(x), y)
    else:
        from model import GPT, GPTConfig

        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20))
        x, y = (torch.randint(0, 20, (N_MICRO * 2, 8), generator=g) for _ in range(2))
        loss_fn = lambda m, x, y: m(x, y)[1]
    return model, list(zip(x.chunk(N_MICRO), y.chunk(N_MICRO))), loss_fn, (x, y)


def grads(model):
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def norm(gs):
    return torch.cat([g.flatten() for g in gs]).norm().item()


def close(a, b, rtol=1e-5, atol=1e-6):
    return all(torch.allclose(x, y, rtol=rtol, atol=atol) for x, y in zip(a, b))


def grad_hint(model, batches, loss_fn, got, want):
    if all(g.abs().max() == 0 for g in got):
        return "no gradient at all: call backward on each micro-batch's loss (and do not zero it afterwards)"
    n = len(batches)
    per_micro = []
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model, x, y).backward()
        per_micro.append(grads(model))
    if close(got, [w * n for w in want]):
        return f"the gradients are summed, not averaged ({n}x too large): divide each micro-batch's loss by " \
               "len(batches) before backward"
    if close(got, [w / n for w in want]):
        return f"divided twice ({n}x too small): divide each micro-batch's loss by len(batches), once"
    if close(got, [g / n for g in per_micro[-1]]) or close(got, per_micro[-1]):
        return "only the last micro-batch's gradient is left: zero_grad inside the loop wipes the others " \
               "(the optimizer step zeroes them, before accumulation)"
    for c in CLIP_IN_LOOP:
        for scale in (1.0 / n, 1.0):
            run = [torch.zeros_like(g) for g in want]
            for gm in per_micro:
                run = [r + scale * g for r, g in zip(run, gm)]
                f = min(1.0, c / (norm(run) + 1e-6))
                run = [r * f for r in run]
            if close(got, run, rtol=1e-4, atol=1e-6):
                return f"clipped per micro-batch (to {c:g}): clip the global norm once, after accumulation " \
                       "(clip_after_accumulation), or the clip cuts a partial sum"
    return "compare with the docstring: one backward per micro-batch of loss / len(batches), no zero_grad in between"


def cases(impl):
    for kind in ("linear", "gpt"):
        model, batches, loss_fn, (X, Y) = problem(kind)
        big_loss = loss_fn(model, X, Y)
        big_loss.backward()
        want = grads(model)
        model.zero_grad(set_to_none=True)
        got_loss = impl.accumulate_gradients(model, batches, loss_fn)
        got = grads(model)
        ok = close(got, want)
        yield f"{kind}: {N_MICRO} micro-batches give the big batch's gradient", ok, f"norm {norm(want):.6f}", \
            f"norm {norm(got):.6f}", None if ok else grad_hint(model, batches, loss_fn, got, want)
        ok = isinstance(got_loss, float) and math.isclose(got_loss, big_loss.item(), rel_tol=1e-5, abs_tol=1e-6)
        if ok:
            h = None
        elif torch.is_tensor(got_loss):
            h = "return a Python float (loss.item()), not a tensor: a tensor with a graph keeps its activations alive"
        elif isinstance(got_loss, (int, float)) and math.isclose(got_loss, big_loss.item() * N_MICRO, rel_tol=1e-5):
            h = f"that is the sum of the micro-batches' losses: return their mean (divide by {N_MICRO})"
        elif isinstance(got_loss, (int, float)) and math.isclose(got_loss, big_loss.item() / N_MICRO, rel_tol=1e-5):
            h = "that is the mean of the divided losses, divided again: return the mean of the undivided losses"
        else:
            h = "return the mean over micro-batches of loss_fn's values (equal sizes: the big batch's mean loss)"
        yield f"{kind}: returns the big batch's mean loss", ok, big_loss.item(), got_loss, h
    # clipping: the global norm, once; returns the norm before
    ref = reference()
    for factor in (0.25, 2.0):
        model, batches, loss_fn, _ = problem("linear")
        ref.accumulate_gradients(model, batches, loss_fn)
        before = grads(model)
        total = norm(before)
        max_norm = total * factor
        want = [g * min(1.0, max_norm / (total + 1e-6)) for g in before]
        got_norm = impl.clip_after_accumulation(model, max_norm)
        got = grads(model)
        try:
            got_norm = float(got_norm)
        except (TypeError, ValueError):
            pass
        ok_norm = isinstance(got_norm, float) and math.isclose(got_norm, total, rel_tol=1e-5)
        ok = ok_norm and close(got, want)
        if ok:
            h = None
        elif ok_norm or not isinstance(got_norm, float):
            per_tensor = [g * min(1.0, max_norm / (g.norm().item() + 1e-6)) for g in before]
            if close(got, before) and factor < 1:
                h = "the gradients were not clipped: scale them by max_norm / norm when the norm exceeds max_norm"
            elif close(got, per_tensor):
                h = "each tensor clipped on its own: clip the global norm of all the gradients together"
            elif not isinstance(got_norm, float):
                h = "return the total norm before clipping, as a float"
            else:
                h = "every gradient must be scaled by the same factor max_norm / total norm"
        elif math.isclose(got_norm, norm(got), rel_tol=1e-5) and factor < 1:
            h = "that is the norm after clipping: return the total norm before (what clip_grad_norm_ returns)"
        else:
            h = "return the global 2-norm of all the gradients together, before clipping"
        yield f"clip to {factor:g} x the norm: scaled once, returns the norm before", ok, \
            (round(total, 6), f"norm after {norm(want):.6f}"), (got_norm, f"norm after {norm(got):.6f}"), h
