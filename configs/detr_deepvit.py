_base_ = ['./_base_/models/detr.py', './_base_/datasets/coco_detection.py',
          './_base_/schedules/detr_150e.py', './_base_/default_runtime.py']
# ViTDet's window attention: 14x14-token windows, four evenly spaced global blocks
# (window_size=0 for global attention in every block).
model = dict(detector=dict(backbone=dict(name='deepvit_s', window_size=14, global_blocks=4)))
