# DeiT-Ti with distillation token on ImageNet-1k, hard distillation from a RegNetY-16GF teacher
# (74.5% top-1 in Touvron et al., ICML 2021, Table 5). torchvision's regnet_y_16gf ImageNet
# weights stand in for DeiT's; a checkpoint of your own works too:
# model.distillation.teacher.checkpoint=/path/to/teacher.pth.
_base_ = ['./deit_tiny_imagenet.py']
model = dict(
    backbone=dict(name='deit_tiny_distilled_patch16_224'),
    distillation=dict(kind='hard', alpha=0.5, tau=1.0,
                      teacher=dict(name='torchvision.regnet_y_16gf', pretrained='IMAGENET1K_V1',
                                   checkpoint=None)))
