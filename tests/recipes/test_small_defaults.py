"""The faster from-scratch defaults of the comparison runs: the small ResNet and a narrower Marian."""

import pytest
import torch

from hf_maxsup.analysis.features import collect_features
from hf_maxsup.models import build_image_model, build_translation_model


def test_resnet_default_classifies_28x28_and_exposes_its_penultimate_features():
    model, processor = build_image_model([f"c{i}" for i in range(10)], architecture="resnet")
    assert type(model).__name__ == "ResNetForImageClassification"
    assert sum(p.numel() for p in model.parameters()) < 400_000
    batch = {"pixel_values": torch.randn(4, 1, 28, 28), "labels": torch.arange(4)}
    collected = collect_features(model.eval(), [batch], device="cpu")
    assert collected["logits"].shape == (4, 10) and collected["features"].shape == (4, 128)
    assert processor.size == {"shortest_edge": 28}
    with pytest.raises(ValueError, match="choose 'convnext'"):
        build_image_model(["a", "b"], architecture="vit")


def test_translation_default_size_options():
    pairs = [{"en": f"in the beginning {i}", "fr": f"au commencement {i}"} for i in range(50)]
    model, _ = build_translation_model(train_pairs=pairs, vocab_size=200, d_model=32, num_layers=1)
    assert (model.config.d_model, model.config.encoder_layers, model.config.decoder_layers) == (32, 1, 1)
    assert model.config.encoder_ffn_dim == 128
