# The main job on the built-in data: DETR with a T2T-ViT backbone on generated shapes
# (512 train / 128 val images of 96 px, 1-3 objects each, 3 classes), from scratch, on a CPU.
_base_ = ['../_base_/models/detr.py', '../_base_/datasets/shapes_detection.py',
          '../_base_/schedules/detr_150e.py', '../_base_/default_runtime.py']
# 4 queries for at most 3 objects: with few queries nearly every one is matched on every image,
# so each step teaches every query a class and a box. This is what lets DETR learn the set in
# minutes: with a position-aware oracle backbone, fewer queries learn faster (docs/small_data.md).
# Two training-only aids make it learn on every seed (docs/small_data.md: the per-seed table): query denoising
# (DN-DETR's 5 groups, label flips 0.2, box noise 0.4) and an FCOS-style dense head on the encoder
# output (detection/dense_head.py), which gives the from-scratch backbone a localisation signal
# from step one.
# Inference is plain DETR.
# qk_scale: the released weights' embed_dim ** -0.5, with which docs/small_data.md's figures were
# measured; the official code from scratch uses head_dim ** -0.5 (64 ** -0.5), the zoo's default.
model = dict(
    num_classes=3,
    detector=dict(backbone=dict(name='t2t_vit_7', pretrained=False, qk_scale=256 ** -0.5), num_queries=4,
                  hidden_dim=128, num_heads=4, enc_layers=2, dec_layers=2, ffn_dim=512, dropout=0.0,
                  denoising=dict(num_groups=5), dense_aux=True,
                  # 96 px images: stride 16 keeps a 6 x 6 map (stride 32 would leave 3 x 3)
                  feature_stride=16))
# From scratch the backbone learns at the head's rate; 2e-4 is the rate for this batch of 8 on one
# process (the measured runs), scaled for other totals.
optim_wrapper = dict(optimizer=dict(lr=2e-4),
                     paramwise_cfg=dict(custom_keys={'net.backbone': dict(lr_mult=1.0)}))
auto_scale_lr = dict(base_batch_size=8)
# 32 epochs of 64 steps (a few minutes on 2 CPU cores, docs/small_data.md) at a constant rate after
# a short warm-up.
train_cfg = dict(max_epochs=32, val_interval=8)
param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50)]
default_hooks = dict(logger=dict(interval=32), checkpoint=dict(interval=8))  # two lines an epoch
