# DETR (Carion et al., 2020) defaults; the backbone is one line: model.detector.backbone.name.
model = dict(
    type='Detector', num_classes=80,
    detector=dict(type='DETR', backbone=dict(name='t2t_vit_14', pretrained=True),
                  num_queries=100, hidden_dim=256, num_heads=8, enc_layers=6, dec_layers=6,
                  ffn_dim=2048, dropout=0.1, aux_loss=True,
                  # the transformer reads stride 32, R50's C5 as in the paper; a stride-16 ViT map
                  # is max-pooled 2x2 (the simple pyramid's stride-32 level)
                  feature_stride=32),
    matcher=dict(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0),
    criterion=dict(weight_class=1.0, weight_bbox=5.0, weight_giou=2.0, eos_coef=0.1))
