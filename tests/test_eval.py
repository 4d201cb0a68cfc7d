"""eval.py, evaluation.py and `checkpoint.py export --format=hf` as a user runs them: HellaSwag scored
as an independent computation with transformers scores it, bits per byte against a direct
computation, the Hugging Face export's logits, lm_eval on the export, HellaSwag during training
(which leaves the training run as it was, and logs what eval.py computes on its checkpoint; split
across ranks, padded under FSDP), and one-line errors."""

import gzip
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import (
    OBSERVED,
    SHARED_DATA,
    TINY_MODEL,
    _kill_processes_under,
    observations,
    run_script,
    shared_file,
    write_char_dataset,
)

from model import GPT, GPTConfig
from nanogpt import checkpoint, checkpoint_file, hf
from nanogpt.runlog import read_log

CACHE = SHARED_DATA / 'tiktoken_cache'
OFFLINE = {'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'https_proxy': 'http://127.0.0.1:9',
           'HTTPS_PROXY': 'http://127.0.0.1:9'}
CHAR_TRAIN = [*TINY_MODEL, '--dataset=shakespeare_100k', '--eval_interval=10', '--eval_iters=4', '--log_interval=1',
              '--learning_rate=3e-3', '--warmup_iters=5', '--lr_decay_iters=40', '--gradient_accumulation_steps=2',
              '--max_iters=20', '--eval_full_val=True']
# a GPT-2 BPE model: the 50304-row head makes each step cost about as much as 20 char-level ones
BPE_TRAIN = [*TINY_MODEL, '--block_size=64', '--dataset=c4', '--eval_interval=30', '--eval_iters=2', '--log_interval=10',
             '--learning_rate=1e-2', '--warmup_iters=5', '--lr_decay_iters=30', '--gradient_accumulation_steps=1',
             '--max_iters=30']


@pytest.fixture(scope='module', autouse=True)
def tiktoken_cache():
    """The GPT-2 files, offline, for this module's tests and the scripts they run, restored afterwards."""
    if not CACHE.exists():
        pytest.skip(f"{CACHE} is not available")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('TIKTOKEN_CACHE_DIR', str(CACHE))
        yield


