"""The model card of a training run: what it says, read off the trainer, and rendered from the template.

[`~hf_maxsup.trainer.MaxSupTrainer`] writes a model card (`README.md`) into every directory it saves a model to, and
`push_to_hub` uploads it with the weights, the processor and the metric files of the output directory. The card is
rendered from the Jinja template `model_cards/maxsup_model_card.md.jinja` (shipped in the package as
`hf_maxsup/templates/maxsup_model_card.md.jinja`): task, base model, dataset, the loss and the alpha schedule,
hyper-parameters, the evaluation metrics and, when the run predicted, the test metrics (both also as `model-index`
results), the reliability diagram when one was saved, intended use and limitations, and the MaxSup citation.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.modelcard import TASK_TAG_TO_NAME_MAPPING, extract_hyperparameters_from_trainer

from .. import __version__
from ..auto import AUTO_CLASSES, task_of, unwrap_peft
from ..kernels.job import SUMS
from ..schedules import alpha_at
from .metadata import loss_metadata

__all__ = ["RELIABILITY_DIAGRAM", "TEMPLATE_NAME", "CardOptions", "write_model_card"]

TEMPLATE_NAME = "maxsup_model_card.md.jinja"
RELIABILITY_DIAGRAM = "reliability_diagram.png"

_LOSS_TAGS = {"ce": [], "ls": ["label-smoothing"], "maxsup": ["maxsup"]}
# `eval_*` entries of the log history that are not metrics of the model: Trainer bookkeeping, and the loss and its
# components that MaxSupTrainer logs, every sum of the kernels and alpha (they depend on the training loss, so they
# do not compare across losses).
_NOT_METRICS = {
    "runtime",
    "samples",
    "samples_per_second",
    "steps_per_second",
    "model_preparation_time",
    "jit_compilation_time",
    "alpha",
    *SUMS,
}
_METRIC_NAMES = {
    "accuracy": "Accuracy",
    "top5_accuracy": "Top-5 accuracy",
    "ece": "ECE",
    "adaptive_ece": "Adaptive ECE",
    "classwise_ece": "Classwise ECE",
    "nll": "NLL",
    "brier": "Brier score",
    "aurc": "AURC",
    "e_aurc": "E-AURC",
    "bleu": "BLEU",
    "chrf": "chrF",
}
_PIPELINE_TAGS = {*AUTO_CLASSES, "translation", "summarization"}


@dataclass(frozen=True)
class CardOptions:
    """What the caller of [`write_model_card`] sets on the card: the arguments of `Trainer.create_model_card`, and
    the loss history of a resumed run. Each overrides what is inferred from the trainer.

    Args:
        model_name (`str`, *optional*):
            Title of the card and name of the `model-index`; defaults to the Hub repo name or the output directory's.
        language (`str` or `list[str]`, *optional*):
            Language(s) of the model.
        license (`str`, *optional*):
            License id, e.g. `"apache-2.0"`.
        tags (`str` or `list[str]`, *optional*):
            Tags added to `hf_maxsup`, `maxsup` / `label-smoothing` and the model's own tags.
        finetuned_from (`str`, *optional*):
            Hub id of the base model; defaults to the model's `config._name_or_path` unless that is a local path.
        tasks (`str` or `list[str]`, *optional*):
            Task tag (e.g. `"text-classification"`, `"translation"`); inferred from the model class by default.
        dataset (`str` or `list[str]`, *optional*):
            Display name of the training / evaluation dataset.
        dataset_tags (`str` or `list[str]`, *optional*):
            Hub id(s) of the dataset, listed in the `datasets` metadata.
        dataset_args (`str` or `list[str]`, *optional*):
            Dataset configuration name.
        loss_history (`list[dict]`, *optional*):
            For a run resumed with other loss settings: each segment's settings (as in the `hf_maxsup` metadata) and
            `from_step`; recorded as `hf_maxsup.history`.
    """

    model_name: str | None = None
    language: str | list[str] | None = None
    license: str | None = None
    tags: str | list[str] | None = None
    finetuned_from: str | None = None
    tasks: str | list[str] | None = None
    dataset: str | list[str] | None = None
    dataset_tags: str | list[str] | None = None
    dataset_args: str | list[str] | None = None
    loss_history: list[dict] | None = None


def write_model_card(trainer, output_dir: str | None = None, **options) -> ModelCard:
    """Render the model card of a MaxSup / LS / CE training run and write it to `output_dir/README.md`.

    Everything comes from the trainer: the loss and alpha schedule from its `MaxSupLossFunc` (the one
    [`MaxSupTrainer`] builds, or one given to a plain `Trainer` as `compute_loss_func`), the evaluation metrics from
    the last evaluation in `trainer.state.log_history` (every `eval_<name>` except the loss and its logged
    components; with `predict_with_generate`, `eval_loss` is the token-level NLL and is recorded as `nll`; the history
    has one row per step), the test metrics of the trainer's last `predict` on a test set (MaxSupTrainer's
    `test_results`: the recipes' `predict_*`, also as `model-index` results of that split), the
    hyper-parameters from `trainer.args`, the teacher and its settings of a distilled run from
    `trainer.distillation` (the hyper-parameters and the `hf_maxsup_distillation` metadata). For a PEFT model, the
    card keeps the fields `peft` writes (`library_name`, `base_model`, its tags) and adds ours.

    Args:
        trainer (`transformers.Trainer`):
            A [`MaxSupTrainer`], [`MaxSupSeq2SeqTrainer`] or a `Trainer` whose `compute_loss_func` is a
            [`MaxSupLossFunc`].
        output_dir (`str`, *optional*):
            Where to write `README.md`; defaults to `trainer.args.output_dir`. A `reliability_diagram.png` in that
            directory is shown in the card.
        **options:
            The fields of [`CardOptions`] (those of `Trainer.create_model_card`, and `loss_history`): they override
            what is inferred.

    Returns:
        [`~huggingface_hub.ModelCard`]: the card written.

    Raises:
        `TypeError`: an option that is not a field of [`CardOptions`], or a trainer without a `MaxSupLossFunc`.
    """
    options = CardOptions(**options)
    output_dir = output_dir or trainer.args.output_dir
    run = _run_facts(trainer, output_dir)
    os.makedirs(output_dir, exist_ok=True)
    if run["is_adapter"]:  # peft writes its own card first: its fields are read back from it and kept in ours
        run["peft_fields"] = _peft_card_fields(trainer.accelerator.unwrap_model(trainer.model), output_dir)
    card = _render_card(run, options)
    card.save(os.path.join(output_dir, "README.md"))
    return card


def _run_facts(trainer, output_dir: str) -> dict:
    """What the card says about the run, as plain values: read off the trainer, the library versions and the output
    directory (whether it holds a reliability diagram); `peft_fields` of an adapter are added once peft has written
    its card."""
    loss_fn = _loss_func_of(trainer)
    args, state = trainer.args, trainer.state
    model = trainer.accelerator.unwrap_model(trainer.model)
    base = unwrap_peft(model)
    is_adapter = base is not model
    loss = _loss_summary(loss_fn, state)
    eval_split = getattr(trainer.eval_dataset, "split", None)
    return {
        "output_dir": output_dir,
        "run_name": Path(args.output_dir).name,
        "hub_model_id": getattr(trainer, "hub_model_id", None) or args.hub_model_id,
        "is_adapter": is_adapter,
        "hub_base_model": _hub_base_model(base),
        "model_task": task_of(type(base).__name__),
        "model_tags": list(getattr(model, "model_tags", None) or []),
        "loss": loss,
        "loss_metadata": loss_metadata(
            loss["name"], loss["alpha"], loss_fn.alpha_end, loss["schedule"], loss["ls_mass"]
        ),
        # MaxSupTrainer's teacher and settings; a plain Trainer has none.
        "distillation": getattr(trainer, "distillation", None),
        "evaluations": _one_per_step(entry for entry in state.log_history if _metrics(entry)),
        # MaxSupTrainer's last prediction on a test set (the recipes' --do_predict); a plain Trainer keeps none.
        "test_results": getattr(trainer, "test_results", None),
        "predict_with_generate": getattr(args, "predict_with_generate", False),
        "eval_split": str(eval_split) if eval_split else None,
        "hyperparameters": extract_hyperparameters_from_trainer(trainer),
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "versions": _versions(is_adapter),
        "has_reliability_diagram": os.path.isfile(os.path.join(output_dir, RELIABILITY_DIAGRAM)),
        "peft_fields": None,
    }


def _loss_func_of(trainer):
    """The trainer's loss function (a MaxSupLossFunc), checked by the settings the card reads: by name, so that the
    hub does not import the trainer package, which imports it."""
    loss_fn = getattr(trainer, "compute_loss_func", None)
    if not all(hasattr(loss_fn, name) for name in ("loss", "alpha", "alpha_end", "schedule", "ls_mass")):
        raise TypeError(
            "write_model_card needs a MaxSupTrainer, or a Trainer given a MaxSupLossFunc as compute_loss_func; "
            f"got a {type(trainer).__name__} whose compute_loss_func is {type(loss_fn).__name__}."
        )
    return loss_fn


def _loss_summary(loss_fn, state) -> dict:
    """The loss settings and alpha at the start, at the end and at this checkpoint, as plain values."""
    progress = state.global_step / state.max_steps if state.max_steps else 0.0
    return {
        "name": loss_fn.loss,
        "schedule": loss_fn.schedule,
        "alpha": loss_fn.alpha,
        "alpha_end": alpha_at(1.0, loss_fn.schedule, loss_fn.alpha, loss_fn.alpha_end),
        "alpha_now": alpha_at(progress, loss_fn.schedule, loss_fn.alpha, loss_fn.alpha_end),
        "ls_mass": loss_fn.ls_mass,
    }


def _versions(is_adapter: bool) -> dict[str, str]:
    """The versions of the libraries the run trained with, for the card's "Framework versions"."""
    names = ("transformers", "torch", "datasets", "tokenizers", *(("peft",) if is_adapter else ()))
    return {"hf_maxsup": __version__} | {name: importlib.metadata.version(name) for name in names}


