# The families' Fashion-MNIST schedule: DeiT's optimisation over 30 epochs (2 of warm-up) at
# batch 128.
_base_ = './adamw_cosine_300e.py'
max_epochs = 30
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=2, end=max_epochs,
         convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=128)
