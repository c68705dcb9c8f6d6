"""The README and the guides as a newcomer follows them: every command still exists and runs.

Every fenced ```bash block of README.md and docs/*.md carries a marker on the line before it:

* ``<!-- tested: tests/a.py, tests/b.py -->``: those tests run its commands at a tiny setting
  (they must exist and name each program of the block, and each ``--flag`` it uses);
* ``<!-- run -->``: this check runs the block itself, in a scratch copy of the checkout, with
  the tiny arguments of :data:`TINY` appended to the commands they name (a block whose programs
  and flags an earlier one already ran is not run twice);
* ``<!-- not run: REASON -->``: the block needs what a CPU test machine lacks
  (:data:`NOT_RUN_REASONS`).

For every command, in blocks and in inline code: the files of the checkout it names exist, each
``--flag`` of a tool appears in its ``--help`` (one process asks every tool), ``make`` targets
exist, ``pip install`` extras exist. Every ```python block with a ``_base_`` is a config: it is
loaded and its model built. Relative links and their ``#anchors`` resolve.
"""
import glob
import json
import os
import os.path as osp
import re
import shlex
import shutil
import subprocess
import sys
from typing import List, NamedTuple, Optional, Tuple

import pytest

from conftest import REPO

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip('tomli')

DOCS = ['README.md'] + sorted(osp.relpath(p, REPO)
                              for p in glob.glob(osp.join(REPO, 'docs', '*.md')))
#: top-level folders of the checkout: a command's word that starts with one names a file there
CHECKOUT_DIRS = ('configs', 'tools', 'docs', 'requirements', 'edge', 'ecc_mmdet', 'ecc_edge',
                 'tests', '.ci')
#: why a block may stay unrun; everything else is run here or by the test its marker names
NOT_RUN_REASONS = {
    'needs COCO': 'COCO 2017 is not on the test machines',
    'needs a GPU': 'the test machines have CPUs only',
    'the test suite itself': 'make test / .ci/run is what runs this file',
    'no tiny test yet': 'reported as a skip by test_commands_without_a_tiny_test',
}
#: appended to a command of these programs when the check runs it (argparse: the last value wins)
TINY_DATA = ['--num-train', '2', '--num-val', '2', '--num-calib', '2', '--image-size', '32',
             '--quiet']
TINY = {('tool', 'tools/make_synthetic_coco.py'): TINY_DATA,
        ('module', 'ecc_mmdet.datasets.synthetic_coco'): TINY_DATA}
SHELL_OPERATORS = {'&&', '||', ';', '|', '&'}
PYTHONS = ('python', 'python3', '.venv/bin/python')


class Block(NamedTuple):
    doc: str
    line: int
    lang: str
    text: str
    marker: Optional[Tuple[str, str]]  # (kind, argument): ('tested', 'a, b'), ('run', ''), ...

    @property
    def where(self):
        return f'{self.doc}:{self.line}'


class Command(NamedTuple):
    program: Optional[Tuple[str, str]]  # ('tool', 'tools/x.py'), ('module', m), ('make', ''), ...
    words: List[str]                    # every word, env assignments and redirections included
    args: List[str]                     # the program's arguments
    outputs: List[str]                  # --out / --out-dir / > targets


# ------------------------------------------------------------------------------------ parsing
MARKER = re.compile(r'<!--\s*(tested|run|not run)\s*:?\s*(.*?)\s*-->')


def read_blocks(doc: str) -> List[Block]:
    lines = open(osp.join(REPO, doc), encoding='utf-8').read().split('\n')
    out, i = [], 0
    while i < len(lines):
        m = re.match(r'\s*```(\w*)\s*$', lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == '```')
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()),
                      '')
        mm = MARKER.fullmatch(before)
        out.append(Block(doc, start + 1, lang, '\n'.join(lines[start + 1:end]),
                         (mm.group(1), mm.group(2)) if mm else None))
        i = end + 1
    return out


