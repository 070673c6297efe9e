# nanoGPT's GPU recipe for character-level tiny shakespeare ("baby GPT"): 6 layers, 6 heads,
# 384 wide, block 256, batch 64, dropout 0.2, 5000 iters; nanoGPT reaches val ~1.47 with it.
# On 2 CPU cores one step takes seconds: this is a GPU config (see shakespeare_char_cpu.py).
#   python data/shakespeare_char/prepare.py
#   python train.py configs/shakespeare_char.py
out_dir = "out-shakespeare-char"
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 200
log_interval = 10

batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
