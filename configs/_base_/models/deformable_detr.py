# Deformable DETR (Zhu et al., 2021) defaults: 4 levels x 4 points, 300 queries, sigmoid focal
# classification (no no-object slot). The backbone is one line: model.detector.backbone.name.
model = dict(
    type='Detector', num_classes=80, focal=True,
    detector=dict(type='DeformableDETR', backbone=dict(name='t2t_vit_14', pretrained=True),
                  num_queries=300, hidden_dim=256, num_heads=8, enc_layers=6, dec_layers=6,
                  ffn_dim=1024, dropout=0.1, num_feature_levels=4, enc_points=4, dec_points=4,
                  with_box_refine=False, two_stage=False, aux_loss=True),
    matcher=dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
    criterion=dict(weight_class=2.0, weight_bbox=5.0, weight_giou=2.0))
