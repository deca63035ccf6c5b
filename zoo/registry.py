"""One registry for every backbone: each variant's builder and what is known about it.

A plain dict, not mmengine's Registry, so that ``import zoo`` does not import the training
framework. Configs name a backbone by ``backbone=dict(name='t2t_vit_14', ...)``, which
``detection.backbone`` and ``classification`` hand to :func:`zoo.create_model`; no config builds
a backbone through an mmengine registry.
"""
import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

# name -> builder ``fn(**overrides) -> nn.Module``; :func:`register_model` fills it.
MODELS: dict[str, Callable[..., nn.Module]] = {}


@dataclass
class ModelInfo:
    """What the zoo knows about a registered variant besides how to build it.

    url: the officially released weights (None where none were released).
    paper: figures the paper / official README reports (params in M, gmacs, top1).
    weights_arch: architecture settings the weights were trained with where they differ from
      the variant's from-scratch form (T2T-ViT's qk_scale); :func:`zoo.create_model` applies
      them whenever it loads weights (``pretrained``), under the caller's own overrides.
    """
    name: str
    url: str | None = None
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    paper: dict = field(default_factory=dict)
    source: str = ''
    weights_arch: dict = field(default_factory=dict)


MODEL_INFO: dict[str, ModelInfo] = {}


def register_model(url: str | None = None, input_size=(3, 224, 224), mean=None, std=None,
                   source: str = '', weights_arch: dict | None = None, **paper) -> Callable:
    """Decorator registering a builder ``fn(**overrides) -> nn.Module`` under its own name."""
    def wrap(fn):
        info = ModelInfo(fn.__name__, url=url, input_size=tuple(input_size), paper=paper,
                         source=source, weights_arch=dict(weights_arch or {}))
        if mean is not None:
            info.mean = tuple(mean)
        if std is not None:
            info.std = tuple(std)
        if fn.__name__ in MODELS:
            raise KeyError(f'{fn.__name__} is already registered (by {MODELS[fn.__name__].__module__}); '
                           'give the builder another name')
        MODELS[fn.__name__] = fn
        MODEL_INFO[fn.__name__] = info
        return fn
    return wrap


def list_models(pattern: str = '*') -> list[str]:
    """Registered names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in MODEL_INFO if fnmatch.fnmatch(n, pattern))


def get_model_info(name: str) -> ModelInfo:
    if name not in MODEL_INFO:
        close = difflib.get_close_matches(name, MODEL_INFO, n=5, cutoff=0.5)
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        raise ValueError(f'unknown model {name!r}{hint} '
                         f'(zoo.list_models() lists all {len(MODEL_INFO)} names)')
    return MODEL_INFO[name]
