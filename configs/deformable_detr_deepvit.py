_base_ = ['./_base_/models/deformable_detr.py', './_base_/datasets/coco_detection.py',
          './_base_/schedules/deformable_detr_50e.py', './_base_/default_runtime.py']
# Schedule: Deformable DETR's own, 50 epochs (drop at 40), plus the project's 500-step warm-up.
# ViTDet's window attention: 14x14-token windows, four evenly spaced global blocks, the last one
# included (window_size=0: global in every block), and its decomposed relative position bias
# in the window blocks (rel_pos, zero at first; rel_pos_size=0 leaves it out of the global
# blocks: their fused attention cannot take a bias with a gradient, docs/benchmarks.md),
# and its simple pyramid's 1x1 + LN, 3x3 + LN per level (vitdet_pyramid). The stem and the
# first quarter of the blocks are frozen, as DETR freezes ResNet-50's stem
# and first stage (frozen_blocks=0 trains them all). Three global blocks
# are spread over the 11 plain-attention blocks and the last block is global, as ViTDet always
# ends; the other re-attention blocks stay in windows, because re-attention's head norm needs the
# whole map in training (each global one holds 4200 x 4200 maps of 12 heads at 800x1333).
model = dict(detector=dict(backbone=dict(name='deepvit_s', window_size=14, global_blocks=[2, 5, 8, 15],
                                         frozen_blocks=4, rel_pos=True,
                                         rel_pos_size=0), vitdet_pyramid=True))
