# Parameter-lean models on BPE-tokenized tiny shakespeare (experiments/lean_experiment.py):
# a 4-layer, 192-wide GPT over a 4,096-token vocabulary, where the tied embedding table is
# 0.79M of its 2.56M parameters. Prepare the data first (the experiment does it for you):
#   python data/shakespeare_char/prepare.py --tokenizer bpe --vocab_size 4096 --out_dir data/shakespeare_bpe4096
#   python train.py configs/lean_shakespeare_bpe.py --emb_dim=64 --out_dir=out-lean/fact64
out_dir = "out-lean/baseline"
dataset = "shakespeare_bpe4096"
eval_interval = 100
eval_iters = 40
log_interval = 10

batch_size = 8
block_size = 128
n_layer = 4
n_head = 6
n_embd = 192
dropout = 0.0

learning_rate = 1e-3
max_iters = 500
lr_decay_iters = 500
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 50

device = "cpu"
