"""Corpus BLEU and chrF with sacreBLEU's default settings, as an `evaluate` module loadable offline by path.

Load it with `evaluate.load(hf_maxsup.metrics.path("translation"))`.
"""

import datasets
import evaluate
from sacrebleu.metrics import BLEU, CHRF

_DESCRIPTION = """
Corpus-level BLEU and chrF of detokenised hypotheses against one or several references each (as the Hub's
`sacrebleu` module takes them), computed by sacreBLEU with its defaults (BLEU: 13a tokenisation, exponential
smoothing, mixed case; chrF: character 6-grams, beta 2). The sacreBLEU signatures are returned with the scores so
that they can be reported.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): detokenised hypotheses.
    references (`list` of `str`, or `list` of `list` of `str`): one detokenised reference per hypothesis, or the
        same number of references (a list) for every hypothesis.

Returns:
    bleu (`float`): corpus BLEU, in [0, 100].
    chrf (`float`): corpus chrF, in [0, 100].
    bleu_signature (`str`): e.g. "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0" (nrefs: references
        per hypothesis).
    chrf_signature (`str`): e.g. "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0".

Examples:
    >>> import evaluate, hf_maxsup.metrics
    >>> translation = evaluate.load(hf_maxsup.metrics.path("translation"))
    >>> translation.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])["chrf"]
    100.0
    >>> translation.compute(predictions=["the cat sat"], references=[["the cat sat", "a cat sat"]])["chrf"]
    100.0
"""

_CITATION = """
@inproceedings{post-2018-call, title={A Call for Clarity in Reporting {BLEU} Scores}, author={Post, Matt},
  booktitle={Proceedings of the Third Conference on Machine Translation}, year={2018}, pages={186--191}}
"""


class Translation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # The first that fits the first example is used: several references per hypothesis, else one.
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references):
        if not predictions:
            raise ValueError("predictions is empty; BLEU and chrF need at least one sentence.")
        streams = _reference_streams(references)
        bleu, chrf = BLEU(), CHRF()
        return {
            "bleu": float(bleu.corpus_score(predictions, streams).score),
            "chrf": float(chrf.corpus_score(predictions, streams).score),
            "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature()),
        }


def _reference_streams(references) -> list[list[str]]:
    """sacreBLEU's layout: the i-th reference of every hypothesis in the i-th list."""
    per_hypothesis = [[reference] if isinstance(reference, str) else list(reference) for reference in references]
    counts = {len(refs) for refs in per_hypothesis}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(
            f"each hypothesis needs the same number (>= 1) of references; got {sorted(counts)}. Repeat a reference "
            "for the hypotheses that have fewer, as sacreBLEU requires."
        )
    return [list(stream) for stream in zip(*per_hypothesis)]
