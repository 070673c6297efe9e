"""moe.py: the balancing loss is exactly 1 under perfectly balanced top-1 routing; the
z-loss is its formula; the sorted, batched dispatch equals a per-token reference loop
(outputs and gradients; top-1, top-2, Switch with and without drops); the task loss alone
trains the router through the gates, as a reference routed by hand; one expert equals a
dense MLP; Switch drops the right tokens and passes them through; eval is deterministic."""

import math

import pytest
import torch
from torch.nn import functional as F

from moe import MoE


def make_moe(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(n_embd=16, hidden=24, n_experts=4, top_k=2)
    args.update(kw)
    moe = MoE(**args)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.3)
    return moe


def reference_moe(moe, x):
    """The same layer, one token and one expert at a time in Python."""
    B, T, C = x.shape
    xf = x.reshape(-1, C)
    top_i, gates, _, _ = moe.route(xf)
    cap = moe.capacity(xf.shape[0])
    used = [0] * moe.n_experts
    rows = []
    for t in range(xf.shape[0]):
        y = torch.zeros(C)
        for j in range(moe.top_k):
            e = int(top_i[t, j])
            if cap is not None and used[e] >= cap:
                continue  # over capacity: this pair is dropped
            used[e] += 1
            h = F.gelu(xf[t] @ moe.w_fc[e])
            y = y + gates[t, j] * (h @ moe.w_proj[e])
        if moe.shared is not None:
            y = y + moe.shared(xf[t])
        rows.append(y)
    return torch.stack(rows).view(B, T, C)


CASES = {
    "top1": dict(top_k=1),
    "top2": dict(top_k=2),
    "top2_shared": dict(top_k=2, shared_expert=True),
    "switch_drops": dict(top_k=1, router="switch", capacity_factor=0.5),
    "switch_no_drops": dict(top_k=1, router="switch", capacity_factor=4.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_dispatch_equals_the_per_token_reference_with_gradients(case):
    moe = make_moe(**CASES[case])
    x = torch.randn(2, 7, 16, requires_grad=True)
    y, aux = moe(x)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), [x] + list(moe.parameters()), allow_unused=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = reference_moe(moe, x_ref)
    grads_ref = torch.autograd.grad((y_ref * g).sum(), [x_ref] + list(moe.parameters()), allow_unused=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, grads_ref):
        if b is None:
            assert a is None or a.abs().sum() == 0
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if case == "switch_drops":
        assert aux["dropped"] > 0


def test_one_expert_top1_equals_a_dense_mlp():
    moe = make_moe(n_experts=1, top_k=1)
    x = torch.randn(3, 5, 16)
    y, aux = moe(x)
    dense = F.gelu(x @ moe.w_fc[0]) @ moe.w_proj[0]
    torch.testing.assert_close(y, dense, rtol=1e-6, atol=1e-6)
    assert aux["dropped"] == 0 and aux["load"].tolist() == [1.0]


def balanced_router(moe, n_tokens):
    """Tokens that each strongly prefer expert (token index mod E)."""
    E, C = moe.n_experts, moe.router.in_features
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:, :E] = 10 * torch.eye(E)
    x = torch.zeros(1, n_tokens, C)
    x[0, torch.arange(n_tokens), torch.arange(n_tokens) % E] = 1.0
    return x


