"""Classification end to end: data (folders, idx files, the generated stand-in) and its errors, the
DeiT recipe, distillation, fine-tuning, the optimiser, the metric, every family through its
config, and the tools (train, resume, test, torchrun).

Benchmarks (runs, not tests), on a shared 2-core CPU with the real Fashion-MNIST:
configs/classification/deit_tiny_fashion_mnist.py (0.30M parameters) reached 84.25% top-1 after
its 5 epochs (49 min) and 85.04% after 2 more from that checkpoint (load_from, lr 3e-4, cosine).
Distillation, 27k-parameter student, 469 steps, teacher = that model after 2 epochs (79.20%):
no teacher 67.45% (distilled architecture without teacher 66.92%), hard 69.39%, soft 70.05%.
"""
import gzip
import logging
import os
import re
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from PIL import Image

import zoo
from classification import (FashionMNIST, ImageFolderDataset, build_teacher, classification_collate,
                            deit_test_transforms, deit_train_transforms, generate_fallback, read_idx)
from classification.distillation import DistillationLoss
from classification.engine import (Accuracy, Classifier, LayerDecayOptimWrapperConstructor,
                                   layer_ids)
from helpers import ROOT

CONFIGS = os.path.join(ROOT, 'configs', 'classification')
TINY_DEIT = dict(name='deit_tiny_patch16_224', img_size=28, patch_size=4, embed_dim=32, depth=2,
                 num_heads=2)


# --- data ---------------------------------------------------------------------------------------

def _write_idx(path, array: np.ndarray, gz: bool):
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    data = bytes([0, 0, code, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape) + array.tobytes()
    with (gzip.open if gz else open)(path, 'wb') as f:
        f.write(data)


@pytest.mark.parametrize('gz', [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 12).astype(np.uint8)
    ext = '.gz' if gz else ''
    _write_idx(tmp_path / f'train-images-idx3-ubyte{ext}', images, gz)
    _write_idx(tmp_path / f'train-labels-idx1-ubyte{ext}', labels, gz)
    np.testing.assert_array_equal(read_idx(str(tmp_path / f'train-images-idx3-ubyte{ext}')), images)
    ds = FashionMNIST(str(tmp_path), split='train', channels=3)
    assert ds.source == str(tmp_path) and len(ds) == 12 and ds.num_classes == 10
    image, label, index = ds[5]
    assert image.shape == (3, 28, 28) and image.dtype == torch.uint8 and index == 5
    assert label == labels[5]
    torch.testing.assert_close(image[1], torch.from_numpy(images[5]))
    assert len(FashionMNIST(str(tmp_path), split='train', subset=4)) == 4


def test_truncated_idx_file_is_named(tmp_path):
    path = str(tmp_path / 'train-images-idx3-ubyte')
    _write_idx(path, np.zeros((4, 28, 28), np.uint8), gz=False)
    with open(path, 'r+b') as f:
        f.truncate(100)
    with pytest.raises(ValueError, match='truncated or corrupt'):
        read_idx(path)
    with open(path, 'wb') as f:
        f.write(b'PK\x03\x04zip')
    with pytest.raises(ValueError, match='not an idx file'):
        read_idx(path)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_generated_fallback_is_logged_and_missing_data_explained(tmp_path):
    # A handler on the current mmengine logger: its console handler may hold a stream from an
    # earlier test, so captured stdout/stderr would miss the warning.
    logger, records = MMLogger.get_current_instance(), _Records()
    logger.addHandler(records)
    try:
        missing = str(tmp_path / 'nowhere')
        ds = FashionMNIST(missing, split='test', fallback=dict(num_samples=40))
    finally:
        logger.removeHandler(records)
    assert ds.source == 'generated' and len(ds) == 40 and ds[0][0].shape == (3, 28, 28)
    assert any('GENERATED stand-in' in m for m in records.messages)
    # The same classes in both splits, other samples.
    train, test = generate_fallback('train', 20, seed=0), generate_fallback('test', 20, seed=0)
    assert not torch.equal(train[0], test[0])
    with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
        FashionMNIST(missing, split='train')


def _image_folder(root, classes=('cat', 'dog', 'eel'), per_class=2, size=20):
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)).save(
                os.path.join(root, c, f'{i}.png'))
    return str(root)


def test_image_folder_labels_and_transforms(tmp_path):
    root = _image_folder(tmp_path / 'train')
    ds = ImageFolderDataset(root, transform=deit_test_transforms(16, crop_pct=0.875), num_classes=3)
    assert ds.classes == ['cat', 'dog', 'eel'] and len(ds) == 6
    image, label, index = ds[3]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and (label, index) == (1, 3)
    gray = ImageFolderDataset(root, channels=1)
    assert gray[0][0].shape == (1, 20, 24)


def test_empty_class_folder_is_named(tmp_path):
    root = _image_folder(tmp_path / 'train')
    os.makedirs(tmp_path / 'train' / 'fox')
    with pytest.raises(ValueError, match=r"hold no images: fox\. Add images to them, or remove"):
        ImageFolderDataset(root)


def test_non_image_file_is_named(tmp_path):
    root = _image_folder(tmp_path / 'train')
    (tmp_path / 'train' / 'dog' / 'labels.txt').write_text('not an image')
    with pytest.raises(ValueError, match=r'1 file\(s\) .* are not images .*dog/labels.txt\. Remove'):
        ImageFolderDataset(root)


