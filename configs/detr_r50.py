_base_ = ['./_base_/models/detr.py', './_base_/datasets/coco_detection.py',
          './_base_/schedules/detr_150e.py', './_base_/default_runtime.py']
# DETR's baseline: torchvision ResNet-50 with frozen batch norm, C5 (stride 32).
model = dict(detector=dict(backbone=dict(name='resnet50')))
