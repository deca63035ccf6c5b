# AdamW 2e-4 (backbone 2e-5; sampling offsets and reference points 2e-5 as well, since their
# gradients move sampling locations directly), weight decay 1e-4, gradient-norm clip 0.1,
# 50 epochs with the lr drop at 40, Deformable DETR's own schedule. The 500-iteration linear
# warm-up is the project's, for transformer backbones (ViTDet); the official code has none.
optim_wrapper = dict(
    type='OptimWrapper', constructor='QuietOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(custom_keys={'net.backbone': dict(lr_mult=0.1),
                                    'sampling_offsets': dict(lr_mult=0.1),
                                    'reference_points': dict(lr_mult=0.1)}))
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=50, val_interval=5)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', milestones=[40], gamma=0.1, by_epoch=True),
]
# lr 2e-4 for the paper's total batch of 32, scaled linearly for other totals and logged (the
# Runner); auto_scale_lr.enable=False keeps the configured rate at any batch.
auto_scale_lr = dict(enable=True, base_batch_size=32)
