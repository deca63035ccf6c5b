# The families' Fashion-MNIST schedule: DeiT's optimisation over 30 epochs (2 of warm-up), lr 1e-3
# written for a total batch of 128 (scaled linearly for others).
_base_ = './adamw_cosine_300e.py'
optim_wrapper = dict(optimizer=dict(lr=1e-3))
max_epochs = 30
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=2, end=max_epochs,
         convert_to_iter_based=True),
]
auto_scale_lr = dict(enable=True, base_batch_size=128)
