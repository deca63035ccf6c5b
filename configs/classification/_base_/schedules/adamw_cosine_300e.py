# DeiT's optimisation: AdamW, lr 5e-4 x total batch / 512 (auto_scale_lr: the Runner multiplies
# the lr by processes x batch_size / base_batch_size and logs the result; 1e-3 at DeiT's 1024 =
# 8 x 128), weight decay 0.05
# (none on norms, biases, tokens and position tables), 5 epochs of linear warm-up, cosine decay
# to 1e-5, 300 epochs. ``layer_decay`` < 1 gives earlier blocks smaller rates (fine-tuning).
optim_wrapper = dict(
    type='OptimWrapper', constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=5e-4, weight_decay=0.05, betas=(0.9, 0.999)),
    paramwise_cfg=dict(layer_decay=1.0))
max_epochs = 300
warmup_epochs = 5
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=warmup_epochs,
         end=max_epochs, convert_to_iter_based=True),
]
auto_scale_lr = dict(enable=True, base_batch_size=512)
