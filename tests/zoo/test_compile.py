"""torch.compile: every backbone family and both detectors give eager's outputs and gradients.

Most cases compile with ``aot_eager`` (Dynamo's graph capture and AOTAutograd's joint forward /
backward graph, the parts a model can break, without inductor's code generation, which takes
minutes per model on a 2-core CPU); one model per kind goes through inductor itself."""
import pytest
import torch

import zoo
from detection.engine import Detector

FAMILIES = {  # the smallest variant of each family, shortened where the family allows
    'vit': dict(name='vit_tiny_patch16_224', depth=2), 'deit': dict(name='deit_tiny_distilled_patch16_224', depth=2),
    'deepvit': dict(name='deepvit_s', depth=2), 'cait': dict(name='cait_xxs24_224', depth=2),
    'cpvt': dict(name='cpvt_ti', depth=2), 'ceit': dict(name='ceit_t', depth=2),
    't2t': dict(name='t2t_vit_7', depth=2), 'cvt': dict(name='cvt_13'),
}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _loss(out):
    """Every output takes part (DeiT distilled trains on a (class, distillation) pair)."""
    return sum(o.square().mean() for o in (out if isinstance(out, tuple) else (out,)))


def _check_family(spec, backend):
    torch._dynamo.reset()
    spec = dict(spec)
    model = zoo.create_model(spec.pop('name'), num_classes=5, img_size=64, **spec)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
    model.train()  # a training step: drop-path / dropout off so both runs compute the same
    for m in model.modules():
        if hasattr(m, 'drop_prob'):
            m.drop_prob = 0.0
        if isinstance(m, torch.nn.Dropout):  # T2T's performer drops out 0.1 by default
            m.p = 0.0
    _loss(model(x)).backward()
    eager = _grads(model)
    model.zero_grad(set_to_none=True)
    _loss(compiled(x)).backward()
    got = _grads(model)
    assert got.keys() == eager.keys() and len(got) > 10
    for n in eager:
        torch.testing.assert_close(got[n], eager[n], atol=1e-4, rtol=1e-3, msg=n)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_family_compiles(family):
    _check_family(FAMILIES[family], 'aot_eager')


@pytest.mark.slow
def test_family_compiles_with_inductor():
    _check_family(FAMILIES['vit'] | dict(depth=1), 'inductor')


TINY = dict(backbone=dict(name='deit_tiny_patch16_224', depth=1, img_size=64, pretrained=False), num_queries=8,
            hidden_dim=64, num_heads=4, enc_layers=1, dec_layers=2, ffn_dim=128, dropout=0.0)


def _detector(kind):
    if kind == 'detr':
        return Detector(dict(type='DETR', **TINY), num_classes=3)
    return Detector(dict(type='DeformableDETR', with_box_refine=True, two_stage=kind == 'two_stage', **TINY),
                    num_classes=3, focal=True)


def _batch():
    images = torch.randn(2, 3, 64, 96)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, 32:] = True
    targets = [dict(labels=torch.tensor([0, 2]), boxes=torch.tensor([[0.3, 0.4, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]])),
               dict(labels=torch.tensor([1]), boxes=torch.tensor([[0.5, 0.5, 0.4, 0.4]]))]
    return images, mask, targets


def _check_detector(kind, backend):
    torch._dynamo.reset()
    model = _detector(kind)
    images, mask, targets = _batch()
    net = model.net
    compiled = torch.compile(net, backend=backend)
    net.eval()
    with torch.no_grad():
        ref, got = net(images, mask), compiled(images, mask)
    for key in ('pred_logits', 'pred_boxes'):
        torch.testing.assert_close(got[key], ref[key], atol=1e-4, rtol=1e-4)
    net.train()
    sum(model.criterion(net(images, mask), targets).values()).backward()
    eager = _grads(net)
    net.zero_grad(set_to_none=True)
    sum(model.criterion(compiled(images, mask), targets).values()).backward()
    got = _grads(net)
    assert got.keys() == eager.keys() and len(got) > 20
    for n in eager:
        torch.testing.assert_close(got[n], eager[n], atol=1e-4, rtol=1e-3, msg=n)


@pytest.mark.parametrize('kind', ['detr', 'refine', 'two_stage'])
def test_detector_compiles(kind):
    _check_detector(kind, 'aot_eager')


@pytest.mark.slow
def test_detector_compiles_with_inductor():
    _check_detector('refine', 'inductor')


def test_t2t_training_step_compiles_with_its_performer_dropout_on():
    """T2T-ViT's performer drops out 0.1 in training; torch 2.15's compiled backward viewed the
    transposed gradient reaching it and failed ("view size is not compatible") until the stem
    hands on contiguous gradients (zoo.layers.tokens_to_token._ContiguousGrad)."""
    torch._dynamo.reset()
    model = zoo.create_model('t2t_vit_7', num_classes=5, img_size=64, depth=2).train()
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.tokens_to_token.modules())
    compiled = torch.compile(model, backend='aot_eager')
    _loss(compiled(torch.randn(2, 3, 64, 64))).backward()
    grads = _grads(model)
    assert len(grads) > 10 and all(torch.isfinite(g).all() for g in grads.values())
    assert grads['tokens_to_token.attention1.kqv.weight'].abs().sum() > 0
