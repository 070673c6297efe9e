"""Grader of exercises/fedavg.py: aggregate against federated.aggregate on seeded rounds
(unequal sizes, one client, identical clients, server_lr 0.5 and 2, three tensors of
different shapes), the caller's tensors left unchanged; product_gap against
federated.lora_product_gap on one LoRA layer, and the property that makes it 0 (a factor
shared by every client). Each common mistake (a plain mean, weights not normalised, //,
the deltas taken for weights, server_lr forgotten, a name dropped, an in-place update) is
recognised and named."""

import math
import numbers

import torch

from exercises.graders import call

SHAPES = {"transformer.wte.weight": (6, 4), "transformer.h.0.ln_1.bias": (4,),
          "transformer.h.0.mlp.c_fc.weight": (2, 3, 5)}
# (case, sizes n_k, server_lr (None: the default), every client the same update)
ROUNDS = [
    ("3 clients of unequal sizes (100, 300, 600)", [100, 300, 600], None, False),
    ("a single client", [7], None, False),
    ("4 identical clients of sizes 1..4", [1, 2, 3, 4], None, True),
    ("server_lr=0.5, 4 clients (5, 1, 2, 8)", [5, 1, 2, 8], 0.5, False),
    ("server_lr=2.0, 2 clients (1, 2)", [1, 2], 2.0, False),
]
R, IN, OUT = 2, 5, 4  # product_gap's LoRA layer: A (R, IN), B (OUT, R)


def reference():
    from types import SimpleNamespace

    import federated
    from peft import LoRALinear

    def product_gap(As, Bs, sizes):
        holder = torch.nn.Module()  # one LoRA layer, named "lin": its lora_A (r, in) and lora_B (1, out, r)
        with torch.random.fork_rng(devices=[]):
            holder.lin = LoRALinear(torch.nn.Linear(As[0].shape[1], Bs[0].shape[0], bias=False), As[0].shape[0], 1.0)
        zero = {"lin.lora_A": torch.zeros_like(As[0]), "lin.lora_B": torch.zeros_like(Bs[0])[None]}
        updates = [{"lin.lora_A": A, "lin.lora_B": B[None]} for A, B in zip(As, Bs)]  # w_t = 0: the factors themselves
        return federated.lora_product_gap(holder, zero, updates, sizes)

    return SimpleNamespace(aggregate=federated.aggregate, product_gap=product_gap)


def _round(n_clients, same, seed):
    g = torch.Generator().manual_seed(seed)
    w = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    one = lambda: {n: 0.1 * torch.randn(s, generator=g) for n, s in SHAPES.items()}  # noqa: E731
    first = one()
    return w, [{n: t.clone() for n, t in first.items()} if same else (first if k == 0 else one())
               for k in range(n_clients)]


def _copy(w, updates):
    return {n: t.clone() for n, t in w.items()}, [{n: t.clone() for n, t in d.items()} for d in updates]


def _combine(w, updates, coefs, lr, base=True):
    """base * w + lr * sum_k coefs[k] d_k, by name (the mistakes are other coefs, base or lr)."""
    return {n: (t if base else torch.zeros_like(t)) + lr * sum(c * d[n] for c, d in zip(coefs, updates))
            for n, t in w.items()}


def _same(a, b):
    return isinstance(a, dict) and set(a) == set(b) and all(
        torch.is_tensor(a[n]) and a[n].shape == b[n].shape and a[n].dtype == b[n].dtype
        and torch.allclose(a[n], b[n], rtol=1e-5, atol=1e-6) for n in b)


def _shown(w):
    """A result as its first three numbers per name (what a failing case prints)."""
    if not isinstance(w, dict):
        return w
    return {n: [round(x, 5) for x in t.flatten()[:3].tolist()] if torch.is_tensor(t) else t for n, t in w.items()}


