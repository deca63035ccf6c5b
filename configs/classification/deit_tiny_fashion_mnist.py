# The Fashion-MNIST benchmark: a DeiT-Tiny-shaped ViT shrunk for 28 x 28 images (patch 4 ->
# 7 x 7 tokens, width 64, depth 6, 2 heads: 0.30M parameters), from scratch, on a CPU.
# 7 epochs of 469 steps (batch 128); the measured time and accuracy are in docs/small_data.md.
_base_ = ['./_base_/datasets/fashion_mnist.py', './_base_/schedules/adamw_cosine_300e.py',
          './_base_/default_runtime.py']
model = dict(
    type='Classifier', num_classes=10,
    backbone=dict(name='deit_tiny_patch16_224', img_size=28, patch_size=4, embed_dim=64, depth=6,
                  num_heads=2, drop_path_rate=0.0))
# A light recipe for this short budget: crops of 80-100% and flips, label smoothing 0.1. The
# base's moderate one (RandAugment, mixup, erasing) keeps a 0.3M-parameter model under-fitted in
# so few epochs (its early top-1 trails the light recipe's, docs/small_data.md); it is for the
# families' 30-epoch configs.
train_dataloader = dict(
    dataset=dict(transform=dict(scale=(0.8, 1.0), rand_augment=None, re_prob=0.0)),
    collate_fn=dict(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1))
optim_wrapper = dict(optimizer=dict(lr=2e-3, weight_decay=0.05))
max_epochs = 7
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0, end=max_epochs,
         convert_to_iter_based=True),
]
auto_scale_lr = dict(enable=True, base_batch_size=128)  # lr 2e-3 for 128 in total
default_hooks = dict(logger=dict(interval=50))
