"""Weight-only quantization (quant.py, quantize.py): the rounding error is at most half a step
per weight; int4 packing round-trips in the documented nibble order; GPTQ equals
round-to-nearest when the inputs are uncorrelated (H = I) and beats it on correlated ones;
the int8 kernel and the dequantized path compute the same layer; a quantized run folder
loads as QuantLinear layers computing exactly the dequantized model, samples, evaluates
within a hair of fp32 at int8, and refuses training; bad flags are one line."""

import os

import pytest
import torch
import torch.nn.functional as F

import quant
import quantize
import train
from checkpoint import read_checkpoint, restore_model
from config import load_config
from conftest import TINY, exit_code
from quant import QuantLinear, dequantize, gptq, input_hessian, pack_int4, qmax, quantize_rtn, unpack_int4

FORMATS = [(8, 0), (4, 0), (4, 32), (4, 8)]


@pytest.mark.parametrize("bits,group_size", FORMATS)
def test_rounding_error_is_at_most_half_a_step(bits, group_size):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 64, generator=g) * torch.rand(48, 1, generator=g)
    w[3] = 0.0  # a zero row: scale 1, codes 0, exact
    codes, scale = quantize_rtn(w, bits, group_size)
    assert codes.dtype == torch.int8 and codes.abs().max() <= qmax(bits)
    assert scale.shape == (48, 64 // (group_size or 64))
    step = scale.repeat_interleave(group_size or 64, dim=1)  # each weight's step
    err = (w - dequantize(codes, scale, group_size)).abs()
    assert (err <= step / 2 + 1e-7).all() and err[3].max() == 0
    # the largest weight of each group is exact (it sets the scale): the codes reach +-qmax
    assert (codes.abs().reshape(48, -1, group_size or 64).amax(-1)[torch.arange(48) != 3] == qmax(bits)).all()


def test_int4_packing_round_trips_in_the_documented_nibble_order():
    codes = torch.tensor([[-8, 7, 1, -1]], dtype=torch.int8)
    packed = pack_int4(codes)
    # column 0 in the low nibble, column 1 in the high one, each stored as code + 8
    assert packed.tolist() == [[0 | (15 << 4), 9 | (7 << 4)]]
    every = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 2)  # all 16 codes, in both nibbles
    assert torch.equal(unpack_int4(pack_int4(every)), every)
    assert torch.equal(unpack_int4(pack_int4(every.flip(1))), every.flip(1))


def correlated_inputs(n=4000, k=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) @ torch.randn(k, k, generator=g) / 4  # features far from independent


@pytest.mark.parametrize("bits,group_size", FORMATS)
def test_gptq_with_uncorrelated_inputs_is_round_to_nearest(bits, group_size):
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    # H = I: no column's error can be compensated by another's, so GPTQ has nothing to add
    codes, scale = gptq(w, torch.eye(64), bits, group_size, damp=0.0)
    want = quantize_rtn(w, bits, group_size)
    assert torch.equal(codes, want[0]) and torch.allclose(scale, want[1])


@pytest.mark.parametrize("bits,group_size", FORMATS)
def test_gptq_lowers_the_layers_output_error_against_round_to_nearest(bits, group_size):
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    x = correlated_inputs()
    calib, held_out = x[:3000], x[3000:]

    def output_error(codes_scale, inputs):
        return ((inputs @ w.T - inputs @ dequantize(*codes_scale, group_size).T) ** 2).mean().item()

    rtn = quantize_rtn(w, bits, group_size)
    better = gptq(w, input_hessian(calib), bits, group_size)
    # on the calibration data and on inputs it has not seen, from the same distribution
    assert output_error(better, calib) < 0.75 * output_error(rtn, calib)
    assert output_error(better, held_out) < 0.8 * output_error(rtn, held_out)


