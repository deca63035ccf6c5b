# ImageNet-1k as class folders: data/imagenet/{train,val}/<class>/<image> (a symlink works:
# ln -s /path/to/imagenet data/imagenet). DeiT's recipe at 224 px, batch 1024 in total.
data_root = 'data/imagenet/'
num_classes = 1000
img_size = 224
train_pipeline = dict(type='deit_train_transforms', img_size=img_size, scale=(0.08, 1.0),
                      rand_augment='rand-m9-mstd0.5-inc1', re_prob=0.25)  # timm's, as DeiT
test_pipeline = dict(type='deit_test_transforms', img_size=img_size, crop_pct=0.875)
train_dataloader = dict(
    batch_size=128, num_workers=8, persistent_workers=True, pin_memory=True,
    # DeiT's repeated augmentation: each image 3 times per epoch under different augmentations,
    # the copies on different processes; an epoch as long as one pass (rounded down to a
    # multiple of 256). sampler=dict(type='DefaultSampler', shuffle=True) turns it off.
    sampler=dict(type='RepeatAugSampler', shuffle=True, num_repeats=3, selected_round=256),
    collate_fn=dict(type='classification_collate', num_classes=num_classes, mixup_alpha=0.8,
                    cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1),
    dataset=dict(type='ImageFolderDataset', root=data_root + 'train', num_classes=num_classes,
                 transform=train_pipeline))
val_dataloader = dict(
    batch_size=256, num_workers=8, persistent_workers=True, pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='classification_collate'),
    dataset=dict(type='ImageFolderDataset', root=data_root + 'val', num_classes=num_classes,
                 transform=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator
