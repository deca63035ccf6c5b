"""Nothing silently wrong: a diverged run stops (or skips its broken steps) and never saves or
scores broken weights; evaluation refuses NaN detections; every tool loads checkpoints strictly
and names an unreadable one; config typos are caught with the nearest names; the console keeps a
padded iteration counter."""
import os
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS

import detection.engine  # noqa: F401  (registers the detector and the metric)
from detection.engine import CocoMetric
from helpers import ROOT, load_tool, plain_pretty_text, tiny_detr_config
from zoo.runtime.console import short_metrics_line

# One step per epoch (4 images, batch 4). At this rate the tiny DETR's second step has gradient
# norm NaN while its loss is finite (mmengine applied it: every weight NaN, saved, then scored).
DIVERGING = ['optim_wrapper.optimizer.lr=1000']


@pytest.fixture
def tools(monkeypatch):
    """tools/{train,test,infer,export}.py as modules run in this process (a subprocess costs
    ~10 s of imports on 2 cores), with the config's yapf formatting made cheap."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, 'tools'))
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(Config, 'pretty_text', property(plain_pretty_text))
    mods = {name: load_tool(name, f'fail_loudly_tool_{name}') for name in ('train', 'test', 'infer', 'export')}
    return {name: mod.main for name, mod in mods.items()} | {'train_module': mods['train']}


def _tiny_config(tmp_path, extra: str = '') -> str:
    """The tiny DETR with 4 training images in one batch: one step per epoch."""
    return tiny_detr_config(tmp_path, num_train=4, max_epochs=3, extra=extra)


def _train_args(cfg: str, work, *options: str) -> list[str]:
    name = f'fail_loudly_{os.getpid()}_{os.path.basename(str(work))}_{len(options)}'
    return [cfg, '--work-dir', str(work), '--threads', '1',
            '--cfg-options', f'experiment_name={name}', *options]


def _test_args(cfg: str, checkpoint: str, tmp_path) -> list[str]:
    return [cfg, checkpoint, '--work-dir', str(tmp_path / 't'), '--threads', '1',
            '--cfg-options', f'experiment_name=fail_loudly_test_{os.getpid()}_{tmp_path.name}']


def _stop_message(tool, args) -> str:
    """The message ``tool`` stops with: a ``SystemExit``'s (``zoo.runtime.stop.stop_cleanly`` prints it
    alone) or an exception's."""
    with pytest.raises((SystemExit, Exception)) as info:
        tool(args)
    return str(info.value)


def _save_model(cfg_path: str, path, nan: bool = False, **model_changes) -> str:
    """A checkpoint of the config's model (random weights, mmengine's layout), optionally with
    every weight NaN (what a diverged run saved) or built with other settings."""
    cfg = Config.fromfile(cfg_path)
    cfg.model.detector.backbone.pretrained = False
    cfg.model.update(model_changes)
    model = MODELS.build(cfg.model)
    state = model.state_dict()
    if nan:
        state = {k: torch.full_like(v, float('nan')) if v.is_floating_point() else v for k, v in state.items()}
    torch.save({'meta': {}, 'state_dict': state}, path)
    return str(path)


# --- 1. training never applies, saves or scores a broken model ---------------------------------

def test_nonfinite_gradient_stops_training_and_names_the_last_good_checkpoint(tmp_path, tools):
    """Default optim_wrapper.nonfinite='stop': the step whose gradient norm is NaN (loss finite)
    is not applied; training stops with the checkpoint to resume from."""
    work = tmp_path / 'work'
    message = _stop_message(tools['train'], _train_args(_tiny_config(tmp_path), work, *DIVERGING))
    assert re.search(r'(?s)non-finite gradient.*last good checkpoint is \S*epoch_1\.pth', message), message
    assert (work / 'epoch_1.pth').exists() and not (work / 'epoch_2.pth').exists()
    with open(work / 'last_checkpoint') as f:
        assert f.read().strip().endswith('epoch_1.pth')


def test_nonfinite_gradient_steps_are_skipped_on_request(tmp_path, tools):
    """optim_wrapper.nonfinite='skip': broken steps are skipped with a warning that counts them;
    the run ends, and every saved checkpoint is finite."""
    work = tmp_path / 'work'
    runner = tools['train'](_train_args(_tiny_config(tmp_path), work, *DIVERGING, 'optim_wrapper.nonfinite=skip'))
    with open(runner.logger.log_file) as f:
        log = f.read()
    assert 'optimizer step skipped (1 skipped so far' in log
    for epoch in (1, 2, 3):
        state = torch.load(work / f'epoch_{epoch}.pth', weights_only=False)['state_dict']
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), epoch


def test_checkpoint_with_nonfinite_weights_is_refused(tmp_path, tools):
    """A checkpoint whose weights are not all finite is neither written nor pointed to."""
    work = tmp_path / 'work'
    runner = tools['train'](_train_args(_tiny_config(tmp_path), work, 'train_cfg.max_epochs=1'))
    with torch.no_grad():
        next(runner.model.parameters()).fill_(float('nan'))
    with pytest.raises(FloatingPointError, match='refusing to save .*non-finite'):
        runner.save_checkpoint(str(work), 'broken.pth')
    assert not (work / 'broken.pth').exists()
    with open(work / 'last_checkpoint') as f:
        assert f.read().strip().endswith('epoch_1.pth')


# --- 2. non-finite detections are not scored -----------------------------------------------------

