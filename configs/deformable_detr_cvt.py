_base_ = ['./_base_/models/deformable_detr.py', './_base_/datasets/coco_detection.py',
          './_base_/schedules/deformable_detr_50e.py', './_base_/default_runtime.py']
# Schedule: Deformable DETR's own, 50 epochs (drop at 40), plus the project's 500-step warm-up.
# CvT's own stride-8 and stride-16 stages, then 32 and 64 from stride-2 convolutions.
# Stage 1 (stride 4) frozen, as DETR freezes ResNet-50's stem and first stage.
model = dict(detector=dict(backbone=dict(name='cvt_13', frozen_blocks=1, out_indices=(1, 2))))
