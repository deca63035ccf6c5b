"""Data read as it is: images of every PIL mode by their real range (a 16-bit PNG is not a white
picture), and a COCO set whose json disagrees with its files or with itself (sizes, duplicate
ids, unknown categories, non-numeric boxes, an empty split) refused when the dataset is built,
before any training, with the offending files and ids named. tools/infer.py reads images the same
way and names a missing or corrupt image, or a missing config, in one line."""
import argparse
import json
import os
import struct
import sys
import warnings
import zlib

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image, ImageFile

from detection.data.coco import CocoDetection
from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, 'tools'))
DEMO = os.path.join(ROOT, 'configs/demo/detr_t2t_shapes.py')
W, H = 48, 32


def gradient16() -> np.ndarray:
    """(H, W) uint16: a horizontal ramp over the whole 16-bit range, 0 to 65535, with a vertical
    ripple so that no two rows are alike."""
    ramp = np.linspace(0, 65535, W)[None, :] * np.linspace(1.0, 0.5, H)[:, None]
    return np.rint(ramp).astype(np.uint16)


def to8(a16: np.ndarray) -> np.ndarray:
    """The 8-bit version of a 16-bit picture (the high byte)."""
    return (a16 >> 8).astype(np.uint8)


def write_png16_rgb(path, rgb16: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG, written by hand (PIL cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b''.join(b'\x00' + rgb16[y].astype('>u2').tobytes() for y in range(h))

    def chunk(kind, body):
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body) & 0xffffffff)

    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, 2, 0, 0, 0))
                + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))


def write_coco(root, pictures: dict, annotations=None, categories=None, images=None, name='ann.json'):
    """``pictures`` {file_name: PIL image} saved under root/img, a COCO json listing them with their
    true sizes (unless ``images`` replaces that list) -> (img_dir, ann_file)."""
    img_dir = os.path.join(root, 'img')
    os.makedirs(img_dir, exist_ok=True)
    for file_name, img in pictures.items():
        img.save(os.path.join(img_dir, file_name))
    if images is None:
        images = [dict(id=i + 1, file_name=n, width=img.size[0], height=img.size[1])
                  for i, (n, img) in enumerate(pictures.items())]
    if annotations is None:
        annotations = [dict(id=i + 1, image_id=img['id'], category_id=1, bbox=[4, 4, 20, 12], area=240, iscrowd=0)
                       for i, img in enumerate(images)]
    data = dict(images=images, annotations=annotations,
                categories=categories or [dict(id=1, name='thing'), dict(id=2, name='other')])
    ann_file = os.path.join(root, name)
    with open(ann_file, 'w') as f:
        json.dump(data, f)
    return img_dir, ann_file


def rgb_picture(seed=0, size=(W, H)) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def pixels(ds: CocoDetection, index: int) -> np.ndarray:
    """The (H, W, 3) uint8 pixels the dataset reads for item ``index`` (no transforms)."""
    image, _ = ds[index]
    return image.permute(1, 2, 0).numpy()


# --- 1. images of any mode, by their real range ---------------------------------------------------

def test_16bit_png_reads_as_its_8bit_picture_in_the_dataset(tmp_path):
    """Today ``convert('RGB')`` clips a 16-bit PNG (mode I;16) to 255 nearly everywhere."""
    a16 = gradient16()
    img_dir, ann_file = write_coco(tmp_path, {'deep.png': Image.fromarray(a16), 'flat.png': Image.fromarray(to8(a16))})
    assert Image.open(os.path.join(img_dir, 'deep.png')).mode == 'I;16'
    ds = CocoDetection(img_dir, ann_file)
    deep, flat = pixels(ds, 0), pixels(ds, 1)
    assert deep.dtype == np.uint8 and deep.shape == (H, W, 3)
    assert len(np.unique(deep)) > 40, 'a gradient, not a constant picture'
    assert deep.min() == 0 and deep.max() == 255
    assert np.abs(deep.astype(int) - flat.astype(int)).max() <= 1
    assert (deep[..., 0] == deep[..., 1]).all() and (deep[..., 1] == deep[..., 2]).all()


