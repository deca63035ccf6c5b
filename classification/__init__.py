"""Image classification with the zoo's models: the DeiT recipe, distillation, mmengine glue."""
from .data import (ArrayDataset, FashionMNIST, ImageFolderDataset, generate_fallback, read_idx)
from .distillation import DistillationLoss, build_network, build_teacher
from .samplers import RepeatAugSampler
from .transforms import (MixupCutmix, classification_collate, deit_test_transforms,
                         deit_train_transforms)

__all__ = ['ArrayDataset', 'FashionMNIST', 'ImageFolderDataset', 'generate_fallback', 'read_idx',
           'DistillationLoss', 'build_network', 'build_teacher', 'RepeatAugSampler', 'MixupCutmix',
           'classification_collate', 'deit_test_transforms', 'deit_train_transforms']
