"""bfloat16 (or float16) autocast against float32 on real images: the largest logit difference and top-1
agreement, per model (inference, the CPU by default).

    python tools/dev/bf16_check.py                                    # every family, random init
    python tools/dev/bf16_check.py --models vit_small_patch16_224,cvt_13 --images 64
    python tools/dev/bf16_check.py --config CONFIG --checkpoint CKPT  # a trained classifier
    python tools/dev/bf16_check.py --device cuda --dtype float16      # on a GPU

Images: the first ``--images`` of Fashion-MNIST's test split (the Debian package
dataset-fashion-mnist), grayscale repeated to 3 channels, resized to the model's input size and
normalised as the Fashion-MNIST configs do. Models: random weights (``torch.manual_seed(--seed)``)
with ``--num-classes`` outputs, or the classifier a config and checkpoint describe, at the
config's input size.

Reported: max |logit_bf16 - logit_fp32|, the same relative to max |logit_fp32| (the logits'
scale), the mean absolute difference, and the share of images whose top-1 class agrees.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/, for _bootstrap
import _bootstrap  # noqa: E402,F401
import torch

import zoo
from classification.data import FASHION_MNIST_ROOT, FashionMNIST
from classification.transforms import deit_test_transforms

FAMILIES = ['vit_small_patch16_224', 'deit_small_patch16_224', 't2t_vit_14', 'cait_xxs24_224',
            'deepvit_s', 'cpvt_ti', 'cvt_13', 'ceit_t']
MEAN, STD = (0.286,) * 3, (0.353,) * 3  # the Fashion-MNIST configs' statistics


def fashion_mnist_batch(n: int, img_size: int, root: str = FASHION_MNIST_ROOT):
    """(images (n, 3, img_size, img_size) float32, labels (n,)) from the test split."""
    transform = deit_test_transforms(img_size, crop_pct=1.0, mean=MEAN, std=STD)
    ds = FashionMNIST(root, split='test', transform=transform, subset=n, fallback=None)
    images, labels = zip(*(ds[i][:2] for i in range(len(ds))))  # items: (image, label, index)
    return torch.stack(images), torch.as_tensor(labels)


@torch.inference_mode()
def compare(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 16,
            dtype: torch.dtype = torch.bfloat16) -> dict:
    """float32 logits against autocast logits over ``images``."""
    model.eval()
    ref, low = [], []
    for chunk in images.split(batch_size):
        ref.append(model(chunk).float())
        with torch.autocast(chunk.device.type, dtype=dtype):
            out = model(chunk)
        low.append(out.float())
    ref, low = torch.cat(ref), torch.cat(low)
    diff = (low - ref).abs()
    return dict(max_abs_diff=diff.max().item(), logit_scale=ref.abs().max().item(),
                rel_max_diff=(diff.max() / ref.abs().max()).item(), mean_abs_diff=diff.mean().item(),
                top1_agreement=(low.argmax(-1) == ref.argmax(-1)).float().mean().item(),
                out_dtype=str(out.dtype).replace('torch.', ''), fp32_top1=ref.argmax(-1))


def load_classifier(config: str, checkpoint: str):
    """The network of a classification config with the checkpoint's weights, and its input size."""
    from mmengine.config import Config
    from mmengine.registry import MODELS

    import classification.engine  # noqa: F401
    from zoo.pretrained import read_checkpoint
    cfg = Config.fromfile(config)
    model = MODELS.build(cfg.model)
    state = read_checkpoint(checkpoint)
    model.load_state_dict(state.get('state_dict', state))
    size = cfg.model.backbone.get('img_size') or zoo.get_model_info(cfg.model.backbone.name).input_size[-1]
    return model.backbone.eval(), size


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', default=','.join(FAMILIES))
    p.add_argument('--config', help='a classification config (with --checkpoint): check the trained model')
    p.add_argument('--checkpoint')
    p.add_argument('--images', type=int, default=32)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--num-classes', type=int, default=10)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cpu')
    p.add_argument('--dtype', choices=['bfloat16', 'float16'], default='bfloat16',
                   help='the autocast dtype (float16: GPUs)')
    p.add_argument('--root', default=FASHION_MNIST_ROOT, help="Fashion-MNIST's folder (its t10k files)")
    p.add_argument('--json', help='also write the results here')
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    results = []
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'
    print(f'# {args.dtype} autocast vs float32, {args.images} Fashion-MNIST test images, {where}')
    print(f'{"model":28s} {"max|d|":>8s} {"scale":>8s} {"rel":>7s} {"mean|d|":>8s} {"top-1 agree":>11s} '
          f'{"acc fp32":>8s}')
    if args.config:
        model, size = load_classifier(args.config, args.checkpoint)
        todo = [(args.config.rsplit('/', 1)[-1] + ' (trained)', lambda: model, size)]
    else:
        todo = []
        for name in args.models.split(','):
            def build(name=name):
                torch.manual_seed(args.seed)
                return zoo.create_model(name, num_classes=args.num_classes)
            todo.append((name, build, zoo.get_model_info(name).input_size[-1]))
    cache = {}
    for name, build, size in todo:
        if size not in cache:
            cache[size] = fashion_mnist_batch(args.images, size, args.root)
        images, labels = cache[size]
        r = compare(build().to(device), images.to(device), args.batch_size, dtype)
        labels = labels.to(device)
        acc = (r.pop('fp32_top1') == labels).float().mean().item()
        r.update(model=name, fp32_accuracy=acc)
        results.append(r)
        print(f'{name:28s} {r["max_abs_diff"]:8.4f} {r["logit_scale"]:8.3f} {r["rel_max_diff"]:7.4f} '
              f'{r["mean_abs_diff"]:8.4f} {100 * r["top1_agreement"]:10.1f}% {100 * acc:7.1f}%', flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == '__main__':
    main()
