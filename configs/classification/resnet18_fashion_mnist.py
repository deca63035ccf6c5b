# A torchvision ResNet-18 on Fashion-MNIST, trained from scratch with the same recipe: a
# convolutional teacher for DeiT distillation (configs/classification/
# deit_tiny_distilled_fashion_mnist.py says how to plug it in).
_base_ = ['./deit_tiny_fashion_mnist.py']
model = dict(backbone=dict(_delete_=True, name='torchvision.resnet18'))
optim_wrapper = dict(optimizer=dict(lr=1e-3))