def _hub_base_model(model) -> str | None:
    """The Hub id the model was fine-tuned from: its `_name_or_path`, unless that is a local path (which means nothing
    on the Hub) or empty (a model built from a config)."""
    name_or_path = getattr(getattr(model, "config", None), "_name_or_path", "")
    return name_or_path if name_or_path and not os.path.isdir(name_or_path) else None


def _peft_card_fields(model, output_dir: str) -> dict:
    """The card fields peft writes for an adapter (library_name "peft", the base model, its tags)."""
    model.create_or_update_model_card(output_dir)
    peft_data = ModelCard.load(os.path.join(output_dir, "README.md")).data
    return {
        "library_name": peft_data.library_name,
        "base_model": peft_data.base_model,
        "tags": list(peft_data.tags or []),
        "pipeline_tag": peft_data.pipeline_tag,
    }


def _render_card(run: dict, options: CardOptions) -> ModelCard:
    """The card, a pure function of plain values: `run` of [`_run_facts`] and the caller's `options`."""
    finetuned_from = options.finetuned_from if options.finetuned_from is not None else run["hub_base_model"]
    task = next(iter(_as_list(options.tasks)), run["model_task"])
    hub_model_id = run["hub_model_id"]
    model_name = options.model_name or (hub_model_id.split("/")[-1] if hub_model_id else run["run_name"])
    evaluations = run["evaluations"]
    results = _final_results(evaluations, run["predict_with_generate"])
    test_results, test_split = _test_results(run["test_results"])
    model_index = _eval_results(results, task, options, run["eval_split"])
    model_index += _eval_results(test_results, task, options, test_split)
    card_data = ModelCardData(
        model_name=model_name,
        base_model=finetuned_from,
        library_name="transformers",
        language=options.language,
        license=options.license,
        tags=_card_tags(run["loss"]["name"], options.tags, run["model_tags"], run["distillation"]),
        datasets=_as_list(options.dataset_tags) or None,
        pipeline_tag=task if task in _PIPELINE_TAGS else None,
        eval_results=model_index or None,
        # Machine-readable loss settings, for tools that compare runs.
        hf_maxsup={**run["loss_metadata"], **({"history": options.loss_history} if options.loss_history else {})},
        # Beside hf_maxsup, whose settings a resumed run must match: a teacher is not part of the loss's identity.
        hf_maxsup_distillation=run["distillation"] or None,
    )
    if run["peft_fields"] is not None:
        _merge_peft_card_fields(card_data, run["peft_fields"])
    return ModelCard.from_template(
        card_data,
        template_str=_template(),
        model_name=model_name,
        finetuned_from=finetuned_from,
        is_adapter=run["is_adapter"],
        task_name=TASK_TAG_TO_NAME_MAPPING.get(task, task or "classification"),
        dataset=next(iter(_as_list(options.dataset) or _as_list(options.dataset_tags)), None),
        loss=run["loss"],
        global_step=run["global_step"],
        max_steps=run["max_steps"],
        results=results,
        results_step=evaluations[-1].get("step") if evaluations else None,
        eval_split=run["eval_split"],
        history=[{"epoch": e.get("epoch"), "step": e.get("step"), "values": _metrics(e)} for e in evaluations],
        test_results=test_results,
        test_split=test_split,
        history_columns=results,
        reliability_diagram=RELIABILITY_DIAGRAM if run["has_reliability_diagram"] else None,
        hyperparameters=_hyperparameters(run),
        versions=run["versions"],
        auto_class=AUTO_CLASSES.get(run["model_task"]),
        local_path=_local_path(run["output_dir"]),
        repo_id=hub_model_id or f"<your-username>/{model_name}",
    )


