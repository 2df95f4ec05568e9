"""fused_linear_loss in the trainers: same loss, gradients and logs as the logits path, for each family tested."""

import os

import pytest
import torch
from _env import run_one_and_two_processes
from _tiny import (
    COMMON,
    ENCODER_DECODER_SIZES,
    EOS,
    PAD,
    SEQ2SEQ_TOKENS,
    GradCapture,
    collate,
    max_relative_error,
    tiny_bert,
    tiny_dataset,
    tiny_marian,
    tiny_model,
)
from datasets import Dataset
from transformers import Gemma2ForCausalLM, GPT2LMHeadModel, LlamaForCausalLM, T5ForConditionalGeneration

import hf_maxsup.trainer.loss_func
from hf_maxsup import (
    MaxSupSeq2SeqTrainer,
    MaxSupSeq2SeqTrainingArguments,
    MaxSupTrainer,
    MaxSupTrainingArguments,
    heads,
)


def tiny_marian_with_bias():
    model = tiny_marian()
    torch.nn.init.normal_(model.final_logits_bias)  # zeros at initialisation: make the bias count
    return model


# Decoder-only sizes in the Llama naming (Gemma2 and the other decoder-only models of hf_maxsup.heads share it).
DECODER_SIZES = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}
T5_SIZES = {"d_model": 32, "d_kv": 16, "d_ff": 37, "num_layers": 1, "num_heads": 2}


def tiny_t5():
    return tiny_model(T5ForConditionalGeneration, **T5_SIZES, dropout_rate=0.0, **SEQ2SEQ_TOKENS)


