# The built-in detection set: generated on first use under data/shapes (no download).
# 96 px images with 1-3 objects of 0.2-0.45 of the image side: small enough for quick CPU steps,
# objects large enough (1.2-2.7 tokens at stride 16) for a stride-16 backbone.
data_root = 'data/shapes/'
synthetic = dict(root=data_root, num_train=512, num_val=128, size=96, max_objects=3, seed=0,
                 object_scale=(0.2, 0.45))
train_dataloader = dict(
    batch_size=8, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='collate_detection', size_divisor=32),
    dataset=dict(type='CocoDetection', img_dir=data_root + 'train',
                 ann_file=data_root + 'annotations/instances_train.json', synthetic=synthetic,
                 transforms=dict(type='shapes_train_transforms', scales=(72, 84, 96), max_size=96),
                 train=True))
val_dataloader = dict(
    batch_size=16, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='collate_detection', size_divisor=32),
    dataset=dict(type='CocoDetection', img_dir=data_root + 'val',
                 ann_file=data_root + 'annotations/instances_val.json', synthetic=synthetic,
                 transforms=dict(type='shapes_test_transforms', size=96), train=False))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric')
test_evaluator = val_evaluator
num_classes = 3
