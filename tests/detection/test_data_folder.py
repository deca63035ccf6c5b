"""``--data DIR [--img-size N]``: a user's COCO-format folder trains, evaluates and draws through any
detection config with no edits; every bad input stops with a message that names the fix."""
import json
import os
import shutil

import pytest
import torch
from mmengine.config import Config

from detection.data.folder import find_splits, sized_transforms, use_data_folder
from detection.data.synthetic import make_shapes_dataset
from test_detection_pipeline import ROOT

DEMO = os.path.join(ROOT, 'configs/demo/detr_t2t_shapes.py')
# Category ids as users have them: 0, gaps, listed out of order.
ODD_CATEGORIES = {1: dict(id=7, name='square'), 3: dict(id=0, name='disc'), 5: dict(id=3, name='triangle')}


def write_user_folder(root, layout='plain', size=64, num_train=8, num_val=4):
    """A generated set rewritten as a user's folder in ``layout`` ('plain' or 'coco2017'), with
    odd category ids; returns the folder."""
    src = make_shapes_dataset(str(root) + '_src', num_train=num_train, num_val=num_val, size=size, max_objects=3,
                              seed=2, object_scale=(0.25, 0.45))
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    for split in ('train', 'val'):
        with open(os.path.join(src, 'annotations', f'instances_{split}.json')) as f:
            data = json.load(f)
        data['categories'] = [ODD_CATEGORIES[c['id']] for c in reversed(data['categories'])]
        for ann in data['annotations']:
            ann['category_id'] = ODD_CATEGORIES[ann['category_id']]['id']
        ann_name, img_dir = ((f'{split}.json', split) if layout == 'plain'
                             else (f'instances_{split}2017.json', f'{split}2017'))
        shutil.copytree(os.path.join(src, split), os.path.join(root, img_dir))
        with open(os.path.join(root, 'annotations', ann_name), 'w') as f:
            json.dump(data, f)
    return str(root)


@pytest.fixture(scope='module')
def user_folder(tmp_path_factory):
    return write_user_folder(tmp_path_factory.mktemp('data') / 'mine')


@pytest.mark.parametrize('layout', ['plain', 'coco2017'])
def test_both_layouts_are_found_and_classes_come_from_the_json(tmp_path, layout):
    root = write_user_folder(tmp_path / 'mine', layout)
    splits = find_splits(root)
    suffix = '2017' if layout == 'coco2017' else ''
    assert splits['val'][1] == os.path.join(root, f'val{suffix}')
    cfg = use_data_folder(Config.fromfile(DEMO), root)
    assert cfg.model.num_classes == 3
    assert cfg.data_folder['classes'] == ['disc', 'triangle', 'square']  # sorted by id: 0, 3, 7
    assert 'synthetic' not in cfg.train_dataloader.dataset
    assert cfg.train_dataloader.dataset.ann_file == splits['train'][0]
    assert cfg.test_dataloader.dataset.img_dir == splits['val'][1]


def test_img_size_sets_test_size_and_a_multiscale_training_range():
    train, test = sized_transforms(256)
    assert train['scales'] == (192, 208, 224, 240, 256) and test['size'] == 256
    cfg = use_data_folder(Config.fromfile(DEMO), None, 256)
    assert cfg.val_dataloader.dataset.transforms == test
    assert cfg.train_dataloader.dataset.transforms == train
    with pytest.raises(ValueError, match='too small'):
        sized_transforms(16)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='no such folder'):
        use_data_folder(Config.fromfile(DEMO), str(tmp_path / 'nowhere'))


def test_folder_without_annotations_lists_the_layouts(tmp_path):
    (tmp_path / 'train').mkdir()
    with pytest.raises(FileNotFoundError, match=r'annotations/instances_train2017.json.*annotations/train.json'):
        use_data_folder(Config.fromfile(DEMO), str(tmp_path))


def test_missing_val_split_is_named(tmp_path):
    root = write_user_folder(tmp_path / 'mine')
    os.remove(os.path.join(root, 'annotations', 'val.json'))
    with pytest.raises(FileNotFoundError, match=r'val.json not found \(val split\)'):
        use_data_folder(Config.fromfile(DEMO), root)


@pytest.mark.parametrize('content, message', [
    ('{"images": [', 'is not valid json'),
    ('[1, 2, 3]', 'not a COCO annotation file'),
    ('{"images": [], "annotations": []}', 'missing the "categories" list'),
    ('{"images": [], "annotations": [], "categories": []}', '"categories" is empty'),
])
def test_json_that_is_not_coco(tmp_path, content, message):
    root = write_user_folder(tmp_path / 'mine')
    with open(os.path.join(root, 'annotations', 'train.json'), 'w') as f:
        f.write(content)
    with pytest.raises(ValueError, match=message):
        use_data_folder(Config.fromfile(DEMO), root)


def test_images_missing_from_the_folder(tmp_path):
    root = write_user_folder(tmp_path / 'mine')
    os.remove(os.path.join(root, 'train', '000003.png'))
    with pytest.raises(FileNotFoundError, match=r"1 of the 8 images .* missing .* e.g. \['000003.png'\]"):
        use_data_folder(Config.fromfile(DEMO), root)