def tiny_gpt2():
    sizes = {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 32, "bos_token_id": EOS, "eos_token_id": EOS}
    return tiny_model(GPT2LMHeadModel, **sizes, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def tiny_llama():
    return tiny_model(LlamaForCausalLM, **DECODER_SIZES, pad_token_id=PAD, bos_token_id=EOS, eos_token_id=EOS)


def causal_dataset(n=8):
    """Sequences that are their own labels (the trainer shifts them); padding is -100 in the labels."""
    return Dataset.from_list([{"input_ids": row["input_ids"], "labels": row["input_ids"]} for row in tiny_dataset(n)])


# family -> (model builder, seq2seq?, loss): every loss is covered by some family.
FAMILIES = {
    "marian": (tiny_marian_with_bias, True, "maxsup"),
    "t5": (tiny_t5, True, "ls"),
    "gpt2": (tiny_gpt2, False, "ce"),
    "llama": (tiny_llama, False, "ls"),
}


def train_one_step(family, fused, batch_size, accumulation, tmp_path, model=None):
    build, seq2seq, loss = FAMILIES[family]
    args_cls, trainer_cls = (
        (MaxSupSeq2SeqTrainingArguments, MaxSupSeq2SeqTrainer) if seq2seq else (MaxSupTrainingArguments, MaxSupTrainer)
    )
    args = args_cls(
        output_dir=str(tmp_path / f"{fused}-{batch_size}x{accumulation}"),
        loss=loss,
        max_steps=1,
        logging_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        fused_linear_loss=fused,
        **COMMON,
    )
    capture = GradCapture()
    data = tiny_dataset(8, task="seq2seq") if seq2seq else causal_dataset()
    trainer = trainer_cls(
        model=model if model is not None else build(),
        args=args,
        train_dataset=data,
        data_collator=collate,
        callbacks=[capture],
    )
    trainer.train()
    return capture.grads, next(e for e in trainer.state.log_history if "loss" in e)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls of the fused linear loss, so that a test knows the fused path ran."""
    calls = []
    real = hf_maxsup.trainer.loss_func.fused_linear_loss

    def spy(hidden, *args, **kwargs):
        calls.append(tuple(hidden.shape))
        return real(hidden, *args, **kwargs)

    monkeypatch.setattr(hf_maxsup.trainer.loss_func, "fused_linear_loss", spy)
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_step_matches_logits_step(family, tmp_path, fused_calls):
    grads, log = train_one_step(family, False, 8, 1, tmp_path)
    assert not fused_calls
    for batch_size, accumulation in ((8, 1), (2, 4)):
        fused_grads, fused_log = train_one_step(family, True, batch_size, accumulation, tmp_path)
        assert set(fused_grads) == set(grads)
        assert max_relative_error(fused_grads, grads) < 1e-5, (batch_size, accumulation)
        # the logged components (ce, reg, alpha, the LS decomposition) as on the logits path; under accumulation
        # they are means of micro-batch means, so only the loss and alpha are those of the whole batch
        assert set(fused_log) == set(log)
        keys = set(log) - {"grad_norm", "learning_rate", "epoch", "step"} if accumulation == 1 else {"loss", "alpha"}
        for key in keys & set(log):
            assert fused_log[key] == pytest.approx(log[key], rel=1e-5, abs=1e-6), key
    assert len(fused_calls) == 1 + 4
    assert "ce" in log and ("reg" in log) == (FAMILIES[family][2] != "ce")


def test_resume_reproduces_parameters(tmp_path):
    def run(resume=None):
        args = MaxSupTrainingArguments(
            output_dir=str(tmp_path),
            loss="maxsup",
            fused_linear_loss=True,
            max_steps=4,
            per_device_train_batch_size=2,
            learning_rate=1e-2,
            **{**COMMON, "save_strategy": "steps"},
            save_steps=2,
        )
        trainer = MaxSupTrainer(model=tiny_gpt2(), args=args, train_dataset=causal_dataset(), data_collator=collate)
        trainer.train(resume_from_checkpoint=resume)
        return {k: v.clone() for k, v in trainer.model.state_dict().items()}

    params = run()
    resumed = run(resume=str(tmp_path / "checkpoint-2"))
    for name in params:
        torch.testing.assert_close(resumed[name], params[name], rtol=1e-6, atol=1e-8)


def train_two_steps(output_dir, batch_size):
    """Two SGD steps of a tiny GPT-2 with the fused loss; the parameters are saved by the main process."""
    args = MaxSupTrainingArguments(
        output_dir=str(output_dir),
        loss="ls",
        fused_linear_loss=True,
        per_device_train_batch_size=batch_size,
        max_steps=2,
        learning_rate=0.5,
        optim="sgd",
        dataloader_drop_last=True,
        **COMMON,
    )
    trainer = MaxSupTrainer(model=tiny_gpt2(), args=args, train_dataset=causal_dataset(16), data_collator=collate)
    trainer.train()
    if trainer.is_world_process_zero():
        torch.save(trainer.model.state_dict(), os.path.join(output_dir, "params.pt"))


def test_two_processes_match_one(tmp_path):
    """DDP (gloo, CPU): the fused path runs the wrapped forward, so gradients are all-reduced as usual."""
    script = tmp_path / "run.py"
    script.write_text(
        f"import argparse, sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from test_fused_linear_loss import train_two_steps\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--per_device_train_batch_size', type=int)\nparser.add_argument('--output_dir')\n"
        "args = parser.parse_args()\ntrain_two_steps(args.output_dir, args.per_device_train_batch_size)\n"
    )
    outputs = run_one_and_two_processes(str(script), tmp_path, env={"OMP_NUM_THREADS": "1"})
    one, two = (torch.load(outputs[name] / "params.pt") for name in ("one", "two"))
    assert any(not torch.equal(one[name], value) for name, value in tiny_gpt2().state_dict().items())
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)


def test_lora_model(tmp_path, fused_calls):
    peft = pytest.importorskip("peft")

    def lora(target_modules):
        return peft.get_peft_model(
            tiny_llama(),
            peft.LoraConfig(
                task_type="CAUSAL_LM", r=4, lora_dropout=0.0, init_lora_weights=False, target_modules=target_modules
            ),
        )

    grads, log = train_one_step("llama", False, 8, 1, tmp_path, model=lora(["q_proj", "v_proj"]))
    fused_grads, fused_log = train_one_step("llama", True, 8, 1, tmp_path, model=lora(["q_proj", "v_proj"]))
    assert fused_calls and grads and all("lora" in name for name in grads)
    assert set(fused_grads) == set(grads) and max_relative_error(fused_grads, grads) < 1e-5
    assert fused_log["loss"] == pytest.approx(log["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="not a plain nn.Linear .* Leave the head out of the adapter"):
        train_one_step("llama", True, 8, 1, tmp_path, model=lora(["q_proj", "lm_head"]))


def test_evaluation_loss_is_fused_and_generation_is_unchanged(tmp_path, fused_calls):
    def evaluate(fused, predict_with_generate):
        args = MaxSupSeq2SeqTrainingArguments(
            output_dir=str(tmp_path / f"{fused}-{predict_with_generate}"),
            loss="maxsup",
            fused_linear_loss=fused,
            per_device_eval_batch_size=4,
            predict_with_generate=predict_with_generate,
            generation_max_length=6,
            **COMMON,
        )
        # With compute_metrics, evaluation keeps predictions: generated tokens, or the logits without generation.
        compute_metrics = (lambda p: {"mean_token": float(p.predictions.mean())}) if predict_with_generate else None
        trainer = MaxSupSeq2SeqTrainer(
            model=tiny_marian(),
            args=args,
            eval_dataset=tiny_dataset(8, task="seq2seq"),
            data_collator=collate,
            compute_metrics=compute_metrics,
        )
        timings = ("runtime", "per_second", "preparation_time")
        return {k: v for k, v in trainer.evaluate().items() if not any(t in k for t in timings)}

    # the loss alone: fused (two batches of 4), same loss and components
    assert evaluate(True, False) == pytest.approx(evaluate(False, False), rel=1e-5)
    assert len(fused_calls) == 2
    # generation and its eval_loss (the model's own NLL) do not go through compute_loss
    assert evaluate(True, True) == evaluate(False, True)
    assert len(fused_calls) == 2


def test_unsupported_models_get_clear_errors(tmp_path):
    args = MaxSupTrainingArguments(output_dir=str(tmp_path), fused_linear_loss=True, **COMMON)
    with pytest.raises(ValueError) as error:
        MaxSupTrainer(model=tiny_bert(), args=args)
    message = str(error.value)
    assert "does not know how BertForSequenceClassification computes its logits" in message
    assert "Marian (MarianMTModel)" in message and "Llama (LlamaForCausalLM)" in message
    assert "Set fused_linear_loss=False" in message
    gemma2 = tiny_model(Gemma2ForCausalLM, **DECODER_SIZES, head_dim=16, final_logit_softcapping=30.0)
    with pytest.raises(ValueError, match=r"soft-caps its logits \(final_logit_softcapping=30.0\)"):
        MaxSupTrainer(model=gemma2, args=args)


def tiny_head_model(class_name):
    """A tiny model of every class in heads.HEADS, Marian-like for the encoder-decoders."""
    import transformers

    if class_name in ("MarianMTModel", "T5ForConditionalGeneration", "GPT2LMHeadModel", "LlamaForCausalLM"):
        return {
            "MarianMTModel": tiny_marian_with_bias,
            "T5ForConditionalGeneration": tiny_t5,
            "GPT2LMHeadModel": tiny_gpt2,
            "LlamaForCausalLM": tiny_llama,
        }[class_name]()
    model_class = getattr(transformers, class_name)
    if class_name == "MT5ForConditionalGeneration":
        sizes = T5_SIZES
    elif model_class.config_class().is_encoder_decoder:
        sizes = ENCODER_DECODER_SIZES
    else:
        sizes = {**DECODER_SIZES, "head_dim": 16, "bos_token_id": EOS}
    model = tiny_model(model_class, **sizes, **SEQ2SEQ_TOKENS)
    if hasattr(model, "final_logits_bias"):
        torch.nn.init.normal_(model.final_logits_bias)  # zeros at initialisation: make the bias count
    return model


@pytest.mark.parametrize("class_name", heads.HEADS)
def test_head_inputs_give_the_model_logits(class_name):
    """What the head reads, times its weight, plus the family's bias, is the model's own logits."""
    model = tiny_head_model(class_name).eval()
    assert type(model).__name__ == class_name
    batch = collate(list(tiny_dataset(3, task="seq2seq")))
    labels = batch.pop("labels")
    if model.config.is_encoder_decoder:
        batch["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
    with torch.no_grad():
        inputs = heads.head_inputs(model, model, **batch)
        torch.testing.assert_close(inputs.logits(), model(**batch).logits, rtol=0, atol=0)
