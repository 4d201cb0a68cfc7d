"""
What the scripts share (train.py, sample.py, eval.py, bench.py, sweep.py, plot.py, checkpoint.py and the
data/<name>/prepare.py scripts), a module per job:

    errors        the mistakes a user can make, reported in one line (UserError, ConfigError, run)
    files         atomic writes and the cache folder
    device        the device and precision to run on, and its peak FLOP/s for MFU
    tokenizer     a dataset's vocabulary, text to tokens and back
    batches       token batches from the .bin files: random windows for training, every token for evaluation
    loading       the model that init_from names: new, from a checkpoint, or OpenAI's GPT-2
    checkpoint    atomic checkpoints that resume exactly, and the training state in them
    sharded       sharded (FSDP) checkpoint directories
    hf            Hugging Face's GPT-2: importing its weights, exporting ours
    distributed   ranks under torchrun and SLURM, failures shared among them, preemption
    evaluation    whole-split loss, bits per byte, HellaSwag
    runlock       one training run per out_dir
    runlog        a run's log.jsonl and config.json, and its loss curves as a plot
    data/         the data preparation pipeline (sources, workers, output, char and BPE)

The model itself is model.py, above this package.
"""