@pytest.mark.parametrize("bits,group_size", FORMATS)
def test_quant_linear_computes_the_dequantized_layer(bits, group_size):
    g = torch.Generator().manual_seed(3)
    w, b, x = torch.randn(40, 64, generator=g), torch.randn(40, generator=g), torch.randn(2, 5, 64, generator=g)
    codes, scale = quantize_rtn(w, bits, group_size)
    layer = QuantLinear.from_codes(codes, scale, bits, group_size, b, torch.float32)
    assert not list(layer.parameters(recurse=True)) or not any(p.requires_grad for p in layer.parameters())
    assert torch.equal(layer.codes(), codes)
    want = F.linear(x, dequantize(codes, scale, group_size), b)
    if bits == 8 and group_size == 0 and quant.int8_kernel_fast():
        # 10 rows: torch's int8 kernel, with bf16 activations (quant.QuantLinear.forward)
        assert torch.allclose(layer(x), want, rtol=2e-2, atol=5e-2) and not torch.equal(layer(x), want)
    else:
        assert torch.equal(layer(x), want)
    big = torch.randn(40, 64, generator=g)  # rows past KERNEL_ROWS: always the exact path
    assert torch.equal(layer(big), F.linear(big, dequantize(codes, scale, group_size), b))
    stored = layer.qweight.numel() * layer.qweight.element_size()
    assert stored == 40 * 64 * bits // 8  # one byte per int8 code, half a byte per int4 code


@pytest.fixture(scope="module")
def run(tmp_path_factory, char_dataset):
    out = tmp_path_factory.mktemp("quant") / "run"
    train.train(load_config(TINY + [f"--dataset={char_dataset}", f"--out_dir={out}", "--max_iters=60",
                                    "--eval_interval=60", "--eval_iters=2", "--learning_rate=3e-3"]))
    return str(out)


def val_loss(folder, out, char_dataset):
    row = train.train(load_config(TINY + [f"--dataset={char_dataset}", f"--init_from={folder}", "--eval_only=True",
                                          f"--out_dir={out}", "--eval_iters=20"]))
    return row["val_loss"]


@pytest.mark.parametrize("bits,method", [(8, "rtn"), (4, "rtn"), (4, "gptq")])
def test_a_quantized_run_folder_loads_samples_and_evaluates(run, char_dataset, tmp_path, capsys, bits, method):
    to = str(tmp_path / "q")
    group = ["--group_size=8"] if bits == 4 else []
    assert exit_code(quantize.main, [f"--out_dir={run}", f"--to={to}", f"--bits={bits}", f"--method={method}",
                                     "--calib_batches=4"] + group, capsys)[0] == 0
    ckpt = read_checkpoint(os.path.join(to, "ckpt.pt"))
    assert ckpt["quant"]["bits"] == bits and ckpt["quant"]["layers"] and "lm_head" not in ckpt["quant"]["layers"]
    model = restore_model(ckpt, "test").eval()
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == len(ckpt["quant"]["layers"]) == 4 * 2  # c_attn, c_proj, c_fc, mlp c_proj per block
    # exactly a plain GPT whose Linear weights are the dequantized ones (int8's kernel: to the sum order)
    plain = restore_model(read_checkpoint(os.path.join(run, "ckpt.pt")), "test").eval()
    state = plain.state_dict()
    for name in ckpt["quant"]["layers"]:
        state[f"{name}.weight"] = model.get_submodule(name).weight_fp32()
    plain.load_state_dict(state)
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    assert torch.allclose(model(x)[0], plain(x)[0], atol=1e-4) if bits == 8 else torch.equal(model(x)[0], plain(x)[0])
    # the stored Linear weights: a quarter (int8) or an eighth (int4) of fp32, plus the scales
    fp32 = sum(model.get_submodule(n).in_features * model.get_submodule(n).out_features * 4 for n in ckpt["quant"]["layers"])
    codes = sum(ckpt["model"][f"{n}.qweight"].numel() * ckpt["model"][f"{n}.qweight"].element_size()
                for n in ckpt["quant"]["layers"])
    assert codes == fp32 * bits // 32
    # it evaluates through train.py; int8 within a hair of the fp32 run
    gap = val_loss(to, str(tmp_path / "eval"), char_dataset) - val_loss(run, str(tmp_path / "eval-fp32"), char_dataset)
    assert abs(gap) < (0.01 if bits == 8 else 0.1), gap
    # and samples
    import sample

    assert exit_code(sample.main, [f"--out_dir={to}", "--num_samples=1", "--max_new_tokens=20"], capsys)[0] == 0


