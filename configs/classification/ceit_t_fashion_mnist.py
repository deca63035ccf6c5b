# ceit_t on Fashion-MNIST: the paper's widths and depths at 32 x 32 px (stride 16), from scratch.
# A real (if slow on a CPU) run of the family; tests/classification/test_classification.py trains it a few
# steps with a tiny depth and width.
_base_ = ['./_base_/datasets/fashion_mnist_32px.py', './_base_/schedules/adamw_cosine_30e.py',
          './_base_/default_runtime.py']
model = dict(type='Classifier', num_classes=10,
             backbone=dict(name='ceit_t', img_size=32, drop_path_rate=0.1))
