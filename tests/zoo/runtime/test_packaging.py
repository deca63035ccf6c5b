"""vitzoo as an installable library: dependency ranges, the wheel's contents (the packages, every
config, the tools) and its vitzoo-* commands, config names resolved against the installed configs,
and a tiny training by config name from an install outside the clone."""
import configparser
import email
import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from mmengine.config import Config

from zoo.runtime import cli
from helpers import ROOT

COMMANDS = {'vitzoo-train': 'main_train', 'vitzoo-test': 'main_test', 'vitzoo-infer': 'main_infer',
            'vitzoo-export': 'main_export'}


def _checkout_files(folder: str, suffix: str = '.py') -> set[str]:
    found = set()
    for path in glob.glob(os.path.join(ROOT, folder, '**', '*' + suffix), recursive=True):
        if '__pycache__' not in path:
            found.add(os.path.relpath(path, os.path.join(ROOT, folder)).replace(os.sep, '/'))
    return found


# config names -------------------------------------------------------------------------------------

def test_config_names_resolve_to_the_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the clone: relative paths name nothing
    configs = os.path.join(ROOT, 'configs')
    for name, expected in [('detr_t2t', 'detr_t2t.py'), ('detr_t2t.py', 'detr_t2t.py'),
                           ('configs/detr_t2t.py', 'detr_t2t.py'),
                           ('demo/detr_t2t_shapes', 'demo/detr_t2t_shapes.py'),
                           ('detr_t2t_shapes', 'demo/detr_t2t_shapes.py'),
                           ('deit_tiny_fashion_mnist', 'classification/deit_tiny_fashion_mnist.py')]:
        assert os.path.samefile(cli.resolve_config(name), os.path.join(configs, expected)), name
    existing = tmp_path / 'mine.py'
    existing.write_text('x = 1\n')
    assert cli.resolve_config(str(existing)) == str(existing)
    assert cli.resolve_config('default_runtime') == 'default_runtime'  # _base_ parts are not configs
    names = cli.list_configs()
    assert 'detr_t2t' in names and 'classification/deit_base_384_finetune_imagenet' in names
    assert not any('_base_' in n.split('/') for n in names)
    message = cli.config_not_found('detr_t2')
    assert 'detr_t2t' in message and configs in message


def test_train_and_test_load_a_config_by_name(tmp_path, monkeypatch):
    from zoo.runtime.engine import load_config
    monkeypatch.chdir(tmp_path)
    cfg = load_config('deformable_detr_r50')
    assert cfg.model.type == 'Detector' and cfg.work_dir == os.path.join('work_dirs', 'deformable_detr_r50')
    with pytest.raises(SystemExit, match='nearest: deformable_detr_r50'):
        load_config('deformable_detr_r5')


