# DeiT distillation on Fashion-MNIST: the benchmark's student shape with a distillation token,
# taught by a trained teacher (hard distillation, DeiT's best). The teacher here is the
# benchmark model itself, trained first:
#   python tools/train.py configs/classification/deit_tiny_fashion_mnist.py
# Any zoo or torchvision model works as teacher, e.g. a torchvision ResNet-18 trained by
# configs/classification/resnet18_fashion_mnist.py:
#   --cfg-options model.distillation.teacher.name=torchvision.resnet18 \
#       model.distillation.teacher.checkpoint=work_dirs/resnet18_fashion_mnist/epoch_5.pth
# (drop the zoo overrides img_size ... num_heads with _delete_ or use a config of your own).
_base_ = ['./deit_tiny_fashion_mnist.py']
_student = dict(img_size=28, patch_size=4, embed_dim=64, depth=6, num_heads=2)
model = dict(
    backbone=dict(name='deit_tiny_distilled_patch16_224'),
    distillation=dict(
        kind='hard', alpha=0.5, tau=1.0,
        teacher=dict(name='deit_tiny_patch16_224',
                     checkpoint='work_dirs/deit_tiny_fashion_mnist/epoch_5.pth', **_student)))
