_base_ = ['./_base_/models/deformable_detr.py', './_base_/datasets/coco_detection.py',
          './_base_/schedules/deformable_detr_50e.py', './_base_/default_runtime.py']
# Schedule: Deformable DETR's own, 50 epochs (drop at 40), plus the project's 500-step warm-up.
# ViTDet's window attention: 14x14-token windows, four evenly spaced global blocks, the last one
# included (window_size=0: global in every block), and its decomposed relative position bias
# in the window blocks (rel_pos, zero at first; rel_pos_size=0 leaves it out of the global
# blocks: their fused attention cannot take a bias with a gradient, docs/benchmarks.md),
# and its simple pyramid's 1x1 + LN, 3x3 + LN per level (vitdet_pyramid). The stem and the
# first quarter of the blocks are frozen, as DETR freezes ResNet-50's stem
# and first stage (frozen_blocks=0 trains them all).
model = dict(detector=dict(backbone=dict(name='deit_small_patch16_224', window_size=14, global_blocks=4,
                                         frozen_blocks=3, rel_pos=True,
                                         rel_pos_size=0), vitdet_pyramid=True))
