"""detection.Predictor: a trained detector as one call on paths, PIL images and arrays, boxes in
the image's own pixels, the same alone and batched; tools/infer.py on folders and patterns
through it, its COCO results json; the exported ONNX graph gives the same boxes."""
import importlib.util
import json
import os
import shutil
import sys
import textwrap
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS
from PIL import Image
from torchvision.ops import box_convert

from detection.data.synthetic import make_shapes_dataset
from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, 'tools'))
import export as export_tool  # noqa: E402
import infer  # noqa: E402
from helpers import ROOT

CLASSES, CAT_IDS = ['cat', 'dog', 'bird'], [5, 9, 11]  # the checkpoint's, not the config's data's
SYNTHETIC = dict(num_train=2, num_val=4, size=64, max_objects=2, seed=3)
# float32 through two graphs (PyTorch, onnxruntime): pixel boxes agree to ~1e-4 px
ONNX_BOX_ATOL, ONNX_SCORE_ATOL = 1e-3, 1e-5


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny DETR (T2T-ViT-7, 1 block; 6 queries) on generated 64 px shapes, its weights shaken
    off the structured init so that scores and boxes differ between queries, saved as mmengine
    saves a checkpoint (with the training set's classes and category ids in its meta)."""
    tmp = tmp_path_factory.mktemp('predictor')
    data_root = str(tmp / 'shapes') + '/'
    make_shapes_dataset(data_root, **SYNTHETIC)
    config = tmp / 'tiny_detr.py'
    config.write_text(textwrap.dedent(f"""
        _base_ = ['{ROOT}/configs/demo/detr_t2t_shapes.py']
        data_root = '{data_root}'
        synthetic = dict(root=data_root, {', '.join(f'{k}={v!r}' for k, v in SYNTHETIC.items())})
        train_dataloader = dict(dataset=dict(
            img_dir=data_root + 'train', ann_file=data_root + 'annotations/instances_train.json',
            synthetic=synthetic))
        val_dataloader = dict(batch_size=2, dataset=dict(
            img_dir=data_root + 'val', ann_file=data_root + 'annotations/instances_val.json',
            synthetic=synthetic, transforms=dict(type='shapes_test_transforms', size=64)))
        test_dataloader = val_dataloader
        model = dict(detector=dict(backbone=dict(name='t2t_vit_7', depth=1, pretrained=False), num_queries=6,
                                   hidden_dim=32, num_heads=2, enc_layers=1, dec_layers=1, ffn_dim=64))
    """))
    cfg = Config.fromfile(str(config))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    checkpoint = tmp / 'epoch_1.pth'
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': CLASSES, 'cat_ids': CAT_IDS}}}, checkpoint)
    bare = tmp / 'bare.pth'  # weights alone: class names from the config's data
    torch.save({'state_dict': model.state_dict()}, bare)
    # Pictures of three sizes, none the network's (64 px shorter side): 80 x 80, 40 x 90 (wide), 110 x 70 (tall)
    pictures = tmp / 'pictures'
    pictures.mkdir()
    val = sorted((Path(data_root) / 'val').iterdir())
    Image.open(val[0]).resize((80, 80), Image.BILINEAR).save(pictures / 'a.png')
    Image.open(val[1]).resize((90, 40), Image.BILINEAR).save(pictures / 'b.png')
    Image.open(val[2]).resize((70, 110), Image.BILINEAR).convert('P').save(pictures / 'c.png')
    return types.SimpleNamespace(config=str(config), cfg=cfg, model=model, checkpoint=str(checkpoint),
                                 bare=str(bare), data_root=data_root, tmp=tmp,
                                 images=sorted(str(p) for p in pictures.iterdir()))


@pytest.fixture(scope='module')
def predictor(trained):
    from detection import Predictor
    return Predictor(trained.config, trained.checkpoint)


def assert_same(a: dict, b: dict, atol: float = 0.0, score_atol: float | None = None):
    assert a['labels'].tolist() == b['labels'].tolist() and a['names'] == b['names']
    torch.testing.assert_close(a['boxes'], b['boxes'], atol=atol, rtol=0)
    torch.testing.assert_close(a['scores'], b['scores'], atol=atol if score_atol is None else score_atol, rtol=0)


def test_every_kind_of_input_gives_the_same_detections(trained, predictor):
    """A path (str or Path), a PIL image, an (H, W, 3) uint8 array and a (3, H, W) uint8 tensor of
    one picture: the same pixels, so exactly the same detections (a palette PNG included)."""
    for path in trained.images:
        pil = Image.open(path)
        array = np.array(pil.convert('RGB'))
        got = [predictor(x) for x in (path, Path(path), pil, array, torch.from_numpy(array).permute(2, 0, 1))]
        assert got[0]['boxes'].shape == (6, 4) and got[0]['boxes'].dtype == torch.float32
        assert got[0]['scores'].shape == (6,) and got[0]['labels'].dtype == torch.int64
        for other in got[1:]:
            assert_same(got[0], other)
    # a list of mixed kinds: a list back, in order
    pil, array = Image.open(trained.images[1]), np.array(Image.open(trained.images[2]).convert('RGB'))
    listed = predictor([trained.images[0], pil, array])
    assert isinstance(listed, list) and len(listed) == 3
    for result, path in zip(listed, trained.images):
        assert_same(result, predictor(path), atol=1e-4)


def test_a_list_gives_what_one_by_one_calls_give(trained, predictor):
    """Batch invariance through the Predictor: three sizes padded into one batch (and into
    batches of 2) give each image its detections alone, to float32 summation order (1e-4)."""
    alone = [predictor(p) for p in trained.images]
    for batch_size in (8, 2):
        together = predictor(trained.images * 2, batch_size=batch_size)
        assert len(together) == 6
        for a, b in zip(alone * 2, together):
            assert_same(a, b, atol=1e-4)


def test_boxes_are_in_the_original_images_pixels_best_first(trained, predictor):
    """The network sees a resized, normalised, padded picture and answers in normalised cxcywh;
    the Predictor's boxes are those times the original width and height, sorted by score."""
    from detection.data.coco import collate_detection
    from detection.data.transforms import shapes_test_transforms
    from detection.data.images import read_image
    from torchvision.transforms.v2 import functional as TF
    transform = shapes_test_transforms(64)
    for path in trained.images:
        img = TF.pil_to_tensor(read_image(path))
        h, w = img.shape[-2:]
        x = transform(img)
        batch = collate_detection([(x, {})])
        assert tuple(x.shape[-2:]) != (h, w)  # the network's input is not the picture's size
        with torch.no_grad():
            out = trained.model(batch['inputs'], batch['masks'])
        scores, labels = out['pred_logits'][0].softmax(-1)[:, :-1].max(-1)
        boxes = box_convert(out['pred_boxes'][0], 'cxcywh', 'xyxy') * torch.tensor([w, h, w, h])
        order = scores.argsort(descending=True)
        got = predictor(path)
        torch.testing.assert_close(got['boxes'], boxes[order], atol=1e-4, rtol=0)
        torch.testing.assert_close(got['scores'], scores[order], atol=1e-6, rtol=0)
        assert got['labels'].tolist() == labels[order].tolist()
        assert (got['scores'][:-1] >= got['scores'][1:]).all()


def test_names_follow_labels_from_the_checkpoint_or_the_config_and_threshold_cuts(trained, predictor):
    from detection import Predictor
    assert predictor.classes == CLASSES and predictor.cat_ids == CAT_IDS
    everything = predictor(trained.images)
    for result in everything:
        assert result['names'] == [CLASSES[i] for i in result['labels'].tolist()]
    # a checkpoint of weights alone: the names of the config's data (categories sorted by id)
    bare = Predictor(Config.fromfile(trained.config), trained.bare)
    assert bare.classes == ['square', 'disc', 'triangle'] and bare.cat_ids == [1, 3, 5]
    result = bare(trained.images[0])
    assert result['names'] == [bare.classes[i] for i in result['labels'].tolist()]
    # score_threshold keeps the detections scoring at least it, best first
    alone = predictor(trained.images[0])
    cut = float(alone['scores'][2:4].mean())
    kept = Predictor(trained.config, trained.checkpoint, score_threshold=cut)(trained.images[0])
    assert len(kept['scores']) == 3 and (kept['scores'] >= cut).all()
    assert_same(kept, {k: v[:3] for k, v in alone.items()})


def test_bad_input_says_what_is_wrong_and_how_to_fix_it(trained, predictor, tmp_path):
    from detection import Predictor
    with pytest.raises(IsADirectoryError, match='is a folder: pass its image files'):
        predictor(os.path.dirname(trained.images[0]))
    with pytest.raises(TypeError, match=r'float32.*\(a \* 255\)\.round\(\)\.astype\(np.uint8\)'):
        predictor(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(TypeError, match=r'image 1 is .*shape \(32, 32, 4\).*RGBA: a\[\.\.\., :3\]'):
        predictor([trained.images[0], np.zeros((32, 32, 4), np.uint8)])
    with pytest.raises(FileNotFoundError, match='image .*absent.png not found'):
        predictor(str(tmp_path / 'absent.png'))
    with pytest.raises(FileNotFoundError, match='config not found: .*nope.py'):
        Predictor(str(tmp_path / 'nope.py'), trained.checkpoint)
    classifier = sorted((Path(ROOT) / 'configs' / 'classification').glob('*.py'))[0]
    with pytest.raises(ValueError, match='not a Detector'):
        Predictor(str(classifier), trained.checkpoint)
    five = tmp_path / 'five.pth'
    torch.save({'state_dict': trained.model.state_dict(), 'meta': {'dataset_meta': {'classes': list('abcde')}}}, five)
    with pytest.raises(ValueError, match='names 5 classes .* num_classes=3'):
        Predictor(trained.config, str(five))


def _coco_results(out_dir: Path) -> tuple[dict, dict]:
    """detections.json per image file name, and images.json."""
    dets = json.loads((out_dir / 'detections.json').read_text())
    index = json.loads((out_dir / 'images.json').read_text())
    names = {img['id']: img['file_name'] for img in index['images']}
    per_file = {name: [] for name in names.values()}
    for d in dets:
        per_file[names[d['image_id']]].append(d)
    return per_file, index


def _as_coco(result: dict) -> list:
    """The Predictor's result as [category_id, x, y, w, h, score] rows."""
    b = result['boxes']
    return [[CAT_IDS[int(label)], *bx[:2].tolist(), *(bx[2:] - bx[:2]).tolist(), float(s)]
            for bx, label, s in zip(b, result['labels'], result['scores'])]


def test_infer_on_a_folder_and_a_pattern_writes_pictures_and_the_predictors_boxes(trained, predictor, tmp_path,
                                                                                capsys):
    """A folder (today: a raw error) and a quoted pattern: one picture per image, and a COCO
    results json whose boxes are the Predictor's (1e-3 px) under the checkpoint's category ids,
    image ids mapped to file names in images.json."""
    other = tmp_path / 'more'
    other.mkdir()
    shutil.copy(trained.images[0], other / 'a.png')  # the same name as in the folder: kept apart
    (other / 'notes.txt').write_text('not a picture')
    folder = os.path.dirname(trained.images[0])
    out = tmp_path / 'vis'
    infer.main([trained.config, trained.checkpoint, folder, str(other / '*.png'), '--out-dir', str(out),
                '--score-thr', '0', '--batch-size', '2'])
    inputs = trained.images + [str(other / 'a.png')]
    per_file, index = _coco_results(out)
    assert [img['file_name'] for img in index['images']] == inputs
    assert [img['id'] for img in index['images']] == [0, 1, 2, 3]
    assert [(img['width'], img['height']) for img in index['images']] == [(80, 80), (90, 40), (70, 110), (80, 80)]
    assert index['categories'] == [dict(id=i, name=n) for i, n in zip(CAT_IDS, CLASSES)]
    assert sorted(os.listdir(out)) == ['a_0_pred.png', 'a_3_pred.png', 'b_pred.png', 'c_pred.png',
                                       'detections.json', 'images.json']
    for path in inputs:
        got = [[d['category_id'], *d['bbox'], d['score']] for d in per_file[path]]
        expected = _as_coco(predictor(path))
        assert [g[0] for g in got] == [e[0] for e in expected] and len(got) == 6
        np.testing.assert_allclose(np.array(got)[:, 1:], np.array(expected)[:, 1:], atol=1e-3, rtol=0)
    printed = capsys.readouterr().out
    assert 'no box scores at least' not in printed and str(out / 'detections.json') in printed
    # a threshold no box reaches: each image named with its best score, an empty results list
    threshold = round(max(float(predictor(p)['scores'][0]) for p in trained.images) + 1e-3, 4)
    infer.main([trained.config, trained.checkpoint, folder + '/*.png', '--out-dir', str(tmp_path / 'none'),
                '--score-thr', str(threshold)])
    printed = capsys.readouterr().out
    for path in trained.images:
        assert f'{path}: no box scores at least --score-thr {threshold} (its best score is ' in printed
    assert json.loads((tmp_path / 'none' / 'detections.json').read_text()) == []


def test_infer_names_an_empty_folder_and_a_pattern_matching_nothing(trained, tmp_path):
    (tmp_path / 'empty').mkdir()
    for arg, expected in ((str(tmp_path / 'empty'), 'holds no image files'),
                          (str(tmp_path / '*.jpg'), 'no file matches')):
        with pytest.raises(SystemExit) as e:
            infer.main([trained.config, trained.checkpoint, arg])
        assert str(e.value.code).startswith('error: ') and expected in str(e.value.code)
        assert arg in str(e.value.code) and '\n' not in str(e.value.code)


def test_the_predictor_gives_what_tools_test_gives(trained, predictor, tmp_path, monkeypatch):
    """tools/test.py --out on the config's validation images, and the Predictor on the same
    files: the same detections (tools/test.py batches them 2 at a time)."""
    spec = importlib.util.spec_from_file_location('predictor_test_tool', os.path.join(ROOT, 'tools', 'test.py'))
    test_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_tool)
    # the config's yapf formatting in the log costs seconds; plain text is enough here
    monkeypatch.setattr(Config, 'pretty_text', property(lambda cfg: repr(cfg.to_dict())))
    out = tmp_path / 'dets.json'
    test_tool.main([trained.config, trained.checkpoint, '--out', str(out), '--work-dir', str(tmp_path / 'w')])
    dets = json.loads(out.read_text())
    images = json.loads(Path(trained.data_root, 'annotations', 'instances_val.json').read_text())['images']
    assert len(images) == 4
    data_ids = [1, 3, 5]  # tools/test.py maps labels to the evaluated json's category ids
    for img in images:
        got = sorted(([data_ids.index(d['category_id']), *d['bbox'], d['score']] for d in dets
                      if d['image_id'] == img['id']), key=lambda row: -row[-1])
        expected = _as_coco(predictor(os.path.join(trained.data_root, 'val', img['file_name'])))
        assert [g[0] for g in got] == [CAT_IDS.index(e[0]) for e in expected] and len(got) == 6
        np.testing.assert_allclose(np.array(got)[:, 1:], np.array(expected)[:, 1:], atol=1e-3, rtol=0)


def test_the_exported_onnx_graph_gives_the_predictors_boxes(trained, predictor, tmp_path):
    """tools/export.py's graph in onnxruntime, fed the Predictor's pre-processing, and the
    Predictor on the .onnx itself, against the PyTorch Predictor called once on all the pictures
    (five sizes padded into one batch, as tools/infer.py batches them): the same labels, boxes to
    1e-3 px and scores to 1e-5 (float32 through two runtimes; measured about 1e-5 px). The
    pictures' resized sides are multiples of 32 (80 x 80, 96 x 48 wide, 50 x 100 tall, 96 x 144
    and 128 x 128 -> 64 x 64, 64 x 128, 128 x 64, 64 x 96, 64 x 64), so alone none is padded: the
    graph's T2T-ViT backbone was traced without the padding mask (``detection.export``) and agrees
    with PyTorch exactly where the input has no padding, which is why the .onnx Predictor runs one
    image at a time. An image that needs padding even alone gets a warning saying so."""
    from detection import Predictor
    from detection.export import OnnxDetector
    path = str(tmp_path / 'tiny.onnx')
    export_tool.main([trained.config, trained.checkpoint, '--out', path, '--size', '64', '96'])
    val = sorted((Path(trained.data_root) / 'val').iterdir())
    Image.open(val[3]).resize((96, 48), Image.BILINEAR).save(tmp_path / 'wide.png')
    Image.open(val[1]).resize((50, 100), Image.BILINEAR).save(tmp_path / 'tall.png')
    Image.open(val[2]).resize((144, 96), Image.BILINEAR).save(tmp_path / 'h96_w144.png')
    Image.open(val[0]).resize((128, 128), Image.BILINEAR).save(tmp_path / 'h128_w128.png')
    images = [trained.images[0], str(tmp_path / 'wide.png'), str(tmp_path / 'tall.png'),
              str(tmp_path / 'h96_w144.png'), str(tmp_path / 'h128_w128.png')]
    batch = predictor.collate([(predictor.transform(torch.from_numpy(np.array(Image.open(p).convert('RGB')))
                                                    .permute(2, 0, 1)), {}) for p in images])
    assert batch['masks'].any()  # batched, the PyTorch Predictor pads all but the largest
    expected = predictor(images)
    session = OnnxDetector(path)
    for image, result in zip(images, expected):
        picture = torch.from_numpy(np.array(Image.open(image).convert('RGB'))).permute(2, 0, 1)
        batch = predictor.collate([(predictor.transform(picture), dict(orig_size=torch.tensor(picture.shape[-2:])))])
        assert not batch['masks'].any()  # no padding
        raw = session.run(batch['inputs'], batch['masks'], torch.tensor([picture.shape[-2:]]))
        order = raw['scores'][0].argsort(descending=True)
        graph = dict(boxes=raw['boxes'][0][order], scores=raw['scores'][0][order], labels=raw['labels'][0][order],
                     names=[CLASSES[j] for j in raw['labels'][0][order].tolist()])
        assert_same(result, graph, atol=ONNX_BOX_ATOL, score_atol=ONNX_SCORE_ATOL)
    onnx_predictor = Predictor(trained.config, path)
    assert onnx_predictor.classes == CLASSES and onnx_predictor.one_at_a_time
    assert session.pad_exact is False  # a token backbone: exact without padding only
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no image here needs padding: no warning either
        got = onnx_predictor(images)
    for result, other in zip(expected, got):
        assert_same(result, other, atol=ONNX_BOX_ATOL, score_atol=ONNX_SCORE_ATOL)
    # 90 x 40 is resized to 56 x 128 (the longer side capped at 128), padded to 64 x 128 even alone:
    # said once, with the way out
    Image.open(val[3]).resize((90, 40), Image.BILINEAR).save(tmp_path / 'padded.png')
    with pytest.warns(UserWarning, match=r'padded.png is resized to 56 x 128, which is padded to 64 x 128: .*traced '
                                         r'without the padding mask.*Predictor\(config, checkpoint\)'):
        onnx_predictor(str(tmp_path / 'padded.png'))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        onnx_predictor(str(tmp_path / 'padded.png'))
    with pytest.raises(ValueError, match="runs on the CPU in onnxruntime; pass device='cpu'"):
        Predictor(trained.config, path, device='cuda')