def aggregate_hint(w, updates, sizes, lr, got, want):
    """What a wrong result of aggregate is, named."""
    if not isinstance(got, dict):
        return "return a new dict {name: tensor}, one entry per name of global_w"
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing:
        return f"every name of global_w must be in the result ({missing} missing): the server sends back all of them"
    if extra:
        return f"return the names of global_w only ({extra} extra)"
    for n in want:
        if not (torch.is_tensor(got[n]) and got[n].shape == want[n].shape and got[n].dtype == want[n].dtype):
            return (f"{n}: keep w_t's shape {tuple(want[n].shape)} and dtype {want[n].dtype} (got "
                    f"{(tuple(got[n].shape), got[n].dtype) if torch.is_tensor(got[n]) else type(got[n]).__name__})")
    n, K = sum(sizes), len(sizes)
    p = [s / n for s in sizes]
    mistakes = [
        (_combine(w, updates, p, 1.0), "server_lr is missing: w_t + server_lr * sum_k (n_k / n) d_k"),
        (_combine(w, updates, [1 / K] * K, lr), "that is the plain mean over the clients (1/K each): weight d_k by "
                                                "n_k / n, so that a client with more data counts more"),
        (_combine(w, updates, sizes, lr), "the weights n_k must be divided by n = sum_k n_k (the weights n_k / n sum "
                                          "to 1)"),
        (_combine(w, updates, [1] * K, lr), "weight each d_k by n_k / n: a plain sum of the updates moves K times too "
                                            "far"),
        (_combine(w, updates, [s // n for s in sizes], lr), "n_k // n is 0 for each of several clients: use true "
                                                            "division, n_k / n (a float)"),
        (_combine(w, updates, p, lr, base=False), "the updates are differences d_k = w_k - w_t, not weights: add "
                                                  "their weighted mean to w_t (w_t + server_lr * sum_k (n_k / n) d_k)"),
        ({k: t + lr * (v - t) for (k, t), v in zip(w.items(), _combine(w, updates, p, 1.0, base=False).values())},
         "the updates are already differences d_k = w_k - w_t, not weights: do not subtract w_t from their mean again"),
    ]
    for value, hint in mistakes:
        if not _same(value, want) and _same(got, value):
            return hint
    return "for every name: w_t + server_lr * sum_k (n_k / n) d_k, with n = sum_k n_k"


def _changed(before, after):
    """The names whose tensor in `after` (a dict the student was given) differs from `before`."""
    return [n for n in before if not (n in after and torch.is_tensor(after[n]) and after[n].shape == before[n].shape
                                      and torch.equal(before[n], after[n]))]


def _gap_inputs(sizes, share=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    A0, B0 = torch.randn(R, IN, generator=g), torch.randn(OUT, R, generator=g)
    As = [A0.clone() if share == "A" else torch.randn(R, IN, generator=g) for _ in sizes]
    Bs = [B0.clone() if share == "B" else torch.randn(OUT, R, generator=g) for _ in sizes]
    return As, Bs


def _as_float(x):
    if torch.is_tensor(x) and x.numel() == 1:
        return float(x)
    return float(x) if isinstance(x, numbers.Real) and not isinstance(x, bool) else None


def _gap(As, Bs, p, denominator="mean of products", sqrt=True, q=None):
    """The gap with weights p for the mean of the products and q (default p) for the means of the factors."""
    q = p if q is None else q
    prod = sum(c * (B @ A) for c, A, B in zip(p, As, Bs))
    means = sum(c * B for c, B in zip(q, Bs)) @ sum(c * A for c, A in zip(q, As))
    num = (prod - means).pow(2).sum().item()
    den = {"mean of products": prod.pow(2).sum().item(), "product of means": means.pow(2).sum().item(), None: 1.0}[
        denominator]
    return math.sqrt(num / den) if sqrt else num / den


def gap_hint(As, Bs, sizes, got, want, share):
    if got is None:
        return "return the relative gap as a float"
    if share:
        return (f"every client has the same {share}, so the mean of the products is the product of the means: the "
                f"gap must be 0: use the same weights n_k / n in all three means")
    K, n = len(sizes), sum(sizes)
    p = [s / n for s in sizes]
    close = lambda v: abs(got - v) <= 1e-4 * max(abs(v), 1e-6) and abs(v - want) > 1e-4 * want  # noqa: E731
    for value, hint in [
        (_gap(As, Bs, [1 / K] * K), "weight the means by n_k / n, as aggregate does, not 1/K each"),
        (_gap(As, Bs, p, q=[1 / K] * K), "use the same weights n_k / n in all three means (the factors' means too)"),
        (_gap(As, Bs, [1 / K] * K, q=p), "use the same weights n_k / n in all three means (the products' mean too)"),
        (_gap(As, Bs, p, "product of means"), "divide by the norm of the mean of the products, "
                                              "||sum_k p_k B_k A_k||, not of the product of the means"),
        (_gap(As, Bs, p, None), "relative: divide by ||sum_k p_k B_k A_k||"),
        (_gap(As, Bs, p, sqrt=False), "the Frobenius norm is the square root of the sum of squares (of the "
                                      "numerator and of the denominator)"),
        (_gap(As, Bs, p, None, sqrt=False), "the Frobenius norm is the square root of the sum of squares, and the gap "
                                            "is relative: divide by ||sum_k p_k B_k A_k||"),
    ]:
        if close(value):
            return hint
    return ("B_k (out, r) @ A_k (r, in) per client; ||mean of the products - (mean B) @ (mean A)|| / "
            "||mean of the products||")


def cases(impl):
    ref = reference()
    for i, (case, sizes, lr, same) in enumerate(ROUNDS):
        w, updates = _round(len(sizes), same, seed=i)
        args = () if lr is None else (lr,)
        want = ref.aggregate(*_copy(w, updates), list(sizes), *args)
        got, error = call(impl.aggregate, *_copy(w, updates), list(sizes), *args)
        ok = error is None and _same(got, want)
        yield f"aggregate: {case}", ok, _shown(want), _shown(got) if error is None else error, None if ok else (
            error or aggregate_hint(w, updates, sizes, 1.0 if lr is None else lr, got, want))
    w, updates = _round(3, False, seed=0)
    mine_w, mine_updates = _copy(w, updates)
    _, error = call(impl.aggregate, mine_w, mine_updates, [100, 300, 600], 0.5)
    changed = _changed(w, mine_w) + [f"updates[{k}][{n!r}]" for k, d in enumerate(updates)
                                     for n in _changed(d, mine_updates[k])]
    ok = error is None and not changed
    yield "aggregate leaves the caller's global_w and updates as they were", ok, "unchanged", \
        error or (f"changed: {changed}" if changed else "unchanged"), None if ok else (
            error or "build a new dict of new tensors (new[name] = w + ...): no w += / w.add_ / d.mul_ on the "
                     "caller's tensors, no writes into its dicts; it may still need w_t and the updates (to log, "
                     "compare or redo the round)")
    for case, sizes, share in [("3 clients of unequal sizes (100, 300, 600)", [100, 300, 600], None),
                               ("a single client: 0", [5], None),
                               ("every client shares A: 0", [1, 2, 3], "A"),
                               ("every client shares B: 0", [4, 1, 3], "B")]:
        As, Bs = _gap_inputs(sizes, share)
        want = ref.product_gap(As, Bs, sizes)
        got, error = call(impl.product_gap, [A.clone() for A in As], [B.clone() for B in Bs], list(sizes))
        value = None if error else _as_float(got)
        ok = value is not None and abs(value - want) <= 1e-4 * max(want, 0.0) + 1e-5
        yield f"product_gap: {case}", ok, round(want, 6), error or (round(value, 6) if value is not None else got), \
            None if ok else (error or gap_hint(As, Bs, sizes, value, want, share))
