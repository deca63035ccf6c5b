"""Which folders the wheel holds; everything else is in pyproject.toml.

zoo, classification and detection are the packages. configs/ (every config, with the _base_ files
they inherit by relative path) and tools/ (the scripts behind the vitzoo-* commands) go in whole,
as the packages vitzoo_configs and vitzoo_tools, where zoo/runtime/cli.py finds them after an install.
Found here at build time, so a new config folder or subpackage needs no listing.
"""
from setuptools import find_namespace_packages, setup


def renamed(folder: str, name: str) -> list[str]:
    return [name + package[len(folder):] for package in find_namespace_packages(include=[folder, folder + '.*'])
            if '__pycache__' not in package]


setup(
    packages=find_namespace_packages(include=['zoo*', 'classification*', 'detection*'], exclude=['*__pycache__*'])
    + renamed('configs', 'vitzoo_configs') + renamed('tools', 'vitzoo_tools'),
    package_dir={'vitzoo_configs': 'configs', 'vitzoo_tools': 'tools'},
)