def _mode_cases(folder):
    """Pictures of every mode a COCO set may hold, saved in ``folder`` -> {file name: the expected
    (H, W, 3) uint8}."""
    rng = np.random.RandomState(1)
    rgb = rgb_picture(1)
    gray8 = rng.randint(0, 256, (H, W), dtype=np.uint8)
    a16 = gradient16()
    gray3 = lambda a: np.repeat(a[..., None], 3, -1)  # noqa: E731
    cases = {}
    # 8-bit modes: exactly what convert('RGB') of the file gave before (alpha dropped, palette applied)
    for mode, name in (('1', '1.png'), ('L', 'L.png'), ('P', 'P.png'), ('RGB', 'RGB.png'), ('RGBA', 'RGBA.png'),
                       ('LA', 'LA.png'), ('CMYK', 'CMYK.jpg'), ('L', 'L.jpg'), ('RGB', 'RGB.jpg')):
        img = Image.merge('LA', [Image.fromarray(gray8), rgb.convert('L')]) if mode == 'LA' else rgb.convert(mode)
        img.save(folder / name)
        with Image.open(folder / name) as saved:
            assert saved.mode == mode, name
            cases[name] = np.asarray(saved.convert('RGB'))
    # high-depth modes: scaled by their real range
    for name, img, expected in (
            ('I16.png', Image.fromarray(a16), gray3(to8(a16))),  # I;16
            ('I32_16bit.tif', Image.fromarray(a16.astype(np.int32)), gray3(to8(a16))),  # I, values up to 65535
            ('I32_8bit.tif', Image.fromarray(gray8.astype(np.int32)), gray3(gray8)),  # I, values up to 255: kept
            ('F_unit.tif', Image.fromarray(gray8.astype(np.float32) / 255), gray3(gray8))):  # F in 0..1
        img.save(folder / name)
        cases[name] = expected
    write_png16_rgb(folder / 'RGB16.png', np.stack([a16, a16[:, ::-1], np.full_like(a16, 30000)], -1))
    cases['RGB16.png'] = np.stack([to8(a16), to8(a16)[:, ::-1], np.full_like(to8(a16), 117)], -1)
    return cases


def test_every_pil_mode_reads_by_its_real_range(tmp_path):
    """1, L, P, RGB, RGBA, LA, CMYK read exactly as before; I;16 (16-bit PNG), I (32-bit integer
    TIFF, 16-bit or 8-bit values), F (float TIFF in 0..1) and 16-bit RGB PNGs by their range, the
    same through ``read_image``, the dataset and tools/infer.py."""
    from detection.data.images import read_image
    from infer import read_input
    os.makedirs(tmp_path / 'img')
    cases = _mode_cases(tmp_path / 'img')
    modes = {n: Image.open(tmp_path / 'img' / n).mode for n in cases}
    assert (modes['I16.png'], modes['I32_16bit.tif'], modes['F_unit.tif']) == ('I;16', 'I', 'F')
    img_dir, ann_file = write_coco(tmp_path, {}, annotations=[], images=[
        dict(id=i, file_name=n, width=W, height=H) for i, n in enumerate(cases)])
    ds = CocoDetection(img_dir, ann_file)
    for i, (name, expected) in enumerate(cases.items()):
        path = os.path.join(img_dir, name)
        got = np.asarray(read_image(path))
        assert got.dtype == np.uint8 and got.shape == (H, W, 3), name
        tol = 1 if name in ('I16.png', 'I32_16bit.tif', 'RGB16.png') else 0
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= tol, f'{name} ({modes[name]})'
        assert (pixels(ds, i) == got).all(), name
        assert (read_input(path).permute(1, 2, 0).numpy() == got).all(), name


