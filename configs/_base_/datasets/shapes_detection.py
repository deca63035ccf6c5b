# The built-in detection set: generated on first use under data/shapes (no download).
data_root = 'data/shapes/'
synthetic = dict(root=data_root, num_train=512, num_val=128, size=128, max_objects=4, seed=0)
train_dataloader = dict(
    batch_size=8, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='collate_detection', size_divisor=32),
    dataset=dict(type='CocoDetection', img_dir=data_root + 'train',
                 ann_file=data_root + 'annotations/instances_train.json', synthetic=synthetic,
                 transforms=dict(type='shapes_train_transforms'), train=True))
val_dataloader = dict(
    batch_size=16, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='collate_detection', size_divisor=32),
    dataset=dict(type='CocoDetection', img_dir=data_root + 'val',
                 ann_file=data_root + 'annotations/instances_val.json', synthetic=synthetic,
                 transforms=dict(type='shapes_test_transforms'), train=False))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric')
test_evaluator = val_evaluator
num_classes = 3
