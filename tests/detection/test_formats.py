"""``--data DIR`` reads Pascal VOC and YOLO (ultralytics) folders as the same COCO dicts a COCO
folder gives, holds out a deterministic validation split where a folder has none, and stops on
bad annotations before training with the file named."""
import json
import os

import pytest
from mmengine.config import Config
from PIL import Image

from detection.data.folder import apply_data_arguments, use_data_folder
from test_detection_pipeline import ROOT

DEMO = os.path.join(ROOT, 'configs/demo/detr_t2t_shapes.py')
NAMES = ['bird', 'car', 'person']   # sorted: VOC's order; YOLO's names list in the same order
# file name, width, height, [(class index, [x, y, w, h] in pixels)]
SPLITS = {
    'train': [('im0.jpg', 64, 48, [(0, [4, 6, 20, 10]), (2, [30, 10, 25, 30])]),
              ('im1.jpg', 50, 60, [(1, [0, 0, 50, 20])]),
              ('im2.jpg', 40, 40, [(2, [10, 12, 8, 16]), (2, [20, 2, 15, 30]), (0, [1, 1, 5, 5])]),
              ('im3.jpg', 64, 64, [])],
    'val': [('im4.jpg', 48, 32, [(1, [8, 4, 30, 20])]),
            ('im5.jpg', 32, 48, [(0, [2, 2, 20, 40]), (2, [16, 30, 10, 10])])],
}


def coco_dict(split):
    images, annotations = [], []
    for i, (name, w, h, objects) in enumerate(SPLITS[split], start=1):
        images.append(dict(id=i, file_name=name, width=w, height=h))
        annotations += [dict(id=len(annotations) + 1, image_id=i, category_id=c, bbox=b, area=b[2] * b[3], iscrowd=0)
                        for c, b in objects]
    return dict(images=images, annotations=annotations, categories=[dict(id=i, name=n) for i, n in enumerate(NAMES)])


def _picture(path, w, h):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new('RGB', (w, h), (120, 60, 30)).save(path)


def write_voc(root, image_sets=('train', 'val'), size=True):
    """SPLITS as a VOC folder: VOC's 1-based inclusive corners, ImageSets/Main/<split>.txt for
    ``image_sets``."""
    os.makedirs(os.path.join(root, 'Annotations'))
    for split, entries in SPLITS.items():
        for name, w, h, objects in entries:
            _picture(os.path.join(root, 'JPEGImages', name), w, h)
            objs = ''.join(f'<object><name>{NAMES[c]}</name><difficult>0</difficult><bndbox><xmin>{x + 1}</xmin>'
                           f'<ymin>{y + 1}</ymin><xmax>{x + bw}</xmax><ymax>{y + bh}</ymax></bndbox></object>'
                           for c, (x, y, bw, bh) in objects)
            size_xml = f'<size><width>{w}</width><height>{h}</height><depth>3</depth></size>' if size else ''
            with open(os.path.join(root, 'Annotations', name.replace('.jpg', '.xml')), 'w') as f:
                f.write(f'<annotation><folder>VOC</folder><filename>{name}</filename>{size_xml}{objs}</annotation>')
    for split in image_sets:
        os.makedirs(os.path.join(root, 'ImageSets', 'Main'), exist_ok=True)
        with open(os.path.join(root, 'ImageSets', 'Main', f'{split}.txt'), 'w') as f:
            f.write(''.join(name.replace('.jpg', '\n') for name, *_ in SPLITS[split]))
    return str(root)


def write_yolo(root, with_val=True, names_as_dict=False):
    """SPLITS as an ultralytics folder: data.yaml, images/<split>/, labels/<split>/."""
    for split, entries in SPLITS.items():
        target = split if with_val else 'train'
        for name, w, h, objects in entries:
            _picture(os.path.join(root, 'images', target, name), w, h)
            if not objects and split == 'train':
                continue  # an image without a label file: no objects
            os.makedirs(os.path.join(root, 'labels', target), exist_ok=True)
            with open(os.path.join(root, 'labels', target, name.replace('.jpg', '.txt')), 'w') as f:
                f.write(''.join(f'{c} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}\n'
                                for c, (x, y, bw, bh) in objects))
    names = ('names:\n' + ''.join(f'  {i}: {n}\n' for i, n in enumerate(NAMES)) if names_as_dict
             else f'names: [{", ".join(NAMES)}]\n')
    with open(os.path.join(root, 'data.yaml'), 'w') as f:
        f.write('path: .\ntrain: images/train\n' + ('val: images/val\n' if with_val else '') + f'nc: {len(NAMES)}\n'
                + names)
    return str(root)


