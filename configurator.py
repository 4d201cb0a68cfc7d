"""
Configuration for the scripts, the nanoGPT way:

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

A positional argument is a config file: plain Python whose top-level assignments override
the script's defaults. Each --key=value then overrides one value; the value is parsed as a
Python literal when it is one (32, 3e-4, False, [1000, 2000]) and taken as a string
otherwise (--device=cpu). Arguments apply in order, so later ones win.

Unlike nanoGPT's exec() into the script's globals, this is a function that returns the
final dict, so it can be tested, logged and saved with a checkpoint; and a mistake (an
unknown key, a value of the wrong type, a missing file) stops the script with a one-line
error that names the key, instead of creating a new variable nobody reads.
"""

import ast
import difflib
import os

from nanogpt.errors import ConfigError, run  # noqa: F401  (run: the scripts' entry point, configurator.run)


def defaults_from(namespace):
    """The config defaults among a script's globals: the plain lowercase values, not modules,
    functions or UPPERCASE constants (such as those a script imports)."""
    return {k: v for k, v in namespace.items()
            if not k.startswith('_') and not k.isupper()
            and isinstance(v, (bool, int, float, str, list, tuple, type(None)))}


def configure(defaults, argv):
    """Apply config files and --key=value overrides from argv to the defaults; return the new dict."""
    config = dict(defaults)
    for arg in argv:
        if arg.startswith('--'):
            key, sep, text = arg[2:].partition('=')
            if not sep:
                raise ConfigError(f"expected --key=value, got '{arg}'")
            _check_known(key, config, where=arg)
            config[key] = _coerce(key, _parse_value(text, config[key]), config[key])
        else:
            for key, value in defaults_from(read_python_file(arg, 'config file')).items():
                _check_known(key, config, where=f"config file {arg}")
                config[key] = _coerce(key, value, config[key])
    return config


def read_python_file(path, what):
    """The top-level names a Python file of settings assigns (a config file, a sweep file): the file
    is user code, so any way it fails to run is the user's to fix, in one line."""
    if not os.path.isfile(path):
        raise ConfigError(f"{what} not found: {path}")
    with open(path) as f:
        source = f.read()
    namespace = {'__file__': path}
    try:
        exec(compile(source, path, 'exec'), namespace)
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: {e.msg}") from None
    except Exception as e:
        raise ConfigError(f"{path}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items() if not k.startswith('_')}


def _check_known(key, config, where):
    if key not in config:
        close = difflib.get_close_matches(key, config.keys(), n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigError(f"unknown config key '{key}' in {where}{hint}")


def _parse_value(text, default):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # not a Python literal: a bare string such as --device=cuda:1
    # a string key keeps what was typed, so --wandb_run_name=2024 stays the string '2024'
    return text if isinstance(default, str) and not isinstance(value, str) else value


def _coerce(key, value, default):
    """Check value against the default's type; allow the conversions a person means."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):  # bool before int: True is an int in Python
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # --max_iters=1e4
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(default)(value)
    elif isinstance(value, type(default)):
        return value
    raise ConfigError(f"config key '{key}' expects {type(default).__name__} "
                      f"(default {default!r}), got {type(value).__name__} {value!r}")
