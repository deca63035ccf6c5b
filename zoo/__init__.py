"""vitzoo's model zoo: faithful vision-transformer backbones on one shared layer library."""
from . import layers, models  # noqa: F401  (models registers every variant)
from .factory import create_model
from .pretrained import CheckpointMismatchError, load_pretrained
from .registry import MODEL_INFO, MODELS, get_model_info, list_models, register_model
from . import analysis  # noqa: E402,F401  (after models: it reads the family classes)

__all__ = ['create_model', 'list_models', 'load_pretrained', 'register_model', 'get_model_info',
           'CheckpointMismatchError', 'MODELS', 'MODEL_INFO', 'layers']
