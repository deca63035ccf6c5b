# COCO 2017 under data/coco (a symlink works): train2017/, val2017/, annotations/.
data_root = 'data/coco/'
train_dataloader = dict(
    batch_size=2, num_workers=2, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='collate_detection', size_divisor=32),
    dataset=dict(type='CocoDetection', img_dir=data_root + 'train2017',
                 ann_file=data_root + 'annotations/instances_train2017.json',
                 transforms=dict(type='detr_train_transforms'), train=True))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='collate_detection', size_divisor=32),
    dataset=dict(type='CocoDetection', img_dir=data_root + 'val2017',
                 ann_file=data_root + 'annotations/instances_val2017.json',
                 transforms=dict(type='detr_test_transforms'), train=False))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric')
test_evaluator = val_evaluator
num_classes = 80
