"""
The commands in README.md and docs/*.md name things that exist: every `python SCRIPT ...`,
`torchrun ... SCRIPT ...`, `srun python SCRIPT ...`, `sbatch slurm/X.sbatch ...` and `make TARGET`
in a code block or in inline code names a script (or Makefile target) of this repository, every
config file it passes (config/*.py, slurm/*.sbatch) exists, and every option it passes is one the
script accepts:

- train.py, sample.py, eval.py, bench.py: the keys of the script's DEFAULTS (imported once, here);
- the argparse scripts (data/*/prepare.py, plot.py, sweep.py, checkpoint.py, bench/*.py): the
  options that `SCRIPT --help` lists (all run in one subprocess, so that torch is imported once);
  sweep.py passes any other --key=value on to train.py, and bench/vs_nanogpt.py's positional
  arguments are train.py's.

Also, every relative link and image in the docs resolves, anchors included. Commands that are not
this repository's (pip, git clone, lm_eval, nanoGPT's own checkout in ../nanoGPT, python -c / -m)
are left alone.
"""

import functools
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ['README.md'] + sorted(os.path.join('docs', f) for f in os.listdir(os.path.join(ROOT, 'docs'))
                              if f.endswith('.md'))
CONFIGURATOR_SCRIPTS = {'train.py', 'sample.py', 'eval.py', 'bench.py'}  # options: the keys of DEFAULTS
ARGPARSE_SCRIPTS = re.compile(r'^(data/\w+/prepare\.py|plot\.py|sweep\.py|checkpoint\.py|bench/(?!harness)\w+\.py)$')
PYTHON = re.compile(r'^(\S*/)?python(3(\.\d+)?)?$')
CONFIG_FILE = re.compile(r'^(config/\S*\.py|slurm/\S*\.sbatch)$')
SEPARATORS = {'&&', '||', ';', '|', '(', ')', '&'}


# ----------------------------------------------------------------------------- what the docs say

def read(path):
    with open(os.path.join(ROOT, path), encoding='utf-8') as f:
        return f.read()


def command_candidates(doc):
    """(line number, text, inline) of every line of a fenced or indented code block (continuation lines
    joined) and of every inline code span, in the markdown file doc (relative to the root)."""
    lines = read(doc).split('\n')
    prose = list(lines)  # the lines outside code blocks, for inline code; code lines blanked
    out = []
    fence, i = None, 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if fence is None and stripped.startswith('```'):
            fence, prose[i] = stripped[:3], ''
            i += 1
            continue
        if fence is not None and stripped.startswith(fence):
            fence, prose[i] = None, ''
            i += 1
            continue
        if fence is not None or (line.startswith('    ') and stripped and not stripped.startswith(('-', '|', '*'))
                                 and (i == 0 or not lines[i - 1].strip() or lines[i - 1].startswith('    '))):
            start, text = i, stripped
            while text.endswith('\\') and i + 1 < len(lines):  # a command continued on the next line
                i += 1
                text = text[:-1] + ' ' + lines[i].strip()
            for j in range(start, i + 1):
                prose[j] = ''
            out.append((start + 1, text, False))
        i += 1
    text = '\n'.join(prose)
    for m in re.finditer(r'`([^`]+)`', text):  # inline code, also where it wraps onto the next line
        lineno = text.count('\n', 0, m.start()) + 1
        out.append((lineno, ' '.join(m.group(1).replace('\\|', '|').split()), True))
    return out