def _template() -> str:
    return importlib.resources.files("hf_maxsup").joinpath("templates", TEMPLATE_NAME).read_text(encoding="utf-8")


def _hyperparameters(run: dict) -> dict:
    """The Trainer's hyper-parameters, with the loss and, for a distilled run, the teacher and its settings."""
    hyperparameters = {**run["hyperparameters"], "loss": _describe_settings(run["loss"])}
    distillation = run["distillation"]
    if distillation:
        hyperparameters["distillation"] = (
            f"from {distillation['teacher']}, distill_alpha {distillation['alpha']}, "
            f"temperature {distillation['temperature']}"
        )
    return hyperparameters


def _describe_settings(loss: dict) -> str:
    """The loss line of the card's hyper-parameters."""
    if loss["name"] == "ce":
        return "ce"
    mass = {"all": ", smoothing mass on all classes", "others": ", smoothing mass on the other classes"}
    return f"{loss['name']}, alpha {loss['alpha']} to {loss['alpha_end']} ({loss['schedule']})" + (
        mass[loss["ls_mass"]] if loss["name"] == "ls" else ""
    )


def _final_results(evaluations: list[dict], predict_with_generate: bool) -> list[dict]:
    """The metrics of the last evaluation, named for the card."""
    final = _metrics(evaluations[-1]) if evaluations else {}
    # With predict_with_generate the Seq2SeqTrainer evaluates the model's own cross-entropy: `eval_loss` is then the
    # token-level NLL of the references, which does compare across training losses.
    if evaluations and predict_with_generate and "eval_loss" in evaluations[-1]:
        final.setdefault("nll", float(evaluations[-1]["eval_loss"]))
    return _named(final)


