"""Input pipelines: image sources, preprocessing and batching for lightnets.

For now it holds the preprocessing the models expect (ImageNet mean/std normalisation) and the
real photos that ship inside installed packages, used by the model summary and the tests.
"""

from input_pipeline.photos import IMAGENET_MEAN, IMAGENET_STD, load_images, normalize, sample_photos

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "load_images", "normalize", "sample_photos"]