def prose(doc: str) -> str:
    """The document without its fenced blocks."""
    text = open(osp.join(REPO, doc), encoding='utf-8').read()
    return re.sub(r'^\s*```\w*\n.*?^\s*```\s*$', '', text, flags=re.S | re.M)


def split_commands(text: str) -> List[List[str]]:
    """Shell words of each simple command (continuations joined, comments dropped)."""
    commands = []
    for line in text.replace('\\\n', ' ').split('\n'):
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        current = []
        for word in lex:
            if word in SHELL_OPERATORS:
                commands.append(current)
                current = []
            else:
                current.append(word)
        commands.append(current)
    return [c for c in commands if c]


def parse_command(words: List[str]) -> Command:
    outputs, rest, i = [], [], 0
    while i < len(words):  # redirections: `> file`
        if words[i] in ('>', '>>', '2>'):
            outputs.append(words[i + 1])
            i += 2
        else:
            rest.append(words[i])
            i += 1
    start = 0
    while start < len(rest) and re.match(r'[A-Za-z_]\w*=', rest[start]):
        start += 1
    argv = rest[start:]
    outputs += [argv[k + 1] for k, w in enumerate(argv[:-1]) if w in ('--out', '--out-dir')]
    program, args = None, argv[1:]
    if not argv:
        return Command(None, words, [], outputs)
    if argv[0] in PYTHONS and len(argv) > 1:
        if argv[1] == '-m' and argv[2] == 'pip':
            program, args = ('pip', ''), argv[3:]
        elif argv[1] == '-m':
            program, args = ('module', argv[2]), argv[3:]
        elif argv[1].startswith('tools/'):
            program, args = ('tool', argv[1]), argv[2:]
    elif argv[0] == 'bash' and len(argv) > 1 and argv[1].startswith('tools/dist_'):
        program = ('tool', 'tools/train.py' if 'train' in argv[1] else 'tools/test.py')
        args = argv[2:]
    elif argv[0] in ('make', 'uvicorn', 'pip'):
        program = (argv[0], '')
    return Command(program, words, args, outputs)


def inline_commands(doc: str) -> List[Command]:
    """Commands written in inline code (tables, prose): `python tools/x.py ... [--flag]`."""
    out = []
    for span in re.findall(r'`([^`\n]+)`', prose(doc)):
        if re.match(r'(python|bash) tools/|python -m ', span):
            words = span.replace('\\|', ' ').replace('[', ' ').replace(']', ' ').split()
            out.append(parse_command(words))
    return out


def all_blocks() -> List[Block]:
    return [b for doc in DOCS for b in read_blocks(doc)]


def bash_commands(block: Block) -> List[Command]:
    return [parse_command(w) for w in split_commands(block.text)]


BLOCKS = all_blocks()
BASH = [b for b in BLOCKS if b.lang == 'bash']
COMMANDS = [(b, c) for b in BASH for c in bash_commands(b)] + [
    (None, c) for doc in DOCS for c in inline_commands(doc)]


# ---------------------------------------------------------------------------------- the checks
def test_every_bash_block_says_how_it_is_exercised():
    problems = []
    for b in BASH:
        if b.marker is None:
            problems.append(f'{b.where}: no <!-- tested: ... -->, <!-- run --> or '
                            '<!-- not run: REASON --> marker before the block')
        elif b.marker[0] == 'not run' and b.marker[1].split(' (')[0] not in NOT_RUN_REASONS:
            problems.append(f'{b.where}: "not run: {b.marker[1]}" is not one of '
                            f'{sorted(NOT_RUN_REASONS)}')
    assert not problems, '\n'.join(problems)


def _candidates(word: str) -> List[str]:
    """The checkout paths a word names: the value of KEY=VALUE too; {a,b} expanded; extras
    (`./edge[runtime]`) dropped."""
    values = [word] + ([word.split('=', 1)[1]] if '=' in word else [])
    out = []
    for v in values:
        v = re.sub(r'\[[\w,]*\]$', '', v)
        v = v[2:] if v.startswith('./') else v
        if v.split('/')[0] not in CHECKOUT_DIRS:
            continue
        out += _expand_braces(v)
    return out


