"""Write a generated detection set as a COCO-format folder, to train on with ``--data``.

    python tools/make_shapes.py data/shapes_hard --variant hard          # 8 classes, cluttered
    python tools/train.py configs/demo/detr_t2t_shapes.py --data data/shapes_hard --img-size 128

``basic`` is the demo's set (3 colour-coded classes, 1-3 objects of 0.2-0.45 of the side);
``hard``: 8 classes told apart by shape alone, 1-6 objects of 0.1-0.4 of the side that may
overlap, textured backgrounds.
"""
import argparse

import _bootstrap  # noqa: F401

from detection.data.synthetic import make_shapes_dataset

VARIANTS = {'basic': dict(max_objects=3, object_scale=(0.2, 0.45)),
            'hard': dict(max_objects=6, object_scale=(0.1, 0.4))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('root')
    p.add_argument('--variant', choices=VARIANTS, default='hard')
    p.add_argument('--size', type=int, default=128, help='image side in pixels')
    p.add_argument('--num-train', type=int, default=1024)
    p.add_argument('--num-val', type=int, default=256)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    root = make_shapes_dataset(args.root, num_train=args.num_train, num_val=args.num_val, size=args.size,
                               seed=args.seed, variant=args.variant, **VARIANTS[args.variant])
    print(f'{root}: train on it with --data {root}')


if __name__ == '__main__':
    main()