def test_balancing_loss_is_exactly_one_when_balanced_and_more_when_not():
    moe = make_moe(top_k=1, aux_loss_coef=0.01, z_loss_coef=0.0)
    x = balanced_router(moe, 8)
    _, aux = moe(x)
    assert aux["load"].tolist() == [0.25] * 4
    assert aux["aux_loss"].item() == pytest.approx(1.0, abs=1e-6)
    assert aux["loss"].item() == pytest.approx(0.01, abs=1e-8)
    x[0, :, :] = 0
    x[0, :, 0] = 1.0  # everyone prefers expert 0
    _, aux = moe(x)
    assert aux["load"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert aux["aux_loss"].item() > 3.9  # N * P_0 with P_0 ~ 1


def test_z_loss_is_mean_squared_logsumexp_of_the_router_logits():
    moe = make_moe(z_loss_coef=1e-3, aux_loss_coef=0.0)
    x = torch.randn(2, 6, 16)
    _, aux = moe(x)
    logits = x.reshape(-1, 16) @ moe.router.weight.t()
    expected = (torch.log(torch.exp(logits).sum(-1)) ** 2).mean()
    torch.testing.assert_close(aux["z_loss"], expected)
    torch.testing.assert_close(aux["loss"], 1e-3 * expected)


def test_switch_capacity_drops_the_last_comers_and_passes_them_through():
    moe = make_moe(top_k=1, router="switch", capacity_factor=1.0, n_experts=4)
    x = balanced_router(moe, 8)
    x[0, :, :] = 0
    x[0, :, 0] = 1.0  # all 8 tokens choose expert 0; capacity = ceil(1.0 * 8 / 4) = 2
    x[0, :, 4:] = torch.randn(8, 12) * 0.01  # distinct tokens
    y, aux = moe(x)
    assert moe.capacity(8) == 2
    assert torch.all(y[0, 2:] == 0)  # tokens 2..7 came too late: the MoE adds nothing for them
    assert torch.all(y[0, :2].abs().sum(-1) > 0)  # the first two were processed
    assert aux["dropped"].item() == pytest.approx(6 / 8)
    moe.eval()  # eval capacity factor 2.0 -> capacity 4
    y, aux = moe(x)
    assert torch.all(y[0, 4:] == 0) and aux["dropped"].item() == pytest.approx(4 / 8)


def test_topk_gates_are_renormalised_and_switch_gates_are_the_probability():
    x = torch.randn(10, 16)
    top = make_moe(top_k=2)
    _, gates, probs, _ = top.route(x)
    torch.testing.assert_close(gates.sum(-1), torch.ones(10))
    sw = make_moe(top_k=1, router="switch")
    i, gates, probs, _ = sw.route(x)
    torch.testing.assert_close(gates[:, 0], probs.gather(1, i)[:, 0])


def test_router_gets_gradients_and_noise_only_in_training():
    moe = make_moe(top_k=2, noisy=True)
    x = torch.randn(2, 6, 16)
    y, aux = moe(x)
    (y.square().mean() + aux["loss"]).backward()
    assert moe.router.weight.grad.abs().sum() > 0 and moe.noise.weight.grad.abs().sum() > 0
    moe.eval()
    a, b = moe(x)[0], moe(x)[0]
    assert torch.equal(a, b)
    moe.train()
    torch.manual_seed(0)
    c = moe(x)[0]
    torch.manual_seed(1)
    assert not torch.equal(c, moe(x)[0])


def hand_routed_moe(x, router_weight, w_fc, w_proj, top_k, switch):
    """The MoE's output with the routing written out, independently of MoE.route: softmax
    of the router logits, the top k, top-k gates renormalised (Switch: the probability
    itself), then each token through its experts in a Python loop. x: (N, C)."""
    probs = (x @ router_weight.t()).softmax(-1)  # (N, E)
    rows = []
    for t in range(x.shape[0]):
        top_p, top_i = probs[t].topk(top_k)
        gates = top_p if switch else top_p / top_p.sum()
        y = torch.zeros(x.shape[1])
        for gate, e in zip(gates, top_i.tolist()):
            y = y + gate * (F.gelu(x[t] @ w_fc[e]) @ w_proj[e])
        rows.append(y)
    return torch.stack(rows)


@pytest.mark.parametrize("case", ["top2", "switch"])
def test_the_task_loss_alone_trains_the_router_through_the_gates(case):
    # The router's only path to the task loss is the gates (the expert choice is discrete):
    # with the balancing and z losses off, its gradient must be nonzero and equal to the
    # hand-routed reference's. The dispatch test cannot see a detached gate: its reference
    # calls MoE.route too. The router test above cannot either: aux["loss"] alone gives
    # the router a gradient.
    kw = dict(top_k=2) if case == "top2" else dict(top_k=1, router="switch", capacity_factor=4.0)
    moe = make_moe(aux_loss_coef=0.0, z_loss_coef=0.0, **kw)
    x = torch.randn(2, 7, 16)
    g = torch.randn(2, 7, 16)
    y, aux = moe(x)
    assert aux["dropped"] == 0 and aux["loss"] == 0
    (y * g).sum().backward()
    router_weight = moe.router.weight.detach().clone().requires_grad_(True)
    y_ref = hand_routed_moe(x.view(-1, 16), router_weight, moe.w_fc.detach(), moe.w_proj.detach(),
                            moe.top_k, switch=case == "switch")
    (y_ref * g.view(-1, 16)).sum().backward()
    torch.testing.assert_close(y, y_ref.view(2, 7, 16), rtol=1e-5, atol=1e-6)
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().max() > 1e-3
    torch.testing.assert_close(moe.router.weight.grad, router_weight.grad, rtol=1e-5, atol=1e-6)


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="top_k=2 must be 1"):
        MoE(16, 24, 4, top_k=2, router="switch")
    with pytest.raises(ValueError, match="top_k=5 must be between 1 and n_experts=4"):
        MoE(16, 24, 4, top_k=5)
    with pytest.raises(ValueError, match="router='hash'"):
        MoE(16, 24, 4, router="hash")
    assert math.ceil(1.25 * 10 / 4) == MoE(16, 24, 4, top_k=1, router="switch").capacity(10)


