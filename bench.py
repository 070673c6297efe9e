"""
Throughput, MFU and peak memory of the training step, one configuration per row, side by side.

    python bench.py                  # nanoGPT's Shakespeare model (6 layers, 384 wide, block 256)
    python bench.py --quick          # a smaller model and fewer steps: 1-2 minutes
    python bench.py --rows fp32,fp32_ckpt --batch_size=32 --steps=3
    python bench.py --moe            # MoE feed-forward vs the dense MLP with the same active parameters
    python bench_attention.py        # the attention kinds alone, and generation with the KV cache
Each row runs in a subprocess of its own, so its peak memory is that row's alone. Two
figures: peak RSS from the OS (getrusage), what the process held, runtime and allocator
caches included; and peak tensor memory, the bytes held by live tensors during one more
(profiled) step, which is what activations, gradients and optimizer state cost and what
gradient checkpointing changes (on CUDA both are torch.cuda.max_memory_allocated). The
step timed is train.py's own (step.forward_backward + step.optimizer_step) on random tokens.

MFU (model FLOPs utilisation, PaLM appendix B) = the model's training FLOPs per second
divided by the peak matmul FLOP/s *measured in the same run, for the same dtype, on the
matmul shapes this model multiplies* (every Linear's forward and both backward products).
So the figure means the same on any machine, and a row above 100% would mean the peak was
measured wrong. A bf16 row is skipped, with the measured reason, where the CPU has no bf16
matmul kernels (an AVX2-only CPU emulates them, ~70x slower than fp32).
"""

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time

from errors import UserError, cli

# rows: name -> (dtype, gradient checkpointing, micro-batch divisor for accumulation)
ROWS = {
    "fp32": ("float32", False, 1),
    "bf16": ("bfloat16", False, 1),
    "fp32_ckpt": ("float32", True, 1),
    "bf16_ckpt": ("bfloat16", True, 1),
    "fp32_accum4": ("float32", False, 4),  # batch_size/4 per micro-batch, 4 micro-batches
}


# ----------------------------------------------------------------------------------------
# inside one row's subprocess


def matmul_shapes(model, tokens):
    """(M, K, N, count) of every matmul a training step of `model` runs on `tokens` rows:
    each Linear's forward (tokens x in -> out) and its two backward products."""
    import torch.nn as nn

    shapes = {}
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            i, o = mod.in_features, mod.out_features
            for s in ((tokens, i, o), (tokens, o, i), (o, tokens, i)):  # forward, grad input, grad weight
                shapes[s] = shapes.get(s, 0) + 1
    return [(m, k, n, c) for (m, k, n), c in shapes.items()]


def measure_peak_matmul(shapes, dtype, device, seconds=2.0):
    """FLOP/s of plain matmuls of the given shapes in dtype: total FLOPs / total time."""
    import torch

    flops = total = 0.0
    for m, k, n, count in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        a @ b  # warm up
        reps, t0 = 0, time.perf_counter()
        while True:
            a @ b
            reps += 1
            if device != "cpu":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if dt > seconds / len(shapes) and reps >= 2:
                break
        total += count * dt / reps
        flops += count * 2 * m * k * n
    return flops / total


def run_peak(spec):
    """The peak matmul FLOP/s of spec's dtype on the model's shapes at one micro-batch."""
    import torch

    from model import GPT, GPTConfig

    mc = GPTConfig(n_layer=spec["n_layer"], n_head=spec["n_head"], n_embd=spec["n_embd"],
                   block_size=spec["block_size"], vocab_size=65)
    tokens = spec["batch_size"] // spec["accum"] * spec["block_size"]
    dtype, device = getattr(torch, spec["dtype"]), spec["device"]
    if dtype != torch.float32 and device == "cpu":
        # a quick probe first: an emulated dtype would take minutes on the full shapes
        probe = [(512, spec["n_embd"], spec["n_embd"], 1)]
        low, ref = measure_peak_matmul(probe, dtype, device, 0.2), measure_peak_matmul(probe, torch.float32, device, 0.2)
        if low < 0.25 * ref:
            return {"peak": low, "emulated": True}
    return {"peak": measure_peak_matmul(matmul_shapes(GPT(mc), tokens), dtype, device)}