def split_commands(text):
    """The commands of one line of shell: tokens, comments dropped, split at && ; | ( ); None for a line
    shlex cannot read. A `cd` elsewhere ends the line's commands: what follows runs another checkout."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return None
    commands, current, redirect = [], [], False
    for token in tokens + [';']:
        if redirect:  # the file of a redirection
            redirect = False
            continue
        if set(token) <= set('<>&') and token not in SEPARATORS:  # > out.txt, 2>&1 (lexed as 2 >& 1)
            if current and current[-1].isdigit():
                current.pop()
            redirect = True
            continue
        if token not in SEPARATORS:
            current.append(token)
            continue
        if current[:1] == ['cd'] and current[1:] not in ([], ['.']):
            break
        if current:
            commands.append(current)
        current = []
    return commands


def is_command_start(text, inline):
    """Whether text (one code line or inline span) starts like a command we check."""
    words = text.split()
    while words and re.match(r'^[A-Za-z_]\w*=', words[0]):  # VAR=value prefixes
        words = words[1:]
    if not words:
        return False
    first = words[0]
    if PYTHON.match(first) or first in ('torchrun', 'srun', 'make', 'sbatch'):
        return True
    # inline code such as `sample.py --init_from=out/model.pt`: a script named with its options
    return inline and first.endswith('.py') and any(w.startswith('--') for w in words[1:])


# ----------------------------------------------------------------------------- what the code accepts

@functools.cache
def configurator_keys(script):
    """The keys of DEFAULTS of train.py, sample.py, eval.py or bench.py, imported in this process."""
    return set(importlib.import_module(script[:-3]).DEFAULTS)


def help_options(output):
    """The --options in an argparse --help text: its usage block and its option lines (not the prose,
    whose examples may mention other scripts' options)."""
    start = output.find('usage:')
    usage = output[start:].split('\n\n')[0] if start >= 0 else ''
    option_lines = [line for line in output.splitlines() if re.match(r'^\s+-', line)]
    return set(re.findall(r'--[A-Za-z_][\w-]*', '\n'.join([usage] + option_lines)))


# Runs each script given on its command line with --help, as `python SCRIPT --help` would (its folder first
# on sys.path, run as __main__), in one interpreter, so that torch is imported once for all of them, and
# writes {script: what it printed} as JSON to the file named first.
HELP_RUNNER = """
import contextlib, io, json, os, runpy, sys
out, results = sys.argv[1], {}
for script in sys.argv[2:]:
    buf = io.StringIO()
    sys.argv, sys.path[0] = [script, '--help'], os.path.dirname(os.path.abspath(script))
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            runpy.run_path(script, run_name='__main__')
        except SystemExit:
            pass
        except Exception as e:
            print(f'{type(e).__name__}: {e}')
    results[script] = buf.getvalue()
with open(out, 'w') as f:
    json.dump(results, f)
"""


def start_help(scripts, out):
    """A subprocess that collects the --help output of scripts into the file out."""
    return subprocess.Popen([sys.executable, '-c', HELP_RUNNER, out, *scripts], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_help(process, out):
    """{script: its options} from a start_help subprocess."""
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0 and os.path.exists(out), output
    with open(out) as f:
        texts = json.load(f)
    for script, text in texts.items():
        assert 'usage:' in text, f"python {script} --help printed no usage:\n{text[-2000:]}"
    return {script: help_options(text) for script, text in texts.items()}


def run_help(script):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'help.json')
        return read_help(start_help([script], out), out)[script]


_HELP = {}


def argparse_options(script):
    """The options of an argparse script (or checkpoint.py's usage line), from SCRIPT --help, cached."""
    if script not in _HELP:
        _HELP[script] = run_help(script)
    return _HELP[script]


@functools.cache
def make_targets():
    return set(re.findall(r'^([\w.-]+)\s*:(?!=)', read('Makefile'), re.MULTILINE)) - {'.PHONY'}


# ----------------------------------------------------------------------------- the check

def check_command(tokens):
    """The problems of one command (a list of tokens), as strings; [] when it is fine or not ours."""
    while tokens and re.match(r'^[A-Za-z_]\w*=', tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return []
    first, rest = tokens[0], tokens[1:]
    if first == 'make':
        targets = [t for t in rest if not t.startswith('-') and '=' not in t]
        return [f"no Makefile target {t!r}" for t in targets if t not in make_targets()]
    if first == 'sbatch':
        return check_sbatch(rest)
    if first == 'srun':
        while rest and rest[0].startswith('-'):
            rest = rest[1:]
        return check_command(rest)
    if first == 'torchrun':  # its own options come first; the script is the first .py
        scripts = [i for i, t in enumerate(rest) if t.endswith('.py')]
        return check_script(rest[scripts[0]], rest[scripts[0] + 1:]) if scripts else []  # `srun torchrun ...`
    if PYTHON.match(first):
        if not rest or rest[0].startswith('-'):  # python -c ..., python -m pytest: not a script here
            return []
        return check_script(rest[0], rest[1:])
    if first.endswith('.py'):  # inline `sample.py --init_from=...`
        return check_script(first, rest)
    return []


def check_sbatch(args):
    while args and args[0].startswith('-'):  # sbatch's own options
        args = args[1:]
    if not args:  # `sbatch` named in prose
        return []
    script, rest = args[0], args[1:]
    if not os.path.isfile(os.path.join(ROOT, script)):
        return [f"no such file {script}"]
    if os.path.basename(script) == 'prepare_ray.sbatch':  # its arguments: a prepare script and its options
        return check_script(rest[0], rest[1:]) if rest else []
    return check_script('train.py', rest)  # train_gpt2*.sbatch pass their arguments on to train.py


def check_script(script, args):
    if script.startswith('../') or os.path.isabs(script):  # another checkout's script (nanoGPT's own)
        return []
    if not os.path.isfile(os.path.join(ROOT, script)):
        return [f"no such script {script}"]
    problems = [f"no such file {a}" for a in args if CONFIG_FILE.match(a) and not os.path.isfile(os.path.join(ROOT, a))]
    if script in CONFIGURATOR_SCRIPTS:
        keys = configurator_keys(script)
        for a in args:
            if a.startswith('--'):
                key, sep, _ = a[2:].partition('=')
                if not sep:
                    problems.append(f"{script} takes --key=value, got {a}")
                elif key not in keys:
                    problems.append(f"{script} has no option --{key}")
            elif not os.path.isfile(os.path.join(ROOT, a)):
                problems.append(f"no such config file {a} (a positional argument of {script} is a config file)")
        return problems
    if not ARGPARSE_SCRIPTS.match(script):
        return [f"{script} is not one of the scripts with a command line"]
    options = argparse_options(script)
    train_keys = configurator_keys('train.py') if script == 'sweep.py' else set()
    previous = None
    for a in args:
        if a.startswith('--'):
            name, sep, _ = a.partition('=')
            if name not in options and not (sep and name[2:] in train_keys):
                problems.append(f"{script} has no option {name}")
        elif script == 'sweep.py' and previous == '--grid':
            key = a.partition('=')[0]
            if key not in train_keys:
                problems.append(f"sweep.py --grid {a}: train.py has no option --{key}")
        elif script == 'bench/vs_nanogpt.py' and previous != '--nanogpt' and (' ' in a or a.endswith('.py')):
            problems += check_script('train.py', shlex.split(a))  # a run: train.py's arguments
        previous = a if a.startswith('--') and '=' not in a else None
    return problems


def doc_commands():
    """(doc, line number, tokens) of every command of this repository that the docs name."""
    found = []
    for doc in DOCS:
        for lineno, text, inline in command_candidates(doc):
            for tokens in split_commands(text) or []:
                if is_command_start(' '.join(tokens), inline):
                    found.append((doc, lineno, tokens))
    return found


def problems_in(commands):
    """'doc:line: command: problem' for each problem. The argparse scripts' --help runs in a subprocess
    while this process imports train.py and the others."""
    scripts = {t for _, _, tokens in commands for t in tokens
               if ARGPARSE_SCRIPTS.match(t) and os.path.isfile(os.path.join(ROOT, t))} - set(_HELP)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'help.json')
        process = start_help(sorted(scripts), out) if scripts else None
        try:
            for script in CONFIGURATOR_SCRIPTS:
                configurator_keys(script)
            if process:
                _HELP.update(read_help(process, out))
        finally:
            if process and process.poll() is None:
                process.kill()
                process.wait()
    out = []
    for doc, lineno, tokens in commands:
        for problem in check_command(tokens):
            out.append(f"{doc}:{lineno}: {shlex.join(tokens)}: {problem}")
    return out


# ----------------------------------------------------------------------------- the tests

def test_docs_commands_name_scripts_files_and_options_that_exist():
    commands = doc_commands()
    problems = problems_in(commands)
    assert not problems, "commands in the docs that do not match the code:\n" + "\n".join(problems)


def test_the_docs_commands_are_found():
    """The extraction finds the commands (so that the check above cannot pass by finding none)."""
    commands = doc_commands()
    firsts = {tokens[0] for _, _, tokens in commands}
    scripts = {t for _, _, tokens in commands for t in tokens if t.endswith('.py')}
    assert len(commands) > 80, len(commands)
    assert {'python', 'torchrun', 'srun', 'make', 'sbatch'} <= firsts, firsts
    assert {'train.py', 'sample.py', 'eval.py', 'bench.py', 'sweep.py', 'plot.py', 'checkpoint.py',
            'data/openwebtext/prepare.py', 'bench/vs_nanogpt.py'} <= scripts, scripts
    assert {doc for doc, _, _ in commands} == set(DOCS), "every page starts with the commands a user types"
    assert {'--num_workers', '--input', '--config', '--streaming'} <= argparse_options('data/fineweb_edu/prepare.py')
    assert {'--base', '--grid', '--parallel'} <= argparse_options('sweep.py')
    assert argparse_options('checkpoint.py') == {'--format'}
    assert {'--size', '--workers', '--threads'} <= argparse_options('bench/prepare_char.py')


@pytest.mark.parametrize('doc', [d for d in DOCS if d.startswith('docs')])
def test_each_page_starts_with_the_commands_a_user_types(doc):
    lines = [line for line in read(doc).split('\n') if line.strip()]
    assert lines[0].startswith('# ') and lines[1].startswith('```'), f"{doc}: a title, then a code block of commands"


@pytest.mark.parametrize('line, problem', [
    ("python train.py config/train_gpt2.py --no_such_key=1", "train.py has no option --no_such_key"),
    ("python train.py config/no_such_config.py", "no such file config/no_such_config.py"),
    ("torchrun --standalone --nproc_per_node=2 train.py --batch_size 4", "train.py takes --key=value"),
    ("srun python sample.py --top_q=0.9", "sample.py has no option --top_q"),
    ("python data/openwebtext/prepare.py --num_worker 2", "data/openwebtext/prepare.py has no option --num_worker"),
    ("python data/no_such/prepare.py", "no such script data/no_such/prepare.py"),
    ("python sweep.py config/sweep_ablation_char.py --max_itrs=5", "sweep.py has no option --max_itrs"),
    ("python sweep.py --grid lr=[1,2]", "train.py has no option --lr"),
    ("python checkpoint.py export a b --fmt=hf", "checkpoint.py has no option --fmt"),
    ("python bench/vs_nanogpt.py --nanogpt ../nanoGPT 'config/train_shakespeare_char_cpu.py --compil=True'",
     "train.py has no option --compil"),
    ("sbatch --nodes=2 slurm/train_gpt2.sbatch config/train_gpt2.py --lr=3e-4", "train.py has no option --lr"),
    ("sbatch slurm/prepare_ray.sbatch data/fineweb_edu/prepare.py --configs x", "has no option --configs"),
    ("sbatch slurm/no_such.sbatch", "no such file slurm/no_such.sbatch"),
    ("make demo && make tests", "no Makefile target 'tests'"),
    ("python sample.py --num_sample=1 > samples.txt 2>&1", "sample.py has no option --num_sample"),
])
def test_a_wrong_command_is_reported(line, problem):
    commands = [tokens for tokens in split_commands(line) if is_command_start(' '.join(tokens), inline=False)]
    found = problems_in([('doc.md', 7, tokens) for tokens in commands])
    assert any(problem in p and p.startswith('doc.md:7: ') for p in found), found


@pytest.mark.parametrize('line', [
    "pip install -r requirements.txt",
    "git clone https://github.com/karpathy/nanoGPT ../nanoGPT && (cd ../nanoGPT && python data/shakespeare_char/prepare.py)",
    "lm_eval --model hf --model_args pretrained=out/hf --tasks hellaswag",
    "TIKTOKEN_CACHE_DIR=$PWD/tiktoken_cache python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\"",
    ".venv/bin/python -m pytest -q -m \"not slow\"",
    "python ../nanoGPT/train.py config/train_shakespeare_char.py --no_such_key=1",
])
def test_other_commands_are_left_alone(line):
    commands = [tokens for tokens in split_commands(line) if is_command_start(' '.join(tokens), inline=False)]
    assert not problems_in([('doc.md', 1, tokens) for tokens in commands])


# ----------------------------------------------------------------------------- links

def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r'[`*]|\[([^\]]*)\]\([^)]*\)', lambda m: m.group(1) or '', heading.strip().lower())
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(doc):
    out, fence = set(), False
    for line in read(doc).split('\n'):
        if line.strip().startswith('```'):
            fence = not fence
        elif not fence and line.startswith('#'):
            out.add(slug(line.lstrip('#')))
    return out


def test_links_resolve():
    problems = []
    for doc in DOCS:
        text = re.sub(r'```.*?```', lambda m: '\n' * m.group(0).count('\n'), read(doc), flags=re.DOTALL)
        for m in re.finditer(r'\]\(([^)\s]+)\)', text):
            target = m.group(1)
            if re.match(r'^[a-z]+:', target):  # https:, mailto:
                continue
            lineno = text.count('\n', 0, m.start()) + 1
            path, _, anchor = target.partition('#')
            path = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
            if not os.path.exists(os.path.join(ROOT, path)):
                problems.append(f"{doc}:{lineno}: {target}: no such file {path}")
            elif anchor and path.endswith('.md') and anchor not in anchors(path):
                problems.append(f"{doc}:{lineno}: {target}: no heading #{anchor} in {path}")
    assert not problems, "broken links in the docs:\n" + "\n".join(problems)
