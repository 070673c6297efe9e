# nanoGPT's CPU recipe for character-level tiny shakespeare (its README, "I only have a
# macbook"): 4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iters, dropout 0.
# nanoGPT reaches val loss ~1.88 with it. Prepare the data first:
#   python data/shakespeare_char/prepare.py
#   python train.py configs/shakespeare_char_cpu.py
out_dir = "out-shakespeare-char-cpu"
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 20
log_interval = 10

batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3  # a small model can take a large rate
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4  # learning_rate / 10, as Chinchilla
beta2 = 0.99  # few tokens per step: a slightly faster-moving second moment
warmup_iters = 100

device = "cpu"