def live_tensor_bytes(model, optimizer):
    """Bytes of the tensors alive between steps: parameters, buffers, gradients and the
    optimizer's state, each storage counted once (the tied embedding is one)."""
    import torch

    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def peak_tensor_bytes(step, live_before):
    """Peak bytes held by live tensors during one call of step(): the CPU counterpart of
    torch.cuda.max_memory_allocated. The profiler records every allocation and free of
    PyTorch's allocator as a "[memory]" event (+bytes, -bytes); their running sum, in time
    order, peaks at the most the step ever held on top of live_before. Unlike peak RSS it
    does not see the runtime (~400 MiB) nor the freed memory glibc keeps for reuse."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        held += e.nbytes()
        peak = max(peak, held)
    return live_before + peak


def run_row(spec):
    import numpy as np
    import torch

    from batches import RandomWindows
    from config import TrainConfig
    from model import GPT, GPTConfig
    from step import forward_backward, make_optimizer, optimizer_step
    from system import autocast_context

    device = spec["device"]
    torch.manual_seed(0)
    mc = GPTConfig(n_layer=spec["n_layer"], n_head=spec["n_head"], n_embd=spec["n_embd"],
                   block_size=spec["block_size"], vocab_size=65, dropout=spec["dropout"],
                   grad_checkpointing=spec["ckpt"])
    tc = TrainConfig(batch_size=spec["batch_size"] // spec["accum"],
                     gradient_accumulation_steps=spec["accum"], learning_rate=1e-3)
    model = GPT(mc).to(device)
    ptdtype = getattr(torch, spec["dtype"])
    data = np.random.default_rng(0).integers(0, 65, 200_000).astype(np.uint16)
    windows = RandomWindows(data, tc.batch_size, mc.block_size, device, 0)
    optimizer = make_optimizer(model, tc)
    ctx = autocast_context(device, ptdtype)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=(ptdtype == torch.float16))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()

    def step():  # train.py's step: step.forward_backward + step.optimizer_step
        loss = forward_backward(model, windows, ctx, scaler, tc.gradient_accumulation_steps)
        optimizer_step(model, optimizer, scaler, 1.0)
        return loss.item()  # also syncs CUDA

    for _ in range(spec["warmup"]):
        step()
    times = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    dt = sorted(times)[len(times) // 2]  # median step
    tok_s = spec["batch_size"] * mc.block_size / dt
    flops = model.flops_per_token(mc.block_size) * tok_s
    peak = spec["peak"]
    if device == "cpu":
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
        tensor_mem = peak_tensor_bytes(step, live_tensor_bytes(model, optimizer)) / 2**20  # one more step, profiled
    else:
        peak_mem = tensor_mem = torch.cuda.max_memory_allocated() / 2**20  # CUDA counts tensors, not the process
    return {"s_per_iter": dt, "tokens_per_sec": tok_s, "model_tflops": flops / 1e12,
            "peak_tflops": peak / 1e12, "mfu": flops / peak, "peak_mem_mib": peak_mem,
            "peak_tensor_mib": tensor_mem, "rss_before_step_mib": rss_before,
            "params_m": model.get_num_params() / 1e6}


# ----------------------------------------------------------------------------------------
# MoE feed-forward vs dense MLP (--moe)


def moe_layers(C, n_experts=8):
    """The feed-forward variants compared, each with the dense MLP's active parameters per
    token (8C^2): the dense MLP (hidden 4C), top-2 of 8 experts of hidden 2C, Switch top-1
    of 8 experts of hidden 4C (capacity factor 1.25)."""
    from model import MLP, GPTConfig
    from moe import MoE

    return {
        "dense MLP (hidden 4C)": MLP(GPTConfig(n_embd=C, n_head=1)),
        f"top-2 of {n_experts} (hidden 2C)": MoE(C, 2 * C, n_experts, top_k=2),
        f"switch top-1 of {n_experts} (hidden 4C)": MoE(C, 4 * C, n_experts, top_k=1, router="switch"),
    }


def bench_moe(C, token_counts, steps, warmup):
    """Median forward+backward seconds of each feed-forward variant at each token count."""
    import torch

    torch.manual_seed(0)
    layers = moe_layers(C)
    print(f"feed-forward layers at n_embd={C}, fp32, forward + backward (median of {steps}), "
          f"torch threads: {_threads()}")
    print("| tokens | " + " | ".join(layers) + " | MoE / dense |")
    print("|---" * (len(layers) + 2) + "|")
    rows = []
    for n in token_counts:
        x = torch.randn(1, n, C, requires_grad=True)
        times = {}
        for name, layer in layers.items():
            def step():
                out = layer(x)
                y, extra = (out[0], out[1]["loss"]) if isinstance(out, tuple) else (out, 0.0)
                (y.square().mean() + extra).backward()

            ts = step_seconds(step, steps, warmup)
            times[name] = ts[len(ts) // 2]  # the median
        dense = list(times.values())[0]
        ratios = ", ".join(f"{t / dense:.2f}x" for t in list(times.values())[1:])
        print(f"| {n:,} | " + " | ".join(f"{1000 * t:.1f} ms" for t in times.values()) + f" | {ratios} |", flush=True)
        rows.append({"tokens": n, **times})
    return rows


def step_seconds(step, steps, warmup, device="cpu"):
    """Wall times of `steps` calls of step(), after `warmup` untimed ones, fastest first."""
    import torch

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)


def step_peak_bytes(step, live_before, device="cpu"):
    """Peak tensor bytes during one call of step(): peak_tensor_bytes on CPU, the allocator's
    own peak on CUDA (which already holds live_before)."""
    import torch

    if device == "cpu":
        with stderr_silenced():  # the profiler's own start/stop lines, in a table printed in-process
            return peak_tensor_bytes(step, live_before)
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


@contextlib.contextmanager
def stderr_silenced():
    """File descriptor 2 goes to /dev/null: what the C++ side writes there too."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


