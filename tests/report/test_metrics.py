import os
import subprocess
import sys
import textwrap

import evaluate
import numpy as np
import pytest
import sacrebleu
from transformers import EvalPrediction, PreTrainedTokenizerFast

import hf_maxsup.metrics
from hf_maxsup import analysis
from hf_maxsup.metrics import classification_compute_metrics, path, translation_compute_metrics

HYPOTHESES = ["the cat sat on the mat", "a dog runs in the park today", "hello world", "it is raining"]
REFERENCES = ["the cat sat on a mat", "the dog runs in the park", "hello there world", "it is raining again"]


def random_case(n=120, k=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) * 2.0
    logits[np.arange(n), labels] += rng.normal(1.0, 1.0, size=n)  # better than chance, not perfect
    return logits, labels


def load(name):
    return evaluate.load(path(name), keep_in_memory=True)


def word_tokenizer():
    """A word-level tokenizer built in memory (the Hub is unreachable in tests)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({word for sentence in HYPOTHESES + REFERENCES for word in sentence.split()})
    vocab = {"<pad>": 0, "</s>": 1, **{word: i + 2 for i, word in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="</s>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>")


def padded_ids(tokenizer, sentences, pad_value, width=12):
    ids = np.full((len(sentences), width), pad_value)
    for row, sentence in enumerate(sentences):
        tokens = tokenizer(sentence)["input_ids"] + [tokenizer.eos_token_id]
        ids[row, : len(tokens)] = tokens
    return ids


def test_path():
    for name in ("accuracy", "calibration", "translation"):
        assert os.path.isabs(path(name))
        assert os.path.isfile(os.path.join(path(name), f"{name}.py"))
    with pytest.raises(ValueError, match="accuracy, calibration, translation"):
        path("bleu")
    assert set(hf_maxsup.metrics.__all__) == {"classification_compute_metrics", "path", "translation_compute_metrics"}


def test_accuracy_module():
    accuracy = load("accuracy")
    assert accuracy.compute(predictions=[[2.0, 0.5], [0.1, 0.3], [0.0, 1.0]], references=[0, 0, 1]) == {
        "accuracy": 2 / 3
    }
    logits, labels = random_case(k=10)
    ranks = (-logits).argsort(axis=1)
    expected = {
        "accuracy": np.mean(ranks[:, 0] == labels),
        "top5_accuracy": np.mean([label in row[:5] for row, label in zip(ranks, labels, strict=True)]),
    }
    assert accuracy.compute(predictions=logits, references=labels) == pytest.approx(expected)
    assert "top5_accuracy" not in accuracy.compute(predictions=logits[:, :5], references=labels % 5)
    with pytest.raises(ValueError, match="\\[0, 5\\)"):
        accuracy.compute(predictions=logits[:, :5], references=labels)


def hand_metrics(logits, labels, n_bins=15):
    """The calibration metrics from their definitions (method.md), loop by loop, in float64."""
    n, k = logits.shape
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    prediction = probs.argmax(1)
    confidence, correct = probs.max(1), (prediction == labels).astype(float)

    def binned(values, outcomes, bins):
        return sum(abs(outcomes[b].sum() - values[b].sum()) for b in bins) / len(values)

    def width_bins(values):  # (b/n, (b+1)/n], 0 in the first bin
        ids = np.array([max(int(np.ceil(v * n_bins)) - 1, 0) for v in values])
        return [ids == b for b in range(n_bins)]

    order = np.argsort(confidence, kind="stable")
    mass_bins = [np.isin(np.arange(n), order[b * n // n_bins : (b + 1) * n // n_bins]) for b in range(n_bins)]
    onehot = np.eye(k)[labels]
    errors = 1 - correct[np.argsort(-confidence, kind="stable")]
    aurc = np.mean(np.cumsum(errors) / np.arange(1, n + 1))
    r = 1 - correct.mean()
    return {
        "ece": binned(confidence, correct, width_bins(confidence)),
        "adaptive_ece": binned(confidence, correct, mass_bins),
        "classwise_ece": np.mean([binned(probs[:, c], onehot[:, c], width_bins(probs[:, c])) for c in range(k)]),
        "nll": -np.mean(np.log(probs[np.arange(n), labels])),
        "brier": np.mean(((probs - onehot) ** 2).sum(1)),
        "aurc": aurc,
        "e_aurc": aurc - (r + (1 - r) * np.log(1 - r)),
    }


def test_calibration_module_matches_the_definitions():
    logits, labels = random_case()
    results = load("calibration").compute(predictions=logits, references=labels)
    assert results == pytest.approx(hand_metrics(logits, labels), rel=1e-9)
    # A known value through the module: always certain, 70 % right.
    certain = load("calibration").compute(predictions=[[50.0, 0.0]] * 10, references=[0] * 7 + [1] * 3)
    assert certain["ece"] == pytest.approx(0.3) and certain["aurc"] == pytest.approx(0.3)


def test_translation_module_matches_sacrebleu():
    results = load("translation").compute(predictions=HYPOTHESES, references=REFERENCES)
    assert results["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score)
    assert results["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score)
    assert 0 < results["bleu"] < 100
    assert results["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert results["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")


def test_modules_load_offline_in_fresh_process(tmp_path):
    script = textwrap.dedent(
        """
        import evaluate, hf_maxsup.metrics
        for name in ("accuracy", "calibration", "translation"):
            module = evaluate.load(hf_maxsup.metrics.path(name))
        print(evaluate.load(hf_maxsup.metrics.path("accuracy")).compute(predictions=[[1.0, 0.0]], references=[0]))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "{'accuracy': 1.0}" in done.stdout