def _expand_braces(word: str) -> List[str]:
    m = re.search(r'\{([^{}]*,[^{}]*)\}', word)
    if not m:
        return [word]
    return [w for x in m.group(1).split(',')
            for w in _expand_braces(word[:m.start()] + x + word[m.end():])]


def _exists(path: str) -> bool:
    """A checkout path exists (a pattern: something matches it; `...` elides: not checked)."""
    if re.search(r'\.\.\.|…|<', path):
        return True
    return bool(glob.glob(osp.join(REPO, path)))


def test_files_named_by_commands_exist():
    missing = []
    for block, cmd in COMMANDS:
        for word in cmd.words:
            missing += [f'{block.where if block else "inline"}: {path}'
                        for path in _candidates(word) if not _exists(path)]
    for doc in DOCS:  # paths in inline code: `configs/x.py`, `tools/y.py`
        for span in re.findall(r'`([^`\s]+)`', prose(doc)):
            missing += [f'{doc}: `{path}`' for path in _candidates(span) if not _exists(path)]
    assert not missing, 'not in the checkout:\n' + '\n'.join(sorted(set(missing)))


HELP_SCRIPT = r'''
import contextlib, io, json, os, runpy, sys, warnings
warnings.simplefilter('ignore')
sys.path.insert(0, 'tools')
out = {}
for kind, name in json.loads(sys.argv[1]):
    buf = io.StringIO()
    sys.argv = [name, '--help']
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        try:
            if kind == 'tool':
                runpy.run_path(name, run_name='__main__')
            else:
                runpy.run_module(name, run_name='__main__', alter_sys=True)
        except SystemExit:
            pass
    out[name] = buf.getvalue()
print('HELP-JSON' + json.dumps(out))
'''


