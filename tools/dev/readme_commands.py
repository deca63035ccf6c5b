"""Check that the commands of the README and of docs/*.md run as written.

    python tools/dev/readme_commands.py          # every command: its tool, configs and arguments are valid
    python tools/dev/readme_commands.py --run    # and run the README's cheap ones, tiny, in a fresh clone

A command is a line of a fenced ``bash`` block or an inline code span that starts with
``python tools/``, ``torchrun``, ``srun``, ``make`` or an installed ``vitzoo-*`` command. Every one,
in the README and in every docs/*.md page alike, is checked without running it: a ``make``
target exists in the Makefile; a tool exists (a
``vitzoo-<tool>`` command is tools/<tool>.py, and its config may be given by name: ``zoo.runtime.cli``),
the configs it names exist, and its own argument parser accepts the arguments (flags, choices,
types, positional counts). ``--run`` then runs
``SMOKE`` (the README's own-data walk-through, ``make models``' table, a curves picture and an
attention figure) with
tiny settings appended, in a fresh ``git clone`` of this checkout that uses this checkout's
``.venv`` through ``PATH``, as ``source .venv/bin/activate`` would.
"""
import argparse
import contextlib
import glob
import io
import itertools
import os
import os.path as osp
import re
import runpy
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
README = osp.join(ROOT, 'README.md')
DOCS = osp.join(ROOT, 'docs')
_START = re.compile(r'^(python |torchrun |srun |make |vitzoo-\w+ )')
COMMANDS = ('vitzoo-train', 'vitzoo-test', 'vitzoo-infer', 'vitzoo-export')  # pyproject's [project.scripts]

# The README commands that --run executes, in order, and what is appended to make each tiny
# (or substituted: the README's placeholder paths).
SMOKE = [
    ('python tools/make_shapes.py data/shapes_hard --variant hard', ' --num-train 32 --num-val 16 --size 96'),
    ('python tools/train.py configs/demo/detr_t2t_shapes.py --data path/to/mine --img-size 256',
     ' --cfg-options train_cfg.max_epochs=1'),
    ('python tools/test.py configs/demo/detr_t2t_shapes.py work_dirs/detr_t2t_shapes', ''),
    ('python tools/infer.py configs/demo/detr_t2t_shapes.py work_dirs/detr_t2t_shapes --val 8', ''),
    ('python tools/analyze.py', ' --models deit_tiny_patch16_224,t2t_vit_7'),
    ('python tools/plot_curves.py work_dirs/detr_t2t_shapes --out work_dirs/curves.png', ''),
    ('python tools/visualize.py attention --model vit_tiny_patch16_224 --pixel 30 40 --out docs/vis_attention.png', ''),
]
SMOKE_SUBSTITUTIONS = {'path/to/mine': 'data/shapes_hard', 'epoch_32.pth': 'epoch_1.pth'}


@dataclass
class Command:
    line: int  # 1-based line of the page where it starts
    text: str
    page: str = 'README.md'  # the markdown file it is in, relative to the repository root


def doc_pages() -> list[str]:
    """The README and every docs/*.md page, README first."""
    return [README] + sorted(glob.glob(osp.join(DOCS, '*.md')))


def documented_commands() -> list[Command]:
    """Every command the README and the docs pages show, page by page."""
    return [c for page in doc_pages() for c in readme_commands(page)]


def readme_commands(path: str = README) -> list[Command]:
    """Every command a markdown page (the README by default) shows, in order, with continuation
    lines joined and trailing ``# comments`` removed."""
    page = osp.relpath(path, ROOT)
    text = open(path).read()
    commands, in_block = [], False
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith('```'):
            in_block = line.strip() == '```bash' if not in_block else False
            i += 1
            continue
        if in_block:
            start = i
            while line.endswith('\\') and i + 1 < len(lines):
                i += 1
                line = line[:-1] + ' ' + lines[i].strip()
            command = re.split(r'\s+#', line, maxsplit=1)[0].strip()
            if command and not command.startswith('#'):
                commands.append(Command(start + 1, ' '.join(command.split()), page))
        i += 1
    outside = re.sub(r'```.*?```', lambda m: '\n' * m.group(0).count('\n'), text, flags=re.S)
    for match in re.finditer(r'`([^`]+)`', outside):
        span = ' '.join(match.group(1).split())
        if _START.match(span):
            commands.append(Command(outside.count('\n', 0, match.start()) + 1, span, page))
    return sorted(commands, key=lambda c: c.line)


def expand_braces(token: str) -> list[str]:
    """The shell's brace expansion of one token: ``seed{0,1}`` -> ``seed0 seed1``."""
    parts = re.split(r'(\{[^{}]*,[^{}]*\})', token)
    choices = [p[1:-1].split(',') if p.startswith('{') and ',' in p else [p] for p in parts]
    return [''.join(c) for c in itertools.product(*choices)]


