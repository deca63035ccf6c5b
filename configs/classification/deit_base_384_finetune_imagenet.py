# DeiT-B fine-tuned at 384 px from the released 224 px weights (83.1% top-1 in Touvron et al.,
# ICML 2021, Table 5): the position table is resampled to the 24 x 24 grid when the checkpoint
# loads. A checkpoint with another class count loads without its head (a warning).
# DeiT's fine-tuning command (the DeiT repository's README): 8 processes x 32 images, --lr 5e-6
# --min-lr 5e-6 --weight-decay 1e-8 --epochs 30, its default 5 warm-up epochs from 1e-6, the
# training recipe's augmentation. Here: lr 5e-6 for a total batch of 512, scaled linearly as DeiT
# scales it (the Runner logs the result: 2.5e-6 at 8 x 32), 5 epochs of linear warm-up from
# 0.2 x lr (1e-6 at 512 in total), then a flat rate, as DeiT's cosine with min lr = lr.
# One difference kept: DeiT's min lr is absolute (5e-6) while its lr is scaled, so at a total
# batch under 512 its "cosine" climbs from the scaled lr to 5e-6; here the rate stays flat at the
# scaled lr. layer_decay < 1 gives BEiT-style layer-wise rates (DeiT: 1.0).
_base_ = ['./deit_tiny_imagenet.py']
model = dict(backbone=dict(name='deit_base_patch16_224', img_size=384, drop_path_rate=0.1,
                           pretrained=True))
img_size = 384
train_dataloader = dict(batch_size=32, dataset=dict(transform=dict(img_size=img_size)))
val_dataloader = dict(batch_size=64, dataset=dict(transform=dict(img_size=img_size, crop_pct=1.0)))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=5e-6, weight_decay=1e-8),
                     paramwise_cfg=dict(layer_decay=1.0))
auto_scale_lr = dict(enable=True, base_batch_size=512)
max_epochs = 30
warmup_epochs = 5
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [dict(type='LinearLR', start_factor=0.2, by_epoch=True, begin=0,
                        end=warmup_epochs, convert_to_iter_based=True)]
custom_hooks = []
