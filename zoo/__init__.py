"""vitzoo's model zoo: faithful vision-transformer backbones on one shared layer library."""
from . import layers, models  # noqa: F401  (models registers every variant)
from .factory import create_model
from .pretrained import CheckpointMismatchError, load_pretrained
from .registry import MODEL_INFO, MODELS, get_model_info, list_models, register_model

__all__ = ['create_model', 'list_models', 'load_pretrained', 'register_model', 'get_model_info',
           'CheckpointMismatchError', 'MODELS', 'MODEL_INFO', 'layers']


def __getattr__(name):
    # zoo.analysis (feature maps, attention figures; PIL) is imported on first use, not by
    # ``import zoo``: building a model needs none of it.
    if name == 'analysis':
        import importlib
        return importlib.import_module('.analysis', __name__)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