def test_classification_compute_metrics():
    logits, labels = random_case()
    compute_metrics = classification_compute_metrics()
    metrics = compute_metrics(EvalPrediction(predictions=(logits, np.zeros(3)), label_ids=labels))
    assert set(metrics) == {
        "accuracy",
        "top5_accuracy",
        "ece",
        "adaptive_ece",
        "classwise_ece",
        "nll",
        "brier",
        "aurc",
        "e_aurc",
    }
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert metrics["ece"] == pytest.approx(analysis.expected_calibration_error(logits, labels))


def test_translation_compute_metrics():
    tokenizer = word_tokenizer()
    compute_metrics = translation_compute_metrics(tokenizer)
    assert compute_metrics.signatures == {}
    # Generated ids are padded with the pad id, then with -100 by the Trainer; labels with -100.
    predictions = padded_ids(tokenizer, HYPOTHESES, tokenizer.pad_token_id)
    predictions[:, -2:] = -100
    labels = padded_ids(tokenizer, REFERENCES, -100)
    metrics = compute_metrics(EvalPrediction(predictions=predictions, label_ids=labels))
    assert metrics == pytest.approx(
        {
            "bleu": sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score,
            "chrf": sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score,
        }
    )
    assert compute_metrics.signatures["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert compute_metrics.signatures["chrf"].startswith("nrefs:1|case:mixed|eff:yes|nc:6")


def softmax(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_calibration_on_probabilities_gives_the_ece_of_their_logits():
    """The Hub's ECE modules take probabilities: said so, ours gives the numbers of the logits, never a third one."""
    logits, labels = random_case()
    calibration = load("calibration")
    expected = calibration.compute(predictions=logits, references=labels)
    probs = softmax(logits)
    assert calibration.compute(predictions=probs, references=labels, probabilities=True) == pytest.approx(
        expected, rel=1e-9
    )
    as_float32 = calibration.compute(predictions=probs.astype(np.float32), references=labels, probabilities=True)
    assert as_float32 == pytest.approx(expected, rel=1e-5)
    # a probability of 0 (a logit of -inf) is a certain "no"
    certain = calibration.compute(predictions=[[1.0, 0.0]] * 10, references=[0] * 7 + [1] * 3, probabilities=True)
    assert certain["ece"] == pytest.approx(0.3) and certain["nll"] == np.inf


def test_calibration_refuses_to_apply_the_softmax_twice():
    logits, labels = random_case()
    calibration = load("calibration")
    with pytest.raises(ValueError, match="look like probabilities.*Pass probabilities=True, or pass the logits"):
        calibration.compute(predictions=softmax(logits), references=labels)
    with pytest.raises(ValueError, match="not probabilities .* pass the logits with probabilities=False"):
        calibration.compute(predictions=logits, references=labels, probabilities=True)


def test_accuracy_module_takes_class_ids_as_the_hubs_does():
    """Called as the Hub's `accuracy` (class ids, `normalize`, `sample_weight`), it gives sklearn's numbers."""
    from sklearn.metrics import accuracy_score

    accuracy = load("accuracy")
    predictions, references, weights = [0, 1, 1, 2, 1, 0], [0, 1, 2, 0, 1, 2], [0.5, 2.0, 1.0, 1.0, 1.0, 3.0]
    assert accuracy.compute(predictions=predictions, references=references) == {"accuracy": 0.5}
    for normalize in (True, False):
        for sample_weight in (None, weights):
            expected = accuracy_score(references, predictions, normalize=normalize, sample_weight=sample_weight)
            result = accuracy.compute(
                predictions=predictions, references=references, normalize=normalize, sample_weight=sample_weight
            )
            assert result == {"accuracy": pytest.approx(float(expected))}
    # logits, as before: the class ids of their argmax give the same accuracy
    logits, labels = random_case(k=4)
    by_logits = accuracy.compute(predictions=logits, references=labels)
    assert by_logits == accuracy.compute(predictions=logits.argmax(1), references=labels)


def test_translation_module_takes_several_references_per_hypothesis():
    second = ["the cat is on the mat", "a dog runs in the park", "hello world", "it is raining"]
    nested = [[first, other] for first, other in zip(REFERENCES, second, strict=True)]
    results = load("translation").compute(predictions=HYPOTHESES, references=nested)
    assert results["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES, second]).score)
    assert results["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES, second]).score)
    assert results["bleu_signature"].startswith("nrefs:2|")
    one_each = load("translation").compute(predictions=HYPOTHESES, references=[[ref] for ref in REFERENCES])
    assert one_each["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score)
    with pytest.raises(ValueError, match=r"the same number \(>= 1\) of references; got \[1, 2\]"):
        load("translation").compute(predictions=HYPOTHESES[:2], references=[[REFERENCES[0]], nested[1]])
