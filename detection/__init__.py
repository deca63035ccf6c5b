"""DETR-family detectors on any zoo backbone: model, matching, losses, COCO data and evaluation."""
from .coco_eval import coco_evaluate
from .criterion import SetCriterion
from .detr import DETR, postprocess
from .matcher import HungarianMatcher

__all__ = ['DETR', 'HungarianMatcher', 'SetCriterion', 'coco_evaluate', 'postprocess']
