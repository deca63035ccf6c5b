# vit_tiny_patch16_224 on Fashion-MNIST:
# the paper's widths and depths at 28 x 28 px (patch 4), from scratch.
# A real (if slow on a CPU) run of the family; tests/classification/test_classification.py trains it a few
# steps with a tiny depth and width.
_base_ = ['./_base_/datasets/fashion_mnist.py', './_base_/schedules/adamw_cosine_30e.py',
          './_base_/default_runtime.py']
model = dict(type='Classifier', num_classes=10,
             backbone=dict(name='vit_tiny_patch16_224', img_size=28, patch_size=4,
                           drop_path_rate=0.1))