def test_infer_draws_a_16bit_png_as_its_8bit_picture(tmp_path):
    """tools/infer.py on a 16-bit PNG: today a raw TypeError (a uint16 tensor reaches PIL); now the
    same picture as for the 8-bit copy."""
    import infer
    a16 = gradient16()
    Image.fromarray(a16).save(tmp_path / 'deep.png')
    Image.fromarray(to8(a16)).save(tmp_path / 'flat.png')
    cfg = Config(dict(val_dataloader=dict(dataset=dict(transforms=dict(type='shapes_test_transforms', size=64)))))
    seen = []

    def model(inputs, masks, data_samples, mode):
        seen.extend(inputs)  # the images of the batch
        return [dict(boxes=torch.tensor([[4.0, 4.0, 30.0, 20.0]]), labels=torch.tensor([0]),
                     scores=torch.tensor([0.9])) for _ in data_samples]

    args = argparse.Namespace(val=None, images=[str(tmp_path / 'deep.png'), str(tmp_path / 'flat.png')],
                              out_dir=str(tmp_path / 'out'), score_thr=0.5)
    infer.run(args, cfg, model, ['thing'])
    deep, flat = (np.asarray(Image.open(tmp_path / 'out' / f'{n}_pred.png')).astype(int) for n in ('deep', 'flat'))
    assert deep.shape == flat.shape and np.abs(deep - flat).max() <= 1
    assert seen[0].std() > 0.1 and torch.allclose(seen[0], seen[1], atol=0.05)


# --- 2. sizes: the json's against the files' -------------------------------------------------------

def test_size_mismatch_is_named_when_the_dataset_is_built_from_headers_only(tmp_path, monkeypatch):
    """The json says 48 x 32, the file is 40 x 30: refused up front, naming the file and both sizes,
    with the fix. No pixel is decoded to find out (headers only)."""
    pictures = {'ok.png': rgb_picture(0), 'small.png': rgb_picture(1, (40, 30)), 'turned.png': rgb_picture(2, (H, W))}
    img_dir, ann_file = write_coco(tmp_path, pictures, images=[
        dict(id=i + 1, file_name=n, width=W, height=H) for i, n in enumerate(pictures)])

    def no_decoding(self):
        raise AssertionError('the size check decoded pixels')
    monkeypatch.setattr(ImageFile.ImageFile, 'load', no_decoding)
    with pytest.raises(ValueError) as e:
        CocoDetection(img_dir, ann_file)
    message = str(e.value)
    assert 'small.png (id 2): json 48 x 32, file 40 x 30' in message
    assert 'turned.png (id 3): json 48 x 32, file 32 x 48 (width and height swapped' in message
    assert 'ok.png' not in message and ann_file in message and 'fix_sizes=True' in message


def test_fix_sizes_takes_the_files_sizes_with_a_warning(tmp_path):
    """fix_sizes=True, directly or from a config's dataset dict: the json's sizes are corrected in
    memory, with a warning naming the files."""
    from mmengine.registry import DATASETS

    import detection.engine  # noqa: F401  (registers CocoDetection)
    img_dir, ann_file = write_coco(tmp_path, {'ok.png': rgb_picture(0), 'small.png': rgb_picture(1, (40, 30))},
                                   images=[dict(id=1, file_name='ok.png', width=W, height=H),
                                           dict(id=2, file_name='small.png', width=W, height=H)])
    with pytest.warns(UserWarning, match=r'small.png \(id 2\): json 48 x 32, file 40 x 30'):
        ds = CocoDetection(img_dir, ann_file, fix_sizes=True)
    assert (ds.coco.imgs[2]['width'], ds.coco.imgs[2]['height']) == (40, 30)
    assert ds[1][1]['orig_size'].tolist() == [30, 40]
    with pytest.warns(UserWarning, match='small.png'):
        built = DATASETS.build(dict(type='CocoDetection', img_dir=img_dir, ann_file=ann_file, fix_sizes=True,
                                    transforms=dict(type='shapes_test_transforms', size=64), train=False))
    assert built.coco.imgs[2]['width'] == 40
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        CocoDetection(img_dir, write_coco(tmp_path, {}, images=[dict(id=1, file_name='ok.png', width=W, height=H)],
                                          name='right.json')[1])  # sizes that agree: no warning