def test_coco_metric_refuses_nonfinite_detections():
    metric = CocoMetric()
    metric.dataset_meta = dict(cat_ids=[1, 2, 3], classes=['a', 'b', 'c'])
    pred = dict(image_id=7, labels=torch.tensor([0, 1]), scores=torch.tensor([0.9, 0.8]),
                boxes=torch.tensor([[1.0, 2.0, 10.0, 12.0], [float('nan')] * 4]))
    with pytest.raises(FloatingPointError, match='image id 7: .*non-finite.*diverged'):
        metric.process({}, [pred])


def test_test_tool_refuses_a_diverged_checkpoint(tmp_path, tools):
    """A checkpoint with NaN weights (as a diverged run saved them) gives NaN boxes: tools/test.py
    stops instead of reporting an AP."""
    cfg = _tiny_config(tmp_path)
    ckpt = _save_model(cfg, tmp_path / 'nan.pth', nan=True)
    message = _stop_message(tools['test'], _test_args(cfg, ckpt, tmp_path))
    assert 'non-finite' in message and 'diverged' in message, message


# --- 3. strict checkpoints everywhere ------------------------------------------------------------

def test_test_tool_refuses_a_checkpoint_of_another_class_count(tmp_path, tools):
    cfg = _tiny_config(tmp_path)
    ckpt = _save_model(cfg, tmp_path / 'five.pth', num_classes=5)
    message = _stop_message(tools['test'], _test_args(cfg, ckpt, tmp_path))
    assert re.search(r"(?s)five\.pth is not a checkpoint of this config's detector: .*size mismatch", message), message


@pytest.mark.parametrize('tool', ['test', 'infer', 'export'])
def test_truncated_checkpoint_is_named_by_every_tool(tmp_path, tools, tool):
    cfg = _tiny_config(tmp_path)
    good = _save_model(cfg, tmp_path / 'good.pth')
    with open(good, 'rb') as f:
        head = f.read(1000)
    (tmp_path / 'cut.pth').write_bytes(head)
    ckpt = str(tmp_path / 'cut.pth')
    args = {'test': _test_args(cfg, ckpt, tmp_path),
            'infer': [cfg, ckpt, '--val', '1', '--out', str(tmp_path / 'p.png')],
            'export': [cfg, ckpt, '--out', str(tmp_path / 'm.onnx')]}[tool]
    message = _stop_message(tools[tool], args)
    assert re.search(r'could not read checkpoint \S*cut\.pth: \w', message), message


# --- 4. config typos -----------------------------------------------------------------------------

@pytest.mark.parametrize('option, nearest', [('train_cfgs.max_epochs=1', 'train_cfg'),
                                             ('model.detector.num_querie=5', 'model.detector.num_queries'),
                                             # a zoo backbone's overrides: its family's constructor
                                             ('model.detector.backbone.deph=1', 'model.detector.backbone.depth')])
@pytest.mark.parametrize('tool', ['train', 'test'])
def test_misspelt_option_is_an_error_with_the_nearest_keys(tmp_path, tools, tool, option, nearest):
    cfg = _tiny_config(tmp_path)
    (tmp_path / 'unread.pth').write_bytes(b'')  # the options are checked before any checkpoint is read
    args = [cfg] + ([str(tmp_path / 'unread.pth')] if tool == 'test' else []) + [
        '--work-dir', str(tmp_path / 'w'), '--cfg-options', option]
    key = option.split('=')[0]
    message = _stop_message(tools[tool], args)
    assert re.search(rf'(?s){re.escape(key)}.*does not exist.*nearest: {re.escape(nearest)}\b.*'
                     rf'\+{re.escape(key)}=', message), message


def test_new_keys_need_a_plus_and_known_arguments_pass(tmp_path, tools):
    """``+key`` sets a new key (without the +); keys the config lacks but whose reader takes them
    (a Runner argument, a detector or backbone argument, a registered dataset's) pass as they are."""
    train = tools['train_module']
    cfg = train.build_config(train.parse_args(_train_args(
        _tiny_config(tmp_path), tmp_path / 'w', '+custom.key=1', 'model.detector.backbone.drop_path_rate=0.1',
        'model.detector.aux_loss=False', 'train_dataloader.dataset.train=True')))
    assert cfg.custom.key == 1 and '+custom' not in cfg
    assert cfg.model.detector.backbone.drop_path_rate == 0.1 and cfg.train_dataloader.dataset.train is True


def test_misspelt_model_argument_in_a_config_file_is_caught_on_loading(tmp_path, tools):
    """A typo in the file itself: the same suggestion before the Runner starts (today: a bare
    TypeError from DETR.__init__ once the Runner builds the model)."""
    train = tools['train_module']
    cfg = _tiny_config(tmp_path, extra='model = dict(detector=dict(num_querie=5), top_kk=10)\n')
    with pytest.raises(ValueError) as info:
        train.build_config(train.parse_args([cfg, '--work-dir', str(tmp_path / 'w')]))
    for line in ('model.detector.num_querie does not exist (DETR takes no such argument); nearest: '
                 'model.detector.num_queries', 'model.top_kk does not exist (Detector takes no such '
                 'argument); nearest: model.top_k'):
        assert line in str(info.value)


# --- 5. the console ------------------------------------------------------------------------------

@pytest.mark.parametrize('head', ['Epoch(train) [2][ 1/16]  ', 'Epoch(train)  [12][  1/160]  ',
                                  'Iter(train) [   50/10000]  ', 'Epoch(val) [2][ 1/16]    '])
def test_short_line_keeps_a_padded_iteration_counter(head):
    line = head + 'base_lr: 1.0000e-04 lr: 1.0000e-04  eta: 0:00:10  time: 0.1000  data_time: 0.0100  loss: 3.0000'
    short = short_metrics_line(line)
    assert short.startswith(head) and 'data_time' not in short
