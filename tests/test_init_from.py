"""What init_from names is decided in one place, nanogpt.loading.source_of, for every script."""

import pytest

from nanogpt import checkpoint_file
from nanogpt.errors import ConfigError, UserError
from nanogpt.loading import Source, source_of


def test_names_and_paths(tmp_path):
    (tmp_path / 'out').mkdir()
    assert source_of('scratch', 'out') == Source('scratch')
    assert source_of('resume', str(tmp_path / 'out'), sharded_run=False) == \
        Source('checkpoint', str(tmp_path / 'out' / 'ckpt.pt'), resume=True)
    assert source_of('resume', str(tmp_path / 'out'), sharded_run=True) == \
        Source('checkpoint', str(tmp_path / 'out' / 'ckpt'), resume=True)
    for name in ('gpt2', 'gpt2-medium', 'gpt2-xl'):
        assert source_of(name, 'out') == Source('gpt2', name)


def test_an_existing_file_is_a_checkpoint_whatever_its_name(tmp_path, monkeypatch):
    """A checkpoint file whose name starts with gpt2 is the user's checkpoint, not OpenAI's weights."""
    monkeypatch.chdir(tmp_path)
    checkpoint_file.save({'model': {}}, 'gpt2-finetuned.pt')
    assert source_of('gpt2-finetuned.pt', 'out') == Source('checkpoint', 'gpt2-finetuned.pt')


def test_directories_are_sharded_checkpoints_or_hugging_face_ones(tmp_path):
    shards = tmp_path / 'run' / 'ckpt'
    shards.mkdir(parents=True)
    (shards / 'state.pt').touch()
    (shards / '.metadata').touch()
    assert source_of(str(shards), 'out') == Source('checkpoint', str(shards))
    hf_dir = tmp_path / 'gpt2-local'
    hf_dir.mkdir()
    (hf_dir / 'config.json').write_text('{}')
    assert source_of(str(hf_dir), 'out') == Source('gpt2', str(hf_dir))
    with pytest.raises(UserError, match=r"is a directory but not a Hugging Face GPT-2 checkpoint"):
        source_of(str(tmp_path), 'out')


def test_what_names_nothing_is_one_line():
    with pytest.raises(UserError, match=r"^no checkpoint at missing/ckpt\.pt$"):
        source_of('missing/ckpt.pt', 'out')
    with pytest.raises(ConfigError, match=r"^init_from must be 'scratch', 'resume', 'gpt2\*' or an existing"):
        source_of('from_scratch', 'out')


def test_train_py_takes_a_checkpoint_named_gpt2_for_a_checkpoint(tmp_path, monkeypatch):
    """train.py's check of GPT-2 options asks source_of too: options are allowed on a checkpoint named gpt2*."""
    from types import SimpleNamespace

    import train
    monkeypatch.chdir(tmp_path)
    checkpoint_file.save({'model': {}}, 'gpt2-mine.pt')
    cfg = SimpleNamespace(**{**train.DEFAULTS, 'init_from': 'gpt2-mine.pt', 'pos_enc': 'rope'})
    train.check_config(cfg)  # no "OpenAI's GPT-2 weights need GPT-2's architecture"
    with pytest.raises(ConfigError, match="OpenAI's GPT-2 weights need GPT-2's architecture"):
        train.check_config(SimpleNamespace(**{**vars(cfg), 'init_from': 'gpt2'}))