def test_training_a_quantized_model_and_bad_flags_are_one_line_errors(run, char_dataset, tmp_path, capsys):
    to = str(tmp_path / "q")
    assert exit_code(quantize.main, [f"--out_dir={run}", f"--to={to}"], capsys)[0] == 0
    code, err = exit_code(train.main, TINY + [f"--dataset={char_dataset}", f"--init_from={to}",
                                              f"--out_dir={tmp_path / 'ft'}", "--max_iters=2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "holds a quantized model (int8, quantize.py)" in err, err
    assert "--peft=lora: QLoRA" in err
    for args, words in [(["--bits=3"], "--bits=3: use 8 or 4"), (["--method=awq"], "--method=awq: use rtn or gptq"),
                        (["--bits=4", "--group_size=7"], "--group_size=7 must be even and divide"),
                        ([f"--to={run}"], "--to must be another folder"),
                        (["--calib_batches=0"], "--calib_batches=0 >= 1")]:
        argv = [f"--out_dir={run}", f"--to={tmp_path / 'other'}"] + args
        code, err = exit_code(quantize.main, argv, capsys)
        assert code == 2 and err.count("\n") == 1 and words in err, (args, err)
    code, err = exit_code(quantize.main, [f"--out_dir={to}", f"--to={tmp_path / 'again'}"], capsys)
    assert code == 2 and "already quantized" in err
    import prune

    code, err = exit_code(prune.main, [f"--out_dir={to}", f"--to={tmp_path / 'pruned'}", "--keep=0.5"], capsys)
    assert code == 2 and err.count("\n") == 1 and "is quantized: prune its source run" in err, err


# ----------------------------------------------------------------------------------------
# quantization-aware training


def test_fake_quantization_forwards_the_stored_weights_and_passes_gradients_straight_through():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(16, 32, generator=g, requires_grad=True)
    for bits, group in ((4, 8), (8, 0)):
        out = quant.fake_quantize(w, bits, group)
        codes, scale = quantize_rtn(w.detach(), bits, group)
        # the value: what quantize.py stores (scales in their stored dtype), dequantized
        assert torch.equal(out, dequantize(codes, scale.to(quant.scale_dtype(bits, group)), group))
        upstream = torch.randn(16, 32, generator=g)
        (grad,) = torch.autograd.grad((out * upstream).sum(), w)
        assert torch.equal(grad, upstream)  # the rounding's gradient taken as 1: straight through
    # at 16 bits the fake quantization is all but the identity: a QAT step = a plain one
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    plain = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=40))
    fake = quant.apply_qat(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=40)), 16, 0)
    fake.load_state_dict(plain.state_dict())
    x = torch.randint(0, 40, (2, 16), generator=g)
    (lp, loss_p), (lf, loss_f) = plain(x, x), fake(x, x)
    loss_p.backward()
    loss_f.backward()
    assert torch.allclose(lp, lf, atol=1e-4) and not torch.equal(lp, lf)
    for (name, a), b in zip(plain.named_parameters(), fake.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name


def test_a_qat_run_quantizes_to_exactly_the_model_it_trained(char_dataset, tmp_path, capsys):
    run, to = str(tmp_path / "qat"), str(tmp_path / "q4")
    train.train(load_config(TINY + [f"--dataset={char_dataset}", f"--out_dir={run}", "--max_iters=20",
                                    "--eval_interval=20", "--eval_iters=2", "--qat_bits=4", "--qat_group_size=8"]))
    assert exit_code(quantize.main, [f"--out_dir={run}", f"--to={to}", "--bits=4", "--group_size=8"], capsys)[0] == 0
    trained = restore_model(read_checkpoint(os.path.join(run, "ckpt.pt")), "test").eval()  # a plain GPT: fp32 masters
    quant.apply_qat(trained, 4, 8)
    quantized = restore_model(read_checkpoint(os.path.join(to, "ckpt.pt")), "test").eval()
    x = torch.randint(0, trained.config.vocab_size, (2, 16))
    assert torch.equal(trained(x)[0], quantized(x)[0])  # what QAT trained is what quantize.py ships
    for args, words in [(["--qat_bits=3"], "qat_bits=3: use 8 or 4"),
                        (["--qat_bits=4", "--qat_group_size=12"], "qat_group_size=12"),
                        (["--qat_group_size=8"], "qat_group_size is a setting of qat_bits=4")]:
        code, err = exit_code(train.main, TINY + [f"--dataset={char_dataset}", f"--out_dir={tmp_path / 'x'}",
                                                  "--max_iters=1"] + args, capsys)
        assert code == 2 and err.count("\n") == 1 and words in err, (args, err)


# ----------------------------------------------------------------------------------------
# QLoRA: LoRA on a frozen quantized base


def test_qlora_trains_only_the_adapters_on_an_unchanged_int4_base(run, char_dataset, tmp_path, capsys):
    import export
    import sample
    from checkpoint import file_sha256
    from peft import LoRALinear

    q4, out = str(tmp_path / "q4"), str(tmp_path / "qlora")
    assert exit_code(quantize.main, [f"--out_dir={run}", f"--to={q4}", "--bits=4", "--group_size=8"], capsys)[0] == 0
    base_file = os.path.join(q4, "ckpt.pt")
    stored, sha = read_checkpoint(base_file)["model"], file_sha256(base_file)
    train.train(load_config(TINY + [f"--dataset={char_dataset}", f"--init_from={q4}", f"--out_dir={out}",
                                    "--peft=lora", "--lora_r=4", "--lora_targets=c_attn,c_fc", "--max_iters=10",
                                    "--eval_interval=10", "--eval_iters=2", "--learning_rate=1e-2"]))
    ckpt = read_checkpoint(os.path.join(out, "ckpt.pt"))
    # the run holds the adapters alone, and names and hashes its quantized base, which is untouched
    assert ckpt["model"] and all(k.endswith(("lora_A", "lora_B")) for k in ckpt["model"])
    assert ckpt["peft_base"] == {"path": os.path.abspath(base_file), "sha256": sha} and file_sha256(base_file) == sha
    model = restore_model(ckpt, "test").eval()
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert len(wrapped) == 4 and all(isinstance(m.base, QuantLinear) for m in wrapped.values())
    for name, m in wrapped.items():  # the base's codes and scales as quantize.py wrote them
        assert torch.equal(m.base.qweight, stored[f"{name}.qweight"]) and torch.equal(m.base.scale, stored[f"{name}.scale"])
        assert m.lora_B.abs().sum() > 0  # the adapters trained
    # only the adapters trained: the optimizer held exactly their parameters
    assert ckpt["config"]["trainable"]["trainable_params"] == sum(t.numel() for t in ckpt["model"].values())
    assert sum(len(s) for s in ckpt["optimizer"]["state"].values()) and \
        len(ckpt["optimizer"]["state"]) == len(ckpt["model"])
    # with B = 0 the wrapped model computes exactly the quantized one
    for m in wrapped.values():
        m.lora_B.data.zero_()
    quantized = restore_model(read_checkpoint(base_file), "test").eval()
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    assert torch.equal(model(x)[0], quantized(x)[0])
    assert exit_code(sample.main, [f"--out_dir={out}", "--num_samples=1", "--max_new_tokens=10"], capsys)[0] == 0
    code, err = exit_code(export.main, [f"--out_dir={out}", f"--to={tmp_path / 'merged'}"], capsys)
    assert code == 2 and "cannot be merged" in err, err
