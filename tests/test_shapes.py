"""The captioned-shapes data: determinism, the held-out split, captions, the Dataset."""
import numpy as np
import torch

from prunekit import worlds
from prunekit.distill.data import Captioned
from prunekit.shapes import data as shapes


def test_same_seed_same_image_and_caption():
    for index in (0, 7, 1234):
        (a, attrs_a), (b, attrs_b) = shapes.sample("train", index, seed=3), shapes.sample("train", index, seed=3)
        assert attrs_a == attrs_b and np.array_equal(np.asarray(a), np.asarray(b))
    assert shapes.prompts("heldout", 10, seed=5) == shapes.prompts("heldout", 10, seed=5)


def test_seeds_and_indices_vary_the_data():
    images = {np.asarray(shapes.sample("train", i, seed=0)[0]).tobytes() for i in range(50)}
    assert len(images) == 50
    assert shapes.prompts("heldout", 20, seed=0) != shapes.prompts("heldout", 20, seed=1)


def test_heldout_combinations_never_appear_in_training():
    train, heldout = shapes.split_combinations("train"), shapes.split_combinations("heldout")
    assert not set(train) & set(heldout)
    assert len(train) + len(heldout) == len(shapes.all_combinations()) == 2 * 8 * 4 * 5 * 4
    seen = {shapes.sample("train", i, seed)[1] for seed in range(3) for i in range(2000)}
    assert seen <= set(train)
    for attribute in ("size", "color", "shape", "position", "background"):  # every value is still trained on
        assert {getattr(a, attribute) for a in train} == {getattr(a, attribute) for a in shapes.all_combinations()}


def test_captions_parse_back_and_backgrounds_differ_from_shapes():
    for attrs in shapes.all_combinations():
        assert shapes.parse_caption(attrs.caption()) == attrs
        assert shapes.BACKGROUNDS[attrs.background] != shapes.COLORS[attrs.color]
    assert shapes.parse_caption("a photo of a cat") is None
    assert shapes.parse_caption("a small red circle in the middle on a gray background") is None


def test_images_show_the_shape_on_a_uniform_background():
    image, attrs = shapes.sample("heldout", 0)
    pixels = np.asarray(image)
    assert pixels.shape == (64, 64, 3)
    assert tuple(pixels[0, 0]) == shapes.BACKGROUNDS[attrs.background]
    assert (np.abs(pixels.astype(int) - shapes.COLORS[attrs.color]).sum(axis=2) < 10).sum() > 50


def test_the_worlds_training_data_items():
    source = worlds.data_source("shapes", 4, seed=0)
    dataset = Captioned(source, 64, flip=source.flip, seed=0)
    item = dataset[2]
    assert item["pixel_values"].shape == (3, 64, 64) and item["pixel_values"].dtype == torch.float32
    assert -1.0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1.0
    assert shapes.parse_caption(item["text"]) is not None
    assert len(dataset) == 4 and not source.flip
