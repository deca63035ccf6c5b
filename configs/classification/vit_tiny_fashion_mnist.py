# vit_tiny_patch16_224 on Fashion-MNIST:
# the paper's widths and depths at 28 x 28 px (patch 4), from scratch.
# A real (if slow on a CPU) run of the family; tests/test_classification.py trains it a few
# steps with a tiny depth and width.
_base_ = ['./_base_/datasets/fashion_mnist.py', './_base_/schedules/adamw_cosine_300e.py',
          './_base_/default_runtime.py']
model = dict(type='Classifier', num_classes=10,
             backbone=dict(name='vit_tiny_patch16_224', img_size=28, patch_size=4,
                           drop_path_rate=0.1))
max_epochs = 30
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=2, end=max_epochs,
         convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=128)
