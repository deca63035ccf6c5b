_base_ = ['./_base_/models/deformable_detr.py', './_base_/datasets/coco_detection.py',
          './_base_/schedules/deformable_detr_50e.py', './_base_/default_runtime.py']
# Schedule: Deformable DETR's own, 50 epochs (drop at 40), plus the project's 500-step warm-up.
# ViTDet's window attention: 14x14-token windows, four evenly spaced global blocks (window_size=0:
# global in every block). The stem and the first quarter of the blocks are frozen, as DETR freezes
# ResNet-50's stem and first stage (frozen_blocks=0 trains them all). The global blocks are spread
# over the 11 plain-attention blocks: the 5 re-attention blocks that follow stay in windows, because
# re-attention's head norm needs the whole map in training (a global one held 4200 x 4200 maps of 12
# heads: an 8 GB step at 800x1333).
model = dict(detector=dict(backbone=dict(name='deepvit_s', window_size=14, global_blocks=[2, 5, 8, 10],
                                         frozen_blocks=4)))
