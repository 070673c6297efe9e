"""Grader of exercises/lora.py: against peft.LoRALinear (its forward, merge and unmerge) on
one Linear, and the properties that define LoRA: B = 0 is the base layer, the merged weight
gives the same output, unmerge undoes merge."""

import torch
import torch.nn.functional as F
from exercises.graders import call


def reference():
    from types import SimpleNamespace

    from peft import LoRALinear

    def layer(weight, bias, A, B, alpha, r):
        """peft.LoRALinear around an nn.Linear holding weight, bias; its A, B set to ours
        (LoRALinear stacks B per part: (1, out, r) for one part)."""
        out_f, in_f = weight.shape
        base = torch.nn.Linear(in_f, out_f, bias=bias is not None, dtype=weight.dtype)
        lin = LoRALinear(base, r, alpha)
        with torch.no_grad():
            base.weight.copy_(weight)
            if bias is not None:
                base.bias.copy_(bias)
            lin.lora_A.copy_(A)
            lin.lora_B.copy_(B.unsqueeze(0))
        return lin

    def lora_forward(x, weight, bias, A, B, alpha, r):
        with torch.no_grad():
            return layer(weight, bias, A, B, alpha, r)(x)

    def merge(weight, A, B, alpha, r):
        lin = layer(weight, None, A, B, alpha, r)
        lin.merge()
        return lin.base.weight.detach().clone()

    def unmerge(merged, A, B, alpha, r):
        lin = layer(merged, None, A, B, alpha, r)
        lin.merged = True  # base.weight holds W + scaling B A already
        lin.unmerge()
        return lin.base.weight.detach().clone()

    return SimpleNamespace(lora_forward=lora_forward, merge=merge, unmerge=unmerge)


def setup(in_f, out_f, r, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, in_f, generator=g)
    W = torch.randn(out_f, in_f, generator=g) / in_f ** 0.5
    b = torch.randn(out_f, generator=g)
    A = torch.randn(r, in_f, generator=g) / in_f ** 0.5
    B = torch.randn(out_f, r, generator=g)  # trained: no longer zero
    return x, W, b, A, B


def close(a, b, tol=1e-5):
    return torch.is_tensor(a) and a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=tol, atol=tol)


SHAPES = "A is (r, in) and B is (out, r): B A is (out, in) like W, and the branch is (x A^T) B^T"


def recognise(got, known, fallback):
    """The hint of the first known wrong answer that `got` equals, else the fallback."""
    for wrong, hint in known:
        if wrong is not None and close(got, wrong, 1e-4):
            return hint
    return fallback


def cases(impl):
    ref = reference()
    # square layer first (in = out), where a transposed B A still has the right shape
    for (in_f, out_f, r, alpha) in ((8, 8, 2, 16.0), (8, 12, 4, 1.0)):
        x, W, b, A, B = setup(in_f, out_f, r, seed=in_f * 100 + out_f)
        s = alpha / r
        size = f"in={in_f}, out={out_f}, r={r}, alpha={alpha:g}"
        base = F.linear(x, W, b)
        delta = (x @ A.t()) @ B.t()  # unscaled branch
        square = in_f == out_f

        want = ref.lora_forward(x, W, b, A, B, alpha, r)
        got, err = call(impl.lora_forward, x.clone(), W.clone(), b.clone(), A.clone(), B.clone(), alpha, r)
        ok = err is None and close(got, want)
        hint = None if ok else SHAPES if err else recognise(got, [
            (base + delta, "the scaling alpha / r is missing: the branch is off by a factor r / alpha"),
            (base + delta * (r / alpha), "the scaling is alpha / r, not r / alpha"),
            (base + s * (x @ (B @ A)) if square else None, "B A is transposed: " + SHAPES),
            (F.linear(x, W) + s * delta, "the bias b is missing: y = x W^T + b + (alpha / r) x A^T B^T"),
            (base, "the LoRA branch is missing: add (alpha / r) (x A^T) B^T to the base output"),
        ], "compare with the docstring: x W^T + b + (alpha / r) (x A^T) B^T")
        yield f"forward, {size}", ok, want, err or got, hint

        want_m = ref.merge(W, A, B, alpha, r)
        Wc = W.clone()
        got_m, err = call(impl.merge, Wc, A.clone(), B.clone(), alpha, r)
        ok = err is None and close(got_m, want_m)
        hint = None if ok else SHAPES if err else recognise(got_m, [
            (W + B @ A, "the scaling alpha / r is missing in merge: W + (alpha / r) B A"),
            (W + 2 * s * (B @ A), "merge adds B A twice: once is W + (alpha / r) B A (loralib's double merge "
                                  "of a weight that holds B A already: peft.py's docstring)"),
            (W + s * (B @ A).t() if square else None, "B A is transposed: " + SHAPES),
            (s * (B @ A), "merge returns W plus the update, not the update alone"),
        ], "compare with the docstring: W + (alpha / r) B A")
        yield f"merge, {size}", ok, want_m, err or got_m, hint
        if err is None:
            ok = torch.equal(Wc, W)
            yield f"merge leaves its input weight unchanged, {size}", ok, "W unchanged", \
                "unchanged" if ok else "W modified in place", \
                None if ok else "return a new tensor (weight + ...), do not add into weight in place (weight.add_)"

            # the merged weight in a plain Linear gives the LoRA layer's output
            got_f, err = call(impl.lora_forward, x, W, b, A, B, alpha, r)
            if err is None:
                merged_out = F.linear(x, got_m, b)
                ok = close(merged_out, got_f, 1e-4)
                yield f"merged forward = unmerged forward, {size}", ok, got_f, merged_out, \
                    None if ok else "merge and lora_forward must use the same update: (alpha / r) B A in W " \
                                    "is (alpha / r) x A^T B^T in the output"

        got_u, err = call(impl.unmerge, want_m.clone(), A.clone(), B.clone(), alpha, r)
        ok = err is None and close(got_u, W)
        hint = None if ok else SHAPES if err else recognise(got_u, [
            (want_m + s * (B @ A), "unmerge subtracts the update: W = merged - (alpha / r) B A"),
            (want_m - B @ A, "the scaling alpha / r is missing in unmerge"),
        ], "unmerge(merged) = merged - (alpha / r) B A")
        yield f"unmerge of the reference's merge gives W, {size}", ok, W, err or got_u, hint
        if got_m is not None and torch.is_tensor(got_m):
            rt, err = call(impl.unmerge, got_m.clone(), A.clone(), B.clone(), alpha, r)
            ok = err is None and close(rt, W)
            yield f"unmerge(merge(W)) == W, {size}", ok, W, err or rt, \
                None if ok else "unmerge must take away exactly what merge added: (alpha / r) B A"

        # B = 0 (the init): the wrapped layer is the base layer, with or without a bias
        for bias in (b, None):
            zero = torch.zeros_like(B)
            want_0 = F.linear(x, W, bias)
            got_0, err = call(impl.lora_forward, x, W, bias, A, zero, alpha, r)
            ok = err is None and close(got_0, want_0, 1e-6)
            hint = None if ok else ("bias may be None: then y = x W^T + (alpha / r) x A^T B^T" if err else
                                    "with B = 0 the branch (x A^T) B^T is zero: the output must be the base "
                                    "layer's x W^T + b")
            yield f"B = 0 gives the base output, bias={'None' if bias is None else 'b'}, {size}", ok, \
                want_0, err or got_0, hint
