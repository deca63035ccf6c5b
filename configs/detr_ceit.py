_base_ = ['./_base_/models/detr.py', './_base_/datasets/coco_detection.py',
          './_base_/schedules/detr_150e.py', './_base_/default_runtime.py']
model = dict(detector=dict(backbone=dict(name='ceit_s')))
