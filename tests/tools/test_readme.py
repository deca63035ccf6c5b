"""The commands of the README and docs/*.md run as written (issue: a newcomer follows the README
and the docs line by line)."""
import os.path as osp

import pytest

import tools.dev.readme_commands as readme


def test_readme_shows_the_setup_and_the_walkthrough():
    texts = {c.text for c in readme.readme_commands()}
    assert {'make demo', 'make test', 'source .venv/bin/activate'} <= texts
    for command, _ in readme.SMOKE:
        assert command in texts


@pytest.mark.parametrize('command', [c.text for c in readme.readme_commands()])
def test_every_readme_command_is_valid(command):
    assert readme.check(command) is None


DOCS_COMMANDS = [c for c in readme.documented_commands() if c.page != 'README.md']


def test_the_docs_pages_are_checked_too():
    pages = {c.page for c in DOCS_COMMANDS}
    assert {'docs/getting_started.md', 'docs/benchmarks.md', 'docs/deployment.md'} <= pages
    assert 'python tools/export.py configs/demo/detr_t2t_shapes.py work_dirs/demo --out work_dirs/detr.onnx --check' \
        in {c.text for c in DOCS_COMMANDS}


@pytest.mark.parametrize('command', DOCS_COMMANDS, ids=[f'{c.page}:{c.line}' for c in DOCS_COMMANDS])
def test_every_docs_command_is_valid(command):
    assert readme.check(command.text) is None


def test_a_docs_page_command_is_found_and_caught(tmp_path):
    page = tmp_path / 'page.md'
    page.write_text('Text.\n\n```bash\npython tools/train.py configs/no_such_config.py  # a comment\n```\n\n'
                    'Inline: `python tools/test.py configs/detr_t2t.py`.\n')
    commands = readme.readme_commands(str(page))
    assert [(c.line, c.text) for c in commands] == [
        (4, 'python tools/train.py configs/no_such_config.py'), (7, 'python tools/test.py configs/detr_t2t.py')]
    assert 'no config' in readme.check(commands[0].text)
    assert 'required' in readme.check(commands[1].text)


@pytest.mark.parametrize('command, problem', [
    ('python tools/train.py configs/no_such_config.py', 'no config'),
    ('python tools/train.py configs/detr_t2t.py --no-such-flag', 'unrecognized arguments'),
    ('python tools/train.py configs/detr_t2t.py --amp-dtype float8', 'invalid choice'),
    ('python tools/test.py configs/detr_t2t.py', 'required'),
    ('python tools/no_such_tool.py', 'no tool'),
    ('python tools/plot_curves.py work_dirs/x --labels ...', 'placeholders'),
    ('make no-such-target', 'no Makefile target'),
    ('vitzoo-train no_such_config --data d', 'no config'),
    ('vitzoo-train detr_t2t --launcher mpi', 'invalid choice'),
    ('srun --ntasks=2 python tools/train.py configs/detr_t2t.py --accum 0', 'argument --accum'),
    ('source env/bin/activate', 'not the environment'),
])
def test_checker_catches_what_would_fail(command, problem):
    assert problem in readme.check(command)


def test_brace_expansion_is_the_shells():
    assert readme.split_command('python x.py d/seed{0,1} --labels "seed "{0,1}') == [
        'python', 'x.py', 'd/seed0', 'd/seed1', '--labels', 'seed 0', 'seed 1']


@pytest.mark.slow
def test_readme_walkthrough_runs_in_a_fresh_clone(tmp_path):
    if not osp.isdir(osp.join(readme.ROOT, '.git')):
        pytest.fail('the README smoke test clones the checkout: run it from a git checkout')
    readme.run_smoke(str(tmp_path))
    clone = tmp_path / 'vitzoo'
    assert (clone / 'work_dirs' / 'detr_t2t_shapes' / 'epoch_1.pth').is_file()
    assert (clone / 'work_dirs' / 'predictions.png').is_file()
    assert (clone / 'work_dirs' / 'curves.png').is_file()
