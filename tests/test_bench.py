"""bench.py's peak tensor memory: the profiler's allocation events add up to exactly what a
step held at its peak, and the tensors alive between steps count each storage once (the
tied embedding and output head are one)."""

import torch

import bench
from model import GPT, GPTConfig


def test_peak_tensor_bytes_counts_a_known_step_exactly():
    def step():
        a = torch.empty(1 << 20)  # 4 MiB
        b = torch.empty(1 << 19)  # + 2 MiB: the peak, 6 MiB
        del a, b
        c = torch.empty(1 << 18)  # 1 MiB, after both were freed: below the peak
        del c

    assert bench.peak_tensor_bytes(step, 1000) == 1000 + 6 * 2**20


def test_live_tensor_bytes_are_weights_and_adamw_state_once_each():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    params = list(model.parameters())  # the tied weight appears once
    n = sum(p.numel() for p in params)
    assert bench.live_tensor_bytes(model, torch.optim.AdamW(params)) == 4 * n
    opt = torch.optim.AdamW(params, fused=True)
    model(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))[1].backward()
    opt.step()
    # weights, gradients, and per parameter AdamW's two moments plus its step counter (one float)
    assert bench.live_tensor_bytes(model, opt) == 4 * n + 4 * n + 2 * 4 * n + 4 * len(params)
