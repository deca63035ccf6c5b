"""The installed commands and config names.

``pip install .`` (or the wheel) puts four commands on the PATH, each the script of the same name
in tools/ with the same arguments:

    vitzoo-train  = python tools/train.py      vitzoo-infer  = python tools/infer.py
    vitzoo-test   = python tools/test.py       vitzoo-export = python tools/export.py

The wheel carries tools/ as ``vitzoo_tools`` and configs/ (all of it, so the configs' relative
``_base_`` paths hold) as ``vitzoo_configs``; in a checkout they are the folders beside the
packages. Each entry point loads its tool from there and calls its ``main``: the scripts stay the
one place their logic lives, and ``python tools/train.py`` works as before.

A config argument is a file path, or the name of a config shipped with the package
(:func:`resolve_config`): ``detr_t2t``, ``detr_t2t.py``, ``demo/detr_t2t_shapes``, or a bare
``detr_t2t_shapes`` found in a subfolder, so that outside the clone

    vitzoo-train detr_t2t --data my_coco_folder

trains the shipped config on the user's data. Nothing heavy is imported here.
"""
import difflib
import importlib.util
import os
import os.path as osp
import sys

# The folder that holds the zoo package: site-packages once installed, the checkout otherwise.
_PACKAGE_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _data_dir(installed: str, checkout: str, marker: str) -> str:
    """The folder shipped as package ``installed`` (the wheel) or ``checkout`` (a clone), the one
    holding ``marker``."""
    candidates = [osp.join(_PACKAGE_ROOT, installed), osp.join(_PACKAGE_ROOT, checkout)]
    spec = importlib.util.find_spec(installed)  # an install that maps it elsewhere (editable)
    if spec is not None and spec.submodule_search_locations:
        candidates += list(spec.submodule_search_locations)
    for path in candidates:
        if osp.isfile(osp.join(path, marker)):
            return path
    raise FileNotFoundError(f'vitzoo\'s {checkout}/ folder was not installed with it (looked in '
                            f'{", ".join(candidates)}); reinstall the package (pip install vitzoo, or '
                            f'pip install . in a clone)')


def configs_dir() -> str:
    """The configs shipped with the package (configs/ of the clone, or the wheel's copy)."""
    return _data_dir('vitzoo_configs', 'configs', osp.join('_base_', 'default_runtime.py'))


def tools_dir() -> str:
    """The tool scripts shipped with the package (tools/ of the clone, or the wheel's copy)."""
    return _data_dir('vitzoo_tools', 'tools', '_bootstrap.py')


def list_configs(root: str | None = None) -> list[str]:
    """The shipped configs' names, relative to :func:`configs_dir`, without ``.py`` (the
    ``_base_`` parts left out: they are not configs to train)."""
    root = root or configs_dir()
    names = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ('_base_', '__pycache__'))
        rel = osp.relpath(folder, root)
        names += [osp.normpath(osp.join(rel, f[:-3])).replace(os.sep, '/') for f in sorted(files)
                  if f.endswith('.py') and not f.startswith('_')]
    return names


def resolve_config(config: str) -> str:
    """``config`` itself where it is a file; else the shipped config it names (``detr_t2t``,
    ``detr_t2t.py``, ``demo/detr_t2t_shapes``, ``configs/detr_t2t.py`` as the README writes it in
    the clone, or a bare name found in one subfolder); else ``config`` unchanged, for the caller
    to report (:func:`config_not_found` says what exists). A bare name in two subfolders is an
    error that lists both."""
    if osp.isfile(config):
        return config
    try:
        root = configs_dir()
    except FileNotFoundError:
        return config
    name = config.replace('\\', '/')
    name = name[:-3] if name.endswith('.py') else name
    name = name[len('configs/'):] if name.startswith('configs/') else name
    path = osp.join(root, *name.split('/')) + '.py'
    if osp.isfile(path):
        return path
    if '/' not in name:
        found = [n for n in list_configs(root) if n.rsplit('/', 1)[-1] == name]
        if len(found) > 1:
            raise SystemExit(f'config name {config} is ambiguous: {", ".join(found)}; give one of these')
        if found:
            return osp.join(root, *found[0].split('/')) + '.py'
    return config


def config_not_found(config: str) -> str:
    """The message for a config that is neither a file nor a shipped config's name: where the
    shipped ones are and the nearest names."""
    try:
        root = configs_dir()
    except FileNotFoundError as e:
        return f'config {config} not found ({e})'
    names = list_configs(root)
    key = osp.splitext(config.replace('\\', '/'))[0].removeprefix('configs/')
    near = difflib.get_close_matches(key, names, n=3, cutoff=0.5) or difflib.get_close_matches(
        key, [n.rsplit('/', 1)[-1] for n in names], n=3, cutoff=0.5)
    hint = f'; nearest: {", ".join(near)}' if near else ''
    return (f'config {config} not found: not a file, nor the name of one of the {len(names)} configs in '
            f'{root} (e.g. detr_t2t, deformable_detr_r50, demo/detr_t2t_shapes){hint}')


# --- entry points ----------------------------------------------------------------------------------

_tools: dict = {}


def load_tool(name: str):
    """The module of tools/<name>.py, loaded once (under a private module name: ``test`` would
    otherwise be the standard library's package). Its folder goes on ``sys.path``, as when the
    script runs, for its imports of ``_bootstrap`` and of other tools."""
    if name not in _tools:
        folder = tools_dir()
        if folder not in sys.path:
            sys.path.insert(0, folder)
        spec = importlib.util.spec_from_file_location(f'_vitzoo_tool_{name}', osp.join(folder, f'{name}.py'))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _tools[name] = module
    return _tools[name]


def _run(tool: str, argv) -> int:
    load_tool(tool).main(argv)
    return 0  # the tools' main returns the runner or metrics: the exit status is 0 once they return


def main_train(argv: list[str] | None = None) -> int:
    """``vitzoo-train``: tools/train.py."""
    return _run('train', argv)


def main_test(argv: list[str] | None = None) -> int:
    """``vitzoo-test``: tools/test.py."""
    return _run('test', argv)


def main_infer(argv: list[str] | None = None) -> int:
    """``vitzoo-infer``: tools/infer.py."""
    return _run('infer', argv)


def main_export(argv: list[str] | None = None) -> int:
    """``vitzoo-export``: tools/export.py."""
    return _run('export', argv)
