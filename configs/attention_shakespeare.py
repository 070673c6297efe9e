# Sparse attention on character-level tiny shakespeare (attention.py): nanoGPT's 4-layer,
# 128-wide CPU model at block 256, where full attention is still cheap, so that a sliding
# window or the block-sparse pattern can be compared with it at the same steps:
#   python data/shakespeare_char/prepare.py
#   python train.py configs/attention_shakespeare.py --attention=sliding --attn_window=64
#   python experiments/attention_experiment.py --dtype=float32    # every row, a table and a plot
out_dir = "out-attention/full"
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 40
log_interval = 10

batch_size = 4
block_size = 256
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3
max_iters = 3000
lr_decay_iters = 3000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

attention = "full"  # or "sliding" (attn_window), "blocksparse" (attn_block, attn_summary)

device = "cpu"