# --- 3. the json against itself --------------------------------------------------------------------

def test_duplicate_image_ids_are_named(tmp_path):
    pictures = {'a.png': rgb_picture(0), 'b.png': rgb_picture(1), 'c.png': rgb_picture(2)}
    img_dir, ann_file = write_coco(tmp_path, pictures, images=[
        dict(id=7, file_name='a.png', width=W, height=H), dict(id=7, file_name='b.png', width=W, height=H),
        dict(id=8, file_name='c.png', width=W, height=H)])
    with pytest.raises(ValueError, match=r'duplicate image ids: id 7 \(a.png, b.png\).*Give every image its own id'):
        CocoDetection(img_dir, ann_file)


def test_unknown_categories_are_named_when_the_dataset_is_built(tmp_path):
    """Today only when training reaches such a box (and never for a box the training filters drop)."""
    img_dir, ann_file = write_coco(tmp_path, {'a.png': rgb_picture(0)}, annotations=[
        dict(id=1, image_id=1, category_id=1, bbox=[4, 4, 20, 12], area=240, iscrowd=0),
        dict(id=2, image_id=1, category_id=42, bbox=[4, 4, 20, 12], area=240, iscrowd=0),
        dict(id=3, image_id=1, category_id=42, bbox=[4, 4, 0, 12], area=0, iscrowd=0),
        dict(id=4, image_id=1, category_id=9, bbox=[4, 4, 20, 12], area=240, iscrowd=1)])
    with pytest.raises(ValueError) as e:
        CocoDetection(img_dir, ann_file)
    message = str(e.value)
    assert 'category_id 42 (annotation ids 2, 3)' in message and 'category_id 9 (annotation ids 4)' in message
    assert 'has ids 1, 2' in message and 'Add the missing categories' in message


@pytest.mark.parametrize('bbox', [[4, '4', 20, 12], [4, 4, None, 12], ['x', 'y', 'w', 'h'], [4, 4, True, 12]])
def test_non_numeric_box_coordinates_are_named(tmp_path, bbox):
    """Today a string or null coordinate ends in a raw TypeError from math.isfinite."""
    from detection.data.folder import read_split
    img_dir, ann_file = write_coco(tmp_path, {'a.png': rgb_picture(0)}, annotations=[
        dict(id=1, image_id=1, category_id=1, bbox=[4, 4, 20, 12], area=240, iscrowd=0),
        dict(id=5, image_id=1, category_id=1, bbox=bbox, area=240, iscrowd=0)])
    shown = json.dumps(bbox).replace('[', r'\[').replace(']', r'\]')
    with pytest.raises(ValueError, match=rf'annotations\[1\] \(id 5\) has bbox {shown}.*numbers, not strings or null'):
        CocoDetection(img_dir, ann_file)
    with pytest.raises(ValueError, match=r'annotations\[1\] \(id 5\)'):
        read_split(ann_file, img_dir)  # --data DIR checks the same way


def test_all_problems_of_a_json_come_in_one_message(tmp_path):
    img_dir, ann_file = write_coco(tmp_path, {'a.png': rgb_picture(0)}, images=[
        dict(id=1, file_name='a.png', width=W, height=H), dict(id=1, file_name='a.png', width=W, height=H)],
        annotations=[dict(id=1, image_id=1, category_id=3, bbox=[4, 4, 20, 12]),
                     dict(id=1, image_id=1, category_id=1, bbox=[4, 4, 'nan', 12])])
    with pytest.raises(ValueError, match=r'4 problems:\n  - 1 bbox.*\n  - duplicate image ids.*\n  - duplicate '
                                         r'annotation ids: id 1 \(2 times\).*\n  - annotations of categories absent'):
        CocoDetection(img_dir, ann_file)


