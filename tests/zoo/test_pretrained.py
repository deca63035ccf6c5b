"""Checkpoint loading: wrappers, strictness, class-count changes, resolution changes, download."""
import pytest
import torch

import zoo

NAME = 'deit_tiny_patch16_224'


def _small(**kw):
    return zoo.create_model(NAME, depth=2, **kw).eval()


@pytest.mark.parametrize('wrap', [
    lambda sd: sd,
    lambda sd: {'model': sd, 'epoch': 3},
    lambda sd: {'state_dict': sd},
    lambda sd: {'state_dict_ema': sd},
    lambda sd: {'model': {f'module.{k}': v for k, v in sd.items()}},
    # an mmengine checkpoint of a classifier with a distillation teacher beside the network
    lambda sd: {'meta': {}, 'state_dict': {**{f'backbone.{k}': v for k, v in sd.items()},
                                           '_distill.teacher.fc.weight': torch.zeros(2)}},
])
@torch.no_grad()
def test_wrappers_and_module_prefix_are_accepted(wrap, tmp_path):
    src = _small()
    path = tmp_path / 'ckpt.pth'
    torch.save(wrap(src.state_dict()), path)
    dst = zoo.load_pretrained(_small(), path)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(dst(x), src(x))


def test_state_dict_ema_is_preferred_when_asked():
    a, b = _small(), _small()
    dst = zoo.load_pretrained(_small(), {'state_dict': a.state_dict(), 'state_dict_ema': b.state_dict()},
                              use_ema=True)
    torch.testing.assert_close(dst.cls_token, b.cls_token)


def test_mismatch_names_missing_unexpected_and_misshaped_keys():
    sd = _small().state_dict()
    del sd['norm.weight']
    sd['extra.weight'] = torch.zeros(1)
    sd['head.weight'] = torch.zeros(10, 192)
    with pytest.raises(zoo.CheckpointMismatchError) as err:
        zoo.load_pretrained(_small(), sd)
    text = str(err.value)
    assert 'missing keys (1): norm.weight' in text
    assert 'unexpected keys (1): extra.weight' in text
    assert 'head.weight (checkpoint (10, 192) vs model (1000, 192))' in text
    assert 'reset_classifier=True' in text


def test_reset_classifier_keeps_new_head_and_loads_the_rest():
    src = _small(num_classes=10)
    dst = _small(num_classes=3)
    head = dst.head.weight.clone()
    with pytest.warns(UserWarning, match='classifier'):
        zoo.load_pretrained(dst, src.state_dict(), reset_classifier=True)
    torch.testing.assert_close(dst.head.weight, head)
    torch.testing.assert_close(dst.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)


def test_create_model_with_other_class_count_warns_and_skips_head(tmp_path):
    src = zoo.create_model(NAME, depth=2)
    torch.save({'model': src.state_dict()}, tmp_path / 'w.pth')
    with pytest.warns(UserWarning, match='another class count'):
        model = zoo.create_model(NAME, depth=2, pretrained=tmp_path / 'w.pth', num_classes=4)
    assert model.head.out_features == 4
    torch.testing.assert_close(model.pos_embed, src.pos_embed)


@torch.no_grad()
def test_headless_model_takes_a_classifier_checkpoint(tmp_path):
    # A detector's backbone (num_classes=0) warm-started from a trained classifier.
    src = zoo.create_model(NAME, depth=2, num_classes=3).eval()
    torch.save({'state_dict': src.state_dict()}, tmp_path / 'cls.pth')
    model = zoo.create_model(NAME, depth=2, pretrained=tmp_path / 'cls.pth', num_classes=0).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), src.forward_head(src.forward_features(x), pre_logits=True))


@torch.no_grad()
def test_higher_resolution_resamples_position_table():
    src = _small()
    dst = zoo.create_model(NAME, depth=2, img_size=(288, 224)).eval()
    zoo.load_pretrained(dst, src.state_dict())
    assert dst.pos_embed.shape == (1, 1 + 18 * 14, 192)
    # A 288x224 input through the resampled table equals the source model's on-the-fly resampling.
    x = torch.randn(1, 3, 288, 224)
    torch.testing.assert_close(dst(x), src(x))


def test_pretrained_true_offline_says_what_to_do(offline_hub, monkeypatch):
    # Port 9 (discard) on loopback refuses at once: the same failure path as no network.
    monkeypatch.setattr(zoo.get_model_info(NAME), 'url', 'http://127.0.0.1:9/deit_tiny.pth')
    with pytest.raises(RuntimeError, match=r'could not download .*offline.*pretrained="/path/to/deit_tiny.pth"'):
        zoo.create_model(NAME, pretrained=True)


@torch.no_grad()
def test_pretrained_true_downloads_once_into_the_hub_cache(offline_hub, tmp_path, monkeypatch):
    src = zoo.create_model(NAME).eval()
    release = tmp_path / 'release' / 'deit_tiny_release.pth'
    release.parent.mkdir()
    torch.save({'model': src.state_dict()}, release)
    monkeypatch.setattr(zoo.get_model_info(NAME), 'url', release.as_uri())
    model = zoo.create_model(NAME, pretrained=True).eval()
    # No hash in the release name: cached under the model's name (hub files share names).
    assert (offline_hub / 'hub' / 'checkpoints' / f'{NAME}-deit_tiny_release.pth').is_file()
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(model(x), src(x))


def test_list_models_filters_by_pattern():
    assert zoo.list_models('deit_*distilled*') == [
        'deit_base_distilled_patch16_224', 'deit_small_distilled_patch16_224',
        'deit_tiny_distilled_patch16_224']
    assert {'vit_large_patch16_384', 'vit_base_patch32_224'} <= set(zoo.list_models())
