# The distillation experiment's student: 2 layers x 96 wide (0.23M parameters, 8x smaller
# than configs/distill_teacher.py), same data, block size and batch. Plain training, or KD:
#   python train.py configs/distill_student.py                                          # hard labels
#   python train.py configs/distill_student.py --teacher=out-distill/teacher --kd_alpha=0.5 --kd_temperature=2
#   python distill.py cache --teacher=out-distill/teacher --k=32
#   python train.py configs/distill_student.py --soft_labels=out-distill/teacher/soft_labels --kd_alpha=0.5 --kd_temperature=2
out_dir = "out-distill/student"
dataset = "shakespeare_char"
n_layer = 2
n_head = 2
n_embd = 96
block_size = 128
dropout = 0.0
batch_size = 12
max_iters = 1500
learning_rate = 3e-3
warmup_iters = 100
min_lr = 1e-4
eval_interval = 250
eval_iters = 50
log_interval = 50