def _test_results(test: dict | None) -> tuple[list[dict], str | None]:
    """The metrics of the trainer's last prediction on a test set (`{"split", "prefix", "metrics"}`), named for the
    card, and the split's name (`test` when the data does not say)."""
    if not test:
        return [], None
    return _named(_metrics(test["metrics"], prefix=f"{test['prefix']}_")), str(test["split"] or "test")


def _named(metrics: dict[str, float]) -> list[dict]:
    """The metrics as the card lists them: type, display name, value."""
    return [{"type": key, "name": _METRIC_NAMES.get(key, key), "value": value} for key, value in metrics.items()]


def _one_per_step(entries) -> list[dict]:
    """The evaluations, one per step (the last logged): the recipes log their final evaluation again at the step of
    the last one made during training."""
    return list({entry.get("step"): entry for entry in entries}.values())


def _eval_results(results: list[dict], task: str | None, options: CardOptions, eval_split) -> list[EvalResult]:
    """The `model-index` entries of the results."""
    dataset_name = next(iter(_as_list(options.dataset)), None)
    dataset_id = next(iter(_as_list(options.dataset_tags)), None)
    return [
        EvalResult(
            task_type=task or "other",
            task_name=TASK_TAG_TO_NAME_MAPPING.get(task),
            dataset_type=dataset_id or _dataset_type(dataset_name),
            dataset_name=dataset_name or dataset_id or "Unknown",
            dataset_config=next(iter(_as_list(options.dataset_args)), None),
            dataset_split=str(eval_split) if eval_split else None,
            metric_type=result["type"],
            metric_name=result["name"],
            metric_value=result["value"],
        )
        for result in results
    ]