def test_train_and_val_with_different_categories(tmp_path):
    root = write_user_folder(tmp_path / 'mine')
    path = os.path.join(root, 'annotations', 'val.json')
    with open(path) as f:
        data = json.load(f)
    data['categories'].append(dict(id=99, name='extra'))
    with open(path, 'w') as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match='different categories'):
        use_data_folder(Config.fromfile(DEMO), root)


def test_tools_exit_with_the_message(tmp_path, capsys):
    import importlib
    import sys
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    train = importlib.import_module('train')
    with pytest.raises(SystemExit, match='error: --data .*no such folder'):
        train.build_config(train.parse_args([DEMO, '--data', str(tmp_path / 'nowhere')]))


def _run_tool(name, argv):
    import importlib
    import sys
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    return importlib.import_module(name).main(argv)


TINY = ['model.detector.backbone.name=deit_tiny_patch16_224', 'model.detector.backbone.depth=1',
        'model.detector.backbone.img_size=64', 'model.detector.enc_layers=1', 'model.detector.dec_layers=1',
        'model.detector.denoising.num_groups=2', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
        'train_dataloader.batch_size=4', 'val_dataloader.batch_size=4']


def test_class_count_that_disagrees_with_the_data_is_refused(user_folder, tmp_path):
    """Without --data, a config whose num_classes does not match its data stops before training,
    with the message alone (a data error: no traceback)."""
    splits = find_splits(user_folder)
    options = TINY + ['model.num_classes=5', f'train_dataloader.dataset.ann_file={splits["train"][0]}',
                      f'train_dataloader.dataset.img_dir={splits["train"][1]}',
                      'train_dataloader.dataset.synthetic=None']
    with pytest.raises(SystemExit, match=r'num_classes=5 but .*train.json has 3 categories .*'
                                         r'model.num_classes=3, or train with --data'):
        _run_tool('train', [DEMO, '--work-dir', str(tmp_path / 'w'), '--cfg-options', *options])


@pytest.mark.slow
def test_train_test_and_infer_on_a_user_folder_with_no_edits(user_folder, tmp_path):
    """The demo config (3 classes of its own) on a user's folder: trains with denoising on, is
    evaluated on the folder's val split, draws its predictions; category ids map back to the
    user's (0, 3, 7)."""
    work = str(tmp_path / 'work')
    common = ['--data', user_folder, '--img-size', '64']
    _run_tool('train', [DEMO, '--work-dir', work, *common, '--cfg-options', *TINY])
    with open(os.path.join(work, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    out = str(tmp_path / 'dets.json')
    metrics = _run_tool('test', [DEMO, checkpoint, '--work-dir', work, '--out', out, *common,
                                 '--cfg-options', *TINY])
    assert 'coco/AP50' in metrics and 0 <= metrics['coco/AP50'] <= 1
    with open(out) as f:
        detections = json.load(f)
    assert detections and {d['category_id'] for d in detections} <= {0, 3, 7}
    picture = str(tmp_path / 'pred.png')
    _run_tool('infer', [DEMO, checkpoint, '--val', '2', '--out', picture, *common, '--cfg-options', *TINY])
    assert os.path.getsize(picture) > 0
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)
    assert state['meta']['dataset_meta']['classes'] == ['disc', 'triangle', 'square']


def test_too_few_queries_for_the_most_crowded_image_is_warned(tmp_path):
    from mmengine.logging import MMLogger
    root = write_user_folder(tmp_path / 'mine')
    logger = MMLogger.get_current_instance()
    messages = []
    handler = __import__('logging').Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    try:
        use_data_folder(Config.fromfile(DEMO), root, None)  # 4 queries, up to 3 objects: quiet
        assert not any('queries but' in m for m in messages)
        cfg = Config.fromfile(DEMO)
        cfg.model.detector.num_queries = 2
        use_data_folder(cfg, root, None)
    finally:
        logger.removeHandler(handler)
    assert any('2 queries but an image of this set holds up to 3 objects' in m for m in messages)
    assert any('8 train images' in m for m in messages)


def test_time_budget_ends_training_with_an_evaluated_last_epoch(user_folder, tmp_path):
    """--time-budget: a budget shorter than one epoch stops after the first, which is evaluated
    and checkpointed as the last."""
    work = str(tmp_path / 'work')
    options = [o for o in TINY if not o.startswith('train_cfg')] + ['train_cfg.max_epochs=5',
                                                                     'train_cfg.val_interval=5']
    runner = _run_tool('train', [DEMO, '--work-dir', work, '--data', user_folder, '--img-size', '64',
                                 '--time-budget', '0.001', '--cfg-options', *options])
    with open(os.path.join(work, 'last_checkpoint')) as f:
        assert f.read().strip().endswith('epoch_1.pth')
    assert runner.epoch == 1
    assert 'val/coco/AP50' in runner.message_hub.log_scalars  # the last epoch was evaluated
