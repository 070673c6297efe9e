# The quickstart: a small character-level GPT on Python's own standard-library source, which
# every Python installation has, so it runs with no download. About 1.5 minutes on 2 CPU cores.
#   python data/stdlib_char/prepare.py
#   python train.py configs/quickstart.py
#   python sample.py --out_dir=out-quickstart --start="def "
out_dir = "out-quickstart"
dataset = "stdlib_char"
eval_interval = 200
eval_iters = 20
log_interval = 10

batch_size = 16
block_size = 128
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 2e-3
max_iters = 800
warmup_iters = 50
min_lr = 2e-4
beta2 = 0.99
