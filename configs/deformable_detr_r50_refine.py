_base_ = './deformable_detr_r50.py'
model = dict(detector=dict(with_box_refine=True))
