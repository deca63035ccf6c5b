"""DETR-family detectors on any zoo backbone: model, matching, losses, COCO data and evaluation."""
from .coco_eval import coco_evaluate
from .criterion import SetCriterion
from .deformable_detr import DeformableDETR
from .detr import DETR, postprocess
from .matcher import HungarianMatcher
from .ms_deform_attn import ms_deform_attn

__all__ = ['DETR', 'DeformableDETR', 'HungarianMatcher', 'Predictor', 'SetCriterion', 'coco_evaluate', 'ms_deform_attn',
           'postprocess']


def __getattr__(name):
    # Predictor pulls in mmengine and the registrations (detection.engine): loaded on first use
    if name == 'Predictor':
        from .predictor import Predictor
        return Predictor
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