@pytest.fixture(scope='module')
def helps():
    """``--help`` of every program the docs name, from one interpreter (imports paid once)."""
    wanted = sorted({c.program for _, c in COMMANDS if _checks_flags(c)} | {('module', 'uvicorn')})
    for kind, name in wanted:
        assert kind != 'tool' or osp.isfile(osp.join(REPO, name)), f'no such tool: {name}'
    proc = subprocess.run([sys.executable, '-c', HELP_SCRIPT, json.dumps(wanted)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert 'HELP-JSON' in proc.stdout, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split('HELP-JSON', 1)[1])
    empty = [name for name, text in out.items() if '--help' not in text]
    assert not empty, f'no --help output from {empty}'
    return out


def _checks_flags(cmd: Command) -> bool:
    """A command of a tool or module (not a pattern such as `tools/benchmark_*.py`)."""
    return bool(cmd.program) and cmd.program[0] in ('tool', 'module') and '*' not in cmd.program[1]


def _flags(cmd: Command) -> List[str]:
    return [w.split('=', 1)[0] for w in cmd.args if re.match(r'--[A-Za-z]', w)]


def test_every_flag_is_one_the_tool_has(helps):
    unknown = []
    for block, cmd in COMMANDS:
        if not (_checks_flags(cmd) or cmd.program == ('uvicorn', '')):
            continue
        text = helps['uvicorn' if cmd.program[0] == 'uvicorn' else cmd.program[1]]
        for flag in _flags(cmd):
            if not re.search(rf'(?<![\w-]){re.escape(flag)}(?![\w-])', text):
                unknown.append(f'{block.where if block else "inline"}: '
                               f'{cmd.program[1] or cmd.program[0]} {flag}')
    assert not unknown, 'flags the tools do not have:\n' + '\n'.join(unknown)


def _make_targets():
    text = open(osp.join(REPO, 'Makefile')).read()
    return {m.group(1): m.group(2) for m in re.finditer(r'^([\w-]+):[^\n]*\n((?:\t[^\n]*\n)*)',
                                                        text, re.M)}


def test_make_targets_and_pip_extras_exist():
    targets = _make_targets()
    extras = {'.': tomllib.load(open(osp.join(REPO, 'pyproject.toml'), 'rb')),
              'edge': tomllib.load(open(osp.join(REPO, 'edge', 'pyproject.toml'), 'rb'))}
    extras = {k: set(v['project'].get('optional-dependencies', {})) for k, v in extras.items()}
    problems = []
    for block, cmd in COMMANDS:
        if cmd.program == ('make', ''):
            problems += [f'{block.where}: make {t}' for t in cmd.args if t not in targets]
        if cmd.program == ('pip', ''):
            for word in cmd.args:
                m = re.fullmatch(r'(?:\./)?([\w.]*)\[([\w,]+)\]', word)
                if m:
                    have = extras[m.group(1) or '.']
                    problems += [f'{block.where}: extra {e} of {m.group(1) or "."}'
                                 for e in m.group(2).split(',') if e not in have]
    assert not problems, 'not found:\n' + '\n'.join(problems)


def _programs_named(cmd: Command) -> List[str]:
    """What a test that runs ``cmd`` must mention: the tool, module or command."""
    if not cmd.program:
        return []
    kind, name = cmd.program
    if kind == 'tool':
        script = next((w for w in cmd.words if w.startswith('tools/')), name)
        return [osp.splitext(osp.basename(script))[0]]
    if kind == 'module':
        return [name.rsplit('.', 1)[-1]]
    if kind == 'make':
        tools = re.findall(r'tools/(\w+)\.py', ''.join(_make_targets().get(t, '')
                                                       for t in cmd.args))
        return tools
    return [kind]


def test_tested_blocks_name_tests_that_run_their_programs_and_flags():
    problems = []
    for block in BLOCKS:
        if not block.marker or block.marker[0] != 'tested':
            continue
        files = [f.strip() for f in block.marker[1].split(',') if f.strip()]
        missing = [f for f in files if not osp.isfile(osp.join(REPO, f))]
        if missing or not files:
            problems.append(f'{block.where}: no such test file {missing or files}')
            continue
        text = ''.join(open(osp.join(REPO, f)).read() for f in files)
        for cmd in bash_commands(block) if block.lang == 'bash' else []:
            for name in _programs_named(cmd):
                if name not in text:
                    problems.append(f'{block.where}: {", ".join(files)} never mention {name}')
            if cmd.program and cmd.program[0] in ('tool', 'module'):
                problems += [f'{block.where}: {", ".join(files)} never use {flag}'
                             for flag in _flags(cmd) if flag not in text]
    assert not problems, '\n'.join(problems)


def test_commands_without_a_tiny_test():
    gaps = [f'{b.where}: ' + ' / '.join(' '.join(c.words[:2]) for c in bash_commands(b))
            for b in BASH if b.marker == ('not run', 'no tiny test yet')]
    assert not gaps, 'documented commands no test runs: ' + '; '.join(gaps)


# ------------------------------------------------------------------------------- links, configs
def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r'[`*_]|\[([^\]]*)\]\([^)]*\)', r'\1', heading.strip()).lower()
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def _anchors(path: str) -> set:
    return {_slug(m.group(1)) for m in re.finditer(r'^#+\s+(.*)$', prose(path), re.M)}


def test_relative_links_and_anchors_resolve():
    broken = []
    for doc in DOCS:
        for target in re.findall(r'\]\(([^)\s]+)\)', prose(doc)):
            if re.match(r'[a-z]+:', target):
                continue
            path, _, anchor = target.partition('#')
            full = osp.normpath(osp.join(REPO, osp.dirname(doc), path)) if path else \
                osp.join(REPO, doc)
            if not osp.exists(full):
                broken.append(f'{doc}: {target}')
            elif anchor and full.endswith('.md') and anchor not in _anchors(
                    osp.relpath(full, REPO)):
                broken.append(f'{doc}: {target} (no such heading)')
    assert not broken, 'broken links:\n' + '\n'.join(broken)


CONFIGS = [b for b in BLOCKS if b.lang == 'python' and '_base_' in b.text]


