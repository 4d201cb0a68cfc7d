"""
Hugging Face's GPT-2, both ways: OpenAI's weights into our GPT (init_from='gpt2*', or a directory
that save_pretrained wrote), and our checkpoints out as a GPT-2 directory that transformers loads and
EleutherAI's lm_eval runs (checkpoint.py export --format=hf).
"""

import json
import os

import torch

from model import GPT, GPT2_DEFAULTS, OPTIONS, GPTConfig, architecture_of, check_gpt2_compatible
from nanogpt.errors import ConfigError, UserError
from nanogpt.tokenizer import EOT, bpe_encoding, byte_symbols

# Hugging Face's GPT-2 holds these weights in "Conv1D" modules, which store a Linear's weight transposed
CONV1D_WEIGHTS = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')


def is_hf_dir(path):
    """A directory that Hugging Face's from_pretrained can read: it has a config.json."""
    return os.path.isfile(os.path.join(path, 'config.json'))


def load_gpt2(name, override_args=None):
    """OpenAI's GPT-2 weights ('gpt2' ... 'gpt2-xl') or a local Hugging Face GPT-2 directory, as our GPT.
    override_args may set dropout; architecture options other than GPT-2's are refused in one line,
    before any download."""
    override_args = override_args or {}
    assert set(override_args) <= {'dropout', *OPTIONS}, "only dropout and the architecture options can be given"
    try:
        check_gpt2_compatible(override_args)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        from transformers import GPT2LMHeadModel  # optional dependency, only needed here
    except ImportError:
        raise UserError("GPT-2 weights need the transformers package: pip install transformers") from None
    print(f"loading weights from pretrained gpt: {name}")
    try:
        model_hf = GPT2LMHeadModel.from_pretrained(name)
    except OSError as e:  # an unknown name, no network, or a directory without a GPT-2 checkpoint
        raise UserError(f"cannot load GPT-2 weights {name!r}: {str(e).splitlines()[0]}") from None
    hf = model_hf.config
    config = GPTConfig(block_size=hf.n_positions, vocab_size=hf.vocab_size, n_layer=hf.n_layer,
                       n_head=hf.n_head, n_embd=hf.n_embd, bias=True,  # GPT-2 always has biases
                       dropout=override_args.get('dropout', 0.0))
    model = GPT(config)
    sd = model.state_dict()
    sd_hf = {k: v for k, v in model_hf.state_dict().items()
             if not k.endswith('.attn.masked_bias') and not k.endswith('.attn.bias')}  # buffers, not weights
    assert set(sd_hf) == set(sd), f"mismatched keys: {sorted(set(sd_hf) ^ set(sd))}"
    with torch.no_grad():
        for k, v in sd_hf.items():
            v = v.t() if k.endswith(CONV1D_WEIGHTS) else v
            assert v.shape == sd[k].shape, f"{k}: {v.shape} vs {sd[k].shape}"
            sd[k].copy_(v)
    return model


