"""``import zoo; zoo.create_model(...)`` loads no training framework and no plotting: the registry
is a plain dict, the loading report goes to Python's ``logging`` unless mmengine is in use, and
``zoo.analysis`` is imported on first use. Checked in a fresh interpreter, since this test
session has imported mmengine long before."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import zoo
from helpers import ROOT

HEAVY = ('mmengine', 'matplotlib', 'scipy', 'pycocotools')

_SCRIPT = textwrap.dedent("""
    import json, logging, sys
    import torch

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger('zoo.factory')
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    import zoo
    model = zoo.create_model('vit_tiny_patch16_224', depth=1, num_classes=5).eval()
    with torch.no_grad():
        shape = list(model(torch.randn(1, 3, 224, 224)).shape)
    torch.save(model.state_dict(), sys.argv[1])
    loaded = zoo.create_model('vit_tiny_patch16_224', depth=1, num_classes=5, pretrained=sys.argv[1])
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    heavy = sorted({name.split('.')[0] for name in sys.modules} & set(sys.argv[2].split(',')))
    analysis = zoo.analysis.__name__  # imported here, on first use
    heavy_after_analysis = sorted({name.split('.')[0] for name in sys.modules} & set(sys.argv[2].split(',')))
    print(json.dumps(dict(shape=shape, same=same, heavy=heavy, messages=messages, analysis=analysis,
                          heavy_after_analysis=heavy_after_analysis)))
""")


def test_create_model_imports_no_training_framework_or_plotting(tmp_path):
    done = subprocess.run([sys.executable, '-c', _SCRIPT, str(tmp_path / 'weights.pth'), ','.join(HEAVY)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out['shape'] == [1, 5] and out['same']
    assert out['heavy'] == [], f'import zoo + create_model (with a checkpoint) imported {out["heavy"]}'
    # The loading report reaches Python's logging when no mmengine run is there to take it.
    assert any(m.startswith('vit_tiny_patch16_224: loaded ') and 'weights.pth' in m for m in out['messages']), \
        out['messages']
    assert out['analysis'] == 'zoo.analysis'
    assert out['heavy_after_analysis'] == [], 'zoo.analysis must import matplotlib only when a figure is drawn'


def test_the_loading_report_goes_to_the_mmengine_log_when_mmengine_is_in_use(tmp_path, log_messages):
    assert 'mmengine' in sys.modules  # the log_messages fixture imported it
    model = zoo.create_model('vit_tiny_patch16_224', depth=1, num_classes=3)
    path = tmp_path / 'weights.pth'
    torch.save(model.state_dict(), path)
    zoo.create_model('vit_tiny_patch16_224', depth=1, num_classes=3, pretrained=path)
    assert any(m.startswith('vit_tiny_patch16_224: loaded ') and str(path) in m for m in log_messages), log_messages


def test_the_registry_is_a_plain_dict_that_refuses_a_second_builder_of_one_name():
    assert isinstance(zoo.MODELS, dict) and set(zoo.MODELS) == set(zoo.MODEL_INFO)
    assert zoo.MODELS['vit_tiny_patch16_224'] is zoo.models.vision_transformer.vit_tiny_patch16_224

    def vit_tiny_patch16_224(**overrides):
        raise AssertionError('never built')

    with pytest.raises(KeyError, match='vit_tiny_patch16_224 is already registered'):
        zoo.register_model()(vit_tiny_patch16_224)
    assert zoo.MODELS['vit_tiny_patch16_224'] is zoo.models.vision_transformer.vit_tiny_patch16_224
