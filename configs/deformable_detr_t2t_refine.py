_base_ = './deformable_detr_t2t.py'
model = dict(detector=dict(with_box_refine=True))
