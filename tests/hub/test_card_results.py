"""What the model card reports of a run's evaluations: the test metrics of `predict` (the recipes' `predict_*`) beside
the validation metrics, and an evaluation history without a repeated row (#22.5)."""

import functools

from _hub import NUM_LABELS, make_trainer
from _tiny import tiny_dataset
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from hf_maxsup.metrics import classification_compute_metrics


@functools.cache
def compute_metrics():
    return classification_compute_metrics()


def test_card_carries_the_test_metrics_of_predict(tmp_path):
    trainer = make_trainer(tmp_path, compute_metrics())
    trainer.train()
    test_set = tiny_dataset(8, NUM_LABELS, seed=3)
    predicted = trainer.predict(test_set, metric_key_prefix="predict").metrics
    trainer.create_model_card()
    card = ModelCard.load(tmp_path / "README.md")
    _, results = model_index_to_eval_results(metadata_load(tmp_path / "README.md")["model-index"])
    test = {result.metric_type: result.metric_value for result in results if result.dataset_split == "test"}
    assert test == {name: predicted[f"predict_{name}"] for name in test}
    assert {"accuracy", "ece", "nll"} <= set(test) and "loss" not in test and "runtime" not in test
    assert "### Test results" in card.text and "On the `test` split" in card.text
    assert f"| Accuracy | {predicted['predict_accuracy']:.4f} |" in card.text.split("### Test results")[1]
    # the validation results stay as they were, under their own split
    assert {result.dataset_split for result in results} == {None, "test"}


def test_card_without_predict_has_no_test_results(tmp_path):
    trainer = make_trainer(tmp_path, compute_metrics())
    trainer.train()
    trainer.predict(
        tiny_dataset(8, NUM_LABELS, seed=1), metric_key_prefix="eval"
    )  # an evaluation, as the recipes run it
    trainer.create_model_card()
    card = ModelCard.load(tmp_path / "README.md")
    assert "### Test results" not in card.text
    assert all(result.dataset_split != "test" for result in card.data.eval_results)


def test_evaluation_history_has_one_row_per_step(tmp_path):
    """The recipes log their final evaluation again at the step of the last one made during training."""
    trainer = make_trainer(tmp_path, compute_metrics())
    trainer.train()
    trainer.log(trainer.predict(trainer.eval_dataset, metric_key_prefix="eval").metrics)  # as runner.flow does
    assert [entry["step"] for entry in trainer.state.log_history if "eval_accuracy" in entry] == [1, 2, 2]
    trainer.create_model_card()
    text = ModelCard.load(tmp_path / "README.md").text
    history = text.split("### Evaluation history")[1].split("##")[0]
    rows = [line for line in history.splitlines() if line.startswith("| ") and "epoch" not in line]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "2"]
