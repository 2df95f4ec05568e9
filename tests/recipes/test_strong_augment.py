"""--strong_augment: random-resized crops and random erasing on top of the flips and shifts, seeded, the shape kept;
only with --augment, and off by default."""

import random

import numpy as np
from PIL import Image
from transformers.models.convnext import ConvNextImageProcessorPil

from hf_maxsup.arguments import ImageDataArguments
from hf_maxsup.data import image_transform


def views(transform, image, seed, count=16):
    random.seed(seed)
    return [transform({"image": [image]})["pixel_values"][0] for _ in range(count)]


def test_strong_views_are_seeded_crops_and_erasures_of_the_same_shape():
    gray = ConvNextImageProcessorPil(size={"shortest_edge": 28}, crop_pct=1.0, image_mean=[0.5], image_std=[0.5])
    rgb = ConvNextImageProcessorPil(size={"shortest_edge": 28}, crop_pct=1.0, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8))
    strong = image_transform(gray, augment=True, strong_augment=True)
    first, again = views(strong, image, 0), views(strong, image, 0)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # `random`, seeded by set_seed
    mild = views(image_transform(gray, augment=True), image, 0)
    assert all(x.shape == (1, 28, 28) for x in first) and not all(np.array_equal(a, b) for a, b in zip(first, mild))
    # Random erasing: half the views hold a constant rectangle of at least 0.2 × 0.2 of the image (5 × 5 pixels).
    erased = sum(
        any(len(np.unique(np.asarray(x[0, i : i + 5, j : j + 5]))) == 1 for i in range(24) for j in range(24))
        for x in first
    )
    assert 2 <= erased <= 14
    assert all(
        x.shape == (3, 28, 28) for x in views(image_transform(rgb, augment=True, strong_augment=True), image, 1, 4)
    )
    # Without --augment, no augmentation at all, strong or not.
    plain = image_transform(gray)({"image": [image]})["pixel_values"][0]
    assert np.array_equal(views(image_transform(gray, augment=False, strong_augment=True), image, 0, 1)[0], plain)


def test_strong_augment_is_a_flag_off_by_default():
    assert ImageDataArguments().strong_augment is False and ImageDataArguments().augment is True