def test_installed_layout_resolves_against_its_own_configs(tmp_path, monkeypatch):
    """Once installed, zoo sits in site-packages beside vitzoo_configs and vitzoo_tools."""
    site = tmp_path / 'site-packages'
    shutil.copytree(os.path.join(ROOT, 'configs'), site / 'vitzoo_configs',
                    ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copytree(os.path.join(ROOT, 'tools'), site / 'vitzoo_tools', ignore=shutil.ignore_patterns('__pycache__'))
    monkeypatch.setattr(cli, '_PACKAGE_ROOT', str(site))
    monkeypatch.chdir(tmp_path)
    assert cli.configs_dir() == str(site / 'vitzoo_configs') and cli.tools_dir() == str(site / 'vitzoo_tools')
    path = cli.resolve_config('detr_t2t')
    assert path == str(site / 'vitzoo_configs' / 'detr_t2t.py')
    cfg = Config.fromfile(path)  # the relative _base_ files came along
    assert cfg.model.type == 'Detector' and cfg.default_hooks.checkpoint.save_best == 'coco/AP'


# entry points -------------------------------------------------------------------------------------

@pytest.mark.parametrize('command, function', list(COMMANDS.items()))
def test_entry_point_functions_run_their_tool(command, function, capsys, monkeypatch):
    tool = command.split('-')[1]
    monkeypatch.setattr(sys, 'argv', [command, '--help'])
    with pytest.raises(SystemExit) as stop:
        getattr(cli, function)()
    assert stop.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith(f'usage: {command} ')
    assert cli.load_tool(tool).__file__ == os.path.join(ROOT, 'tools', f'{tool}.py')
    assert {'train': '--accum', 'test': '--out', 'infer': '--score-thr', 'export': '--check'}[tool] in usage


def test_pyproject_declares_ranges_and_the_commands():
    tomllib = pytest.importorskip('tomllib')  # Python 3.11+
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        project = tomllib.load(f)['project']
    pins = [d for d in project['dependencies'] if '==' in d]
    assert not pins, pins
    deps = {d.split('>')[0].split('<')[0].split('=')[0]: d for d in project['dependencies']}
    assert deps['torch'] == 'torch>=2.4' and deps['mmengine'] == 'mmengine>=0.10.7,<0.11'
    assert project['scripts'] == {c: f'zoo.runtime.cli:{f}' for c, f in COMMANDS.items()}


# the wheel ----------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    """The wheel of this checkout, built from a copy (nothing is written into the checkout)."""
    src = tmp_path_factory.mktemp('src')
    for name in ('pyproject.toml', 'setup.py', 'README.md'):
        shutil.copy(os.path.join(ROOT, name), src / name)
    for name in ('zoo', 'classification', 'detection', 'configs', 'tools'):
        shutil.copytree(os.path.join(ROOT, name), src / name, ignore=shutil.ignore_patterns('__pycache__'))
    out = tmp_path_factory.mktemp('wheel')
    done = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', str(src),
                           '-w', str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = glob.glob(str(out / 'vitzoo-*.whl'))
    return path


def test_wheel_holds_the_packages_every_config_the_tools_and_the_commands(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith('.dist-info/entry_points.txt'))
        entry_points = configparser.ConfigParser()
        entry_points.read_string(z.read(info).decode())
        metadata = email.message_from_bytes(z.read(info.replace('entry_points.txt', 'METADATA')))
    for package in ('zoo', 'classification', 'detection'):
        missing = {f'{package}/{f}' for f in _checkout_files(package)} - names
        assert not missing, missing
    missing = {f'vitzoo_configs/{f}' for f in _checkout_files('configs')} - names
    assert not missing, missing  # every config and every _base_ part, in their folders
    assert 'vitzoo_configs/_base_/default_runtime.py' in names and 'vitzoo_configs/detr_t2t.py' in names
    missing = {f'vitzoo_tools/{f}' for f in ('_bootstrap.py', 'train.py', 'test.py', 'infer.py', 'export.py')} - names
    assert not missing, missing
    assert dict(entry_points['console_scripts']) == {c: f'zoo.runtime.cli:{f}' for c, f in COMMANDS.items()}
    requires = metadata.get_all('Requires-Dist')
    assert 'torch>=2.4' in requires and not [r for r in requires if '==' in r and 'extra' not in r]


@pytest.mark.slow
def test_installed_wheel_trains_a_config_by_name_outside_the_clone(wheel, tmp_path):
    """pip install (into a folder of its own, with this environment's dependencies), then from a
    directory outside the clone: the command finds the installed package, tools and configs, and
    ``vitzoo-train demo/detr_t2t_shapes --data DIR`` trains on the user's folder (tiny)."""
    target = tmp_path / 'site'
    done = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(target), wheel],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    env = dict(os.environ, PYTHONPATH=str(target))
    away = tmp_path / 'elsewhere'
    away.mkdir()
    where = subprocess.run([sys.executable, '-c', 'import zoo.runtime.cli as c; print(c.__file__); print(c.configs_dir()); '
                            'print(c.tools_dir())'], cwd=away, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr[-3000:]
    assert all(line.startswith(str(target)) for line in where.stdout.split()), where.stdout

    sys.path.insert(0, ROOT)
    from detection.data.synthetic import make_shapes_dataset
    make_shapes_dataset(root=str(away / 'mine'), num_train=8, num_val=2, size=64, max_objects=2, seed=0)
    work = away / 'work'
    command = [str(target / 'bin' / 'vitzoo-train'), 'demo/detr_t2t_shapes', '--data', str(away / 'mine'),
               '--img-size', '64', '--work-dir', str(work), '--threads', '1', '--cfg-options',
               'train_cfg.max_epochs=1', 'train_dataloader.batch_size=4', 'model.detector.backbone.depth=1',
               'model.detector.enc_layers=1',
               'model.detector.dec_layers=1']
    done = subprocess.run(command, cwd=away, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (work / 'epoch_1.pth').is_file() and (work / 'best_coco_AP_epoch_1.pth').is_file()
