_base_ = './deformable_detr_r50.py'
# Schedule: deformable_detr_r50.py's, Deformable DETR's 50 epochs (drop at 40) + the project's warm-up.
model = dict(detector=dict(with_box_refine=True))
