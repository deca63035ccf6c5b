_base_ = './deformable_detr_r50_refine.py'  # '++ two-stage' in the paper: refinement and two-stage
model = dict(detector=dict(two_stage=True))