def write_hellaswag(path, sentences, n, seed=0, extra=()):
    """n examples in HellaSwag's format: the first half of a sentence, its second half among three
    halves of other sentences, at a random position (the label); then the `extra` examples."""
    rng = random.Random(seed)
    with open(path, 'w') as f:
        for i in range(n):
            words = sentences[i]
            others = [sentences[n + 3 * i + j] for j in range(3)]
            endings = [' '.join(w[len(w) // 2:]) for w in others]
            label = rng.randrange(4)
            endings.insert(label, ' '.join(words[len(words) // 2:]))
            f.write(json.dumps({'ind': i, 'ctx': ' '.join(words[:len(words) // 2]), 'endings': endings,
                                'label': label, 'split': 'val'}) + '\n')
        for example in extra:
            f.write(json.dumps(example) + '\n')
    return path


def c4_texts(n):
    with gzip.open(shared_file('c4_sample_1000docs.jsonl.gz'), 'rt', encoding='utf-8') as f:
        return [json.loads(line)['text'] for _, line in zip(range(n), f)]


def c4_sentences():
    sentences = [s.split() for doc in c4_texts(1000) for s in doc.split('. ')]
    return [w for w in sentences if 8 <= len(w) <= 30]


def metric(stdout, name):
    return float(re.search(rf'^{name} ([\d.]+)', stdout, re.M)[1])


@pytest.fixture(scope='module')
def bpe_run(tmp_path_factory):
    """A GPT-2 BPE model trained 30 iterations on C4 documents (val: the last 3,000 tokens), its Hugging Face
    export, and a HellaSwag-format file of 20 examples from C4 sentences plus 3 whose context alone is
    longer than the model's block_size of 64 tokens."""
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    work = tmp_path_factory.mktemp('bpe')
    data = work / 'data' / 'c4'
    data.mkdir(parents=True)
    ids = np.concatenate([np.array(enc.encode_ordinary(t) + [enc.eot_token], dtype=np.uint16) for t in c4_texts(200)])
    ids[:-3000].tofile(data / 'train.bin')
    ids[-3000:].tofile(data / 'val.bin')
    (data / 'meta.json').write_text(json.dumps({'tokenizer': 'gpt2', 'vocab_size': 50257, 'dtype': 'uint16',
                                                'eot_token': 50256}))
    run_script('train.py', *BPE_TRAIN, '--out_dir=out', cwd=work)
    run_script('checkpoint.py', 'export', 'out/ckpt.pt', 'hf', '--format=hf', cwd=work)
    sentences = c4_sentences()
    long = [{'ctx': ' '.join(w for s in sentences[200 + 4 * i:204 + 4 * i] for w in s), 'label': i % 4,
             'endings': [' '.join(s) for s in sentences[300 + 4 * i:304 + 4 * i]]} for i in range(3)]
    write_hellaswag(work / 'hellaswag.jsonl', sentences, 20, extra=long)
    return work


@pytest.fixture(scope='module')
def char_run(tmp_path_factory):
    """A char-level model trained 20 iterations on the first 100,000 characters of tiny shakespeare (ASCII;
    the whole val set evaluated at the end), and a HellaSwag-format file of lines of that text, plus one
    example with a character its vocabulary lacks."""
    work = tmp_path_factory.mktemp('char')
    text = shared_file('tinyshakespeare.txt').read_text()[:100_000]
    write_char_dataset(work / 'data' / 'shakespeare_100k', text)
    run_script('train.py', *CHAR_TRAIN, '--out_dir=out-eval', cwd=work)
    lines = [line.split() for line in text.splitlines()]
    unknown = {'ctx': 'A line with a # sign', 'endings': ['a', 'b', 'c', 'd'], 'label': 0}
    write_hellaswag(work / 'hellaswag_char.jsonl', [w for w in lines if len(w) >= 6], 20, extra=[unknown])
    return work


def reference_hellaswag(hf_dir, path):
    """(acc, acc_norm) of the Hugging Face model in hf_dir, scored the way build-nanogpt's hellaswag.py
    does, one example at a time, and cut from the left to the model's context as lm_eval does."""
    import tiktoken
    from transformers import GPT2LMHeadModel
    enc = tiktoken.get_encoding('gpt2')
    model = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    n_positions = model.config.n_positions
    correct = correct_norm = n = 0
    for line in Path(path).read_text().splitlines():
        example = json.loads(line)
        context = enc.encode(example['ctx'])
        sums, means = [], []
        for ending in example['endings']:
            ending = enc.encode(' ' + ending)
            tokens = (context + ending)[-(n_positions + 1):]
            with torch.no_grad():
                logits = model(torch.tensor([tokens[:-1]])).logits[0]
            losses = F.cross_entropy(logits, torch.tensor(tokens[1:]), reduction='none')[-len(ending):]
            sums.append(losses.sum().item())
            means.append(losses.mean().item())
        n += 1
        correct += int(np.argmin(sums) == example['label'])
        correct_norm += int(np.argmin(means) == example['label'])
    return correct / n, correct_norm / n


@pytest.mark.slow
def test_hellaswag_agrees_with_transformers_scoring_the_hf_export(bpe_run):
    lines = (bpe_run / 'hellaswag.jsonl').read_text().splitlines()
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    assert sum(len(enc.encode(json.loads(line)['ctx'])) > 64 for line in lines) == 3  # cut from the left
    out = run_script('eval.py', '--tasks=hellaswag', '--hellaswag_file=hellaswag.jsonl', '--device=cpu',
                     cwd=bpe_run).stdout
    assert re.search(r'^hellaswag_acc [\d.]+ \(\d+/23, lowest summed loss\)$', out, re.M), out
    acc, acc_norm = reference_hellaswag(bpe_run / 'hf', bpe_run / 'hellaswag.jsonl')
    assert (metric(out, 'hellaswag_acc'), metric(out, 'hellaswag_acc_norm')) == (round(acc, 4), round(acc_norm, 4))
    assert acc != acc_norm  # the two rules pick differently on this file: each is checked


@pytest.mark.slow
def test_hellaswag_does_not_depend_on_batching(bpe_run):
    from contextlib import nullcontext

    from nanogpt import evaluation
    from nanogpt.tokenizer import Codec
    model = GPT(GPTConfig(**checkpoint.load(bpe_run / 'out' / 'ckpt.pt')['model_args']))
    model.load_state_dict(checkpoint.load(bpe_run / 'out' / 'ckpt.pt')['model'])
    examples = evaluation.load_hellaswag(str(bpe_run / 'hellaswag.jsonl'), Codec({'tokenizer': 'gpt2'}))
    results = {b: evaluation.hellaswag_accuracy(model, examples, 'cpu', nullcontext(), batch_size=b) for b in (4, 12, 64)}
    assert results[4] == results[12] == results[64] and results[4][0] == 23


@pytest.mark.slow
def test_hf_export_gives_transformers_the_same_logits_and_tokens(bpe_run):
    from transformers import AutoTokenizer, GPT2LMHeadModel
    hf_dir = bpe_run / 'hf'
    assert sorted(p.name for p in hf_dir.iterdir()) == ['config.json', 'merges.txt', 'model.safetensors',
                                                        'tokenizer_config.json', 'vocab.json']
    # the tokenizer files are OpenAI's, byte for byte
    assert (hf_dir / 'merges.txt').read_bytes() == (CACHE / '6d1cbeee0f20b3d9449abfede4726ed8212e3aee').read_bytes()
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    text = "Hello world! Naïve café, 東京 🙂\n\n  two spaces <|endoftext|> after"
    assert AutoTokenizer.from_pretrained(hf_dir)(text)['input_ids'] == enc.encode(text, allowed_special='all')
    ckpt = checkpoint.load(bpe_run / 'out' / 'ckpt.pt')
    ours = GPT(GPTConfig(**ckpt['model_args'])).eval()
    ours.load_state_dict(ckpt['model'])
    theirs = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    idx = torch.randint(0, 50257, (3, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(theirs(idx).logits, ours(idx, idx)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('options', [dict(bias=True, attn_impl='mha'), dict(bias=False, attn_impl='manual')],
                         ids=['bias-mha', 'nobias-manual'])
def test_hf_export_of_a_char_model_with_either_bias_and_any_attention_implementation(tmp_path, options):
    from transformers import GPT2LMHeadModel
    torch.manual_seed(0)
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=7, **options)
    model = GPT(GPTConfig(**args)).eval()
    for p in model.parameters():  # biases and norm gains away from their init, so a lost one shows
        p.data += 0.1 * torch.randn_like(p)
    vocab = {'tokenizer': 'char', 'vocab_size': 7, 'itos': list('\n abcd') + ['<|endoftext|>']}
    checkpoint_file.save({'model': model.state_dict(), 'model_args': args, 'vocab': vocab}, tmp_path / 'model.pt')
    out = run_script('checkpoint.py', 'export', tmp_path / 'model.pt', tmp_path / 'hf', '--format=hf', cwd=tmp_path)
    assert 'note: no tokenizer files' in out.stdout
    assert sorted(p.name for p in (tmp_path / 'hf').iterdir()) == ['config.json', 'model.safetensors']
    theirs = GPT2LMHeadModel.from_pretrained(tmp_path / 'hf').eval()
    assert theirs.config.eos_token_id == 6
    idx = torch.randint(0, 7, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(theirs(idx).logits, model(idx, idx)[0], atol=1e-5, rtol=1e-5)


def test_hf_export_of_openai_gpt2_round_trips(tmp_path):
    from transformers import GPT2LMHeadModel
    try:
        original = GPT2LMHeadModel.from_pretrained('gpt2', local_files_only=True).eval()
    except OSError:
        pytest.skip("OpenAI's GPT-2 weights are not in the local Hugging Face cache")
    ours = hf.load_gpt2('gpt2')
    args = {k: getattr(ours.config, k) for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size')}
    checkpoint_file.save({'model': ours.state_dict(), 'model_args': args, 'vocab': {'tokenizer': 'gpt2', 'vocab_size': 50257}},
                    tmp_path / 'gpt2.pt')
    run_script('checkpoint.py', 'export', tmp_path / 'gpt2.pt', tmp_path / 'hf', '--format=hf', cwd=tmp_path)
    exported = GPT2LMHeadModel.from_pretrained(tmp_path / 'hf').eval()
    idx = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(exported(idx).logits, original(idx).logits, atol=1e-4)


def direct_bits_per_byte(model, tokens, block_size, decode):
    """Summed loss in bits over every token but the first, predicted from up to block_size tokens before it in
    consecutive windows, over the UTF-8 bytes of the text those tokens decode to."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, block_size):
            window = torch.from_numpy(tokens[start:start + block_size + 1].astype(np.int64))[None]
            logits, _ = model(window[:, :-1], window[:, 1:])
            total += F.cross_entropy(logits[0], window[0, 1:], reduction='sum').double().item()
    return total / math.log(2) / len(decode(tokens[1:].tolist()).encode('utf-8'))


@pytest.mark.slow
def test_bits_per_byte_of_a_bpe_model_matches_a_direct_computation(bpe_run):
    import tiktoken
    out = run_script('eval.py', '--tasks=bpb', '--device=cpu', '--batch_size=5', cwd=bpe_run).stdout
    ckpt = checkpoint.load(bpe_run / 'out' / 'ckpt.pt')
    model = GPT(GPTConfig(**ckpt['model_args'])).eval()
    model.load_state_dict(ckpt['model'])
    tokens = np.fromfile(bpe_run / 'data' / 'c4' / 'val.bin', dtype=np.uint16)
    text = tiktoken.get_encoding('gpt2').decode(tokens[1:].tolist())
    assert len(text.encode('utf-8')) > len(text)  # multi-byte characters: bytes are not characters
    expected = direct_bits_per_byte(model, tokens, 64, tiktoken.get_encoding('gpt2').decode)
    assert metric(out, 'val_bpb') == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_bits_per_byte_of_a_char_model_is_its_loss_over_ln2_and_the_log_keeps_it(char_run):
    out = char_run / 'out-eval'
    before = read_log(out / 'log.jsonl')
    trained = before[-1]  # train.py's eval_full_val: the same two numbers
    assert trained['val_bpb'] == pytest.approx(trained['val_loss_full'] / math.log(2), rel=1e-12)
    stdout = run_script('eval.py', '--out_dir=out-eval', '--tasks=bpb', '--device=cpu', '--log=True', cwd=char_run).stdout
    assert [line.split()[0] for line in stdout.splitlines()] == ['val_loss_full', 'val_bpb']
    after = read_log(out / 'log.jsonl')
    assert after[:-1] == before
    entry = after[-1]
    assert entry['iter'] == 20 and entry['source'] == 'eval.py'
    assert entry['val_bpb'] == pytest.approx(entry['val_loss_full'] / math.log(2), rel=1e-12)  # ASCII: 1 byte per char
    assert entry['val_loss_full'] == pytest.approx(trained['val_loss_full'], rel=1e-6)
    # a run resumed from that checkpoint drops the lines it recomputes, and keeps eval.py's
    work = char_run / 'resumed'
    shutil.copytree(out, work)
    run_script('train.py', *CHAR_TRAIN, '--max_iters=25', '--out_dir=resumed', '--init_from=resume', cwd=char_run)
    resumed = read_log(work / 'log.jsonl')
    assert entry in resumed and max(e['iter'] for e in resumed) == 25


def test_bits_per_byte_of_a_char_model_counts_utf8_bytes(tmp_path):
    text = ("Größe, naïve café; ¿qué? " * 40 + "plain ascii words here. ") * 6
    write_char_dataset(tmp_path / 'data' / 'accents', text)
    itos = json.loads((tmp_path / 'data' / 'accents' / 'meta.json').read_text())['itos']
    vocab = {'tokenizer': 'char', 'vocab_size': len(itos), 'dtype': 'uint16', 'itos': itos}
    torch.manual_seed(0)  # untrained weights: the counting is the same
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=len(itos))
    model = GPT(GPTConfig(**args)).eval()
    checkpoint_file.save({'model': model.state_dict(), 'model_args': args, 'vocab': vocab,
                     'config': {'dataset': 'accents'}}, tmp_path / 'model.pt')
    out = run_script('eval.py', '--init_from=model.pt', '--tasks=bpb', '--device=cpu', cwd=tmp_path).stdout
    tokens = np.fromfile(tmp_path / 'data' / 'accents' / 'val.bin', dtype=np.uint16)
    expected = direct_bits_per_byte(model, tokens, 32, lambda ids: ''.join(itos[i] for i in ids))
    assert metric(out, 'val_bpb') == pytest.approx(expected, abs=1e-4)
    assert metric(out, 'val_bpb') < metric(out, 'val_loss_full') / math.log(2)  # more bytes than characters


def train_log_numbers(stdout):
    return re.findall(r'^(?:iter \d+: loss [\d.]+|step \d+: train loss .*)', stdout, re.M)


@pytest.mark.slow
def test_hellaswag_during_training_leaves_the_training_run_unchanged(char_run):
    run = run_script('train.py', *CHAR_TRAIN, '--out_dir=out-hellaswag', '--hellaswag_interval=10',
                     '--hellaswag_file=hellaswag_char.jsonl', cwd=char_run).stdout
    assert "hellaswag: 1 of 21 examples skipped: they have characters the model's vocabulary lacks" in run
    assert len(re.findall(r'^step (0|10|20): hellaswag acc_norm [\d.]+, acc [\d.]+ \(20 examples\)$', run, re.M)) == 3
    reference = run_script('train.py', *CHAR_TRAIN, '--out_dir=out-reference', cwd=char_run).stdout
    assert train_log_numbers(run) == train_log_numbers(reference)
    with_hellaswag = checkpoint.load(char_run / 'out-hellaswag' / 'ckpt.pt')
    without = checkpoint.load(char_run / 'out-reference' / 'ckpt.pt')
    for name, weights in without['model'].items():
        assert torch.equal(with_hellaswag['model'][name], weights), name
    assert torch.equal(with_hellaswag['rng'][0]['loader'], without['rng'][0]['loader'])
    entries = read_log(char_run / 'out-hellaswag' / 'log.jsonl')
    assert [e['iter'] for e in entries if 'hellaswag_acc_norm' in e] == [0, 10, 20]
    # eval.py, on the checkpoint the run ended with, computes the numbers the run logged at its last step
    run_script('eval.py', '--out_dir=out-hellaswag', '--tasks=hellaswag', '--hellaswag_file=hellaswag_char.jsonl',
               '--device=cpu', '--log=True', cwd=char_run)
    in_training = next(e for e in entries if e['iter'] == 20 and 'hellaswag_acc' in e)
    by_eval = read_log(char_run / 'out-hellaswag' / 'log.jsonl')[-1]
    assert (by_eval['source'], by_eval['iter']) == ('eval.py', 20)
    assert (by_eval['hellaswag_acc'], by_eval['hellaswag_acc_norm']) == \
        (in_training['hellaswag_acc'], in_training['hellaswag_acc_norm'])


@pytest.mark.slow
def test_hellaswag_is_split_across_ranks_and_summed(char_run):
    """Rank r scores every other example from the r-th, and the counts are summed: the ranks' batches are
    disjoint and together every example's. Of 19 examples rank 1 has one fewer, so under FSDP, where every
    rank must run as many forwards, it runs one more that counts nothing (evaluation's pad=True)."""
    lines = (char_run / 'hellaswag_char.jsonl').read_text().splitlines()
    (char_run / 'hellaswag_19.jsonl').write_text('\n'.join(lines[:19]) + '\n')
    # ddp_timeout: ranks whose forwards do not pair up (unpadded under FSDP) wait in a collective: end it soon
    args = [*CHAR_TRAIN, '--max_iters=0', '--hellaswag_interval=10', '--hellaswag_file=hellaswag_19.jsonl',
            '--eval_full_val=False', '--ddp_timeout=60']
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    single = run_script('tests/observed.py', 'train.py', *args, '--out_dir=out-hs1', cwd=char_run,
                        env={'OBSERVED_DIR': str(char_run / 'observed-hs1')}).stdout
    line = re.compile(r'^step 0: hellaswag .*$', re.M)
    assert line.search(single)[0].endswith('(19 examples)')
    [call] = observations(char_run / 'observed-hs1')[0]['hellaswag']
    every = [json.dumps(batch) for batch in call['batches']]
    assert len(set(every)) == 19  # batch_size=4: one example's 4 rows per forward
    for parallelism in ('ddp', 'fsdp'):
        observed, out = char_run / f'observed-hs-{parallelism}', char_run / f'out-hs-{parallelism}'
        proc = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--local_addr=127.0.0.1',
                                 '--nproc_per_node=2', str(OBSERVED), 'train.py', *args, f'--parallelism={parallelism}',
                                 f'--out_dir={out}'], cwd=char_run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env={**env, 'OMP_NUM_THREADS': '1', 'OBSERVED_DIR': str(observed)})
        try:
            stdout = proc.communicate(timeout=300)[0]
        finally:  # torchrun starts the ranks in sessions of their own: a run that hung leaves none behind
            _kill_processes_under(str(out))
        assert proc.returncode == 0, stdout
        assert 'with 2 rank(s)' in stdout
        assert line.search(stdout)[0] == line.search(single)[0]
        calls = {rank: seen['hellaswag'] for rank, seen in observations(observed).items()}
        assert sorted(calls) == [0, 1] and all(len(c) == 1 for c in calls.values())
        batches = {rank: [json.dumps(batch) for batch in c[0]['batches']] for rank, c in calls.items()}
        counted = [calls[rank][0]['contributed'] for rank in (0, 1)]  # [examples, correct, correct_norm]
        assert None not in counted, 'nothing was summed over the ranks: each scored every example itself'
        assert [c[0] for c in counted] == [10, 9]
        assert sorted(batches[0] + batches[1][:9]) == sorted(every)
        if parallelism == 'fsdp':
            assert len(batches[1]) == 10 and batches[1][9] == every[0]  # the first example again, not counted
        else:
            assert len(batches[1]) == 9


@pytest.mark.slow
def test_lm_eval_runs_offline_on_the_hf_export_with_a_local_task(bpe_run, tmp_path):
    import lm_eval  # noqa: F401  (requirements-dev.txt installs it: a broken install fails here, not skips)
    tasks = tmp_path / 'tasks'
    tasks.mkdir()
    # a local copy of the harness's HellaSwag task: the same file, the ending after the context and a space
    (tasks / 'local_hellaswag.yaml').write_text(f"""
task: local_hellaswag
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {bpe_run / 'hellaswag.jsonl'}
output_type: multiple_choice
validation_split: validation
doc_to_text: ctx
doc_to_target: label
doc_to_choice: endings
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    harness = Path(sys.executable).parent / 'lm_eval'
    proc = subprocess.run([str(harness), '--model', 'hf', '--model_args', f'pretrained={bpe_run / "hf"}',
                           '--tasks', 'local_hellaswag', '--include_path', str(tasks), '--device', 'cpu',
                           '--batch_size', '8', '--output_path', str(tmp_path / 'results')],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**__import__('os').environ, **OFFLINE, 'HF_HOME': str(tmp_path / 'hf_home')})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(next((tmp_path / 'results').rglob('results_*.json')).read_text())
    harness_acc = results['results']['local_hellaswag']['acc,none']
    ours = run_script('eval.py', '--tasks=hellaswag', '--hellaswag_file=hellaswag.jsonl', '--device=cpu',
                      cwd=bpe_run).stdout
    # completion style, as ours: lowest summed loss is the harness's acc (its acc_norm divides by bytes)
    assert round(harness_acc, 4) == metric(ours, 'hellaswag_acc')


def test_hellaswag_file_is_downloaded_once_into_the_cache(tmp_path, monkeypatch):
    import http.server
    import threading

    from nanogpt import evaluation
    served = tmp_path / 'served'
    served.mkdir()
    write_hellaswag(served / 'hellaswag_val.jsonl', c4_sentences(), 5)
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(served))  # noqa: E731
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(evaluation, 'HELLASWAG_URL', f'http://127.0.0.1:{server.server_port}/hellaswag_val.jsonl')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    monkeypatch.setenv('no_proxy', '127.0.0.1')
    try:
        path = evaluation.hellaswag_file('')
    finally:
        server.shutdown()
        server.server_close()
    assert path == str(tmp_path / 'cache' / 'nanogpt' / 'hellaswag_val.jsonl')
    assert Path(path).read_bytes() == (served / 'hellaswag_val.jsonl').read_bytes()
    assert evaluation.hellaswag_file('') == path  # the server is gone: the cached copy is used
    assert len(evaluation.read_hellaswag(path)) == 5 and len(evaluation.read_hellaswag(path, limit=3)) == 3


# -----------------------------------------------------------------------------
# bad input: one line on stderr, a non-zero exit, no traceback

def write_bad_files(workdir):
    (workdir / 'bad.jsonl').write_text('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 1}\n'
                                       '{"ctx": "a", "endings": ["b", "c"], "label": 1}\n')
    (workdir / 'notjson.jsonl').write_text('ctx,endings,label\n')
    torch.manual_seed(0)
    args = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=7, pos_enc='rope')
    vocab = {'tokenizer': 'char', 'vocab_size': 7, 'itos': list('\n abcde')}
    checkpoint_file.save({'model': GPT(GPTConfig(**args)).state_dict(), 'model_args': args, 'vocab': vocab},
                    workdir / 'rope.pt')


BAD_INPUTS = [
    ('eval.py', ['--out_dir=out-eval', '--tasks=hellaswag'],
     r"cannot download https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl \(.*\); "
     r"offline, pass a copy of the file with --hellaswag_file=PATH \(or save it as .*hellaswag_val.jsonl\)"),
    ('train.py', [*CHAR_TRAIN, '--out_dir=out-offline', '--hellaswag_interval=10'],
     r"cannot download https://raw.githubusercontent.com/.* offline, pass a copy of the file with --hellaswag_file"),
    ('eval.py', ['--out_dir=out-eval', '--tasks=hellaswag', '--hellaswag_file=missing.jsonl'],
     r"hellaswag_file missing.jsonl not found"),
    ('eval.py', ['--out_dir=out-eval', '--tasks=hellaswag', '--hellaswag_file=bad.jsonl'],
     r"bad.jsonl line 2 is not a HellaSwag example: expected a JSON object with 'ctx' \(text\), 'endings' \(4 texts\)"),
    ('eval.py', ['--out_dir=out-eval', '--tasks=hellaswag', '--hellaswag_file=notjson.jsonl'],
     r"notjson.jsonl line 1 is not a HellaSwag example"),
    ('eval.py', ['--out_dir=out-eval', '--tasks=bpb,hellaswg'],
     r"unknown task 'hellaswg' in tasks \(did you mean 'hellaswag'\?\); the tasks are bpb, hellaswag"),
    ('eval.py', ['--init_from=gpt2', '--log=True'], r"log=True appends to the log.jsonl of a checkpoint's run"),
    ('eval.py', ['--init_from=gpt2', '--tasks=bpb'], r"the bpb task on GPT-2 weights needs a GPT-2 BPE dataset"),
    ('checkpoint.py', ['export', 'rope.pt', 'hf-rope', '--format=hf'],
     r"--format=hf writes Hugging Face's GPT-2, which has no option pos_enc='rope' \(GPT-2's is 'learned'\); "
     r"export this model with --format=pt"),
    ('checkpoint.py', ['export', 'rope.pt', 'x', '--format=onnx'], r"--format must be pt .* or hf .*, got 'onnx'"),
    ('checkpoint.py', ['export', 'rope.pt'], r"usage: python checkpoint.py export SRC DST \[--format=pt\|hf\]"),
]


@pytest.mark.slow
@pytest.mark.parametrize('script, args, message', BAD_INPUTS, ids=[f"{s}-{' '.join(a[-2:])}" for s, a, _ in BAD_INPUTS])
def test_bad_input_gets_a_one_line_error(char_run, tmp_path, script, args, message):
    write_bad_files(char_run)
    if script == 'eval.py':
        args = [*args, '--device=cpu']
    env = {**OFFLINE, 'XDG_CACHE_HOME': str(tmp_path / 'empty_cache')}
    proc = run_script(script, *args, cwd=char_run, check=False, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (char_run / 'hf-rope').exists() and not (char_run / 'out-offline' / 'ckpt.pt').exists()