def _card_tags(loss_name: str, tags, model_tags: list[str], distillation) -> list[str]:
    """hf_maxsup's tags, the loss's, the user's and the model's own, each once."""
    all_tags = [
        "hf_maxsup",
        *_LOSS_TAGS[loss_name],
        "generated_from_trainer",
        *(["knowledge-distillation"] if distillation else []),
    ]
    for tag in [*_as_list(tags), *model_tags]:
        if tag not in all_tags:
            all_tags.append(tag)
    return all_tags


def _merge_peft_card_fields(card_data: ModelCardData, peft_fields: dict) -> None:
    """peft's own card fields are authoritative for an adapter; its tags add to ours."""
    card_data.library_name = peft_fields["library_name"]
    card_data.base_model = peft_fields["base_model"]
    card_data.tags += [tag for tag in peft_fields["tags"] if tag not in card_data.tags]
    card_data.pipeline_tag = peft_fields["pipeline_tag"] or card_data.pipeline_tag


def _metrics(entry: dict, prefix: str = "eval_") -> dict[str, float]:
    """The metrics of a log entry (`eval_<name>`, or `<prefix><name>`), without Trainer bookkeeping or the loss."""
    return {
        key.removeprefix(prefix): float(value)
        for key, value in entry.items()
        if key.startswith(prefix)
        and key.removeprefix(prefix) not in _NOT_METRICS
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    }


def _as_list(value: str | list[str] | None) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _dataset_type(dataset_name: str | None) -> str:
    """The `model-index` `dataset.type` of data without a Hub id: the name before its description, as an id,
    e.g. `fashion_mnist` for `"fashion_mnist (hf_maxsup embedded subset)"`, `local_data` for local files."""
    if not dataset_name:
        return "unknown"
    return "_".join(dataset_name.split(" (")[0].split())


def _local_path(output_dir: str) -> str:
    """How the card's "How to use" loads the folder from disk: the path the run wrote to, made explicitly local (a
    bare `name` or `runs/name` that is not there would be looked up on the Hub); for an absolute path, only the
    folder's name, since a path on the training machine means nothing to a reader of the card."""
    path = Path(output_dir).name if os.path.isabs(output_dir) else os.path.normpath(output_dir)
    return path if path.startswith(".") else f"./{path}"
