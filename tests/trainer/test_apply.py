"""`apply_maxsup(trainer, ...)`: one line turns an existing `transformers.Trainer` into MaxSupTrainer's training (same
losses, gradients, alpha and logged components, on a tiny BERT and a tiny GPT-2), and the trainers and models it
cannot serve are refused naming what to use."""

import pytest
import torch
from _tiny import COMMON, PAD, VOCAB, GradCapture, collate, tiny_bert, tiny_dataset, tiny_gpt2, tiny_marian
from transformers import (
    DataCollatorForSeq2Seq,
    PreTrainedTokenizerFast,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hf_maxsup import MaxSupLossFunc, MaxSupTrainer, MaxSupTrainingArguments, apply_maxsup

STEPS = dict(max_steps=4, logging_steps=1, per_device_train_batch_size=4, learning_rate=1e-2)
LOGGED = ("loss", "ce", "reg", "alpha")


def lm_dataset():
    """Token sequences whose labels are their inputs (a causal LM shifts them itself)."""
    return tiny_dataset(16, task="token").map(lambda row: {"labels": row["input_ids"]})


class SeenLogs(TrainerCallback):
    """What a callback registered with the Trainer (before apply_maxsup) is given to log."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def train(kind, model, dataset, tmp_path, **loss):
    """Trains `model` 4 steps with MaxSupTrainer ("ours") or a plain Trainer given apply_maxsup ("applied"); returns
    the train logs, the gradients of the last step, the logs a callback saw and the evaluation metrics."""
    capture, seen = GradCapture(), SeenLogs()
    data = dict(train_dataset=dataset, eval_dataset=dataset, data_collator=collate, callbacks=[capture, seen])
    output_dir = str(tmp_path / kind)
    if kind == "ours":
        names = {"loss": "loss", "alpha": "loss_alpha", "alpha_end": "loss_alpha_end"}
        args = MaxSupTrainingArguments(output_dir, **{names[k]: v for k, v in loss.items()}, **STEPS, **COMMON)
        trainer = MaxSupTrainer(model=model, args=args, **data)
    else:
        trainer = Trainer(model=model, args=TrainingArguments(output_dir, **STEPS, **COMMON), **data)
        assert isinstance(apply_maxsup(trainer, **loss), MaxSupLossFunc)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return logs, capture.grads, [entry for entry in seen.logs if "loss" in entry], trainer.evaluate()


@pytest.mark.parametrize("model", [tiny_bert, tiny_gpt2])
@pytest.mark.parametrize("loss", [dict(loss="maxsup", alpha=0.1, alpha_end=0.3), dict(loss="ls", alpha=0.2)])
def test_same_losses_and_gradients_as_maxsup_trainer(model, loss, tmp_path):
    dataset = tiny_dataset(16) if model is tiny_bert else lm_dataset()
    ours, ours_grads, _, ours_eval = train("ours", model(), dataset, tmp_path, **loss)
    applied, grads, seen, evaluation = train("applied", model(), dataset, tmp_path, **loss)
    assert len(applied) == 4
    for key in LOGGED:
        assert [entry[key] for entry in applied] == pytest.approx([entry[key] for entry in ours], rel=1e-6, abs=1e-7)
    assert set(grads) == set(ours_grads)
    for name in grads:
        torch.testing.assert_close(grads[name], ours_grads[name], rtol=1e-6, atol=1e-7)
    if loss["loss"] == "maxsup":  # the schedule: linear from 0.1 to 0.3 over 4 steps, read at each step's start
        assert [entry["alpha"] for entry in applied] == pytest.approx([0.1, 0.15, 0.2, 0.25])
    # the components reach the callbacks the script registered (console, report_to), not only the log history
    assert all({"ce", "reg", "alpha"} <= set(entry) for entry in seen)
    assert {"eval_ce", "eval_reg", "eval_alpha"} <= set(evaluation)
    assert evaluation["eval_loss"] == pytest.approx(ours_eval["eval_loss"], rel=1e-6)


def test_alpha_is_read_before_training_too(tmp_path):
    trainer = Trainer(model=tiny_bert(), args=TrainingArguments(str(tmp_path), **COMMON), data_collator=collate)
    loss_fn = apply_maxsup(trainer)
    assert loss_fn.current_alpha() == 0.1  # the linear schedule's start: evaluating before training works
    assert {"eval_ce", "eval_reg", "eval_alpha"} <= set(trainer.evaluate(tiny_dataset(8)))


def word_tokenizer():
    from tokenizers import Tokenizer, models

    vocab = {f"w{i}": i for i in range(VOCAB)}  # w0 is PAD, the tiny models' pad id
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w2"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=f"w{PAD}")


def test_encoder_decoders_need_their_decoder_inputs(tmp_path):
    args = Seq2SeqTrainingArguments(str(tmp_path), max_steps=2, logging_steps=1, **COMMON)
    trainer = Seq2SeqTrainer(model=tiny_marian(), args=args, data_collator=collate)
    with pytest.raises(ValueError, match="MarianMTModel derives its decoder inputs .* use MaxSupSeq2SeqTrainer"):
        apply_maxsup(trainer)
    model = tiny_marian()  # a collator that builds the decoder inputs from the labels serves it
    collator = DataCollatorForSeq2Seq(word_tokenizer(), model=model, label_pad_token_id=-100)
    data = tiny_dataset(8, task="seq2seq")
    trainer = Seq2SeqTrainer(model=model, args=args, data_collator=collator, train_dataset=data)
    apply_maxsup(trainer, loss="ls")
    trainer.train()
    assert {"ce", "reg", "alpha"} <= set(trainer.state.log_history[0])


class OwnLoss(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return model(**inputs).loss


def test_trainers_it_cannot_serve_are_refused(tmp_path):
    args = TrainingArguments(str(tmp_path), **COMMON)
    ours = MaxSupTrainer(model=tiny_bert(), args=MaxSupTrainingArguments(str(tmp_path), **COMMON))
    with pytest.raises(ValueError, match="already trains with a MaxSupLossFunc"):
        apply_maxsup(ours)
    with pytest.raises(ValueError, match="already has a compute_loss_func"):
        apply_maxsup(Trainer(model=tiny_bert(), args=args, compute_loss_func=lambda *a, **k: 0))
    with pytest.raises(ValueError, match="OwnLoss overrides compute_loss, .* Derive it from MaxSupTrainer"):
        apply_maxsup(OwnLoss(model=tiny_bert(), args=args))
    with pytest.raises(TypeError, match="takes a transformers.Trainer"):
        apply_maxsup(tiny_bert())


def test_sft_trainer_is_pointed_to_ours(tmp_path):
    trl = pytest.importorskip("trl")
    from test_other_trainers import prompt_completion, tiny_llama, tiny_tokenizer

    trainer = trl.SFTTrainer(
        tiny_llama(),
        args=trl.SFTConfig(str(tmp_path), **COMMON, bf16=False),
        train_dataset=prompt_completion(),
        processing_class=tiny_tokenizer(),
    )
    with pytest.raises(ValueError, match="use hf_maxsup's MaxSupSFTTrainer"):
        apply_maxsup(trainer)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(label_smoothing_factor=0.1), "Use loss='ls', loss_alpha=0.1"),
        (dict(label_names=["target"]), r"label_names=\['target'\].*rename_column"),
    ],
)
def test_arguments_it_cannot_serve_are_refused(settings, message, tmp_path):
    trainer = Trainer(model=tiny_bert(), args=TrainingArguments(str(tmp_path), **settings, **COMMON))
    with pytest.raises(ValueError, match=message):
        apply_maxsup(trainer)


def test_models_maxsup_trainer_refuses_are_refused(tmp_path):
    args = TrainingArguments(str(tmp_path), **COMMON)
    regression = tiny_bert(num_labels=1)
    regression.config.problem_type = "regression"
    with pytest.raises(ValueError, match="problem_type='regression'"):
        apply_maxsup(Trainer(model=regression, args=args))
    tuples = tiny_bert()
    tuples.config.return_dict = False
    with pytest.raises(ValueError, match="Set model.config.return_dict = True"):
        apply_maxsup(Trainer(model=tuples, args=args))
    with pytest.raises(ValueError, match=r"loss_alpha must be in \[0, 1\)"):
        apply_maxsup(Trainer(model=tiny_bert(), args=args), alpha=1.5)