def test_corrupt_image_is_named_when_read(tmp_path):
    root = _image_folder(tmp_path / 'train')
    (tmp_path / 'train' / 'eel' / '1.png').write_bytes(b'\x89PNG broken')
    ds = ImageFolderDataset(root)
    with pytest.raises(RuntimeError, match=r"cannot read image .*eel/1.png \(sample 5, class 'eel'\).*"
                                           r'replace or delete it'):
        ds[5]


def test_class_count_mismatch_is_explained(tmp_path):
    root = _image_folder(tmp_path / 'train')
    with pytest.raises(ValueError, match=r'num_classes=5 but .* has 3 classes\. Set num_classes=3'):
        ImageFolderDataset(root, num_classes=5)
    with pytest.raises(ValueError, match=r'num_classes=100 but Fashion-MNIST has 10 classes'):
        FashionMNIST(str(tmp_path), num_classes=100, fallback={})
    # A model built for fewer classes than the labels reach fails on the first batch, clearly.
    model = Classifier(dict(TINY_DEIT), num_classes=2)
    batch = classification_collate([(torch.zeros(3, 28, 28), 2, 0)])
    with pytest.raises(ValueError, match=r'label 2 in the data but the model has num_classes=2'):
        model(batch['inputs'], batch['data_samples'], mode='loss')
    with pytest.raises(ValueError, match=r'label 2 in a batch .* num_classes=2'):
        classification_collate([(torch.zeros(3, 28, 28), 2, 0)], num_classes=2)


def test_missing_folder_and_stray_files_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match='ImageNet-style layout.*deit_tiny_fashion_mnist.py'):
        ImageFolderDataset(str(tmp_path / 'nope'))
    (tmp_path / 'flat').mkdir()
    (tmp_path / 'flat' / 'a.png').write_bytes(b'')
    with pytest.raises(ValueError, match='has no class sub-folders'):
        ImageFolderDataset(str(tmp_path / 'flat'))
    _image_folder(tmp_path / 'flat', classes=('cat',))
    with pytest.raises(ValueError, match=r'files next to its class folders \(a.png\)'):
        ImageFolderDataset(str(tmp_path / 'flat'))


# --- the recipe ---------------------------------------------------------------------------------

def test_deit_train_transforms_and_mixing_collate():
    transform = deit_train_transforms(24, rand_augment=dict(num_ops=2, magnitude=9), re_prob=1.0)
    image = torch.randint(0, 256, (3, 28, 30), dtype=torch.uint8)
    out = transform(image)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32 and type(out) is torch.Tensor
    batch = [(transform(image), label, i) for i, label in enumerate([0, 1, 2, 3] * 2)]
    mixed = classification_collate(batch, num_classes=5, mixup_alpha=0.8, cutmix_alpha=1.0,
                                   label_smoothing=0.1)
    targets = mixed['data_samples']['targets']
    assert mixed['inputs'].shape == (8, 3, 24, 24) and targets.shape == (8, 5)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert targets.min() >= 0.1 / 5 - 1e-6 and targets[:, 4].max() <= 0.1 / 5 + 1e-6  # class 4 unused
    # Mixing pairs images: targets hold two classes (unless lambda is exactly 0 or 1).
    assert ((targets > 0.03).sum(1) == 2).any()
    plain = classification_collate(batch, num_classes=5, label_smoothing=0.1)['data_samples']['targets']
    torch.testing.assert_close(plain[1], torch.tensor([0.02, 0.92, 0.02, 0.02, 0.02]))
    evaluation = classification_collate(batch)
    assert evaluation['data_samples']['targets'] is None
    assert evaluation['data_samples']['labels'].tolist() == [0, 1, 2, 3] * 2


def test_repeat_aug_sampler_index_pattern_and_per_process_split():
    from classification import RepeatAugSampler
    data = list(range(5))
    # Unshuffled: 0 0 0 1 1 1 ... 4 4 4 padded from the start to 16, dealt round the 2 processes,
    # so the copies of an image go to different processes.
    ranks = [list(RepeatAugSampler(data, shuffle=False, selected_round=0, seed=0, rank=r, world_size=2))
             for r in (0, 1)]
    assert ranks == [[0, 0, 1, 2, 2, 3, 4, 4], [0, 1, 1, 2, 3, 3, 4, 0]]
    # Shuffled: every process draws the same permutation for an epoch, a new one per set_epoch.
    data = list(range(600))
    epochs = []
    for epoch in (0, 1):
        shares = []
        for r in range(2):
            sampler = RepeatAugSampler(data, seed=7, rank=r, world_size=2)
            sampler.set_epoch(epoch)
            shares.append(list(sampler))
        # DeiT's epoch length: floor(600 // 256 * 256 / 2) = 256 indices per process.
        assert [len(x) for x in shares] == [256, 256] and len(sampler) == 256
        merged = [i for pair in zip(*shares) for i in pair]  # the global order, 512 long
        assert all(merged[3 * j] == merged[3 * j + 1] == merged[3 * j + 2] for j in range(170))
        assert len(set(merged)) == 171  # 170 images x 3, then the first copies of the 171st
        epochs.append(merged)
    assert epochs[0] != epochs[1]
    for world, length in ((1, 512), (4, 128), (8, 64)):
        assert len(RepeatAugSampler(data, seed=0, rank=0, world_size=world)) == length
    with pytest.raises(ValueError, match='selected_round=0'):
        RepeatAugSampler(list(range(100)), seed=0, rank=0, world_size=1)


def test_timm_rand_augment_op_set_and_magnitude_distribution():
    """DeiT's rand-m9-mstd0.5-inc1: 2 ops from timm's 15 'increasing' ops, each applied with
    probability 0.5 at a magnitude ~ N(9, 0.5) clipped to [0, 10]."""
    from classification.transforms import TimmRandAugment, build_rand_augment
    cfg = Config.fromfile(os.path.join(CONFIGS, '_base_', 'datasets', 'imagenet.py'))
    ra = build_rand_augment(cfg.train_pipeline.rand_augment)
    assert isinstance(ra, TimmRandAugment) and (ra.num_ops, ra.prob) == (2, 0.5)
    assert ra.fill == [124, 116, 104] and ra.interpolation.value == 'bicubic'  # DeiT's img_mean
    torch.manual_seed(0)
    draws = [ra.sample() for _ in range(20000)]
    ops = [name for d in draws for name, _ in d]
    levels = torch.tensor([m for d in draws for _, m in d])
    assert set(ops) == set(TimmRandAugment.OPS) == {
        'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
        'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
        'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel',
        'TranslateYRel'}
    assert len(ops) / 40000 == pytest.approx(0.5, abs=0.01)  # each op applied with p 0.5
    counts = torch.tensor([ops.count(name) for name in TimmRandAugment.OPS], dtype=torch.float)
    assert (counts / len(ops) - 1 / 15).abs().max() < 0.01  # uniform over the 15
    assert levels.min() >= 0 and levels.max() == 10.0
    assert levels.mean().item() == pytest.approx(9.0, abs=0.02)
    assert levels.std().item() == pytest.approx(0.49, abs=0.02)  # 0.5, its tail above 10 clipped
    assert (levels == 10.0).float().mean().item() == pytest.approx(0.0228, abs=0.005)  # P(z > 2)
    # timm's level -> argument at magnitude 9 (random signs where it has them).
    args = {name: {ra.op_argument(name, 9.0) for _ in range(50)} for name in ra.OPS}
    assert args['Rotate'] == {27.0, -27.0} and args['ShearX'] == {0.27, -0.27}
    assert {round(a, 6) for a in args['TranslateYRel']} == {0.405, -0.405}
    assert args['PosterizeIncreasing'] == {1} and args['SolarizeIncreasing'] == {26}
    assert args['SolarizeAdd'] == {99} and args['ColorIncreasing'] == {1.81, 1 - 0.81}
    assert args['Equalize'] == {None}
    image = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8)
    for name in ra.OPS:
        out = ra.apply(name, ra.op_argument(name, 9.0), image)
        assert out.shape == image.shape and out.dtype == torch.uint8, name
    with pytest.raises(ValueError, match='increasing op set'):
        build_rand_augment('rand-m9-mstd0.5')


def test_accuracy_top1_top5_counts_each_sample_once():
    metric = Accuracy(topk=(1, 5))
    scores = torch.eye(6)[[0, 1, 2, 3]] * 0.5 + torch.linspace(0, 0.1, 6)  # argmax: 0, 1, 2, 3
    preds = [dict(scores=scores[0], label=0, index=0),   # top-1
             dict(scores=scores[1], label=5, index=1),   # class 5 ranks 2nd: top-5 only
             dict(scores=scores[2], label=0, index=2),   # ranks 6th: neither
             dict(scores=scores[3], label=3, index=3),   # top-1
             dict(scores=scores[0], label=0, index=0)]   # repeated by a padding sampler
    metric.process({}, preds)
    assert metric.compute_metrics(metric.results) == {'top1': 50.0, 'top5': 75.0}


def test_layer_decay_groups_and_no_weight_decay():
    model = Classifier(dict(name='deit_tiny_patch16_224', img_size=28, patch_size=4, embed_dim=32,
                            depth=3, num_heads=2), num_classes=4)
    names = [n for n, _ in model.backbone.named_parameters()]
    ids, depth = layer_ids(names)
    layer = dict(zip(names, ids))
    assert depth == 3 and layer['cls_token'] == 0 and layer['patch_embed.proj.weight'] == 0
    assert layer['blocks.0.attn.qkv.weight'] == 1 and layer['blocks.2.mlp.fc2.bias'] == 3
    assert layer['norm.weight'] == 4 and layer['head.weight'] == 4
    # CvT: blocks counted across stages; a later stage's embedding joins its first block.
    cvt_names = [n for n, _ in zoo.create_model('cvt_13', embed_dims=(16, 32, 48), depths=(1, 1, 2),
                                                num_heads=(1, 1, 2)).named_parameters()]
    cvt = dict(zip(cvt_names, layer_ids(cvt_names)[0]))
    assert cvt['stages.0.patch_embed.proj.weight'] == 0 and cvt['stages.1.patch_embed.proj.weight'] == 2
    assert cvt['stages.2.blocks.1.mlp.fc1.weight'] == 4 and cvt['head.weight'] == 5

    constructor = LayerDecayOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1.0, weight_decay=0.05)),
        dict(layer_decay=0.5, custom_keys={'head': dict(lr_mult=2.0)}))
    optimizer = constructor(model).optimizer
    lr_of = {id(p): (g['lr'], g['weight_decay']) for g in optimizer.param_groups for p in g['params']}
    params = dict(model.named_parameters())
    assert lr_of[id(params['backbone.blocks.0.attn.qkv.weight'])] == (0.5 ** 3, 0.05)
    assert lr_of[id(params['backbone.blocks.2.attn.qkv.weight'])] == (0.5, 0.05)
    assert lr_of[id(params['backbone.head.weight'])] == (2.0, 0.05)
    assert lr_of[id(params['backbone.pos_embed'])] == (0.5 ** 4, 0.0)
    assert lr_of[id(params['backbone.blocks.1.norm1.weight'])][1] == 0.0
    assert len(lr_of) == len(params)


def _effective_lrs(tmp_path, config: str, world_size: int, batch_size: int,
                   **overrides) -> tuple[list, str]:
    """The parameter groups' lr after the Runner's scaling (before warm-up) for ``world_size``
    processes of ``batch_size`` images, and what the Runner logged about it."""
    from zoo.runtime.engine import Runner
    cfg = Config.fromfile(os.path.join(CONFIGS, config))
    cfg.merge_from_dict({'model.backbone': dict(TINY_DEIT, depth=1), 'work_dir': str(tmp_path),
                         'train_dataloader.batch_size': batch_size, **overrides})
    cfg.experiment_name = f'lr_{config[:-3]}_{world_size}x{batch_size}_{len(os.listdir(tmp_path))}'
    runner = Runner.from_cfg(cfg)
    runner._world_size = world_size  # as torchrun with world_size processes would set it
    records = _Records()
    runner.logger.addHandler(records)
    try:
        wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
        runner.scale_lr(wrapper, runner.auto_scale_lr)
    finally:
        runner.logger.removeHandler(records)
    return ([g['lr'] for g in wrapper.optimizer.param_groups],
            '\n'.join(records.messages))


def test_lr_is_scaled_by_the_total_batch_as_deit_and_logged(tmp_path):
    # DeiT: lr 5e-4 x total batch / 512, i.e. 1e-3 at 8 processes x 128 and 1.25e-4 at 1 x 128.
    for world, batch, lr in ((8, 128, 1e-3), (1, 128, 1.25e-4), (2, 64, 1.25e-4)):
        lrs, log = _effective_lrs(tmp_path, 'deit_tiny_imagenet.py', world, batch)
        assert max(lrs) == pytest.approx(lr), (world, batch)
        assert f'effective lr {lr:.4g}' in log and f'{world} process(es) x batch {batch}' in log
    # The fine-tuning config: DeiT's 5e-6 for 512 in total.
    lrs, _ = _effective_lrs(tmp_path, 'deit_base_384_finetune_imagenet.py', 4, 64,
                            **{'model.backbone.pretrained': False})
    assert max(lrs) == pytest.approx(5e-6 * 256 / 512)
    lrs, log = _effective_lrs(tmp_path, 'deit_tiny_imagenet.py', 1, 128, **{'auto_scale_lr.enable': False})
    assert max(lrs) == pytest.approx(5e-4) and 'not scaled' in log


def test_weight_decay_groups_as_deit_dist_token_decays():
    """DeiT's optimiser skips 1-D parameters, biases and no_weight_decay() = {pos_embed,
    cls_token}; its (1, 1, D) dist_token is decayed."""
    model = Classifier(dict(TINY_DEIT, name='deit_tiny_distilled_patch16_224'), num_classes=4,
                       heads_without_teacher='both')  # as with a teacher: both heads train
    constructor = LayerDecayOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1.0, weight_decay=0.05)))
    decay_of = {id(p): g['weight_decay'] for g in constructor(model).optimizer.param_groups
                for p in g['params']}
    decay = {n: decay_of[id(p)] for n, p in model.backbone.named_parameters() if id(p) in decay_of}
    assert decay['dist_token'] == 0.05 and decay['cls_token'] == decay['pos_embed'] == 0.0
    assert decay['blocks.0.attn.qkv.weight'] == 0.05 and decay['blocks.0.attn.qkv.bias'] == 0.0
    assert decay['norm.weight'] == 0.0 and decay['head_dist.weight'] == 0.05
    assert model.backbone.no_weight_decay() == {'pos_embed', 'cls_token'}


@pytest.mark.parametrize('name, tiny', [
    ('deit_tiny_distilled_patch16_224', {}), ('vit_tiny_patch16_224', {}),
    ('cait_xxs24_224', dict(depth_token_only=1)), ('deepvit_s', dict(num_reattention_blocks=1)),
    ('ceit_t', dict(img_size=32, patch_size=None)), ('cpvt_ti', {}),
    ('cvt_13', dict(embed_dims=(16, 32, 32), depths=(1, 1, 1), num_heads=(1, 2, 2), embed_dim=None,
                    depth=None, patch_size=None))])
def test_no_dropout_before_the_head_as_the_official_models(name, tiny):
    overrides = {k: v for k, v in {**TINY_DEIT, 'depth': 1, **tiny}.items()
                 if k != 'name' and v is not None}
    model = zoo.create_model(name, num_classes=5, drop_rate=0.5, **overrides).train()
    tokens = model.forward_features(torch.randn(2, 3, *(2 * [overrides['img_size']])))
    with torch.no_grad():
        first, second = model.forward_head(tokens), model.forward_head(tokens)
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # train mode, drop_rate 0.5


def test_ceit_leff_has_no_dropout_and_cvt_head_bias_is_pytorchs_default():
    from zoo.layers.leff import LocallyEnhancedFeedForward
    leff = LocallyEnhancedFeedForward(8, 16, drop=0.5).train()
    x = torch.randn(2, 1 + 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(leff(x, (3, 3)), leff(x, (3, 3)), rtol=0, atol=0)
    cvt = zoo.create_model('cvt_13', embed_dims=(16, 32, 48), depths=(1, 1, 1), num_heads=(1, 2, 2))
    bias = cvt.head.bias
    assert bias.abs().max() <= 48 ** -0.5 and bias.std() > 0.3 * 48 ** -0.5  # U(+-1/sqrt(48))


def test_distilled_model_without_teacher_trains_the_class_head_only_as_deit():
    batch = classification_collate([(torch.randn(3, 28, 28), i % 4, i) for i in range(4)],
                                   num_classes=4)
    name = 'deit_tiny_distilled_patch16_224'
    deit = Classifier(dict(TINY_DEIT, name=name), num_classes=4)
    both = Classifier(dict(TINY_DEIT, name=name), num_classes=4, heads_without_teacher='both')
    for model in (deit, both):
        sum(model(batch['inputs'], batch['data_samples'], mode='loss').values()).backward()
        assert model.backbone.head.weight.grad.abs().sum() > 0
    assert deit.backbone.head_dist.weight.grad is None
    assert not deit.backbone.head_dist.weight.requires_grad
    assert both.backbone.head_dist.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="heads_without_teacher must be 'class'"):
        Classifier(dict(TINY_DEIT), num_classes=4, heads_without_teacher='dist')


# --- distillation -------------------------------------------------------------------------------

def test_distillation_loss_hard_and_soft():
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.randn(4, 3, 2, 2)
    cls, dist = torch.randn(4, 3), torch.randn(4, 3)
    base = lambda logits: logits.sum() * 0  # noqa: E731  (only the distillation part is checked)
    with torch.no_grad():
        t = teacher(x)
    hard = DistillationLoss(teacher, 'hard', alpha=0.5)(x, (cls, dist), base)
    torch.testing.assert_close(hard['loss_distill'], 0.5 * torch.nn.functional.cross_entropy(dist, t.argmax(1)))
    # Soft, by hand: DeiT sums KL(p_t || p_s) * tau^2 over the 4 images and 3 classes and divides
    # by 4 * 3 (the default); 'batch' divides by the 4 images only.
    soft = DistillationLoss(teacher, 'soft', alpha=0.5, tau=2.0)(x, (cls, dist), base)
    p_t, p_s = (t / 2).softmax(1), (dist / 2).softmax(1)
    kl_sum = sum(float(p_t[i, k] * (p_t[i, k] / p_s[i, k]).log()) for i in range(4) for k in range(3))
    torch.testing.assert_close(soft['loss_distill'], torch.tensor(0.5 * kl_sum * 2 * 2 / (4 * 3)))
    per_image = DistillationLoss(teacher, 'soft', alpha=0.5, tau=2.0, soft_reduction='batch')
    torch.testing.assert_close(per_image(x, (cls, dist), base)['loss_distill'],
                               torch.tensor(0.5 * kl_sum * 2 * 2 / 4))
    with pytest.raises(ValueError, match="soft_reduction must be 'elements'"):
        DistillationLoss(teacher, 'soft', soft_reduction='mean')
    # The teacher stays out of the student's parameters and state dict.
    assert not list(DistillationLoss(teacher).parameters())


def test_teacher_from_classifier_checkpoint_and_torchvision(tmp_path):
    trained = Classifier(dict(TINY_DEIT), num_classes=10)
    path = str(tmp_path / 'teacher.pth')
    torch.save({'meta': {}, 'state_dict': trained.state_dict()}, path)
    teacher = build_teacher('deit_tiny_patch16_224', path, 10, **{k: v for k, v in TINY_DEIT.items() if k != 'name'})
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 28, 28)
    trained.eval()
    torch.testing.assert_close(teacher(x), trained.backbone(x))

    resnet = Classifier(dict(name='torchvision.resnet18'), num_classes=10)
    torch.save({'state_dict': resnet.state_dict()}, tmp_path / 'resnet.pth')
    tv_teacher = build_teacher('torchvision.resnet18', str(tmp_path / 'resnet.pth'), 10)
    resnet.eval()
    torch.testing.assert_close(tv_teacher(x), resnet.backbone(x))
    with pytest.raises(zoo.CheckpointMismatchError, match='does not match torchvision.resnet18'):
        build_teacher('torchvision.resnet18', str(tmp_path / 'resnet.pth'), 5)
    with pytest.raises(ValueError, match='needs trained weights'):
        build_teacher('deit_tiny_patch16_224', None, 10)


def test_distilled_student_trains_both_heads_and_averages_them_at_evaluation(tmp_path):
    teacher = Classifier(dict(TINY_DEIT), num_classes=10)
    torch.save({'state_dict': teacher.state_dict()}, tmp_path / 'teacher.pth')
    overrides = {k: v for k, v in TINY_DEIT.items() if k != 'name'}
    student = Classifier(dict(TINY_DEIT, name='deit_tiny_distilled_patch16_224'), num_classes=10,
                         distillation=dict(kind='hard', teacher=dict(
                             name='deit_tiny_patch16_224', checkpoint=str(tmp_path / 'teacher.pth'),
                             **overrides)))
    batch = classification_collate([(torch.randn(3, 28, 28), i % 10, i) for i in range(4)],
                                   num_classes=10)
    losses = student(batch['inputs'], batch['data_samples'], mode='loss')
    assert set(losses) == {'loss_cls', 'loss_distill'}
    sum(losses.values()).backward()
    assert student.backbone.head_dist.weight.grad.abs().sum() > 0
    assert student.backbone.head.weight.grad.abs().sum() > 0
    assert not any(k.startswith('_distill') or 'teacher' in k for k in student.state_dict())
    with torch.no_grad():
        cls_dist = student(batch['inputs'], mode='tensor')  # training mode: the pair
        student.eval()
        preds = student(batch['inputs'], batch['data_samples'], mode='predict')
    torch.testing.assert_close(preds[0]['scores'], ((cls_dist[0][0] + cls_dist[1][0]) / 2).softmax(-1))


# --- fine-tuning --------------------------------------------------------------------------------

def test_fine_tune_at_higher_resolution_from_other_class_count(tmp_path):
    source = Classifier(dict(TINY_DEIT), num_classes=10)
    path = str(tmp_path / 'ckpt.pth')
    torch.save({'meta': {}, 'state_dict': source.state_dict()}, path)  # as tools/train.py saves
    with pytest.warns(UserWarning, match='another class count'):
        model = Classifier(dict(TINY_DEIT, img_size=56, pretrained=path), num_classes=3)
    own, old = model.backbone.state_dict(), source.backbone.state_dict()
    assert own['pos_embed'].shape == (1, 1 + 14 * 14, 32) and old['pos_embed'].shape == (1, 1 + 7 * 7, 32)
    torch.testing.assert_close(own['blocks.1.attn.qkv.weight'], old['blocks.1.attn.qkv.weight'])
    torch.testing.assert_close(own['cls_token'], old['cls_token'])
    assert own['head.weight'].shape == (3, 32)
    assert model.backbone(torch.randn(1, 3, 56, 56)).shape == (1, 3)


# --- learning -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_small_vit_learns_the_generated_data():
    """Learning is real: 40 steps on 960 generated images, >= 90% on 300 held-out ones (98-99%
    when this test was written, 95% after 30 steps, 60% after 20; chance is 10%)."""
    mean, std = (0.5,) * 3, (0.25,) * 3
    train = FashionMNIST('/nonexistent', 'train', deit_train_transforms(28, scale=(0.8, 1), hflip=0,
                                                                     re_prob=0, mean=mean, std=std),
                         fallback=dict(num_samples=960))
    test = FashionMNIST('/nonexistent', 'test', deit_test_transforms(28, crop_pct=1, mean=mean, std=std),
                        fallback=dict(num_samples=300))
    model = Classifier(dict(TINY_DEIT), num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    loader = torch.utils.data.DataLoader(train, batch_size=96, shuffle=True, collate_fn=lambda b: classification_collate(
        b, num_classes=10, label_smoothing=0.1))
    for _ in range(4):
        for batch in loader:
            loss = sum(model(batch['inputs'], batch['data_samples'], mode='loss').values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    metric = Accuracy()
    with torch.no_grad():
        for i in range(0, 300, 100):
            batch = classification_collate([test[j] for j in range(i, i + 100)])
            metric.process({}, model(batch['inputs'], batch['data_samples'], mode='predict'))
    assert metric.compute_metrics(metric.results)['top1'] >= 90


# --- every family through its config ------------------------------------------------------------

FAMILIES = {
    'deit_tiny_fashion_mnist.py': dict(embed_dim=32, depth=1, num_heads=2),
    'vit_tiny_fashion_mnist.py': dict(embed_dim=32, depth=1, num_heads=2),
    'deepvit_s_fashion_mnist.py': dict(embed_dim=32, depth=2, num_heads=2, num_reattention_blocks=1),
    'cait_xxs24_fashion_mnist.py': dict(embed_dim=32, depth=1, num_heads=2, depth_token_only=1),
    'cpvt_ti_fashion_mnist.py': dict(embed_dim=32, depth=1, num_heads=2),
    'cvt_13_fashion_mnist.py': dict(embed_dims=(16, 32, 32), depths=(1, 1, 1), num_heads=(1, 2, 2)),
    'ceit_t_fashion_mnist.py': dict(embed_dim=32, depth=1, num_heads=2),
    't2t_vit_7_fashion_mnist.py': dict(embed_dim=32, depth=1, num_heads=2, token_dim=16),
}


def _tiny(cfg: Config, tmp_path, backbone: dict, num_train=16, num_val=8) -> Config:
    """The config on a few generated images (no Fashion-MNIST needed), tiny model, one epoch."""
    missing = str(tmp_path / 'no_fashion_mnist')
    cfg.merge_from_dict({
        'model.backbone': backbone,
        'train_dataloader.batch_size': 8,
        'train_dataloader.dataset.root': missing,
        'train_dataloader.dataset.fallback': dict(num_samples=num_train),
        'val_dataloader.batch_size': 4,
        'val_dataloader.dataset.root': missing,
        'val_dataloader.dataset.fallback': dict(num_samples=num_val),
        'train_cfg.max_epochs': 1,
        'default_hooks.logger.interval': 1,
        'work_dir': str(tmp_path / 'work'),
        'visualizer.vis_backends': [dict(type='LocalVisBackend')],
        'param_scheduler': [dict(type='ConstantLR', factor=1.0, by_epoch=False)],
    })
    cfg.test_dataloader = cfg.val_dataloader
    return cfg


def _plain_pretty_text(cfg: Config) -> str:
    return '\n'.join(f'{k} = {v!r}' for k, v in cfg.to_dict().items())


@pytest.mark.parametrize('config', sorted(FAMILIES))
def test_every_family_trains_through_its_config(config, tmp_path, monkeypatch):
    from zoo.runtime.engine import Runner
    # The Runner logs and dumps the config through yapf, which takes seconds a time on 2 cores.
    monkeypatch.setattr(Config, 'pretty_text', property(_plain_pretty_text))
    cfg = _tiny(Config.fromfile(os.path.join(CONFIGS, config)), tmp_path, FAMILIES[config])
    cfg.experiment_name = f'{config[:-3]}_{os.getpid()}_{tmp_path.name}'
    runner = Runner.from_cfg(cfg)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    after = runner.model.state_dict()
    assert runner.iter == 2 and os.path.isfile(tmp_path / 'work' / 'epoch_1.pth')
    changed = [k for k in before if before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])]
    assert 'backbone.head.weight' in changed and len(changed) > len(before) // 2
    metrics = runner.val_loop.run()
    assert 0 <= metrics['accuracy/top1'] <= 100 and metrics['accuracy/top5'] >= metrics['accuracy/top1']


IMAGENET_CONFIGS = ['deit_tiny_imagenet.py', 'deit_tiny_distilled_imagenet.py',
                    'deit_base_384_finetune_imagenet.py']


@pytest.mark.parametrize('config', IMAGENET_CONFIGS)
def test_imagenet_configs_train_end_to_end_on_a_tiny_folder(config, tmp_path, monkeypatch):
    """The ImageNet recipes (repeated augmentation, timm's RandAugment, mixup, EMA, distillation,
    lr scaling) on 3 class folders of 4 images, a tiny model at 28 px, one epoch."""
    from zoo.runtime.engine import Runner
    monkeypatch.setattr(Config, 'pretty_text', property(_plain_pretty_text))
    for split in ('train', 'val'):
        _image_folder(tmp_path / 'imagenet' / split, per_class=4, size=36)
    cfg = Config.fromfile(os.path.join(CONFIGS, config))
    assert cfg.train_dataloader.sampler.type == 'RepeatAugSampler'
    loader = dict(batch_size=4, num_workers=0, persistent_workers=False, pin_memory=False)
    tiny = {k: v for k, v in TINY_DEIT.items() if k != 'name'} | dict(depth=1)
    teacher = Classifier(dict(TINY_DEIT, depth=1), num_classes=3)
    torch.save({'state_dict': teacher.state_dict()}, tmp_path / 'teacher.pth')
    cfg.merge_from_dict({
        'model.num_classes': 3,
        'model.backbone': dict(tiny, pretrained=False),  # the config's own family
        'train_dataloader': dict(loader, sampler=dict(selected_round=0), dataset=dict(
            root=str(tmp_path / 'imagenet' / 'train'), num_classes=3,
            transform=dict(img_size=28)), collate_fn=dict(num_classes=3)),
        'val_dataloader': dict(loader, dataset=dict(
            root=str(tmp_path / 'imagenet' / 'val'), num_classes=3,
            transform=dict(img_size=28))),
        'train_cfg.max_epochs': 1,
        'default_hooks.logger.interval': 1,
        'work_dir': str(tmp_path / 'work'),
        'visualizer.vis_backends': [dict(type='LocalVisBackend')],
    })
    if 'distillation' in cfg.model:
        cfg.model.distillation.teacher = dict(
            name='deit_tiny_patch16_224', checkpoint=str(tmp_path / 'teacher.pth'), **tiny)
    cfg.test_dataloader = cfg.val_dataloader
    cfg.experiment_name = f'{config[:-3]}_{os.getpid()}_{tmp_path.name}'
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.model.backbone.model_name == cfg.model.backbone.name
    # 12 images x 3 repeats = 36 indices in 9 batches of 4.
    assert runner.iter == 9 and os.path.isfile(tmp_path / 'work' / 'epoch_1.pth')
    metrics = runner.val_loop.run()
    assert 0 <= metrics['accuracy/top1'] <= 100


def test_every_classification_config_parses_and_names_registered_types():
    from mmengine.registry import DATASETS, FUNCTIONS, METRICS, MODELS
    paths = sorted(p for p in os.listdir(CONFIGS) if p.endswith('.py'))
    assert len(paths) >= 13
    for path in paths:
        cfg = Config.fromfile(os.path.join(CONFIGS, path))
        assert MODELS.get(cfg.model.type) and METRICS.get(cfg.val_evaluator.type), path
        assert DATASETS.get(cfg.train_dataloader.dataset.type), path
        assert FUNCTIONS.get(cfg.train_dataloader.collate_fn.type), path
        assert cfg.model.num_classes == cfg.train_dataloader.collate_fn.num_classes, path
        name = cfg.model.backbone.name
        assert name.startswith('torchvision.') or name in zoo.list_models(), path


# --- the tools ----------------------------------------------------------------------------------

def _run(args, **kw):
    done = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'}, **kw)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture
def tools(monkeypatch):
    """tools/train.py and tools/test.py as modules, run in this process (a subprocess costs
    ~10 s of imports on 2 cores), with the config's yapf formatting made cheap."""
    import importlib.util
    monkeypatch.syspath_prepend(os.path.join(ROOT, 'tools'))
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(Config, 'pretty_text', property(_plain_pretty_text))
    mods = {}
    for name in ('train', 'test'):
        spec = importlib.util.spec_from_file_location(f'vitzoo_tool_{name}', os.path.join(ROOT, 'tools', f'{name}.py'))
        mods[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[name])
    return mods['train'].main, mods['test'].main


def _tool_config(tmp_path, base='deit_tiny_fashion_mnist.py', extra=''):
    missing = str(tmp_path / 'no_fashion_mnist')
    path = tmp_path / f'tiny_{base}'
    path.write_text(textwrap.dedent(f"""
        _base_ = ['{CONFIGS}/{base}']
        model = dict(backbone=dict(embed_dim=32, depth=1, num_heads=2))
        train_dataloader = dict(batch_size=8, dataset=dict(root='{missing}', fallback=dict(num_samples=32)))
        val_dataloader = dict(batch_size=4, dataset=dict(root='{missing}', fallback=dict(num_samples=10)))
        test_dataloader = val_dataloader
        train_cfg = dict(max_epochs=2)
        default_hooks = dict(logger=dict(interval=1))
        visualizer = dict(vis_backends=[dict(type='LocalVisBackend')])
        param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
    """) + textwrap.dedent(extra))
    return str(path)


@pytest.mark.slow
def test_train_resume_test_and_distributed_evaluation(tmp_path, tools):
    train, test = tools
    cfg = _tool_config(tmp_path, extra="custom_hooks = [dict(type='EMAHook', momentum=0.01)]\n")
    work = str(tmp_path / 'work')
    runner = train([cfg, '--work-dir', work, '--cfg-options', 'train_cfg.max_epochs=1'])
    assert runner.epoch == 1 and os.path.isfile(os.path.join(work, 'epoch_1.pth'))
    # Resume continues from epoch 1 to epoch 2 (mmengine alone fails here on torch >= 2.6).
    runner = train([cfg, '--work-dir', work, '--resume', '--cfg-options', 'experiment_name=resumed'])
    assert runner.epoch == 2 and runner.iter == 8 and os.path.isfile(os.path.join(work, 'epoch_2.pth'))
    ckpt = os.path.join(work, 'epoch_2.pth')
    assert 'ema_state_dict' in torch.load(ckpt, weights_only=False)

    one = test([cfg, ckpt, '--work-dir', str(tmp_path / 't1')])
    assert set(one) == {'accuracy/top1', 'accuracy/top5'}
    # Two processes on CPU (gloo), 10 images: the sampler pads to 12, each counted once.
    out = _run(['-m', 'torch.distributed.run', '--nproc_per_node=2', '--standalone', 'tools/test.py',
                cfg, ckpt, '--work-dir', str(tmp_path / 't2'), '--launcher', 'pytorch'])
    two = {f'accuracy/{k}': float(v) for k, v in re.findall(r'accuracy/(top[15]) +(\d+\.\d+)', out)}
    assert two == {k: round(v, 4) for k, v in one.items()}


@pytest.mark.slow
def test_distillation_config_trains_through_the_tool(tmp_path, tools):
    train, test = tools
    teacher = Classifier(dict(TINY_DEIT, depth=1), num_classes=10)
    torch.save({'meta': {}, 'state_dict': teacher.state_dict()}, tmp_path / 'teacher.pth')
    cfg = _tool_config(tmp_path, 'deit_tiny_distilled_fashion_mnist.py', extra=f"""
        model = dict(distillation=dict(teacher=dict(
            embed_dim=32, depth=1, num_heads=2, checkpoint='{tmp_path}/teacher.pth')))
    """)
    runner = train([cfg, '--work-dir', str(tmp_path / 'student'), '--cfg-options', 'train_cfg.max_epochs=1'])
    assert set(runner.message_hub.log_scalars) >= {'train/loss_cls', 'train/loss_distill'}
    # The student's checkpoint holds no teacher, and evaluating it builds none.
    ckpt = str(tmp_path / 'student' / 'epoch_1.pth')
    assert not any('teacher' in k for k in torch.load(ckpt, weights_only=False)['state_dict'])
    metrics = test([cfg, ckpt, '--work-dir', str(tmp_path / 't'),
                    '--cfg-options', 'model.distillation.teacher.checkpoint=/nonexistent.pth'])
    assert 0 <= metrics['accuracy/top1'] <= 100


def test_missing_teacher_checkpoint_fails_on_the_first_step(tmp_path):
    model = Classifier(dict(TINY_DEIT, name='deit_tiny_distilled_patch16_224'), num_classes=10,
                       distillation=dict(teacher=dict(name='deit_tiny_patch16_224',
                                                      checkpoint=str(tmp_path / 'none.pth'))))
    batch = classification_collate([(torch.randn(3, 28, 28), 1, 0)], num_classes=10)
    with pytest.raises(FileNotFoundError, match='none.pth'):
        model(batch['inputs'], batch['data_samples'], mode='loss')


logging.getLogger('PIL').setLevel(logging.WARNING)
