"""federated.py: one client's FedAvg round is plain local training; identical clients
average to any one of them; the average weights clients by their data; FedProx adds
mu (w - w_t) to each local gradient; LoRA-only rounds send and change only LoRA tensors
and leave the base bit-identical; the LoRA product gap is 0 for one client and not for
two; client sampling is seeded; a run resumes exactly; the torchrun run equals the
single-process simulation to the bit; the speaker split is LEAF's; bad settings are one
line and exit 2."""

import json
import os
import subprocess
import sys

import pytest
import torch

import federated
from batches import RandomWindows
from checkpoint import init_model
from config import load_config
from conftest import REPO, TINY, exit_code
from system import autocast_context

SPEAKERS = {"ALICE": "the quick brown fox jumps over the lazy dog. ", "BOB": "pack my box with five dozen jugs! ",
            "CAROL": "how vexingly quick daft zebras jump; ", "DAN": "sphinx of black quartz, judge my vow. "}


@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    """A small 'play': four speakers with 3,000-9,000 characters each, and one too small to
    be a client, split by federated.py's own prepare step."""
    blocks = []
    for i in range(60):
        for j, (who, line) in enumerate(SPEAKERS.items()):
            if i % (j + 1) == 0:  # unbalanced: ALICE speaks most
                blocks.append(f"{who}:\n{line * 3}")
        if i == 0:
            blocks.append("EVE:\nhi.")
    out = str(tmp_path_factory.mktemp("fed") / "clients")
    info = federated.prepare_clients("\n\n".join(blocks) + "\n", out, min_chars=1000)
    return out, info


def args(clients_dir, out_dir, *extra):
    return TINY + ["--learning_rate=0.3", "--eval_iters=2", f"--out_dir={out_dir}", "--dropout=0.1"] + list(extra), \
        {"fed_clients": clients_dir, "fed_eval_interval": 2}


def run(clients_dir, out_dir, *extra, **fed):
    argv, explicit = args(clients_dir, out_dir, *extra)
    return federated.run({**explicit, **fed}, argv, log=lambda *_: None)


def test_prepare_makes_one_client_per_speaker_with_leaf_statistics(clients):
    root, info = clients
    names = [c["name"] for c in info["clients"]]
    assert names == ["alice", "bob", "carol", "dan"]  # EVE is below min_chars
    sizes = [c["train_tokens"] for c in info["clients"]]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 3 * sizes[-1]  # unbalanced
    pooled = json.load(open(os.path.join(root, "pooled", "meta.json")))
    assert pooled["train_tokens"] == sum(sizes)
    assert json.load(open(os.path.join(root, "alice", "meta.json")))["vocab_size"] == pooled["vocab_size"]
    assert federated.leaf_stats(info).startswith("4 clients; training tokens per client: min ")


def test_client_sampling_is_seeded_and_takes_its_share():
    a = federated.sample_clients(100, 0.1, 1337, 5)
    assert len(a) == 10 and a == federated.sample_clients(100, 0.1, 1337, 5) and a == sorted(set(a))
    assert a != federated.sample_clients(100, 0.1, 1337, 6) != federated.sample_clients(100, 0.1, 1, 6)
    assert len(federated.sample_clients(5, 0.01, 0, 1)) == 1  # at least one client


def test_aggregate_weights_clients_by_their_data():
    w = {"x": torch.tensor([1.0, 2.0])}
    d1, d2 = {"x": torch.tensor([1.0, 0.0])}, {"x": torch.tensor([0.0, 4.0])}
    got = federated.aggregate(w, [d1, d2], [300, 100])["x"]
    torch.testing.assert_close(got, torch.tensor([1.0 + 0.75, 2.0 + 1.0]), rtol=0, atol=0)
    # identical clients: the average is any one of them
    torch.testing.assert_close(federated.aggregate(w, [d1, d1, d1], [5, 1, 9])["x"], w["x"] + d1["x"], rtol=0, atol=1e-7)
    torch.testing.assert_close(federated.aggregate(w, [d1], [7], server_lr=0.5)["x"], w["x"] + 0.5 * d1["x"])


