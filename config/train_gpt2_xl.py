# GPT-2 XL (1.5B) on OpenWebText, sharded with FSDP: a run that does not fit on 40 GB GPUs with DDP
# prepare first: python data/openwebtext/prepare.py
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_xl.py
# $ sbatch slurm/train_gpt2_xl.sbatch                      (4 nodes x 8 GPUs; any --key=value after it overrides)
#
# Memory per GPU for 1.56B parameters (the vocabulary padded to 50304), before activations:
#   DDP:           weights 6.2 GB + gradients 6.2 GB + AdamW moments 12.5 GB = 24.9 GB on every GPU,
#                  plus bfloat16 copies of the weights for autocast
#   FSDP, 8 ranks: 3.1 GB of shards, plus one block's gathered bfloat16 weights (~60 MB) while it runs,
#                  plus the unsharded float32 gradients (6.2 GB) that the accumulation micro-steps keep
# Activations at batch_size=4, block_size=1024 (bfloat16, fused attention) add ~11 GB either way.
# (computed from the shapes; train.py prints its own per-rank figures and the measured peak after the
# first iteration)

wandb_log = True
wandb_project = 'owt'
wandb_run_name = 'gpt2-xl-1.5B'

parallelism = 'fsdp'

n_layer = 48
n_head = 25
n_embd = 1600
block_size = 1024

# 4 batch size * 1024 block size * 128 gradaccum = 524,288 tokens per iteration; 16 micro-steps on each of 8 GPUs,
# 4 on each of 32 (gradient_accumulation_steps must stay divisible by the number of ranks)
batch_size = 4
gradient_accumulation_steps = 128

# ~20 tokens per parameter (Chinchilla): 31B tokens; GPT-3's learning rate for its 1.3B model
max_iters = 60000
lr_decay_iters = 60000
warmup_iters = 2000
learning_rate = 2e-4
min_lr = 2e-5

eval_interval = 1000
eval_iters = 100
log_interval = 10
weight_decay = 1e-1
