"""Grader of exercises/topk_router.py: against moe.MoE (route, lines 97-108; the balancing
loss of forward, lines 164-167), on seeded logits, and the properties that define them."""

import torch


def _moe(n_experts, k):
    """A MoE whose router is the identity, so its input rows are the router logits."""
    from moe import MoE

    m = MoE(n_embd=n_experts, hidden=1, n_experts=n_experts, top_k=k, router="topk",
            aux_loss_coef=1.0, z_loss_coef=0.0)  # aux["loss"] is then the balancing loss, with its graph
    with torch.no_grad():
        m.router.weight.copy_(torch.eye(n_experts))
    return m.train()


def reference():
    from types import SimpleNamespace

    def topk_route(router_logits, k):
        top_i, gates, _, _ = _moe(router_logits.shape[-1], k).route(router_logits)  # moe.py 105-107
        return gates, top_i

    def balancing_loss(router_logits, indices, n_experts):
        # moe.py 165-167, through forward: the MoE routes the logits itself, so the reference
        # holds for the indices its router picks (the grader passes no others)
        N, k = indices.shape
        m = _moe(n_experts, k)
        top_i = m.route(router_logits)[0]
        if not torch.equal(top_i.sort(-1).values, indices.sort(-1).values):
            raise ValueError("the reference takes the indices of topk_route(router_logits, k) only")
        _, aux = m(router_logits.reshape(1, N, n_experts))
        return aux["loss"]

    return SimpleNamespace(topk_route=topk_route, balancing_loss=balancing_loss)


def close(a, b, tol=1e-5):
    return torch.is_tensor(a) and a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=tol, atol=tol)


def route_hint(logits, k, gates, indices):
    probs = logits.softmax(-1)
    top_p, top_i = probs.topk(k, -1)
    if close(gates, top_p):
        return "gates not renormalised: divide the k top probabilities by their sum (they must sum to 1)"
    wrong = logits.softmax(0)  # over the tokens
    w_p, w_i = wrong.topk(k, -1)
    if close(gates, w_p / w_p.sum(-1, keepdim=True)) or close(gates, w_p) or \
            (torch.is_tensor(indices) and indices.shape == w_i.shape and torch.equal(indices.long(), w_i) and
             not torch.equal(w_i, top_i)):
        return "softmax over the wrong dim: each token's probabilities are over the experts (dim=-1), not the tokens"
    if torch.is_tensor(indices) and indices.shape == top_i.shape and torch.equal(indices.sort(-1).values, top_i.sort(-1).values):
        if not torch.equal(indices, top_i):
            return "the right experts in the wrong order: most probable first, as torch.topk gives them"
    return "compare with the docstring: softmax over the experts, top k, renormalise over the k"


def loss_hint(logits, indices, E, got, want):
    got = torch.as_tensor(got, dtype=torch.float64) if not torch.is_tensor(got) else got.double().detach()
    N, k = indices.shape
    c = lambda v: got.shape == () and torch.isclose(got, torch.as_tensor(v, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    probs = logits.softmax(-1)
    f = torch.bincount(indices.reshape(-1), minlength=E).double() / (N * k)
    if c(want / E):
        return "the n_experts factor is missing: loss = n_experts * sum_i f_i * P_i (1 under balanced routing)"
    if c(E * (f * logits.softmax(0).mean(0).double()).sum()):
        return "softmax over the wrong dim: P_i is the mean over tokens of each token's softmax over the experts"
    if k > 1 and c(E * (torch.bincount(indices[:, 0], minlength=E).double() / N * probs.mean(0).double()).sum()):
        return "f counts every one of the k assignments (N * k pairs), not the top-1 choice only"
    if k > 1 and c(want * k):
        return "f_i is a fraction of the N * k routed pairs: divide the counts by N * k, not N"
    return "compare with the docstring: f_i over all N * k pairs, P_i from the full softmax, times n_experts"


def cases(impl):
    ref = reference()
    g = torch.Generator().manual_seed(0)
    E = 8
    logits = torch.randn(32, E, generator=g) * 2
    for k in (1, 2, 3):
        want_g, want_i = ref.topk_route(logits, k)
        got_g, got_i = impl.topk_route(logits.clone(), k)
        ok = close(got_g, want_g) and torch.is_tensor(got_i) and torch.equal(got_i.long(), want_i)
        yield f"route seeded logits, k={k}", ok, (want_g[:2].tolist(), want_i[:2].tolist()), \
            (got_g[:2].tolist() if torch.is_tensor(got_g) else got_g, got_i[:2].tolist() if torch.is_tensor(got_i) else got_i), \
            None if ok else route_hint(logits, k, got_g, got_i)
    got_g, got_i = impl.topk_route(logits.clone(), 2)
    sums = got_g.sum(-1) if torch.is_tensor(got_g) else None
    ok = sums is not None and torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    yield "gates sum to 1 over the k", ok, 1.0, sums[:4].tolist() if sums is not None else got_g, \
        None if ok else route_hint(logits, 2, got_g, got_i)
    x = logits.clone().requires_grad_(True)
    got_g, _ = impl.topk_route(x, 2)
    ok = torch.is_tensor(got_g) and got_g.requires_grad
    yield "the gates keep their gradient", ok, True, bool(ok), \
        None if ok else "no .detach(), .item() or torch.tensor(...) on the gates: the router learns through them"

    # the balancing loss, on the reference's indices
    for k in (1, 2):
        idx = ref.topk_route(logits, k)[1]
        want = ref.balancing_loss(logits, idx, E)
        got = impl.balancing_loss(logits.clone(), idx.clone(), E)
        ok = close(got, want)
        yield f"balancing loss, seeded logits, k={k}", ok, round(want.item(), 6), got, \
            None if ok else loss_hint(logits, idx, E, got, want)
    # perfectly balanced: token t prefers expert t % E, then (t + 1) % E; every f_i = 1 / E
    N = 4 * E
    t = torch.arange(N)
    bal = torch.zeros(N, E)
    bal[t, t % E] = 4.0
    bal[t, (t + 1) % E] = 2.0
    for k in (1, 2):
        idx = ref.topk_route(bal, k)[1]
        want = ref.balancing_loss(bal, idx, E)
        got = impl.balancing_loss(bal.clone(), idx.clone(), E)
        ok = close(got, want) and abs(got.item() - 1.0) < 1e-5
        yield f"balanced routing gives exactly 1, k={k}", ok, 1.0, got, None if ok else loss_hint(bal, idx, E, got, want)
    # collapse: every token sends itself to expert 0 with probability near 1
    one = torch.randn(N, E, generator=g) * 0.1
    one[:, 0] = 12.0
    idx = ref.topk_route(one, 1)[1]
    want = ref.balancing_loss(one, idx, E)
    got = impl.balancing_loss(one.clone(), idx.clone(), E)
    ok = close(got, want) and abs(got.item() - E) < 0.01 * E
    yield f"all tokens on one expert gives about n_experts={E}", ok, round(want.item(), 4), got, \
        None if ok else loss_hint(one, idx, E, got, want)
    x = logits.clone().requires_grad_(True)
    got = impl.balancing_loss(x, ref.topk_route(logits, 2)[1], E)
    ok = torch.is_tensor(got) and got.requires_grad
    yield "the loss reaches the router logits (through P)", ok, True, bool(ok), \
        None if ok else "P_i must come from the softmax of router_logits with its graph: no .detach() or .item()"
