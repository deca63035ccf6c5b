"""The README's commands run as written (issue: a newcomer follows the README line by line)."""
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
