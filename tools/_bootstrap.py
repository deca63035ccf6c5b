"""Let ``python tools/x.py`` run from a plain checkout.

* The project imports without an install (the checkout goes first on ``sys.path``).
* A Python without the dependencies, while the checkout's ``.venv`` (made by ``make demo`` or
  ``make test``) has them: the tool restarts itself in ``.venv``, so the README's commands run as
  written whether or not the environment was activated.
"""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, '.venv')
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

if importlib.util.find_spec('torch') is None:
    venv_python = os.path.join(VENV, 'bin', 'python')
    # sys.prefix, not the executable: a venv's python is a link to the same interpreter.
    if os.path.exists(venv_python) and os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        os.execv(venv_python, [venv_python] + sys.argv)
    sys.exit(f'{sys.executable} has no torch. Run `make test` or `make demo` once in {ROOT} (they create '
             '.venv with the pinned dependencies), then this command again; or install the project into '
             "this Python with `pip install -e '.[test]'`.")
