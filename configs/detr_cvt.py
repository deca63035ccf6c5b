_base_ = ['./_base_/models/detr.py', './_base_/datasets/coco_detection.py',
          './_base_/schedules/detr_150e.py', './_base_/default_runtime.py']
# Schedule: mmdetection's 150 epochs (drop at 100). DETR's paper / official code: 300 epochs
# (drop at 200), _base_/schedules/detr_300e.py in place of detr_150e.py.
# Stage 1 (stride 4) frozen, as DETR freezes ResNet-50's stem and first stage.
model = dict(detector=dict(backbone=dict(name='cvt_13', frozen_blocks=1)))
