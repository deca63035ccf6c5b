_base_ = ['./_base_/models/deformable_detr.py', './_base_/datasets/coco_detection.py',
          './_base_/schedules/deformable_detr_50e.py', './_base_/default_runtime.py']
# Schedule: Deformable DETR's own, 50 epochs (drop at 40), plus the project's 500-step warm-up.
# The paper's setting: ResNet-50 (frozen batch norm) C3-C5 (strides 8/16/32) and a stride-64 level.
model = dict(detector=dict(backbone=dict(name='resnet50', out_indices=(0, 1, 2))))