def plain_local_steps(model, data, steps, lr, seed, mu=0.0):
    """The reference: a plain loop of SGD steps from the model's weights, with the batches
    and dropout stream federated.py promises for (seed, round, client)."""
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    torch.manual_seed(seed)
    windows = RandomWindows(data, 4, 16, "cpu", seed)
    for _ in range(steps):
        x, y = windows.next()
        _, loss = model(x, y)
        loss.backward()
        for n, p in model.named_parameters():
            p.grad += mu * (p.detach() - w0[n])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_one_client_round_is_plain_local_training_and_fedprox_pulls_back(clients, tmp_path, mu):
    root, _ = clients
    argv, _ = args(root, tmp_path / "x")
    cfg = load_config(argv)
    _, _, meta = federated.load_dataset(os.path.join(root, "pooled"))
    model = init_model(cfg, meta)[0].train()
    data = federated.load_clients(root, meta, 16)[0][0][1]
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    fc = federated.FedConfig(fed_clients=root, fed_local_steps=3, fed_mu=mu)
    d, _ = federated.local_update(model, w0, data, cfg.train, fc, 42, "cpu", autocast_context("cpu", "float32"),
                                  torch.amp.GradScaler("cpu", enabled=False))
    new = federated.aggregate(w0, [d], [len(data)])
    model.load_state_dict(w0, strict=False)
    want = plain_local_steps(model, data, 3, 0.3, 42, mu)
    for n in w0:
        torch.testing.assert_close(new[n], want[n], rtol=0, atol=1e-6)
    if mu:  # the proximal term holds the client nearer the global weights than plain SGD
        model.load_state_dict(w0, strict=False)
        free = plain_local_steps(model, data, 3, 0.3, 42, 0.0)
        dist = lambda w: sum((w[n] - w0[n]).norm() ** 2 for n in w0)  # noqa: E731
        assert dist(want) < dist(free)


def test_a_run_resumes_exactly_and_the_checkpoint_is_train_pys_format(clients, tmp_path):
    root, _ = clients
    straight = run(root, tmp_path / "straight", fed_rounds=4, fed_client_frac=0.5, fed_local_steps=2)
    run(root, tmp_path / "split", fed_rounds=2, fed_client_frac=0.5, fed_local_steps=2)
    argv, _ = args(root, tmp_path / "split")
    resumed = federated.run({"fed_rounds": 4}, argv + ["--init_from=resume"], log=lambda *_: None)
    assert all(torch.equal(straight[n], resumed[n]) for n in straight)
    rows = [json.loads(line) for line in open(tmp_path / "split" / "metrics.jsonl")]
    assert [r["round"] for r in rows] == [1, 2, 3, 4] and "val_acc" in rows[-1]
    ckpt = torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)
    assert ckpt["round"] == 4 and all(torch.equal(ckpt["model"][n], straight[n]) for n in straight)


def test_lora_only_rounds_send_only_lora_and_leave_the_base_bit_identical(clients, tmp_path):
    root, _ = clients
    base = tmp_path / "base"
    run(root, base, fed_rounds=1, fed_client_frac=1.0, fed_local_steps=1)
    before = torch.load(base / "ckpt.pt", weights_only=True)["model"]
    got = run(root, tmp_path / "lora", f"--init_from={base}", "--peft=lora", "--lora_r=2",
              fed_rounds=2, fed_client_frac=1.0, fed_local_steps=2)
    assert got and all(".lora_" in n for n in got)  # what travels
    assert any(got[n].abs().sum() > 0 for n in got if n.endswith("lora_B"))  # B moved off zero
    ckpt = torch.load(tmp_path / "lora" / "ckpt.pt", weights_only=True)
    assert set(ckpt["model"]) == set(got) and "peft_base" in ckpt
    assert torch.equal(torch.load(base / "ckpt.pt", weights_only=True)["model"]["transformer.wte.weight"],
                       before["transformer.wte.weight"])
    rows = [json.loads(line) for line in open(tmp_path / "lora" / "metrics.jsonl")]
    full = sum(v.numel() * v.element_size() for v in before.values())
    assert rows[0]["bytes_up_per_client"] == sum(v.numel() * 4 for v in got.values()) < 0.1 * full
    assert rows[1]["lora_product_gap"] > 0  # four clients' B A: not the product of the means


def test_the_lora_product_gap_is_zero_for_one_client():
    from model import GPT, GPTConfig
    from peft import apply_lora

    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    apply_lora(model, r=2)
    w = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}
    d = {n: torch.randn_like(v) for n, v in w.items()}
    d2 = {n: torch.randn_like(v) for n, v in w.items()}
    assert federated.lora_product_gap(model, w, [d], [10]) == pytest.approx(0.0, abs=1e-6)
    assert federated.lora_product_gap(model, w, [d, d], [3, 5]) == pytest.approx(0.0, abs=1e-6)
    assert federated.lora_product_gap(model, w, [d, d2], [3, 5]) > 0.05


