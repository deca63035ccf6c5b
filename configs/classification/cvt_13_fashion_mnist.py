# cvt_13 on Fashion-MNIST:
# the paper's widths and depths at 28 x 28 px (strides 4, 2, 2), from scratch.
# A real (if slow on a CPU) run of the family; tests/classification/test_classification.py trains it a few
# steps with a tiny depth and width.
_base_ = ['./_base_/datasets/fashion_mnist.py', './_base_/schedules/adamw_cosine_30e.py',
          './_base_/default_runtime.py']
model = dict(type='Classifier', num_classes=10,
             backbone=dict(name='cvt_13', img_size=28, drop_path_rate=0.1))
