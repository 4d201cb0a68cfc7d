"""sample.py as a user runs it: same text with and without the KV cache, streaming that prints
exactly the non-streamed text (BPE bytes split across tokens included), and option checks."""

import os

import pytest
import torch
from conftest import SHARED_DATA, run_script

from model import GPT, GPTConfig
from nanogpt import checkpoint_file

GPT2_VOCAB = {'tokenizer': 'gpt2', 'vocab_size': 50257}
CHAR_VOCAB = {'tokenizer': 'char', 'vocab_size': 6, 'itos': ['\n', ' ', 'a', 'b', 'é', '<|endoftext|>']}


def write_model(path, vocab, block_size=16):
    """A random tiny model saved as train.py saves one (weights-only): speed and decoding do not
    depend on the weights having been trained."""
    torch.manual_seed(0)
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=block_size, bias=False,
                vocab_size=(vocab['vocab_size'] + 63) // 64 * 64 if vocab['tokenizer'] != 'char' else vocab['vocab_size'])
    model = GPT(GPTConfig(**args, dropout=0.0))
    checkpoint_file.save({'model': model.state_dict(), 'model_args': args, 'vocab': vocab}, path)
    return path


@pytest.fixture(scope='module')
def tiktoken_env():
    cache = SHARED_DATA / 'tiktoken_cache'
    if not cache.exists():
        pytest.skip(f"{cache} is not available")
    return {'TIKTOKEN_CACHE_DIR': str(cache)}


def sample(tmp_path, ckpt, *args, env=None):
    return run_script('sample.py', f'--init_from={ckpt}', '--device=cpu', '--num_samples=2', *args,
                      cwd=tmp_path, env=env).stdout


@pytest.mark.slow
@pytest.mark.parametrize('vocab', [CHAR_VOCAB, GPT2_VOCAB], ids=['char', 'gpt2'])
def test_kv_cache_and_streaming_print_the_same_text(tmp_path, vocab, tiktoken_env, run_main, monkeypatch):
    ckpt = write_model(tmp_path / 'model.pt', vocab)
    # 40 new tokens from a 2-token prompt run well past block_size=16
    common = ['--max_new_tokens=40', '--temperature=1.0', '--top_k=None', '--start=ab', '--seed=7']
    reference = sample(tmp_path, ckpt, *common, '--kv_cache=False', env=tiktoken_env)  # as a user runs it
    for key, value in tiktoken_env.items():
        monkeypatch.setenv(key, value)
    for variant in ([], ['--stream=True']):  # in this process (run_main): the same main, without a new interpreter
        code, out, err = run_main('sample.py', f'--init_from={ckpt}', '--device=cpu', '--num_samples=2', *common,
                                  *variant, cwd=tmp_path)
        assert code == 0 and out == reference, err
    assert reference.count('---------------') == 2 and reference.startswith('ab')


def test_streaming_holds_back_bytes_of_a_split_utf8_character(tiktoken_env):
    os.environ.update(tiktoken_env)
    from nanogpt.tokenizer import Codec
    codec = Codec(GPT2_VOCAB)
    text = "naïve café 東京 🙂"
    ids = codec.encode(text)
    assert any(not codec.enc.decode_single_token_bytes(i).decode('utf-8', 'ignore') for i in ids)  # split chars
    pieces = list(codec.decode_stream(ids))
    assert ''.join(pieces) == text and '\ufffd' not in ''.join(pieces)


def test_char_prompts_match_multi_character_symbols_whole():
    from nanogpt.tokenizer import Codec
    codec = Codec(CHAR_VOCAB)
    ids = codec.encode("ab<|endoftext|>é a")
    assert ids == [2, 3, 5, 4, 1, 2]
    assert codec.decode(ids) == "ab<|endoftext|>é a"


@pytest.mark.parametrize('option, message', [
    ('--temperature=-1', "temperature must be >= 0"),
    ('--top_k=0', "top_k must be a positive integer or None"),
    ('--top_p=1.5', "top_p must be in (0, 1]"),
    ('--max_new_tokens=0', "num_samples and max_new_tokens must be at least 1"),
])
def test_sampling_options_out_of_range_are_refused(tmp_path, run_main, option, message):
    ckpt = write_model(tmp_path / 'model.pt', CHAR_VOCAB)
    code, _, err = run_main('sample.py', f'--init_from={ckpt}', option, cwd=tmp_path)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err
