_base_ = './deformable_detr_r50_refine.py'  # '++ two-stage' in the paper: refinement and two-stage
# Schedule: deformable_detr_r50.py's, Deformable DETR's 50 epochs (drop at 40) + the project's warm-up.
model = dict(detector=dict(two_stage=True))
