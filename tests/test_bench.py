"""bench.py's peak tensor memory: the profiler's allocation events add up to exactly what a
step held at its peak, and the tensors alive between steps count each storage once (the
tied embedding and output head are one). --attention and --generate at tiny sizes: each
row's numbers are there and sane (no timing asserted), the growth exponent is exact on a
power law, generation with and without the KV cache gives the same tokens, and a bad value
is one error line."""

import math

import pytest
import torch

import bench
import bench_attention
from attention import scored_pairs
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


def test_attention_row_times_and_measures_every_kind():
    cols = bench_attention.attention_columns([16, 32], block=16, summary=2)
    assert list(cols) == ["full", "sliding16", "sliding32", "blocksparse"]
    row = bench_attention.attention_row(64, (1, 2, 8), cols, steps=1, warmup=0)
    each = 1 * 2 * 64 * 8 * 4  # bytes of one (B, H, T, hs) fp32 tensor
    for name, (kind, window, block, summary) in cols.items():
        assert row["s"][name] > 0
        # q, k, v and the output's gradient, plus at least the output and the three gradients
        assert row["peak_bytes"][name] >= 4 * each + 4 * each
        assert row["pairs"][name] == scored_pairs(64, kind, window, block, summary)
    assert row["pairs"]["full"] == 64 * 65 // 2 > row["pairs"]["sliding16"]


def test_growth_exponent_is_exact_on_a_power_law():
    Ts = [256, 512, 1024, 4096]
    assert math.isclose(bench_attention.growth_exponent(Ts, [3e-6 * T**2 for T in Ts]), 2.0)
    assert math.isclose(bench_attention.growth_exponent(Ts[:2], [5.0, 7.0]), math.log(7 / 5) / math.log(2))


def test_generate_row_gives_the_same_tokens_with_and_without_the_cache():
    torch.manual_seed(0)
    # 20 tokens from a block_size=8 model: the context fills and drops its older half often
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=65)).eval()
    row = bench_attention.generate_row(model, 20)
    assert row["tokens"] == 20 and row["s_cache"] > 0 and row["s_recompute"] > 0
    assert row["identical"] is True


def test_attention_and_generate_print_their_tables(capsys):
    bench_attention.main(["--attention", "--attention_T=32,64,128", "--attention_shape=1,1,8", "--attn_window=8,16",
                "--attn_block=16", "--attn_summary=2", "--steps=1", "--warmup=0"])
    out = capsys.readouterr().out.splitlines()
    assert out[2] == ("| T | full ms | sliding8 ms (x full) | sliding16 ms (x full) | blocksparse ms (x full) | "
                      "full peak MiB | sliding8 peak MiB | sliding16 peak MiB | blocksparse peak MiB |")
    assert [line.split(" | ")[0] for line in out[4:7]] == ["| 32", "| 64", "| 128"]
    assert [line.split(" | ")[0] for line in out[-4:]] == ["| time, T=64..128", "| time, T=32..128, fitted",
                                                          "| peak memory, T=64..128",
                                                          "| peak memory, T=32..128, fitted"]
    bench_attention.main(["--generate", "--generate_tokens=5,12", "--n_layer=1", "--n_head=1", "--n_embd=16", "--block_size=8",
                "--attn_window=4", "--attn_block=4", "--attn_summary=1",
                "--generate_attention=full,sliding,blocksparse"])
    out = capsys.readouterr().out.splitlines()
    names = ["full", "sliding (window 4)", "blocksparse (block 4, summary 1)"]
    assert [line.split(" | ")[:2] for line in out[3:9]] == [[f"| {k}", n] for k in names for n in ("5", "12")]
    assert all(line.endswith("x | yes |") for line in out[3:9])
    assert out[-1] == "both paths gave identical tokens in every row (same seed)"


BAD_FLAGS = {
    "--attention_T=256,x": "error: --attention_T=256,x must be one or more comma-separated integers >= 1",
    "--attention_T=0": "error: --attention_T=0 must be one or more comma-separated integers >= 1",
    "--attention_shape=4,4": "error: --attention_shape=4,4 must be 3 comma-separated integers >= 1",
    "--attn_window=": "error: --attn_window= must be one or more comma-separated integers >= 1",
    "--attn_block=1.5": "error: --attn_block=1.5 must be an integer >= 1",
    "--attn_summary=200": "error: --attn_summary=200 must be in [0, --attn_block=128]",
    "--generate_tokens=-5": "error: --generate_tokens=-5 must be one or more comma-separated integers >= 1",
    "--generate_attention=full,local": "error: --generate_attention=full,local: choose from full, sliding, blocksparse",
    "--n_head=5": "error: n_embd=384 must be a multiple of n_head=5",
    "--steps=0": "error: --steps=0 must be >= 1 and --warmup=2 >= 0",
}


@pytest.mark.parametrize("flag", list(BAD_FLAGS))
def test_a_bad_attention_or_generate_value_is_one_error_line(flag, capsys):
    mode = "--attention" if flag.startswith(("--attention", "--attn")) else "--generate"
    with pytest.raises(SystemExit) as e:
        bench_attention.main([mode, flag])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == BAD_FLAGS[flag] + "\n" and captured.out == ""
