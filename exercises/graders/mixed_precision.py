"""Grader of exercises/mixed_precision.py: loss_in_fp32 against model.py's loss (the logits
cast to fp32, then cross-entropy with ignore_index=-1), and scaler_step against
step.forward_backward's scale / backward followed by step.optimizer_step, with a real
torch.amp.GradScaler on CPU (fp32 tensors, enabled=True: the scaling is real, only
the fp16 underflow it guards against is absent). Mistakes recognised: the loss computed in
bf16, clipping before unscale_, scaler.update() forgotten."""

from types import SimpleNamespace

import torch
import torch.nn.functional as F


def reference():
    from step import optimizer_step

    def loss_in_fp32(logits_bf16, targets):
        # model.GPT.forward's loss, line for line
        return F.cross_entropy(logits_bf16.float().view(-1, logits_bf16.size(-1)), targets.reshape(-1),
                               ignore_index=-1)

    def scaler_step(loss, optimizer, scaler, params, max_norm):
        params = list(params)
        scaler.scale(loss).backward()  # step.forward_backward (one micro-batch)
        grads = [p.grad.detach().float() for p in params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) / scaler.get_scale()
        optimizer_step(SimpleNamespace(parameters=lambda: params), optimizer, scaler, max_norm)
        return norm

    return SimpleNamespace(loss_in_fp32=loss_in_fp32, scaler_step=scaler_step)


def call(fn, *args):
    try:
        return fn(*args), None
    except NotImplementedError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError, AttributeError) as e:
        return None, f"{type(e).__name__}: {e}"


def loss_cases(impl, ref):
    g = torch.Generator().manual_seed(0)
    for (B, T, V) in ((4, 16, 512), (2, 8, 65)):
        logits = (torch.randn(B, T, V, generator=g) * 4).bfloat16()
        targets = torch.randint(0, V, (B, T), generator=g)
        targets[0, :3] = -1
        want = ref.loss_in_fp32(logits, targets)
        bf16 = F.cross_entropy(logits.view(-1, V), targets.reshape(-1), ignore_index=-1)  # computed in bf16
        got, err = call(impl.loss_in_fp32, logits.clone(), targets.clone())
        ok = err is None and torch.is_tensor(got) and got.dtype == torch.float32 and got.shape == () and \
            torch.allclose(got, want, rtol=1e-5, atol=1e-6)
        hint = None
        if not ok:
            if err:
                hint = "flatten to (N, V) and (N,): F.cross_entropy(logits.float().view(-1, V), targets.view(-1), ignore_index=-1)"
            elif not torch.is_tensor(got):
                hint = "return the loss as a tensor (no .item()): training backpropagates through it"
            elif got.float().shape == () and abs(got.float().item() - bf16.float().item()) < 1e-6:
                hint = "that is the loss computed in bf16 (cast after the cross-entropy, or not at all): " \
                       "cast the logits with .float() before the log-softmax"
            elif got.dtype != torch.float32:
                hint = "the loss must be fp32: cast the logits to fp32 first, and the loss is fp32 too"
            else:
                noignore = F.cross_entropy(logits.float().view(-1, V), targets.clamp(min=0).reshape(-1))
                hint = "targets of -1 are padding: ignore_index=-1 leaves them out of the mean" \
                    if abs(got.item() - noignore.item()) < 1e-5 else \
                    "compare with the docstring: the mean cross-entropy over the positions whose target is not -1"
        yield f"loss, B={B}, T={T}, V={V}", ok, f"{want.item():.6f} (bf16: {bf16.float().item():.6f})", \
            err or got, hint


def setup(seed, init_scale, inf=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(6, 4, generator=g))
    b = torch.nn.Parameter(torch.randn(6, generator=g))
    x = torch.randn(5, 4, generator=g) * 3
    if inf:
        x[0, 0] = float("inf")
    y = torch.randn(5, 6, generator=g)
    loss = ((x @ w.t() + b - y) ** 2).mean()
    opt = torch.optim.SGD([w, b], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1)
    return loss, opt, scaler, [w, b]


def same(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if not torch.isfinite(b):
        return bool((~torch.isfinite(a)).item())
    return bool(torch.isfinite(a)) and torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def step_cases(impl, ref):
    S = 2.0 ** 10
    for max_norm, inf in ((1.0, False), (1e3, False), (1.0, True)):
        what = "an inf gradient (the step is skipped)" if inf else f"max_norm={max_norm:g}"
        loss, opt, scaler, params = setup(0, S, inf)
        want_norm = ref.scaler_step(loss, opt, scaler, params, max_norm)
        want_params, want_scale = [p.detach().clone() for p in params], scaler.get_scale()
        loss, opt, scaler, params = setup(0, S, inf)
        before = [p.detach().clone() for p in params]
        got_norm, err = call(impl.scaler_step, loss, opt, scaler, params, max_norm)
        if err:
            yield f"step, {what}", False, "no error", err, \
                "scaler.scale(loss).backward(); scaler.unscale_(optimizer); clip_grad_norm_(params, max_norm); " \
                "scaler.step(optimizer); scaler.update()"
            continue
        got_params = [p.detach().clone() for p in params]
        ok = all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(got_params, want_params))
        hint = None
        if not ok:
            if inf and not all(torch.equal(a, b) for a, b in zip(got_params, before)):
                hint = "an overflowed step must be skipped: call scaler.step(optimizer), not optimizer.step()"
            elif torch.is_tensor(got_norm) and same(got_norm, want_norm * S):
                hint = "you clipped before scaler.unscale_(optimizer): the gradients still held the scale, so " \
                       "the norm was S times too large and clipping shrank the true gradient S-fold"
            else:
                hint = "the order is scale -> backward -> unscale_ -> clip_grad_norm_ -> scaler.step -> update"
        yield f"parameters after the step, {what}", ok, want_params, got_params, hint
        ok = torch.is_tensor(got_norm) and same(got_norm, want_norm)
        hint = None
        if not ok:
            if torch.is_tensor(got_norm) and same(got_norm, want_norm * S):
                hint = f"the norm is too large by the scale ({S:g}): unscale_ before clip_grad_norm_, which " \
                       "must see the true gradients"
            else:
                hint = "return what clip_grad_norm_ returns (after unscale_): the norm before clipping"
        yield f"gradient norm returned, {what}", ok, want_norm, got_norm, hint
        ok = scaler.get_scale() == want_scale
        yield f"the scale after the step, {what}", ok, want_scale, scaler.get_scale(), None if ok else \
            ("scaler.update() is missing: without it the scale never halves after an overflow nor grows after "
             "clean steps" if scaler.get_scale() == S else "call scaler.update() once per optimizer step")


def cases(impl):
    ref = reference()
    yield from loss_cases(impl, ref)
    yield from step_cases(impl, ref)