# ----------------------------------------------------------------------------------------
# in the GPT and through train.py


def moe_gpt(seed=0, **kw):
    from model import GPT, GPTConfig

    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, moe_num_experts=4, moe_top_k=2)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


def test_gpt_adds_the_weighted_aux_losses_in_training_only():
    from moe import MoE as _MoE  # noqa: F401

    model = moe_gpt(moe_every=2, moe_router="switch", moe_top_k=1)
    assert [b.is_moe for b in model.transformer.h] == [False, True]
    x = torch.randint(0, 50, (3, 16))
    loss_train = model(x, x)[1]
    from model import moe_statistics

    stats = moe_statistics(model.moe_stats)
    moe = model.moe_layers()[0]
    expected = stats["ce"] + moe.aux_loss_coef * stats["aux_loss"] + moe.z_loss_coef * stats["z_loss"]
    assert loss_train.item() == pytest.approx(expected, rel=1e-6)
    model.eval()
    assert model(x, x)[1].item() == pytest.approx(moe_statistics(model.moe_stats)["ce"], rel=1e-7)
    # active parameters: the dense block's MLP plus 1 of the 4 experts of the MoE block
    expert = sum(p.numel() for p in (moe.w_fc, moe.w_proj))
    assert model.get_num_params() - model.get_num_params(active=True) == expert * 3 // 4


def test_gpt_with_moe_checkpointed_equals_plain_with_dropout():
    a = moe_gpt(dropout=0.1)
    b = moe_gpt(dropout=0.1, grad_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 50, (3, 16))
    for m in (a, b):
        torch.manual_seed(3)
        m(x, x)[1].backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad), n


def test_an_inference_forward_between_training_steps_changes_nothing():
    from config import load_config
    from step import make_optimizer

    tc = load_config(["--learning_rate=1e-2", "--warmup_iters=0"]).train
    losses = []
    for with_eval in (False, True):
        model = moe_gpt(moe_noisy=True)
        opt = make_optimizer(model, tc)
        torch.manual_seed(0)
        run = []
        for step in range(3):
            x = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(step))
            loss = model(x, x)[1]
            loss.backward()
            opt.step()
            opt.zero_grad()
            run.append(loss.item())
            if with_eval:
                model.eval()
                with torch.no_grad():
                    model(x.flip(0), x)  # a forward whose aux losses must not reach training
                model.train()
        losses.append(run)
    assert losses[0] == losses[1]


def test_moe_training_logs_routing_and_resumes_exactly(char_dataset, tmp_path):
    import json
    import os

    import train
    from config import load_config
    from conftest import TINY

    def run(args, out):
        cfg = load_config(TINY + [f"--dataset={char_dataset}", f"--out_dir={out}", "--eval_iters=2",
                                               "--moe_num_experts=4", "--moe_top_k=2", "--log_interval=1",
                                               "--warmup_iters=2", "--lr_decay_iters=8"] + args)
        return train.train(cfg)

    run(["--max_iters=8", "--eval_interval=4"], tmp_path / "straight")
    run(["--max_iters=4", "--eval_interval=4"], tmp_path / "split")
    run(["--init_from=resume", "--max_iters=8"], tmp_path / "split")
    rows = [[json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))] for d in
            (tmp_path / "straight", tmp_path / "split")]
    train_rows = [r for r in rows[0] if "loss" in r]
    assert all(len(r["load"]) == 2 and len(r["load"][0]) == 4 for r in train_rows)
    assert all(abs(sum(r["load"][0]) - 1) < 1e-6 and r["dropped"] == 0 and r["aux_loss"] > 0 for r in train_rows)
    strip = lambda rs: [(r["iter"], r.get("loss"), r.get("val_loss")) for r in rs]  # noqa: E731
    assert strip(rows[0]) == strip(rows[1])
    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Switch with bf16 autocast, accumulation and checkpointing also trains
    row = run(["--max_iters=3", "--eval_interval=3", "--moe_router=switch", "--moe_top_k=1", "--dtype=bfloat16",
               "--gradient_accumulation_steps=2", "--grad_checkpointing=True"], tmp_path / "switch")
    assert math.isfinite(row["val_loss"])