def export_hf(ckpt, directory):
    """Write a checkpoint's model as a Hugging Face GPT-2 directory (config.json, model.safetensors and,
    for BPE vocabularies, the tokenizer's files) that transformers' GPT2LMHeadModel loads and
    EleutherAI's lm_eval runs. Hugging Face's GPT-2 has GPT-2's architecture only: any other option is
    refused; attn_impl, which changes how attention is computed and not what, may be any. Returns the
    files written."""
    args = architecture_of(ckpt['model_args'])
    for key in OPTIONS:
        if key != 'attn_impl' and args[key] != GPT2_DEFAULTS[key]:
            raise UserError(f"--format=hf writes Hugging Face's GPT-2, which has no option {key}={args[key]!r} "
                            f"(GPT-2's is {GPT2_DEFAULTS[key]!r}); export this model with --format=pt")
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError("--format=hf needs the safetensors package: pip install safetensors") from None
    vocab = ckpt.get('vocab') or {}
    is_gpt2_bpe = vocab.get('tokenizer') in ('gpt2', 'r50k_base')  # r50k_base is GPT-2's BPE under another name
    itos = vocab.get('itos', [])
    if vocab.get('tokenizer', 'char') != 'char':
        eot = bpe_encoding(vocab).eot_token
    else:
        eot = itos.index(EOT) if EOT in itos else None
    config = {
        'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2',
        'vocab_size': args['vocab_size'], 'n_positions': args['block_size'], 'n_ctx': args['block_size'],
        'n_embd': args['n_embd'], 'n_layer': args['n_layer'], 'n_head': args['n_head'], 'n_inner': None,
        'activation_function': 'gelu_new',  # the tanh approximation, as model.MLP computes it
        'layer_norm_epsilon': 1e-5, 'initializer_range': 0.02, 'tie_word_embeddings': True,
        'resid_pdrop': 0.0, 'embd_pdrop': 0.0, 'attn_pdrop': 0.0, 'bos_token_id': eot, 'eos_token_id': eot,
        'torch_dtype': 'float32',
    }
    weights = {}
    for name, value in ckpt['model'].items():
        name = name.replace('attn.mha.in_proj_', 'attn.c_attn.').replace('attn.mha.out_proj.', 'attn.c_proj.')
        if name == 'lm_head.weight':
            continue  # tied to transformer.wte.weight, which Hugging Face ties back on loading
        weights[name] = (value.t() if name.endswith(CONV1D_WEIGHTS) else value).float().contiguous()
    if not args['bias']:  # Hugging Face's GPT-2 always has biases: zeros compute the same
        for name in list(weights):
            if name.endswith(('ln_1.weight', 'ln_2.weight', 'ln_f.weight', '.c_attn.weight', '.c_proj.weight',
                              '.c_fc.weight')):
                weights[name[:-len('weight')] + 'bias'] = torch.zeros(weights[name].shape[-1])
    os.makedirs(directory, exist_ok=True)
    written = ['config.json', 'model.safetensors']
    with open(os.path.join(directory, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2)
    save_file(weights, os.path.join(directory, 'model.safetensors'), metadata={'format': 'pt'})
    if is_gpt2_bpe:
        written += write_gpt2_tokenizer(directory, args['block_size'])
    elif vocab.get('tokenizer', 'char') != 'char':  # a trained BPE, or another tiktoken encoding
        written += write_tokenizer_json(directory, hf_tokenizer_json(vocab), args['block_size'])
    return written


def hf_tokenizer_json(vocab):
    """The tokenizer.json of a BPE vocabulary that gives our ids in Hugging Face's encoder: the encoding that
    we run, converted (tokenizer_json_of), also where the vocabulary is a tokenizer.json already. Its own
    text may lack "ignore_merges" (ours did once), and its merges may not list every pair of tokens that
    tiktoken merges, which takes any two adjacent tokens that make a token: merges a b, b c, a bc make ' abc'
    ' ' 'abc' to tiktoken and ' ' 'ab' 'c' to Hugging Face, even with ignore_merges."""
    return tokenizer_json_of(bpe_encoding(vocab))


def write_tokenizer_json(directory, text, max_length):
    """A byte-level BPE's tokenizer.json, which AutoTokenizer loads as a PreTrainedTokenizerFast."""
    with open(os.path.join(directory, 'tokenizer.json'), 'w', encoding='utf-8') as f:
        f.write(text)
    with open(os.path.join(directory, 'tokenizer_config.json'), 'w') as f:
        json.dump({'tokenizer_class': 'PreTrainedTokenizerFast', 'model_max_length': max_length, 'bos_token': EOT,
                   'eos_token': EOT, 'unk_token': EOT, 'add_prefix_space': False}, f, indent=2)
    return ['tokenizer.json', 'tokenizer_config.json']


def tokenizer_json_of(enc):
    """A tiktoken encoding as a Hugging Face tokenizer.json that gives the same ids: the same split
    pattern, then byte-level BPE whose merges are, for each token in rank order, the pairs of tokens
    it is made of (as transformers converts tiktoken files), and ignore_merges, as tiktoken's encoder
    takes a piece of text that is a token as that token."""
    symbols = byte_symbols()
    ranks = enc._mergeable_ranks
    name = {token: ''.join(symbols[b] for b in token) for token in ranks}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        pairs = [(token[:i], token[i:]) for i in range(1, len(token))
                 if ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank]
        merges += [[name[a], name[b]] for a, b in sorted(pairs, key=lambda p: (ranks[p[0]], ranks[p[1]]))]
    specials = [{'id': i, 'content': s, 'single_word': False, 'lstrip': False, 'rstrip': False,
                 'normalized': False, 'special': True} for s, i in enc._special_tokens.items()]
    return json.dumps({
        'version': '1.0', 'truncation': None, 'padding': None, 'added_tokens': specials, 'normalizer': None,
        'pre_tokenizer': {'type': 'Sequence', 'pretokenizers': [
            {'type': 'Split', 'pattern': {'Regex': enc._pat_str}, 'behavior': 'Isolated', 'invert': False},
            {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': False}]},
        'post_processor': None, 'decoder': {'type': 'ByteLevel', 'add_prefix_space': True, 'trim_offsets': True,
                                            'use_regex': True},
        'model': {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None,
                  'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False, 'ignore_merges': True,
                  'vocab': {**{name[t]: r for t, r in ranks.items()}, **{s: i for s, i in enc._special_tokens.items()}},
                  'merges': merges}}, ensure_ascii=False)


def write_gpt2_tokenizer(directory, max_length):
    """GPT-2's tokenizer files in Hugging Face's layout: vocab.json and merges.txt are OpenAI's
    encoder.json and vocab.bpe, byte for byte, read through tiktoken's cache (so offline too)."""
    import tiktoken.load
    base = 'https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/'
    files = {'vocab.json': ('encoder.json', '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783'),
             'merges.txt': ('vocab.bpe', '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5')}
    for name, (source, sha256) in files.items():
        try:
            data = tiktoken.load.read_file_cached(base + source, sha256)
        except Exception as e:  # no network, or a cache without the file
            raise UserError(f"cannot read GPT-2's {source} ({type(e).__name__}) for the tokenizer files: tiktoken "
                            f"caches it in $TIKTOKEN_CACHE_DIR; offline, set TIKTOKEN_CACHE_DIR to a folder seeded on a "
                            f"machine with internet by: TIKTOKEN_CACHE_DIR=/path/to/cache python -c \"import "
                            f"tiktoken; tiktoken.get_encoding('gpt2')\"") from None
        with open(os.path.join(directory, name), 'wb') as f:
            f.write(data)
    with open(os.path.join(directory, 'tokenizer_config.json'), 'w') as f:
        json.dump({'tokenizer_class': 'GPT2Tokenizer', 'model_max_length': max_length, 'bos_token': '<|endoftext|>',
                   'eos_token': '<|endoftext|>', 'unk_token': '<|endoftext|>', 'add_prefix_space': False}, f, indent=2)
    return [*files, 'tokenizer_config.json']
