_base_ = ['./_base_/models/detr.py', './_base_/datasets/coco_detection.py',
          './_base_/schedules/detr_150e.py', './_base_/default_runtime.py']
# Schedule: mmdetection's 150 epochs (drop at 100). DETR's paper / official code: 300 epochs
# (drop at 200), _base_/schedules/detr_300e.py in place of detr_150e.py.
# DETR's baseline: torchvision ResNet-50 with frozen batch norm, C5 (stride 32).
model = dict(detector=dict(backbone=dict(name='resnet50')))
