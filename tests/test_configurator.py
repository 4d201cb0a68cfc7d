import pytest
from conftest import REPO, run_script

from configurator import configure
from nanogpt.errors import ConfigError

DEFAULTS = dict(batch_size=12, learning_rate=6e-4, device='auto', compile=None, decay_lr=True,
                wandb_run_name='gpt2', ckpt_iters=[], max_iters=600000)


def test_config_file_then_overrides_apply_in_order(tmp_path):
    config_file = tmp_path / 'cfg.py'
    config_file.write_text("import math\nbatch_size = 64\nlearning_rate = 1e-3\n_private = 1\n")
    config = configure(DEFAULTS, [str(config_file), '--batch_size=32', '--device=cuda:1'])
    assert config == {**DEFAULTS, 'batch_size': 32, 'learning_rate': 1e-3, 'device': 'cuda:1'}


def test_values_are_python_literals_checked_against_the_default_type():
    config = configure(DEFAULTS, ['--learning_rate=1', '--max_iters=1e4', '--decay_lr=False',
                                  '--wandb_run_name=2024', '--ckpt_iters=[10, 20]', '--compile=True'])
    assert config['learning_rate'] == 1.0 and isinstance(config['learning_rate'], float)
    assert config['max_iters'] == 10000 and isinstance(config['max_iters'], int)
    assert config['decay_lr'] is False
    assert config['wandb_run_name'] == '2024'
    assert config['ckpt_iters'] == [10, 20]
    assert config['compile'] is True


@pytest.mark.parametrize('argv, message', [
    (['--bach_size=32'], "unknown config key 'bach_size' in --bach_size=32 (did you mean 'batch_size'?)"),
    (['--batch_size=3.5'], "config key 'batch_size' expects int (default 12), got float 3.5"),
    (['--decay_lr=1'], "config key 'decay_lr' expects bool"),
    (['--batch_size'], "expected --key=value, got '--batch_size'"),
    (['missing_config.py'], "config file not found: missing_config.py"),
])
def test_mistakes_raise_a_config_error_naming_the_key(argv, message):
    with pytest.raises(ConfigError) as e:
        configure(DEFAULTS, argv)
    assert message in str(e.value)


def test_unknown_key_in_a_config_file_is_reported_with_the_file(tmp_path):
    config_file = tmp_path / 'cfg.py'
    config_file.write_text("learnin_rate = 1e-3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'learnin_rate' in config file .*cfg.py "
                                          r"\(did you mean 'learning_rate'\?\)"):
        configure(DEFAULTS, [str(config_file)])


def test_broken_config_file_is_reported_in_one_line(tmp_path):
    config_file = tmp_path / 'cfg.py'
    config_file.write_text("batch_size = (\n")
    with pytest.raises(ConfigError, match=r"cfg.py:1: "):
        configure(DEFAULTS, [str(config_file)])


@pytest.mark.slow
@pytest.mark.parametrize('script', ['train.py', 'sample.py'])
def test_scripts_exit_2_with_one_line_and_no_traceback(script, tmp_path):
    proc = run_script(script, '--batch_sise=4', '--num_sample=2', cwd=tmp_path, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: unknown config key')
    assert 'Traceback' not in proc.stderr


def test_imported_constants_are_not_config_keys():
    from train import DEFAULTS as TRAIN_DEFAULTS
    assert 'ARCHITECTURE' not in TRAIN_DEFAULTS and 'batch_size' in TRAIN_DEFAULTS


def test_every_config_file_in_the_repository_applies_to_train_py():
    from train import DEFAULTS as TRAIN_DEFAULTS
    for config_file in sorted((REPO / 'config').glob('*.py')):
        if not config_file.name.startswith('sweep_'):
            configure(TRAIN_DEFAULTS, [str(config_file)])


def test_every_sweep_file_names_train_py_keys_only(monkeypatch):
    from sweep import as_argument, expand, read_sweep_file
    from train import DEFAULTS as TRAIN_DEFAULTS
    monkeypatch.chdir(REPO)  # sweep files name their base config relative to the repository
    sweep_files = sorted((REPO / 'config').glob('sweep_*.py'))
    assert len(sweep_files) >= 3
    for sweep_file in sweep_files:
        spec = read_sweep_file(str(sweep_file))
        for overrides in expand(spec.get('runs'), spec.get('grid', {})).values():
            configure(TRAIN_DEFAULTS, [*spec['base'], *(as_argument(k, v) for k, v in overrides.items())])
