_base_ = ['./_base_/models/deformable_detr.py', './_base_/datasets/coco_detection.py',
          './_base_/schedules/deformable_detr_50e.py', './_base_/default_runtime.py']
# A single stride-16 map: the neck builds strides 8/16/32 (simple pyramid) and 64.
model = dict(detector=dict(backbone=dict(name='t2t_vit_14')))