def test_the_torchrun_run_equals_the_simulation(clients, tmp_path):
    root, _ = clients
    out = {}
    for procs in (1, 2):
        argv, explicit = args(root, tmp_path / f"p{procs}")
        fed = [f"--{k}={v}" for k, v in {**explicit, "fed_rounds": 2, "fed_client_frac": 1.0,
                                          "fed_local_steps": 2}.items()]
        launcher = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                         f"--nproc_per_node={procs}"]
        r = subprocess.run(launcher + [os.path.join(REPO, "federated.py")] + argv + fed, capture_output=True,
                           text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        out[procs] = torch.load(tmp_path / f"p{procs}" / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(out[1][n], out[2][n]) for n in out[1])


def test_int8_updates_are_the_quantized_update_at_a_quarter_of_the_bytes(clients, tmp_path):
    root, _ = clients
    d = {"w": torch.randn(6, 10), "b": torch.randn(10), "lora_B": torch.randn(2, 3, 4)}
    same, sent = federated.compress(d, 0)
    assert same is d and sent == 4 * (60 + 10 + 24)
    got, sent8 = federated.compress(d, 8)
    assert sent8 == (60 + 10 + 24) + 4 * (6 + 1 + 2)  # a byte per entry, an fp32 scale per row
    for n, t in d.items():  # round to nearest: within half a step, the step max|row| / 127
        step = t.reshape(t.shape[0] if t.dim() > 1 else 1, -1).abs().amax(dim=1) / 127
        err = (got[n] - t).reshape(step.shape[0], -1).abs()
        assert got[n].shape == t.shape and (err <= step[:, None] / 2 + 1e-7).all() and err.max() > 0
    # one client's round: the server's new weights are w + its update as int8 carried it
    fp32 = run(root, tmp_path / "fp32", fed_rounds=1, fed_client_frac=0.25, fed_local_steps=2)
    int8 = run(root, tmp_path / "int8", fed_rounds=1, fed_client_frac=0.25, fed_local_steps=2, fed_update_bits=8)
    cfg = load_config(args(root, tmp_path / "w0")[0])
    torch.manual_seed(cfg.train.seed)  # the run's initial weights, as run() builds them
    w0 = federated.travelling(init_model(cfg, federated.load_dataset(os.path.join(root, "pooled"))[2])[0])
    want = federated.compress({n: fp32[n] - w0[n] for n in w0}, 8)[0]
    for n in w0:
        torch.testing.assert_close(int8[n] - w0[n], want[n], rtol=0, atol=1e-6)
    assert any(not torch.equal(int8[n], fp32[n]) for n in w0)
    rows = {k: [json.loads(line) for line in open(tmp_path / k / "metrics.jsonl")] for k in ("fp32", "int8")}
    assert rows["fp32"][0]["bytes_up_per_client"] == sum(4 * t.numel() for t in w0.values())
    assert rows["int8"][0]["bytes_up_per_client"] == sum(t.numel() + 4 * (t.shape[0] if t.dim() > 1 else 1)
                                                         for t in w0.values())


@pytest.mark.parametrize("bad,what", [("--fed_rounds=0", "fed_rounds=0 must be >= 1"),
                                      ("--fed_update_bits=4", "fed_update_bits=4: use 0 (fp32 updates) or 8 (int8)"),
                                      ("--fed_client_frac=1.5", "fed_client_frac=1.5 must be in (0, 1]"),
                                      ("--fed_rouns=3", "unknown config key 'fed_rouns' (did you mean 'fed_rounds'?)"),
                                      ("--fed_clients=nowhere", "clients.json is missing")])
def test_bad_settings_are_one_line_and_exit_2(bad, what, clients, tmp_path, capsys):
    root, _ = clients
    argv, _ = args(root, tmp_path / "bad")
    code, err = exit_code(federated.main, argv + ([f"--fed_clients={root}"] if "clients=" not in bad else []) + [bad],
                          capsys)
    assert code == 2 and err.count("\n") == 1 and what in err, err


def test_personalize_starts_from_the_global_model_or_from_scratch(clients, tmp_path):
    from checkpoint import read_checkpoint, restore_model

    root, _ = clients
    run(root, tmp_path / "g", fed_rounds=2, fed_client_frac=1.0, fed_local_steps=2)
    lora = federated.personalize(str(tmp_path / "g"), 3, 1e-2, r=2, clients=["bob"], log=lambda *_: None)
    alone = federated.personalize(str(tmp_path / "g"), 3, 1e-2, r=0, clients=["bob"], log=lambda *_: None)
    ckpt = read_checkpoint(str(tmp_path / "g" / "ckpt.pt"))
    cfg = load_config(args(root, tmp_path / "g")[0])
    bob_val = federated.load_clients(root, ckpt["meta"], 16)[0][1][2]
    glob = federated.evaluate(restore_model(ckpt, "test"), {"val": bob_val}, cfg.train,
                              autocast_context("cpu", "float32"), "cpu", 0)["val"][0]
    assert [x["client"] for x in lora] == ["bob"] and lora[0]["before"] == pytest.approx(glob, abs=1e-6)  # B = 0
    assert lora[0]["after"] < lora[0]["before"]
    assert alone[0]["before"] > lora[0]["before"] + 0.5  # a fresh model: about ln(vocabulary)
