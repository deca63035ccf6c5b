# DeiT-Ti on ImageNet-1k from scratch, DeiT's recipe: 300 epochs, batch 1024, AdamW 1e-3,
# drop-path 0.1, RandAugment m9, mixup 0.8 / cutmix 1.0, erasing 0.25, smoothing 0.1 (72.2%).
#   torchrun --nproc_per_node=8 tools/train.py configs/classification/deit_tiny_imagenet.py \
#       --launcher pytorch
_base_ = ['./_base_/datasets/imagenet.py', './_base_/schedules/adamw_cosine_300e.py',
          './_base_/default_runtime.py']
model = dict(type='Classifier', num_classes=1000,
             backbone=dict(name='deit_tiny_patch16_224', drop_path_rate=0.1))
# Exponential moving average of the weights (DeiT's model EMA), evaluated and saved with them.
custom_hooks = [dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL')]