@pytest.mark.parametrize('block', CONFIGS, ids=[b.where for b in CONFIGS])
def test_config_snippets_load_and_build(block, tmp_path):
    from ecc_mmdet.apis import build_detector, load_config
    path = tmp_path / 'my_config.py'
    path.write_text(block.text)
    cfg = load_config(str(path))
    model = build_detector(cfg.model)
    assert type(model).__name__ == cfg.model.type


def test_quick_start_config_passes_the_checks_as_written(tiny_coco, tmp_path):
    """The README's config with --data-root at a COCO-layout folder and --classes-from-data:
    every pre-flight check passes (pretrained weights included) and the evaluators are
    re-rooted. (Trained and tested end to end with a smaller model in test_mmdet_bases.py.)"""
    from ecc_mmdet.apis import load_config
    from ecc_mmdet.utils import check_config, use_data_classes
    block = next(b for b in CONFIGS if b.doc == 'README.md')
    root = tmp_path / 'coco'
    os.makedirs(root / 'annotations')
    for split in ('train', 'val'):
        os.symlink(osp.join(tiny_coco, 'annotations', f'instances_{split}.json'),
                   root / 'annotations' / f'instances_{split}2017.json')
        os.symlink(osp.join(tiny_coco, split), root / f'{split}2017')
    path = tmp_path / 'my_split_retinanet.py'
    path.write_text(block.text)
    cfg = load_config(str(path), str(root))
    assert len(use_data_classes(cfg)) == 6
    check_config(cfg, 'train')
    check_config(cfg, 'test')
    for key in ('val_evaluator', 'test_evaluator'):
        assert [e['type'] for e in cfg[key]] == ['CocoMetric', 'CommunicationMetric']
        assert cfg[key][0]['ann_file'] == f'{root}/annotations/instances_val2017.json'


# ----------------------------------------------------------------------------- running blocks
def _signature(block: Block) -> tuple:
    """What running a block exercises: each command's program and flags (not its paths)."""
    return tuple((c.program or tuple(c.words[:1]), tuple(sorted(_flags(c))))
                 for c in bash_commands(block))


RUN_ALL = [b for b in BASH if b.marker and b.marker[0] == 'run']
#: a block that runs exactly what an earlier one runs (other paths) is exercised by that one
RUN = [b for i, b in enumerate(RUN_ALL) if _signature(b) not in map(_signature, RUN_ALL[:i])]


@pytest.fixture(scope='module')
def checkout_copy(tmp_path_factory):
    """A scratch checkout: links to everything but docs/ (copied: commands may write there),
    data/ and work_dirs/ (absent: commands create them); `python` is this interpreter."""
    root = tmp_path_factory.mktemp('checkout')
    for name in os.listdir(REPO):
        if name in ('docs', 'data', 'work_dirs', '.git') or name.endswith('_cache'):
            continue
        os.symlink(osp.join(REPO, name), root / name)
    shutil.copytree(osp.join(REPO, 'docs'), root / 'docs')
    os.makedirs(root / 'bin')
    (root / 'bin' / 'python').write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    os.chmod(root / 'bin' / 'python', 0o755)
    return root


def _tiny(block: Block) -> str:
    """The block as written, with the tiny arguments appended to each line whose command
    :data:`TINY` names."""
    lines = []
    for line in block.text.replace('\\\n', ' ').split('\n'):
        words = split_commands(line)
        tiny = TINY.get(parse_command(words[0]).program, []) if words else []
        lines.append(' '.join([line.split(' #')[0].rstrip(), *tiny]) if tiny else line)
    return '\n'.join(lines)


@pytest.mark.parametrize('block', RUN, ids=[b.where for b in RUN])
def test_run_blocks_run(block, checkout_copy):
    script = _tiny(block)
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PATH=f'{checkout_copy / "bin"}{os.pathsep}{os.environ.get("PATH", "")}')
    proc = subprocess.run(['bash', '-euo', 'pipefail', '-c', script], cwd=checkout_copy, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f'{script}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}'
    for cmd in bash_commands(block):
        for out in cmd.outputs:
            for path in _expand_braces(out):
                assert osp.exists(checkout_copy / path), f'{block.where}: {path} not written'