# --- 4. an empty split -----------------------------------------------------------------------------

@pytest.mark.parametrize('train', [False, True])
def test_an_empty_split_is_refused_when_built(tmp_path, train):
    """Today an empty val set builds, and the run dies with a ZeroDivisionError in mmengine's
    sampler after a whole training interval."""
    from detection.data.folder import read_split
    img_dir, ann_file = write_coco(tmp_path, {}, images=[], annotations=[])
    purpose = 'train on' if train else 'evaluate'
    with pytest.raises(ValueError, match=rf'{ann_file} lists no images.*nothing to {purpose}'):
        CocoDetection(img_dir, ann_file, train=train)
    with pytest.raises(ValueError, match='"images" is empty'):
        read_split(ann_file, img_dir)


# --- files that cannot be read ---------------------------------------------------------------------

def test_a_file_that_is_no_picture_is_named_when_the_dataset_is_built(tmp_path):
    img_dir, ann_file = write_coco(tmp_path, {'a.png': rgb_picture(0), 'b.png': rgb_picture(1)})
    with open(os.path.join(img_dir, 'b.png'), 'wb') as f:
        f.write(b'not a png')
    with pytest.raises(ValueError, match=r'1 image file\(s\) .* not pictures PIL can read: b.png \(Unidentified'):
        CocoDetection(img_dir, ann_file)


def test_infer_names_a_missing_or_corrupt_image_and_a_missing_config(tmp_path, capsys):
    """One line each, before any checkpoint is read (the checkpoint here does not exist)."""
    import infer
    corrupt = tmp_path / 'broken.png'
    corrupt.write_bytes(b'not a png')
    truncated = tmp_path / 'cut.png'
    rgb_picture(0).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    checkpoint = str(tmp_path / 'absent.pth')
    for image, expected in ((tmp_path / 'absent.png', 'not found'), (corrupt, 'cannot read image')):
        with pytest.raises(SystemExit) as e:
            infer.main([DEMO, checkpoint, str(image)])
        message = str(e.value.code)
        assert message.startswith('error: ') and str(image) in message and expected in message
        assert '\n' not in message
    with pytest.raises(SystemExit) as e:  # a header that opens, pixels that do not: named when read
        infer.read_input(str(truncated))
    assert f'cannot read image {truncated}' in str(e.value.code) and '\n' not in str(e.value.code)
    missing = str(tmp_path / 'nope.py')
    with pytest.raises(SystemExit, match=f'config not found: {missing}'):
        infer.main([missing, checkpoint, str(corrupt)])


def test_train_py_names_broken_data_in_one_message_without_a_traceback(tmp_path):
    """A data problem is the user's to fix: tools/train.py prints the message alone (exit 1),
    before a model is built, instead of a traceback through mmengine's loops."""
    import subprocess
    root = tmp_path / 'data'
    (root / 'annotations').mkdir(parents=True)
    for split, wrong in (('train', True), ('val', False)):
        pictures = {f'{split}{i}.png': rgb_picture(i) for i in range(3)}
        # the json says one image is wider than its file: found when the dataset is built
        images = [dict(id=i + 1, file_name=n, width=W + 8 if wrong and i == 1 else W, height=H)
                  for i, n in enumerate(pictures)]
        img_dir, ann = write_coco(tmp_path / split, pictures, images=images)
        os.replace(img_dir, root / split)
        os.replace(ann, root / 'annotations' / f'{split}.json')
    done = subprocess.run([sys.executable, 'tools/train.py', 'configs/demo/detr_t2t_shapes.py', '--data', str(root),
                           '--work-dir', str(tmp_path / 'work')], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert 'train1.png' in done.stderr and 'Traceback' not in done.stderr, done.stderr[-3000:]
