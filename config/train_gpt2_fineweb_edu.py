# GPT-2 (124M) on FineWeb-Edu sample-10BT: one epoch of ~10B tokens, llm.c's schedule
# prepare first: python data/fineweb_edu/prepare.py   (--config sample-10BT, the default)
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_fineweb_edu.py

wandb_log = True
wandb_project = 'fineweb-edu'
wandb_run_name = 'gpt2-124M-10BT'

dataset = 'fineweb_edu'

# 12 batch size * 1024 block size * 5 gradaccum * 8 GPUs = 491,520 tokens per iteration
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

# ~10B tokens / 491,520 tokens per iteration = ~20,000 iterations, one pass over the sample
max_iters = 20000
lr_decay_iters = 20000
warmup_iters = 700
learning_rate = 6e-4
min_lr = 6e-5

# eval stuff
eval_interval = 250
eval_iters = 200
log_interval = 10
# HellaSwag beside the val loss, as llm.c's run does (offline: hellaswag_file = '/path/to/hellaswag_val.jsonl')
hellaswag_interval = 250

# weight decay
weight_decay = 1e-1