def _by_file(data):
    """A COCO dict as {file's base name: (width, height, sorted [(class name, bbox)])}."""
    names = {c['id']: c['name'] for c in data['categories']}
    out = {}
    for img in data['images']:
        boxes = sorted((names[a['category_id']], a['bbox']) for a in data['annotations'] if a['image_id'] == img['id'])
        out[os.path.basename(img['file_name'])] = (img['width'], img['height'], boxes)
    return out


def assert_same_as_coco(cfg, split):
    dataset = cfg[f'{split}_dataloader'].dataset
    with open(dataset.ann_file) as f:
        got = json.load(f)
    expected = coco_dict(split)
    assert [c['name'] for c in sorted(got['categories'], key=lambda c: c['id'])] == NAMES
    for img in got['images']:  # the files are where the json says
        assert os.path.isfile(os.path.join(dataset.img_dir, img['file_name']))
    got, expected = _by_file(got), _by_file(expected)
    assert got.keys() == expected.keys()
    for name, (w, h, boxes) in expected.items():
        gw, gh, got_boxes = got[name]
        assert (gw, gh) == (w, h) and len(got_boxes) == len(boxes), name
        for (gc, gb), (c, b) in zip(got_boxes, boxes):
            assert gc == c and max(abs(u - v) for u, v in zip(gb, b)) <= 1, (name, gb, b)


def _config(tmp_path):
    cfg = Config.fromfile(DEMO)
    cfg.work_dir = str(tmp_path / 'work')
    return cfg


@pytest.mark.parametrize('writer', [write_voc, write_yolo, lambda root: write_yolo(root, names_as_dict=True)],
                         ids=['voc', 'yolo', 'yolo-names-dict'])
def test_voc_and_yolo_give_the_coco_dict_of_the_same_set(tmp_path, writer):
    root = writer(tmp_path / 'set')
    cfg = use_data_folder(_config(tmp_path), root)
    assert cfg.model.num_classes == 3 and cfg.data_folder['classes'] == NAMES
    assert_same_as_coco(cfg, 'train')
    assert_same_as_coco(cfg, 'val')
    assert cfg.test_dataloader.dataset.ann_file == os.path.join(cfg.work_dir, 'data', 'val.json')
    # the dataset's own up-front checks (image files, sizes) pass, and it reads the boxes
    from detection.data.coco import CocoDetection
    dataset = CocoDetection(cfg.train_dataloader.dataset.img_dir, cfg.train_dataloader.dataset.ann_file)
    assert dataset.classes == NAMES and len(dataset) == 4
    assert sum(len(dataset[i][1]['labels']) for i in range(len(dataset))) == 6


def test_voc_classes_are_the_object_names_sorted(tmp_path):
    root = write_voc(tmp_path / 'set')
    path = os.path.join(root, 'Annotations', 'im3.xml')  # an image of the val split gets a new class
    with open(path) as f:
        xml = f.read()
    with open(path, 'w') as f:
        f.write(xml.replace('</annotation>', '<object><name>aardvark</name><bndbox><xmin>1</xmin><ymin>1</ymin>'
                                             '<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>'))
    cfg = use_data_folder(_config(tmp_path), root)
    assert cfg.data_folder['classes'] == ['aardvark'] + NAMES


@pytest.mark.parametrize('writer', [lambda root: write_voc(root, image_sets=()),
                                    lambda root: write_voc(root, image_sets=('train',)),
                                    lambda root: write_yolo(root, with_val=False)],
                         ids=['voc-no-image-sets', 'voc-train-only', 'yolo-no-val'])
def test_a_folder_without_val_gets_a_deterministic_held_out_split(tmp_path, writer, log_messages):
    root = writer(tmp_path / 'set')

    def split(fraction, work):
        cfg = Config.fromfile(DEMO)
        cfg.work_dir = str(tmp_path / work)
        use_data_folder(cfg, root, val_fraction=fraction)
        names = {}
        for s in ('train', 'val'):
            with open(cfg[f'{s}_dataloader'].dataset.ann_file) as f:
                names[s] = sorted(os.path.basename(i['file_name']) for i in json.load(f)['images'])
        return names

    first, again = split(0.34, 'a'), split(0.34, 'b')
    assert first == again  # the same images, in another work dir and run
    n = len(first['train']) + len(first['val'])
    assert not set(first['train']) & set(first['val']) and n in (4, 6)
    assert len(first['val']) == round(0.34 * n)
    assert len(split(0.5, 'c')['val']) == n // 2
    assert any('held out for validation' in m and '--val-fraction 0.34' in m for m in log_messages)


