# DeiT-B fine-tuned at 384 px from the released 224 px weights (DeiT: 83.1%): the position
# table is resampled to the 24 x 24 grid when the checkpoint loads. 30 epochs, lr 5e-6 x
# batch / 512, weight decay 1e-8, no warm-up, as in DeiT; layer_decay < 1 for BEiT-style
# layer-wise rates. A checkpoint with another class count loads without its head (a warning).
_base_ = ['./deit_tiny_imagenet.py']
model = dict(backbone=dict(name='deit_base_patch16_224', img_size=384, drop_path_rate=0.1,
                           pretrained=True))
img_size = 384
train_dataloader = dict(batch_size=32, dataset=dict(transform=dict(img_size=img_size)))
val_dataloader = dict(batch_size=64, dataset=dict(transform=dict(img_size=img_size, crop_pct=1.0)))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=1e-5, weight_decay=1e-8),
                     paramwise_cfg=dict(layer_decay=1.0))
max_epochs = 30
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=0,
                        end=max_epochs, convert_to_iter_based=True)]
custom_hooks = []
