# DeiT-Ti on ImageNet-1k from scratch, DeiT's recipe: 300 epochs, batch 1024, AdamW 5e-4 x
# batch / 512, drop-path 0.1, repeated augmentation x3, timm's RandAugment rand-m9-mstd0.5-inc1,
# mixup 0.8 / cutmix 1.0, erasing 0.25, smoothing 0.1 (72.2% top-1 in Touvron et al., ICML 2021,
# Table 5).
#   torchrun --nproc_per_node=8 tools/train.py configs/classification/deit_tiny_imagenet.py \
#       --launcher pytorch
_base_ = ['./_base_/datasets/imagenet.py', './_base_/schedules/adamw_cosine_300e.py',
          './_base_/default_runtime.py']
model = dict(type='Classifier', num_classes=1000,
             backbone=dict(name='deit_tiny_patch16_224', drop_path_rate=0.1))
# Exponential moving average of the weights (DeiT's model EMA, decay 0.99996). A deliberate
# difference: mmengine's EMAHook validates with the EMA weights, and a checkpoint's state_dict
# holds them (the raw weights under ema_state_dict); DeiT validates the raw model every epoch and
# keeps the EMA alongside. For DeiT's figure evaluate without the hook (custom_hooks=[]) or
# compare both: the raw weights are ema_state_dict of the checkpoint.
custom_hooks = [dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL')]
