# Fashion-MNIST (60k train / 10k test, 28 x 28, 10 classes) read into memory from the idx files
# of the Debian package (sudo apt-get install dataset-fashion-mnist). Without them a generated
# stand-in is used, with a warning in the log, so the configs run anywhere.
# Grayscale is repeated to 3 channels (as PIL's convert('RGB')), so any zoo or torchvision model
# takes it, a teacher included.
data_root = '/usr/share/datasets/fashion-mnist'
num_classes = 10
img_size = 28
mean, std = (0.286,) * 3, (0.353,) * 3   # Fashion-MNIST's pixel statistics
fallback = dict(num_samples=6000)        # train; the test split gets 1000
# The DeiT recipe, every part in, at strengths a model of ~0.3M parameters trained for a few
# epochs can learn under (DeiT's own - RandAugment m9, mixup 0.8 + cutmix 1.0, erasing 0.25 -
# are for 300 epochs of ImageNet and keep such a model far from converging in a short run).
# RandAugment here is torchvision's (2 ops always applied, magnitude 5 of 31), milder than DeiT's
# timm form ('rand-m9-mstd0.5-inc1', the ImageNet configs').
train_pipeline = dict(type='deit_train_transforms', img_size=img_size, scale=(0.6, 1.0),
                      rand_augment=dict(impl='torchvision', num_ops=2, magnitude=5), re_prob=0.1,
                      mean=mean, std=std)
test_pipeline = dict(type='deit_test_transforms', img_size=img_size, crop_pct=1.0, mean=mean,
                     std=std)
train_dataloader = dict(
    batch_size=128, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='classification_collate', num_classes=num_classes, mixup_alpha=0.2,
                    cutmix_alpha=0.0, prob=0.5, label_smoothing=0.1),
    dataset=dict(type='FashionMNIST', root=data_root, split='train', num_classes=num_classes,
                 transform=train_pipeline, fallback=fallback))
val_dataloader = dict(
    batch_size=500, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='classification_collate'),
    dataset=dict(type='FashionMNIST', root=data_root, split='test', num_classes=num_classes,
                 transform=test_pipeline, fallback=fallback))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator
