"""From a trained detector to the user's own classes.

* ``tools/train.py CONFIG --data DIR --load-from CKPT`` starts from a detector checkpoint of
  another class count (a work dir stands for its last checkpoint): what depends on the class count
  keeps the fresh model's initialisation, everything else is loaded exactly, and a checkpoint of
  another backbone is refused with what differs (``detection.finetune``).
* ``--resume`` of a run that already reached ``max_epochs`` says so and points to ``--load-from``.
* Checkpoints record their run's classes and data (``detection.run_settings``): tools/test.py and
  tools/infer.py take a ``--data`` run's work dir with no ``--data`` and no ``--cfg-options``.
* A classifier trained here loads as a detector's backbone (``backbone.pretrained=PATH``) with
  one log line, its position table resampled; one built with another ``qk_scale`` is refused.

The tools run in this process (a subprocess costs seconds of imports on 2 cores), on 64 px
generated images and one-block networks.
"""
import copy
import json
import logging
import os
import shutil
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS, MODELS

import detection.engine  # noqa: F401  (registers Detector)
from detection.data.synthetic import make_shapes_dataset
from helpers import ROOT, load_tool, plain_pretty_text, tiny_detr_config

FIVE = ['square', 'disc', 'triangle', 'star', 'ring']


@HOOKS.register_module(force=True)
class FinetuneTestSnapshotHook(Hook):
    """The model's weights as training starts (after ``load_from``), for the tests to compare."""
    taken: list = []

    def before_train(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        FinetuneTestSnapshotHook.taken.append({k: v.detach().clone() for k, v in model.state_dict().items()})


@pytest.fixture(scope='module')
def tools():
    """tools/train.py, test.py and infer.py's ``main``, in this process, with the config's yapf
    formatting made cheap."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(os.path.join(ROOT, 'tools'))
        mp.setattr(Config, 'pretty_text', property(plain_pretty_text))
        yield {name: load_tool(name, f'vitzoo_tool_{name}_finetune').main for name in ('train', 'test', 'infer')}


def write_five_class_folder(root) -> str:
    """A user's COCO folder (plain layout) with 5 categories, from a generated set."""
    src = make_shapes_dataset(str(root) + '_src', num_train=8, num_val=4, size=64, max_objects=2, seed=3)
    os.makedirs(os.path.join(root, 'annotations'))
    for split in ('train', 'val'):
        with open(os.path.join(src, 'annotations', f'instances_{split}.json')) as f:
            data = json.load(f)
        data['categories'] = [dict(id=i + 1, name=n) for i, n in enumerate(FIVE)]
        for ann in data['annotations']:
            ann['category_id'] = 1 + ann['id'] % 5
        shutil.copytree(os.path.join(src, split), os.path.join(root, split))
        with open(os.path.join(root, 'annotations', f'{split}.json'), 'w') as f:
            json.dump(data, f)
    return str(root)


def tiny_config(directory, name='tiny_detr.py', extra='') -> str:
    """The tiny DETR of the demo's 3 classes with query denoising, one epoch."""
    return tiny_detr_config(directory, name, max_epochs=1, detector='denoising=dict(num_groups=2)', extra=extra)


def _log_text(work) -> str:
    import glob
    return ''.join(open(p).read() for p in sorted(glob.glob(os.path.join(str(work), '*', '*.log'))))


@pytest.fixture(scope='module')
def runs(tmp_path_factory, tools):
    """A finished 3-class run (the demo's classes, the config's own data) and a finished run on a
    user's 5-class folder (``--data``, ``--img-size``), one epoch each."""
    base = tmp_path_factory.mktemp('finetune')
    config = tiny_config(base)
    five = write_five_class_folder(base / 'five')
    w3, w5 = str(base / 'w3'), str(base / 'w5')
    tools['train']([config, '--work-dir', w3, '--threads', '1'])
    tools['train']([config, '--work-dir', w5, '--threads', '1', '--data', five, '--img-size', '64',
                    '--cfg-options', 'experiment_name=five'])
    return dict(base=base, config=config, five=five, w3=w3, w5=w5)


@pytest.fixture(scope='module')
def finetuned(runs, tools):
    """A run on the 5-class folder started from the 3-class run's work dir (``--load-from``),
    and the weights it had when its training started."""
    finetune = tiny_config(runs['base'], 'tiny_finetune.py', extra="""
        custom_hooks = [dict(type='ClassCountCheckHook'), dict(type='FinetuneTestSnapshotHook')]
    """)
    work = str(runs['base'] / 'w3_to_5')
    FinetuneTestSnapshotHook.taken.clear()
    tools['train']([finetune, '--work-dir', work, '--threads', '1', '--data', runs['five'], '--img-size', '64',
                    '--load-from', runs['w3']])
    return dict(work=work, started=FinetuneTestSnapshotHook.taken[0])


def _weights(path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


# --- --load-from ---------------------------------------------------------------------------------

def test_load_from_a_3_class_run_starts_a_5_class_detr(runs, finetuned):
    """Every tensor but the class-count ones is the checkpoint's; those are the fresh 5-class
    model's (class head with its no-object row, denoising label embedding, dense class branch);
    the log says what was loaded and what was re-initialised."""
    checkpoint = _weights(os.path.join(runs['w3'], 'epoch_1.pth'))
    started = finetuned['started']
    assert started.keys() == checkpoint.keys()
    reinit = {k for k in started if started[k].shape != checkpoint[k].shape}
    assert reinit == {'net.class_embed.weight', 'net.class_embed.bias', 'net.denoising.label_embed.weight',
                      'net.dense_head.class_head.weight', 'net.dense_head.class_head.bias'}
    assert started['net.class_embed.weight'].shape[0] == 6  # 5 classes + no-object
    for key in started.keys() - reinit:
        assert torch.equal(started[key], checkpoint[key]), key
    log = _log_text(finetuned['work'])
    loaded = len(started) - len(reinit)
    assert f'loaded {loaded} of {len(started)} tensors; re-initialised 5 for this model\'s 5 classes: ' \
           'class_embed, denoising.label_embed, dense_head.class_head' in log
    assert '(this project\'s layout, 3 classes: square, disc, triangle)' in log
    assert 'size mismatch' not in log
    saved = torch.load(os.path.join(finetuned['work'], 'epoch_1.pth'), map_location='cpu', weights_only=False)
    assert saved['meta']['run_settings']['classes'] == FIVE


def test_deformable_detr_3_to_5_classes_reinitialises_every_class_head(tmp_path):
    """Deformable DETR with refinement, two-stage, denoising and the dense head: its per-layer
    class heads, the encoder's proposal head, the label embedding and the dense class branch
    keep the fresh model's values; all else is the checkpoint's."""
    from detection.finetune import load_for_finetuning
    detector = dict(type='DeformableDETR', backbone=dict(name='deit_tiny_patch16_224', depth=1, img_size=64),
                    num_queries=6, hidden_dim=32, num_heads=2, enc_layers=1, dec_layers=2, ffn_dim=64,
                    num_feature_levels=3, with_box_refine=True, two_stage=True, denoising=dict(num_groups=2),
                    dense_aux=True)
    three = MODELS.build(dict(type='Detector', detector=detector, num_classes=3, focal=True))
    path = str(tmp_path / 'three.pth')
    torch.save({'meta': {'dataset_meta': {'classes': ['a', 'b', 'c']}}, 'state_dict': three.state_dict()}, path)
    five = MODELS.build(dict(type='Detector', detector=detector, num_classes=5, focal=True))
    fresh = copy.deepcopy(five.state_dict())
    messages = []
    logger = logging.getLogger('test_finetune_deformable')
    logger.setLevel(logging.INFO)
    logger.addHandler(_Collect(messages))
    load_for_finetuning(five, path, classes=FIVE, logger=logger)
    now, theirs = five.state_dict(), three.state_dict()
    reinit = {k for k in now if now[k].shape != theirs[k].shape}
    # 2 decoder layers + the encoder's head; label embedding; dense class branch
    assert {k.rsplit('.', 1)[0] for k in reinit} == {'net.class_embed.0', 'net.class_embed.1', 'net.class_embed.2',
                                                     'net.denoising.label_embed', 'net.dense_head.class_head'}
    for key in now:
        assert torch.equal(now[key], fresh[key] if key in reinit else theirs[key]), key
    assert now['net.class_embed.0.bias'].shape == (5,)
    assert messages == [f'--load-from {path} (this project\'s layout, 3 classes: a, b, c): loaded '
                        f'{len(now) - len(reinit)} of {len(now)} tensors; re-initialised {len(reinit)} for this '
                        "model's 5 classes: class_embed.0-2, denoising.label_embed, dense_head.class_head"]


class _Collect(logging.Handler):
    def __init__(self, messages):
        super().__init__()
        self.messages = messages

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_same_classes_keep_their_heads_other_names_do_not(tmp_path):
    from detection.finetune import load_for_finetuning
    detector = dict(type='DETR', backbone=dict(name='deit_tiny_patch16_224', depth=1, img_size=64),
                    num_queries=4, hidden_dim=32, num_heads=2, enc_layers=1, dec_layers=1, ffn_dim=64)
    source = MODELS.build(dict(type='Detector', detector=detector, num_classes=3))
    path = str(tmp_path / 'three.pth')
    torch.save({'meta': {'dataset_meta': {'classes': ['a', 'b', 'c']}}, 'state_dict': source.state_dict()}, path)
    same = MODELS.build(dict(type='Detector', detector=detector, num_classes=3))
    load_for_finetuning(same, path, classes=['a', 'b', 'c'])
    assert torch.equal(same.net.class_embed.weight, source.net.class_embed.weight)
    renamed = MODELS.build(dict(type='Detector', detector=detector, num_classes=3))
    fresh = renamed.net.class_embed.weight.clone()
    load_for_finetuning(renamed, path, classes=['x', 'y', 'z'])
    assert torch.equal(renamed.net.class_embed.weight, fresh)
    assert torch.equal(renamed.net.query_embed.weight, source.net.query_embed.weight)


def test_official_detr_release_starts_a_5_class_detector(tmp_path):
    """The facebookresearch/detr layout (91 COCO ids + no-object) -> a 5-class DETR: converted,
    everything but the class head loaded."""
    from test_checkpoints import SMALL, _perturbed, official_checkpoint, official_detr_names

    from detection.engine import Detector
    from detection.finetune import load_for_finetuning
    coco = _perturbed(Detector(dict(type='DETR', backbone=dict(name='resnet50'), num_queries=10, **SMALL),
                               num_classes=80))
    path = str(tmp_path / 'detr-r50-release.pth')
    torch.save(official_checkpoint(coco, official_detr_names(coco.net.state_dict(), 2, 2), no_object=True), path)
    five = Detector(dict(type='DETR', backbone=dict(name='resnet50'), num_queries=10, **SMALL), num_classes=5)
    fresh = five.net.class_embed.weight.clone()
    load_for_finetuning(five, path)
    theirs = coco.net.state_dict()
    for key, value in five.net.state_dict().items():
        if key.startswith('class_embed.'):
            assert value.shape[0] == 6
        elif not key.endswith('num_batches_tracked'):
            assert torch.equal(value, theirs[key]), key
    assert torch.equal(five.net.class_embed.weight, fresh)


def test_class_dependent_keys_are_exactly_those_shaped_by_the_class_count():
    """``CLASS_DEPENDENT`` covers every tensor whose shape follows num_classes, in both detectors
    with every head switched on: a new head that depends on it must be listed."""
    from detection.finetune import is_class_dependent
    backbone = dict(name='deit_tiny_patch16_224', depth=1, img_size=64)
    common = dict(hidden_dim=32, num_heads=2, enc_layers=1, dec_layers=2, ffn_dim=64,
                  denoising=dict(num_groups=2), dense_aux=True)
    for detector in (dict(type='DETR', num_queries=4, **common),
                     dict(type='DeformableDETR', num_queries=6, num_feature_levels=3, with_box_refine=True,
                          two_stage=True, **common)):
        a, b = (MODELS.build(dict(type='Detector', detector=dict(detector, backbone=backbone), num_classes=n)).net
                for n in (3, 5))
        sa, sb = a.state_dict(), b.state_dict()
        shaped = {k for k in sa if sa[k].shape != sb[k].shape}
        assert shaped and shaped == {k for k in sa if is_class_dependent(k)}, detector['type']


def test_another_backbone_is_refused_with_what_differs(runs, tools, tmp_path):
    work = tmp_path / 'w'
    with pytest.raises(SystemExit) as stop:
        tools['train']([runs['config'], '--work-dir', str(work), '--threads', '1', '--load-from', runs['w3'],
                        '--cfg-options', 'model.detector.backbone.name=deit_tiny_patch16_224',
                        'model.detector.backbone.img_size=64', 'experiment_name=refused'])
    message = str(stop.value)
    assert 'does not fit this config\'s DETR beyond its class heads, so it is not loaded' in message
    assert "model.detector.backbone.name: checkpoint 't2t_vit_7', this config 'deit_tiny_patch16_224'" in message
    assert 'tensors the checkpoint lacks: backbone.body.' in message
    assert message.splitlines()[-1] == ("Build the detector as the checkpoint was built: its own config, or "
                                        "--cfg-options with the checkpoint's values above. Only the class count may "
                                        "differ.")
    assert not (work / 'epoch_1.pth').exists()


def test_resume_of_a_finished_run_says_so_and_points_to_load_from(runs, tools):
    runner = tools['train']([runs['config'], '--work-dir', runs['w3'], '--threads', '1', '--resume',
                             '--cfg-options', 'experiment_name=resumed_finished'])
    assert runner.epoch == 1 and not os.path.exists(os.path.join(runs['w3'], 'epoch_2.pth'))
    log = _log_text(runs['w3'])
    assert 'is the end of a finished run (epoch 1 of train_cfg.max_epochs=1): --resume has nothing left' in log
    assert f'--load-from {runs["w3"]}' in log and 'train_cfg.max_epochs=N' in log


def test_resume_and_load_from_together_are_refused(runs, tools):
    with pytest.raises(SystemExit, match='give one of them'):
        tools['train']([runs['config'], '--resume', '--load-from', runs['w3']])


# --- the tools read a run's settings from its checkpoint ----------------------------------------

def test_test_and_infer_take_a_data_runs_work_dir_without_options(runs, tools, tmp_path):
    """The 5-class --data run, evaluated and drawn with the config file and its work dir alone: the
    checkpoint says the class count, the folder and the image size."""
    out = str(tmp_path / 'dets.json')
    metrics = tools['test']([runs['config'], runs['w5'], '--work-dir', str(tmp_path / 't'), '--out', out,
                             '--threads', '1'])
    assert 0 <= metrics['coco/AP50'] <= 1
    with open(out) as f:
        detections = json.load(f)
    with open(os.path.join(runs['five'], 'annotations', 'val.json')) as f:
        val = json.load(f)
    assert detections and {d['image_id'] for d in detections} <= {img['id'] for img in val['images']}
    assert {d['category_id'] for d in detections} <= {1, 2, 3, 4, 5}
    picture = str(tmp_path / 'pred.png')
    tools['infer']([runs['config'], runs['w5'], '--val', '2', '--out', picture])
    assert os.path.getsize(picture) > 0


@pytest.fixture(scope='module')
def options_run(runs, tools):
    """A run given a model setting on the command line (``num_queries`` 6 where the config has 4)
    on a YOLO folder without a val split, half of it held out (``--val-fraction 0.5``)."""
    from test_formats import write_yolo
    yolo = write_yolo(str(runs['base'] / 'yolo'), with_val=False)
    work = str(runs['base'] / 'w_options')
    tools['train']([runs['config'], '--work-dir', work, '--threads', '1', '--data', yolo, '--img-size', '64',
                    '--val-fraction', '0.5', '--cfg-options', 'model.detector.num_queries=6',
                    'experiment_name=options'])
    return dict(work=work, data=yolo)


def _val_files(ann_file) -> list[str]:
    with open(ann_file) as f:
        return sorted(img['file_name'] for img in json.load(f)['images'])


def test_a_runs_cfg_options_and_val_fraction_need_not_be_repeated(runs, options_run, tools, tmp_path, capsys):
    """The checkpoint records the model settings the run's --cfg-options changed and its
    --val-fraction: tools/test.py, infer.py and the Predictor, given the config file and the work
    dir alone, build the 6-query detector the weights belong to (strict loading would refuse the
    config's 4) and evaluate the same held-out images; each says so in one line. tools/export.py
    too: its graph answers with 6 queries."""
    from detection import Predictor
    from detection.run_settings import read_meta
    settings = read_meta(os.path.join(options_run['work'], 'epoch_1.pth'))['run_settings']
    assert settings['model_options'] == {'model.detector.num_queries': 6}
    assert settings['val_fraction'] == 0.5
    out, test_work = str(tmp_path / 'dets.json'), tmp_path / 't'
    capsys.readouterr()
    tools['test']([runs['config'], options_run['work'], '--work-dir', str(test_work), '--out', out,
                   '--threads', '1'])
    printed = capsys.readouterr().out
    (line,) = [t for t in printed.splitlines() if t.startswith('from the checkpoint: ')]
    assert 'model.detector.num_queries=6' in line and '--val-fraction 0.5' in line and '--data ' in line
    held_out = _val_files(os.path.join(options_run['work'], 'data', 'val.json'))
    assert len(held_out) == 3 and _val_files(test_work / 'data' / 'val.json') == held_out  # 0.1 would hold out 1
    with open(out) as f:
        detections = json.load(f)
    per_image = {}
    for d in detections:
        per_image[d['image_id']] = per_image.get(d['image_id'], 0) + 1
    assert len(per_image) == 3 and set(per_image.values()) == {6}  # one detection per query
    image = os.path.join(options_run['data'], 'images', 'train', held_out[0])
    tools['infer']([runs['config'], options_run['work'], image, '--out-dir', str(tmp_path / 'vis'), '--score-thr', '0'])
    assert 'model.detector.num_queries=6' in capsys.readouterr().out
    with open(tmp_path / 'vis' / 'detections.json') as f:
        assert len(json.load(f)) == 6
    result = Predictor(runs['config'], options_run['work'])(image)
    assert result['boxes'].shape == (6, 4)
    onnx = str(tmp_path / 'six.onnx')
    load_tool('export', 'vitzoo_tool_export_finetune').main([runs['config'], options_run['work'], '--out', onnx,
                                                            '--size', '64', '64'])
    assert 'model.detector.num_queries=6' in capsys.readouterr().out
    assert Predictor(runs['config'], onnx)(image)['boxes'].shape == (6, 4)
    assert os.path.getsize(os.path.join(options_run['work'], 'per_class.json')) > 0  # the run's last validation


def test_options_given_now_win_over_the_checkpoints(runs, options_run):
    """``apply_run_settings``: a setting the command line gives (or a dict holding it) is left as
    given; the checkpoint's fill in the rest."""
    from types import SimpleNamespace

    from detection.run_settings import apply_run_settings, read_meta
    settings = read_meta(os.path.join(options_run['work'], 'epoch_1.pth'))['run_settings']
    for given, queries in (({}, 6), ({'model.detector.num_queries': 5}, 5),
                           ({'model.detector': dict(num_queries=7)}, 7)):
        cfg = Config.fromfile(runs['config'])
        cfg.merge_from_dict(given)
        args = SimpleNamespace(cfg_options=given, data=None, img_size=None, val_fraction=None)
        taken = apply_run_settings(cfg, settings, args, need_data=False)
        assert cfg.model.detector.num_queries == queries
        assert ('model.detector.num_queries=6' in taken) == (queries == 6)


def test_the_last_validation_of_a_run_writes_its_per_class_results(runs):
    """A training run's final validation (epoch 1 of 1) writes what tools/test.py writes."""
    with open(os.path.join(runs['w3'], 'per_class.json')) as f:
        report = json.load(f)
    assert [r['name'] for r in report['classes']] == ['square', 'disc', 'triangle']
    assert report['confusion_matrix']['score_threshold'] == 0.5  # DETR's softmax scores
    assert 'per class (COCO AP' in _log_text(runs['w3']) and 'per-class results: ' in _log_text(runs['w3'])


def test_a_work_dir_without_checkpoints_is_named(runs, tools, tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SystemExit, match=r'is a folder without checkpoints'):
        tools['test']([runs['config'], str(tmp_path / 'empty')])


# --- a classifier trained here as a detector's backbone -------------------------------------------

@pytest.fixture(scope='module')
def classifier(tmp_path_factory, tools):
    """A T2T-ViT-7 classifier (one block) trained here on 32 px generated Fashion-MNIST stand-ins:
    its position table covers a 2 x 2 grid."""
    base = tmp_path_factory.mktemp('classifier')
    missing = str(base / 'no_fashion_mnist')
    config = base / 'tiny_t2t_classifier.py'
    config.write_text(textwrap.dedent(f"""
        _base_ = ['{ROOT}/configs/classification/t2t_vit_7_fashion_mnist.py']
        model = dict(backbone=dict(depth=1))
        train_dataloader = dict(batch_size=8, dataset=dict(root='{missing}', fallback=dict(num_samples=16)))
        val_dataloader = dict(batch_size=8, dataset=dict(root='{missing}', fallback=dict(num_samples=8)))
        test_dataloader = val_dataloader
        train_cfg = dict(max_epochs=1)
        visualizer = dict(vis_backends=[dict(type='LocalVisBackend')])
        param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
    """))
    work = base / 'work'
    tools['train']([str(config), '--work-dir', str(work), '--threads', '1'])
    return str(work / 'epoch_1.pth')


def _backbone_messages(build) -> list[str]:
    messages = []
    handler = _Collect(messages)
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        build()
    finally:
        logger.removeHandler(handler)
    return messages


def test_classifier_checkpoint_loads_as_the_detector_backbone(classifier):
    detector = dict(type='DETR', backbone=dict(name='t2t_vit_7', depth=1, img_size=64, pretrained=classifier),
                    num_queries=4, hidden_dim=32, num_heads=2, enc_layers=1, dec_layers=1, ffn_dim=64)
    built = []
    messages = _backbone_messages(lambda: built.append(MODELS.build(dict(type='Detector', detector=detector,
                                                                         num_classes=5))))
    body = built[0].net.backbone.body.state_dict()
    trained = _weights(classifier)
    theirs = {k[len('backbone.'):]: v for k, v in trained.items() if k.startswith('backbone.')}
    for key, value in body.items():
        if key != 'pos_embed':
            assert torch.equal(value, theirs[key]), key
    assert theirs['pos_embed'].shape == (1, 5, 256) and body['pos_embed'].shape == (1, 17, 256)
    (line,) = [m for m in messages if m.startswith('t2t_vit_7: loaded')]
    assert f'loaded {len(body)} of {len(body)} tensors from {classifier} (a t2t_vit_7 classifier trained here, ' \
           '10 classes)' in line
    assert "resampled pos_embed (1, 5, 256) -> (1, 17, 256) from the checkpoint's 2x2 grid to 4x4 grid" in line
    assert 'left out 2 (head.bias, head.weight: the classifier head)' in line


def test_classifier_built_with_another_qk_scale_is_refused(classifier):
    """The demo detector's T2T-ViT uses the released weights' scale (256 ** -0.5); the classifier
    was trained with the default (head_dim ** -0.5). Same shapes, other function: refused, where
    it used to load silently."""
    from zoo.pretrained import ArchitectureMismatchError
    detector = dict(type='DETR', backbone=dict(name='t2t_vit_7', depth=1, img_size=64, pretrained=classifier,
                                               qk_scale=256 ** -0.5),
                    num_queries=4, hidden_dim=32, num_heads=2, enc_layers=1, dec_layers=1, ffn_dim=64)
    with pytest.raises(ArchitectureMismatchError, match=r'qk_scale=None \(head_dim \*\* -0.5\) in the classifier, '
                                                        r'0.0625 here.*qk_scale=None'):
        MODELS.build(dict(type='Detector', detector=detector, num_classes=5))


def test_evaluation_builds_the_backbone_as_the_classifier_was_built(classifier):
    """tools/test.py and infer.py build the detector without fetching the backbone's weights
    (``without_pretrained``): for a classifier trained here that adds none of the released weights'
    settings (T2T-ViT's qk_scale), which would change what the trained detector computes."""
    from zoo.runtime.engine import without_pretrained
    assert without_pretrained(dict(name='t2t_vit_7', pretrained=classifier)) == dict(name='t2t_vit_7',
                                                                                      pretrained=False)
    assert without_pretrained(dict(name='t2t_vit_7', pretrained=True))['qk_scale'] == 256 ** -0.5


def test_older_checkpoints_give_the_same_settings_from_their_config_text(runs):
    """A checkpoint written before ``run_settings`` existed: the same settings come from the config
    text and the dataset meta mmengine stored in it."""
    from detection.run_settings import META_KEY, read_meta, settings_from_meta
    meta = read_meta(os.path.join(runs['w5'], 'epoch_1.pth'))
    recorded = meta.pop(META_KEY)
    assert recorded['num_classes'] == 5 and recorded['classes'] == FIVE and recorded['img_size'] == 64
    assert recorded['data_root'] == os.path.abspath(runs['five'])
    assert recorded['model_options'] == {}  # its --cfg-options changed no model setting
    older = settings_from_meta(meta)
    # the config text holds the run's model, but not which of its settings the command line gave
    assert older.pop('model_options') is None
    assert older == {k: v for k, v in recorded.items() if k != 'model_options'}