# ----------------------------------------------------------------------------------------
# the parent: one subprocess per row, then the table


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description="benchmark the training step, one row per configuration")
    p.add_argument("--quick", action="store_true", help="4 layers, 256 wide, block 128, 3 steps: 1-2 minutes")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--n_head", type=int, default=6)
    p.add_argument("--n_embd", type=int, default=384)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=16, help="sequences per optimizer step")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=5, help="timed steps per row (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--moe", action="store_true", help="time the MoE feed-forward against the dense MLP instead")
    p.add_argument("--tokens", default="1024,4096,16384", help="--moe: token counts (batch x block)")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_peak", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._child:  # inside a row's subprocess
        print(json.dumps(run_row(json.loads(args._child))))
        return
    if args._peak:
        print(json.dumps(run_peak(json.loads(args._peak))))
        return
    if args.steps < 1 or args.warmup < 0:
        raise UserError(f"--steps={args.steps} must be >= 1 and --warmup={args.warmup} >= 0")
    if args.moe:
        rows = bench_moe(args.n_embd, ints("--tokens", args.tokens), args.steps, args.warmup)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "moe_rows": rows}, f, indent=2)
        return
    if args.quick:
        args.n_layer, args.n_head, args.n_embd, args.block_size, args.steps, args.warmup = 4, 4, 256, 128, 3, 1
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise UserError(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if any(args.batch_size % ROWS[n][2] for n in names):
        raise UserError(f"--batch_size={args.batch_size} must divide by 4 for the accum4 row")

    print(f"model: {args.n_layer} layers, {args.n_head} heads, {args.n_embd} wide, block {args.block_size}, "
          f"batch {args.batch_size}, dropout {args.dropout}, {args.device}, torch threads: {_threads()}")
    print(HEADER)
    print("|---" * HEADER.count(" | ") + "|---|")
    results = []
    peaks = {}  # (dtype, micro-batch) -> measured peak matmul FLOP/s, each in a subprocess of its own
    for name in names:
        dtype, ckpt, accum = ROWS[name]
        spec = dict(vars(args), dtype=dtype, ckpt=ckpt, accum=accum)
        for k in ("_child", "_peak", "rows", "json", "quick"):
            spec.pop(k, None)
        for dt in (dtype, "float32"):
            if (dt, accum) not in peaks:
                peaks[(dt, accum)] = child(["--_peak", json.dumps({**spec, "dtype": dt})])
        spec["peak"] = peaks[(dtype, accum)]["peak"]
        if peaks[(dtype, accum)].get("emulated"):
            # one step would take minutes: say why instead
            fp32_peak = peaks[("float32", accum)]["peak"]
            row = {"row": name, "skipped": f"{dtype} matmul here runs at {spec['peak'] / 1e12:.4f} TFLOP/s vs "
                                          f"fp32 {fp32_peak / 1e12:.3f}: this CPU has no {dtype} matmul kernels"}
        else:
            row = {"row": name, **child(["--_child", json.dumps(spec)])}
        results.append(row)
        print(format_row(row), flush=True)
    base = next((r for r in results if r["row"] == "fp32" and "skipped" not in r), None)
    if base:
        print("\nrelative to fp32:")
        for r in results:
            if "skipped" not in r:
                print(f"  {r['row']:<12} speed x{r['tokens_per_sec'] / base['tokens_per_sec']:.2f}   "
                      f"peak RSS {100 * (r['peak_mem_mib'] / base['peak_mem_mib'] - 1):+.0f}%   "
                      f"peak tensor memory {100 * (r['peak_tensor_mib'] / base['peak_tensor_mib'] - 1):+.0f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": results}, f, indent=2)


HEADER = ("| row | s/iter | tokens/s | model TFLOP/s | peak matmul TFLOP/s | MFU | peak RSS (MiB) "
          "| peak tensor memory (MiB) |")


def format_row(r):
    if "skipped" in r:
        return f"| {r['row']} | skipped: {r['skipped']} |"
    return (f"| {r['row']} | {r['s_per_iter']:.3f} | {r['tokens_per_sec']:,.0f} | {r['model_tflops']:.3f} | "
            f"{r['peak_tflops']:.3f} | {100 * r['mfu']:.0f}% | {r['peak_mem_mib']:,.0f} | {r['peak_tensor_mib']:,.0f} |")


def ints(flag, text, low=1, count=None):
    """'256,1024' -> [256, 1024]; anything but comma-separated integers >= low (exactly
    `count` of them, if given) is a UserError naming the flag."""
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < low or count not in (None, len(values)):
        what = "an integer" if count == 1 else f"{count or 'one or more'} comma-separated integers"
        raise UserError(f"{flag}={text} must be {what} >= {low}")
    return values


def child(args):
    """Run this script with args in a fresh process; its last stdout line is JSON."""
    r = subprocess.run([sys.executable, os.path.abspath(__file__)] + args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: benchmark subprocess failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _cuda():
    import torch

    return torch.cuda.is_available()


def _threads():
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