def split_command(text: str) -> list[str]:
    return [word for token in shlex.split(text) for word in expand_braces(token)]


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def tool_parser(script: str) -> argparse.ArgumentParser:
    """The argument parser a tool builds, taken at its first ``parse_args`` call without running
    the tool further."""
    def capture(parser, *args, **kwargs):
        raise _Parsed(parser)

    saved = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args, sys.argv
    argparse.ArgumentParser.parse_args = argparse.ArgumentParser.parse_known_args = capture
    sys.argv = [script]
    if osp.dirname(script) not in sys.path:  # tools import _bootstrap and each other
        sys.path.insert(0, osp.dirname(script))
    try:
        runpy.run_path(script, run_name='__main__')
    except _Parsed as parsed:
        return parsed.parser
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args, sys.argv = saved
    raise RuntimeError(f'{script} parses no arguments')


def makefile_targets(path: str = osp.join(ROOT, 'Makefile')) -> set[str]:
    return set(re.findall(r'^([\w.-]+):', open(path).read(), flags=re.M))


def check(command: str) -> str | None:
    """What is wrong with a documented command, or None."""
    words = split_command(command)
    if words[0] == 'make':
        missing = [t for t in words[1:] if '=' not in t and t not in makefile_targets()]
        return f'no Makefile target {missing}' if missing else None
    if words[0] in ('source', '.'):
        venv = re.search(r'^VENV \?= (\S+)', open(osp.join(ROOT, 'Makefile')).read(), flags=re.M)
        made = venv and words[1] == f'{venv.group(1)}/bin/activate'
        return None if made else f'{words[1]} is not the environment the Makefile creates'
    named_config = words[0] in COMMANDS  # the tool's config may be a shipped config's name
    if words[0] in ('torchrun', 'srun'):  # their own options (written with =), then the program
        words = words[1:]
        while words and words[0].startswith('-'):
            words = words[1:]
        if words and words[0] == 'python':
            words = words[1:]
    elif words[0] == 'python':
        words = words[1:]
    elif named_config:
        words = [f'tools/{words[0][len("vitzoo-"):]}.py'] + words[1:]
    else:
        return f'unknown program {words[0]}'
    script, args = osp.join(ROOT, words[0]), words[1:]
    if not osp.isfile(script):
        return f'no tool {words[0]}'
    placeholders = [a for a in args if a == '...' or a.startswith('<')]
    if placeholders:
        return f'placeholders {placeholders}: write the arguments out'
    paths = [p for a in args for p in a.split(',')]
    missing = [p for p in paths if p.startswith('configs/') and not osp.exists(osp.join(ROOT, p))]
    if missing:
        return f'no config {missing}'
    if named_config:
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        from zoo.runtime.cli import resolve_config
        config = next((a for a in args if not a.startswith('-')), None)
        if config is None or not osp.isfile(resolve_config(config)):
            return f'no config {config} among the shipped configs'
    parser = tool_parser(script)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as e:
        if e.code in (0, None):  # --help
            return None
        return f'arguments refused: {(err.getvalue().strip().splitlines() or [str(e.code)])[-1]}'
    return None


def run_smoke(workdir: str | None = None, keep: bool = False) -> None:
    """Run ``SMOKE`` in a fresh clone of this checkout (committed files only). Raises on the first
    command that fails, with its output."""
    listed = {c.text for c in readme_commands()}
    for command, _ in SMOKE:
        if command not in listed:
            raise SystemExit(f'the README no longer shows `{command}`: update SMOKE in {__file__}')
    tmp = workdir or tempfile.mkdtemp(prefix='readme_smoke_')
    clone = osp.join(tmp, 'vitzoo')
    subprocess.run(['git', 'clone', '--quiet', ROOT, clone], check=True)
    # The environment of this run (make test's .venv, or the user's own).
    venv = sys.prefix if sys.prefix != sys.base_prefix else osp.join(ROOT, '.venv')
    os.symlink(venv, osp.join(clone, '.venv'))
    env = dict(os.environ, VIRTUAL_ENV=osp.join(clone, '.venv'),
               PATH=osp.join(clone, '.venv', 'bin') + os.pathsep + os.environ.get('PATH', ''))
    env.pop('PYTHONPATH', None)
    for command, tiny in SMOKE:
        for placeholder, path in SMOKE_SUBSTITUTIONS.items():
            command = command.replace(placeholder, path)
        print(f'$ {command}{tiny}', flush=True)
        done = subprocess.run(command + tiny, shell=True, cwd=clone, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f'`{command}{tiny}` failed ({done.returncode}):\n{done.stdout[-3000:]}\n'
                               f'{done.stderr[-3000:]}')
    print(f'all {len(SMOKE)} commands ran in {clone}')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--run', action='store_true', help="also run the README's cheap commands, tiny, in a fresh clone")
    args = p.parse_args(argv)
    commands = documented_commands()
    problems = [(c, check(c.text)) for c in commands]
    for c, problem in problems:
        print(f'{c.page}:{c.line}: {"ok " if problem is None else "BAD"} {c.text}' + (f'\n    {problem}' if problem else ''))
    bad = [c for c, problem in problems if problem]
    if bad:
        raise SystemExit(f'{len(bad)} of {len(commands)} commands in the README and docs/ would fail: '
                         + ', '.join(f'{c.page}:{c.line}' for c in bad))
    if args.run:
        run_smoke()


if __name__ == '__main__':
    main()
