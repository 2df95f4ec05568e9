"""The image recipe on the two most used families of pretrained image models, saved locally as a user would have
them from the Hub: a ViT, and a timm model through transformers' `TimmWrapper`."""

import json

import pytest
import torch
from _runs import TINY, run_recipe
from _tiny import tiny_vit
from transformers import AutoModelForImageClassification


def _timm_or_skip():
    try:
        import timm
    except Exception as err:  # timm needs torchvision, whose compiled ops must match torch's build
        pytest.skip(f"timm is not usable here: {err}")
    return timm


def train_image_recipe(checkpoint, tmp_path):
    out = tmp_path / "run"
    run_recipe(
        "image_classification",
        "--model_name_or_path",
        str(checkpoint),
        "--output_dir",
        str(out),
        "--do_train",
        "--do_eval",
        "--ignore_mismatched_sizes",  # a head for 3 labels, the data has 10: as run_image_classification.py asks
        *TINY,
    )
    model = AutoModelForImageClassification.from_pretrained(out)
    results = json.load(open(out / "all_results.json"))
    assert results["eval_samples"] == 16 and "eval_accuracy" in results
    return model


def test_a_local_vit_checkpoint(tmp_path):
    from transformers import ViTImageProcessorPil

    # 3 labels: the head is replaced
    tiny_vit(image_size=32, patch_size=8, num_channels=3, num_labels=3).save_pretrained(tmp_path / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    model = train_image_recipe(tmp_path / "vit", tmp_path)
    assert type(model).__name__ == "ViTForImageClassification" and model.config.num_labels == 10


def test_a_local_timm_checkpoint_through_timm_wrapper(tmp_path):
    _timm_or_skip()
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TimmWrapperImageProcessor

    torch.manual_seed(0)
    # timm's smallest ResNet; pretrained_cfg is what a timm/... Hub checkpoint's config.json carries.
    pretrained_cfg = {
        "input_size": [3, 32, 32],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }
    config = TimmWrapperConfig(architecture="test_resnet", num_labels=3, pretrained_cfg=pretrained_cfg)
    TimmWrapperForImageClassification(config).save_pretrained(tmp_path / "timm")
    TimmWrapperImageProcessor(pretrained_cfg=pretrained_cfg).save_pretrained(tmp_path / "timm")
    model = train_image_recipe(tmp_path / "timm", tmp_path)
    assert type(model).__name__ == "TimmWrapperForImageClassification" and model.config.num_labels == 10
