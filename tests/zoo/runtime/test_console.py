"""The terminal log keeps progress, main losses, ETA and metrics; the log file keeps everything."""
import logging

import torch
from mmengine.logging import MMLogger

from zoo.runtime.console import quiet_console, short_metrics_line
from zoo.runtime.engine import QuietOptimWrapperConstructor, busy_cores, set_threads

# A training line of the demo (DETR with denoising and the dense head), as mmengine formats it.
TRAIN_LINE = ('Epoch(train)  [1][16/64]  base_lr: 6.2612e-05 lr: 6.2612e-05  eta: 0:04:36  time: 0.1362  '
              'data_time: 0.0084  grad_norm: 246.0869  loss: 33.0785  dn.loss_class: 1.2715  '
              'dn.loss_bbox: 3.5995  dn.d0.loss_giou: 2.0428  loss_class: 1.3515  loss_bbox: 3.5793  '
              'loss_giou: 2.0507  d0.loss_class: 1.3719  dense.loss_giou: 1.4963')
VAL_LINE = ('Epoch(val) [8][8/8]    coco/AP: 0.0032  coco/AP50: 0.0157  coco/AP75: 0.0001  coco/APs: 0.0011  '
            'coco/APm: 0.0203  coco/APl: -1.0000  coco/AR1: 0.0092  coco/AR100: 0.0262  data_time: 0.0082  '
            'time: 0.0630')


def test_training_line_keeps_the_main_terms_in_order():
    assert short_metrics_line(TRAIN_LINE) == (
        'Epoch(train)  [1][16/64]  lr: 6.2612e-05  eta: 0:04:36  time: 0.1362  grad_norm: 246.0869  '
        'loss: 33.0785  loss_class: 1.3515  loss_bbox: 3.5793  loss_giou: 2.0507')


def test_evaluation_line_keeps_the_precisions():
    short = short_metrics_line(VAL_LINE)
    assert short.startswith('Epoch(val) [8][8/8]    coco/AP: 0.0032  coco/AP50: 0.0157')
    assert 'coco/APl: -1.0000' in short
    for dropped in ('AR1', 'AR100', 'time'):
        assert dropped not in short


def test_other_messages_are_unchanged():
    for message in ('Saving checkpoint at 8 epochs', 'Epoch(train) [1][1/2]', 'loss: 3 but not a metrics line'):
        assert short_metrics_line(message) == message


def test_terminal_is_short_and_the_file_has_everything(tmp_path, capsys):
    log_file = tmp_path / 'run.log'
    logger = MMLogger.get_instance('test_console_quiet', log_file=str(log_file))
    quiet_console(logger)
    quiet_console(logger)  # a second Runner gets the same logger: still one filter
    env = '\n' + '-' * 60 + '\nSystem environment:\n    PyTorch compiling details: ' + 'x' * 3000
    logger.info(env)
    logger.info('Config:\ndata_root = "data"')
    logger.warning('net.backbone.pos_embed is skipped since its requires_grad=False')
    logger.warning('"FileClient" will be deprecated in future.')
    logger.info(TRAIN_LINE)
    logger.warning('a warning the user should see')
    out = capsys.readouterr().out
    assert 'System environment' not in out and 'Config:' not in out and 'skipped since' not in out
    assert 'FileClient' not in out
    assert 'a warning the user should see' in out
    assert 'loss_giou: 2.0507' in out and 'dn.loss_class' not in out and 'base_lr' not in out
    for handler in logger.handlers:
        handler.flush()
    text = log_file.read_text()
    for whole in ('System environment', 'x' * 3000, 'Config:', 'skipped since', 'dn.loss_class: 1.2715',
                  'base_lr: 6.2612e-05', 'a warning the user should see'):
        assert whole in text


def test_frozen_parameters_are_one_line(tmp_path, capsys):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    logger = MMLogger.get_instance('test_console_frozen', log_file=str(tmp_path / 'run.log'))
    quiet_console(logger)
    QuietOptimWrapperConstructor(dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1)))(model)
    out = capsys.readouterr().out
    assert '2 frozen tensors (20 parameters' in out
    assert 'skipped since' not in out


def test_threads_requested_and_busy_count():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    busy = busy_cores(samples=2, interval=0.0)
    assert isinstance(busy, int) and busy >= 0