def test_val_fraction_is_a_data_argument(tmp_path):
    import argparse

    from detection.data.folder import add_data_arguments
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    root = write_yolo(tmp_path / 'set', with_val=False)
    args = parser.parse_args(['--data', root, '--val-fraction', '0.5'])
    cfg = apply_data_arguments(_config(tmp_path), args)
    with open(cfg.val_dataloader.dataset.ann_file) as f:
        assert len(json.load(f)['images']) == 3
    with pytest.raises(SystemExit, match='--val-fraction 1.5: give a fraction between 0 and 1'):
        apply_data_arguments(_config(tmp_path), parser.parse_args(['--data', root, '--val-fraction', '1.5']))


# Bad input: each stops before a model is built, as tools/train.py reports it, naming the file.
def _tool_error(tmp_path, root):
    args = type('Args', (), dict(data=root, img_size=None, val_fraction=None))()
    with pytest.raises(SystemExit) as info:
        apply_data_arguments(_config(tmp_path), args)
    return str(info.value)


def test_voc_xml_without_a_size_is_refused_with_the_fix(tmp_path):
    root = write_voc(tmp_path / 'set')
    path = os.path.join(root, 'Annotations', 'im1.xml')
    with open(path) as f:
        xml = f.read()
    with open(path, 'w') as f:
        f.write(xml.replace('<size><width>50</width><height>60</height><depth>3</depth></size>', ''))
    message = _tool_error(tmp_path, root)
    assert message.startswith('error: ') and path in message and 'no <size>' in message
    assert '<size><width>W</width><height>H</height>' in message


def test_voc_xml_that_does_not_parse_or_has_a_box_without_numbers(tmp_path):
    root = write_voc(tmp_path / 'set')
    broken = os.path.join(root, 'Annotations', 'im0.xml')
    with open(broken, 'w') as f:
        f.write('<annotation><size>')
    path = os.path.join(root, 'Annotations', 'im2.xml')
    with open(path) as f:
        xml = f.read()
    with open(path, 'w') as f:
        f.write(xml.replace('<xmax>18</xmax>', '<xmax>wide</xmax>', 1))
    message = _tool_error(tmp_path, root)
    assert '2 problem(s)' in message and f'{broken}: not readable XML' in message
    assert f'{path}: <object> 0 (person) lacks a <bndbox> with numbers' in message


def test_voc_image_missing_is_named_with_its_xml(tmp_path):
    root = write_voc(tmp_path / 'set')
    os.remove(os.path.join(root, 'JPEGImages', 'im5.jpg'))
    message = _tool_error(tmp_path, root)
    assert os.path.join(root, 'Annotations', 'im5.xml') + ': its image im5.jpg' in message
    assert 'remove the xml and its id from ImageSets/Main' in message


def test_yolo_class_index_out_of_range_is_refused_naming_the_line(tmp_path):
    root = write_yolo(tmp_path / 'set')
    path = os.path.join(root, 'labels', 'train', 'im2.txt')
    with open(path) as f:
        lines = f.readlines()
    lines[1] = '3' + lines[1][1:]
    with open(path, 'w') as f:
        f.writelines(lines)
    message = _tool_error(tmp_path, root)
    assert f'{path}:2: class index 3 is out of range: names lists 3 classes (0 to 2)' in message
    assert 'class x_center y_center width height' in message


def test_yolo_coordinates_outside_0_1_are_refused_naming_the_line(tmp_path):
    root = write_yolo(tmp_path / 'set')
    path = os.path.join(root, 'labels', 'val', 'im4.txt')
    with open(path, 'w') as f:
        f.write('1 23 14 30 20\n')  # pixels, not fractions
    message = _tool_error(tmp_path, root)
    assert f'{path}:1: coordinates 23, 14, 30, 20 outside [0, 1]' in message


def test_yolo_yaml_names_that_disagree_with_nc(tmp_path):
    root = write_yolo(tmp_path / 'set')
    with open(os.path.join(root, 'data.yaml')) as f:
        text = f.read()
    with open(os.path.join(root, 'data.yaml'), 'w') as f:
        f.write(text.replace('nc: 3', 'nc: 4'))
    message = _tool_error(tmp_path, root)
    assert 'data.yaml: nc is 4 but names lists 3 classes' in message


def test_unknown_folder_lists_every_format(tmp_path):
    (tmp_path / 'set').mkdir()
    message = _tool_error(tmp_path, str(tmp_path / 'set'))
    assert 'annotations/train.json' in message and 'Pascal VOC' in message and 'YOLO' in message
