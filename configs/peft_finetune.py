# Fine-tune the PEFT experiment's base (configs/peft_base.py) on GLOUCESTER's speeches.
# The method and its settings come from the command line; experiments/peft_experiment.py runs them all:
#   python train.py configs/peft_finetune.py --peft=lora --lora_r=8 --learning_rate=3e-3 --out_dir=out-peft/lora-r8-qv
#   python train.py configs/peft_finetune.py --peft=none --learning_rate=3e-4 --out_dir=out-peft/full

init_from = "out-peft/base"
out_dir = "out-peft/finetune"
dataset = "shakespeare_voices/gloucester"  # 36.5k characters to train on, 4k to validate

# 200 steps of 12 x 128 characters: ~8 passes over the small training set, so a method that
# can memorise it will (the table's "final" column against its "best")
max_iters = 200
batch_size = 12
warmup_iters = 10
lr_schedule = "cosine"
min_lr = 1e-5  # below every method's learning rate
weight_decay = 0.0  # decay would pull full fine-tuning's weights towards zero, not towards the base
dropout = 0.0

eval_interval = 40
eval_iters = 25
log_interval = 10
