# Deformable DETR with a T2T-ViT backbone on the built-in shapes (512 train / 128 val images of
# 96 px, 3 classes), from scratch, on a CPU: the same data and backbone as detr_t2t_shapes.
_base_ = ['../_base_/models/deformable_detr.py', '../_base_/datasets/shapes_detection.py',
          '../_base_/schedules/deformable_detr_50e.py', '../_base_/default_runtime.py']
# qk_scale: the released weights' embed_dim ** -0.5, with which docs/small_data.md's figures were
# measured; the official code from scratch uses head_dim ** -0.5 (64 ** -0.5), the zoo's default.
model = dict(
    num_classes=3,
    detector=dict(backbone=dict(name='t2t_vit_7', pretrained=False, qk_scale=256 ** -0.5), num_queries=16,
                  hidden_dim=128, num_heads=4, enc_layers=2, dec_layers=2, ffn_dim=512, dropout=0.0,
                  denoising=dict(num_groups=5)))  # DN-Deformable-DETR's query denoising, paper defaults
# From scratch the backbone learns at the head's rate; 2e-4 is the rate for this batch of 8 on one
# process (the measured runs), scaled for other totals.
optim_wrapper = dict(optimizer=dict(lr=2e-4),
                     paramwise_cfg=dict(custom_keys={'net.backbone': dict(lr_mult=1.0)}))
auto_scale_lr = dict(base_batch_size=8)
# 16 epochs of 64 steps, half the DETR demo's; each step costs more (4 levels: 193 tokens per
# image instead of 36).
train_cfg = dict(max_epochs=16, val_interval=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', milestones=[13], gamma=0.1, by_epoch=True),
]
default_hooks = dict(logger=dict(interval=32), checkpoint=dict(interval=4))  # two lines an epoch
