"""The `hf-maxsup` command: train CE / LS / MaxSup side by side and report, or report on existing checkpoints.

    hf-maxsup compare --output_dir report/ --seeds 0 1 2 [recipe arguments ...]
    hf-maxsup analyze runs/ce runs/ls runs/maxsup --output_dir report/
    hf-maxsup distill --teachers runs/ce-seed0 runs/ls-seed0 runs/maxsup-seed0 --output_dir distill/ [recipe args]

`compare` runs the recipe (default: `recipes/image_classification.py` of this checkout) once per loss and seed, every
argument it does not know itself going to the recipe, then writes the report of [`hf_maxsup.report`] (classifiers)
or [`hf_maxsup.translation_report`] (translation models). Rerunning an
interrupted comparison skips the finished members and resumes the interrupted one from its last checkpoint.
`analyze` writes the same report for checkpoints that exist already (local folders or Hub ids). `distill` trains
one student per teacher and seed and reports which teachers distil well ([`hf_maxsup.distill_study`]).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
from collections.abc import Sequence

__all__ = ["compare_from_recipe", "main"]

log = functools.partial(print, flush=True)

# Recipe arguments that also tell the report which data to evaluate on.
_DATA_FLAGS = (
    "dataset_name",
    "dataset_config_name",
    "train_file",
    "validation_file",
    "test_file",
    "train_dir",
    "validation_dir",
    "image_column_name",
    "label_column_name",
    "text_column_name",
    "text_pair_column_name",
    "max_seq_length",
    "validation_split_percentage",
    "cache_dir",
    "token",
)


def _add_report_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("report")
    group.add_argument("--output_dir", required=True, help="Folder of the report (report.md, results.json, PNGs).")
    group.add_argument(
        "--split", default=None, help="Split to evaluate on (default: test if the data has one, else validation)."
    )
    group.add_argument(
        "--max_analysis_samples",
        type=int,
        default=None,
        help="Evaluate on the first N examples of that split only (quick checks).",
    )
    group.add_argument("--analysis_batch_size", type=int, default=128, help="Batch size of the evaluation passes.")
    group.add_argument(
        "--projection_classes",
        type=int,
        nargs=3,
        default=[0, 1, 2],
        metavar="CLASS",
        help="The three class ids of the penultimate-feature projection plot.",
    )
    group.add_argument("--no_probe", action="store_true", help="Skip the linear probe on scikit-learn's digits.")
    group.add_argument(
        "--probe_samples",
        type=int,
        default=None,
        help="Use a stratified subset of this many digits for the linear probe (default: all 1,797).",
    )
    group.add_argument(
        "--train_samples",
        type=int,
        default=2000,
        help="Training examples on which the regime check measures the training accuracy (default: 2000; 0 skips it).",
    )


def _data_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in _DATA_FLAGS:
        kind = int if flag in ("max_seq_length", "validation_split_percentage") else str
        parser.add_argument(f"--{flag}", type=kind, default=None)
    return parser


def _data_options(args, data_args: dict):
    from .report import DataOptions

    given = {key: value for key, value in data_args.items() if value is not None}
    return DataOptions(
        **given,
        split=args.split,
        max_samples=args.max_analysis_samples,
        batch_size=args.analysis_batch_size,
        probe=not args.no_probe,
        probe_samples=args.probe_samples,
        train_samples=args.train_samples,
        projection_classes=tuple(args.projection_classes),
    )


# Recipe arguments of the translation recipe that also tell its report which data to read and how to generate.
_TRANSLATION_FLAGS = {
    "dataset_name": str,
    "dataset_config_name": str,
    "train_file": str,
    "validation_file": str,
    "test_file": str,
    "validation_split_percentage": int,
    "cache_dir": str,
    "token": str,
    "source_lang": str,
    "target_lang": str,
    "translation_column_name": str,
    "source_prefix": str,
    "max_source_length": int,
    "max_target_length": int,
    "generation_num_beams": int,
}


def _translation_options(args, passthrough):
    from .translation_report import TranslationDataOptions

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag, kind in _TRANSLATION_FLAGS.items():
        parser.add_argument(f"--{flag}", type=kind, default=None)
    given = {key: value for key, value in vars(parser.parse_known_args(passthrough)[0]).items() if value is not None}
    beams = given.pop("generation_num_beams", 1)
    return TranslationDataOptions(
        **given,
        split=args.split,
        max_samples=args.max_analysis_samples,
        batch_size=args.analysis_batch_size,
        num_beams=beams,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-maxsup",
        description="Compare CE, label smoothing and MaxSup on your model and data.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    compare = commands.add_parser(
        "compare",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="Train the same model with each loss and seed through a recipe, then write the side-by-side report.",
        description="Train the same model with each loss (default: ce, ls, maxsup) and seed through a recipe, then "
        "write the side-by-side report. Every argument not listed here is passed to the recipe (e.g. "
        "--num_train_epochs 1 --max_train_samples 2000 --loss_alpha 0.1); put them after `--` if they clash. "
        "Rerun the same command to resume: finished members are skipped, an interrupted one resumes from its last "
        "checkpoint.",
        epilog="example:\n  hf-maxsup compare --output_dir report/ --seeds 0 1 2 --num_train_epochs 1",
    )
    compare.add_argument(
        "--losses",
        nargs="+",
        default=["ce", "ls", "maxsup"],
        choices=["ce", "ls", "maxsup"],
        help="Losses to compare (default: ce ls maxsup).",
    )
    compare.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[42],
        help="Training seeds; every loss is trained once per seed (default: 42, the recipe's).",
    )
    compare.add_argument(
        "--recipe",
        default=None,
        help="Recipe script taking --loss/--seed/--output_dir (default: "
        "recipes/image_classification.py of this checkout).",
    )
    compare.add_argument(
        "--runs_dir", default=None, help="Where the members' output folders go (default: OUTPUT_DIR/runs)."
    )
    compare.add_argument("--python", default=sys.executable, help="Python interpreter that runs the recipe.")
    _add_report_options(compare)

    analyze = commands.add_parser(
        "analyze",
        allow_abbrev=False,
        help="Write the side-by-side report for existing checkpoints, without training.",
        description="Write the side-by-side report for existing checkpoints (local folders or Hub ids), loaded with "
        "hf_maxsup.hub.load_for_analysis and the processor saved beside them. Checkpoints are grouped by the loss "
        "their model card names (mean ± std over a group), or by --labels.",
    )
    analyze.add_argument("checkpoints", nargs="+", help="Run output folders, checkpoint-* folders or Hub ids.")
    analyze.add_argument(
        "--labels",
        nargs="+",
        default=None,
        help="Group name of each checkpoint (default: the loss in its model card, else its folder "
        "name); checkpoints of one name are averaged.",
    )
    _add_report_options(analyze)
    data = analyze.add_argument_group("data (default: the embedded data of the checkpoints' task)")
    for flag, text in (
        ("dataset_name", "Dataset on the Hub."),
        ("dataset_config_name", "Its configuration."),
        ("test_file", "Local file (csv, json, jsonl, parquet) to evaluate on."),
        ("validation_file", "Local validation file, used when there is no test file."),
        ("image_column_name", "Column of the images (default: image)."),
        ("label_column_name", "Column of the labels (default: label)."),
        ("text_column_name", "Column of the texts (default: text)."),
        ("text_pair_column_name", "Second text of sentence pairs."),
        ("cache_dir", "Hub cache."),
        ("token", "Hub token."),
    ):
        data.add_argument(f"--{flag}", default=None, help=text)
    data.add_argument("--max_seq_length", type=int, default=None, help="Truncation of texts (default: 128).")
    _add_distill_parser(commands)
    return parser


def _add_distill_parser(commands) -> None:
    distill = commands.add_parser(
        "distill",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="Distil CE, LS and MaxSup teachers into the same student over seeds, then report which distil well.",
        description="Train the same student from each teacher (e.g. the members of hf-maxsup compare) and seed "
        "through a recipe, with --teacher_model_name_or_path, and on the labels alone; then report the students' "
        "accuracy, NLL and ECE per teacher beside the teachers' own accuracy and the entropy of their non-target "
        "distribution (hf_maxsup.distill_study). Every argument not listed here is passed to the recipe (the "
        "student: e.g. --model_architecture resnet-small --num_train_epochs 8). Rerun the same command to resume.",
        epilog="example:\n  hf-maxsup distill --teachers runs/ce-seed0 runs/ls-seed0 runs/maxsup-seed0 --seeds 0 1 2 "
        "--output_dir distill/ --model_architecture resnet-small",
    )
    distill.add_argument("--teachers", nargs="+", required=True, help="Output folders of the teachers.")
    distill.add_argument(
        "--teacher_labels", nargs="+", default=None, help="A name per teacher (default: the loss in its model card)."
    )
    distill.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="Students' seeds (default: 0 1 2).")
    distill.add_argument(
        "--student_loss",
        default="ce",
        choices=["ce", "ls", "maxsup"],
        help="The students' loss on the labels (default: ce).",
    )
    distill.add_argument(
        "--distill_alpha", type=float, default=1.0, help="Weight beta of the distillation term (default: 1.0)."
    )
    distill.add_argument("--distill_temperature", type=float, default=4.0, help="Temperature T (default: 4.0).")
    distill.add_argument("--no_baseline", action="store_true", help="Skip the student trained on the labels alone.")
    distill.add_argument("--recipe", default=None, help="Recipe script (default: recipes/image_classification.py).")
    distill.add_argument("--runs_dir", default=None, help="Where the students go (default: OUTPUT_DIR/runs).")
    distill.add_argument("--python", default=sys.executable, help="Python interpreter that runs the recipe.")
    _add_report_options(distill)


def run_distill(args, passthrough, argv) -> dict:
    from .distill_study import run_study

    data_args, _ = _data_parser().parse_known_args(passthrough)
    # The teachers' non-target entropy at T is measured on the training examples the students see.
    limit = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    limit.add_argument("--max_train_samples", type=int, default=None)
    content = run_study(
        args.teachers,
        args.output_dir,
        seeds=args.seeds,
        runs_dir=args.runs_dir,
        teacher_labels=args.teacher_labels,
        baseline=not args.no_baseline,
        student_loss=args.student_loss,
        distill_alpha=args.distill_alpha,
        temperature=args.distill_temperature,
        recipe=args.recipe,
        passthrough=passthrough,
        python=args.python,
        data=_data_options(args, vars(data_args)),
        max_train_samples=limit.parse_known_args(passthrough)[0].max_train_samples,
        command="hf-maxsup " + shlex.join(argv),
        log=log,
    )
    log(f"[hf-maxsup distill] report written to {os.path.join(args.output_dir, 'report.md')}")
    return content


def _card_loss_and_seed(path: str) -> tuple[str | None, int | None]:
    """The loss named in a local checkpoint's model card and the seed compare recorded, when there are any."""
    from .compare import MEMBER_FILE

    loss = seed = None
    for folder in (path, os.path.dirname(os.path.normpath(path))):
        member = os.path.join(folder, MEMBER_FILE)
        if os.path.isfile(member):
            with open(member, encoding="utf-8") as f:
                recorded = json.load(f)
            loss, seed = recorded.get("loss"), recorded.get("seed")
            break
    card = os.path.join(path, "README.md")
    if loss is None and os.path.isfile(card):
        from huggingface_hub import ModelCard

        try:
            loss = (ModelCard.load(card).data.to_dict().get("hf_maxsup") or {}).get("loss")
        except (ValueError, TypeError, AttributeError, OSError):  # a card we did not write: use the folder name
            loss = None
    return loss, seed


def _check_checkpoint_path(path: str) -> None:
    """Refuse, before loading anything, a local path that is missing or holds no saved model."""
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, name)) for name in ("config.json", "adapter_config.json")):
            inside = sorted(name for name in os.listdir(path) if name.startswith("checkpoint-"))
            hint = f" It holds {', '.join(inside[-3:])}: give one of those." if inside else ""
            raise ValueError(
                f"{path} is not a checkpoint: it has no config.json.{hint} Give a run's output folder "
                "(after training finished), a checkpoint-* folder, or a Hub id."
            )
    elif os.path.exists(path):
        raise ValueError(f"{path} is a file, not a checkpoint: give the folder holding config.json and the weights.")
    elif os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1:
        raise ValueError(f"{path}: no such folder (and it is not a Hub id of the form org/model). Check the path.")


def run_analyze(args, argv) -> dict:
    from .report import Run, analyze_checkpoints

    if args.labels is not None and len(args.labels) != len(args.checkpoints):
        raise SystemExit(f"--labels names {len(args.labels)} groups for {len(args.checkpoints)} checkpoints.")
    for path in args.checkpoints:
        _check_checkpoint_path(path)
    runs = []
    for i, path in enumerate(args.checkpoints):
        loss, seed = _card_loss_and_seed(path) if os.path.isdir(path) else (None, None)
        label = args.labels[i] if args.labels else loss or os.path.basename(os.path.normpath(path))
        runs.append(Run(path=path, label=label, seed=seed))
    data = _data_options(args, {flag: getattr(args, flag, None) for flag in _DATA_FLAGS})
    return analyze_checkpoints(
        runs, args.output_dir, data, log=log, title="Side-by-side report", command="hf-maxsup " + shlex.join(argv)
    )


def run_compare(args, passthrough, argv) -> dict:
    import time

    from .compare import check_passthrough, default_recipe, member_task, plan_members, train_members
    from .report import Run, analyze_checkpoints
    from .translation_report import analyze_translation_checkpoints

    recipe = args.recipe or default_recipe()
    check_passthrough(passthrough)
    runs_dir = args.runs_dir or os.path.join(args.output_dir, "runs")
    members = plan_members(runs_dir, args.losses, args.seeds)
    log(
        f"[hf-maxsup compare] {len(members)} members ({len(args.losses)} losses x {len(args.seeds)} seeds) with "
        f"{recipe}; runs in {runs_dir}"
    )
    start = time.monotonic()
    train_members(members, recipe, passthrough, python=args.python, log=log)
    trained = time.monotonic() - start
    runs = [Run(path=member.output_dir, label=member.loss, seed=member.seed) for member in members]
    notes = [
        (
            f"Recipe: `{os.path.relpath(recipe)}`; recipe arguments: `{shlex.join(passthrough) or '(defaults)'}`. "
            "ls uses a constant alpha and maxsup the linear 0.1 → 0.2 schedule unless --loss_alpha* say "
            "otherwise."
        )
    ]
    report = {
        "log": log,
        "notes": notes,
        "command": "hf-maxsup " + shlex.join(argv),
        "extra": {
            "recipe": recipe,
            "recipe_args": list(passthrough),
            "losses": args.losses,
            "seeds": args.seeds,
            "runs_dir": runs_dir,
            "train_seconds_this_invocation": round(trained, 1),
        },
    }
    if member_task(members[0].output_dir)[1] == "text2text-generation":
        content = analyze_translation_checkpoints(
            runs, args.output_dir, _translation_options(args, passthrough), **report
        )
    else:
        data_args, _ = _data_parser().parse_known_args(passthrough)
        content = analyze_checkpoints(
            runs, args.output_dir, _data_options(args, vars(data_args)), title="CE / LS / MaxSup side by side", **report
        )
    log(f"[hf-maxsup compare] report written to {os.path.join(args.output_dir, 'report.md')}")
    return content


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hf-maxsup` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if "--" in argv:
        split = argv.index("--")
        args, passthrough = parser.parse_known_args(argv[:split])
        passthrough += argv[split + 1 :]
    else:
        args, passthrough = parser.parse_known_args(argv)
    try:
        if args.command == "distill":
            run_distill(args, passthrough, argv)
        elif args.command == "analyze":
            if passthrough:
                parser.error(f"unrecognized arguments: {' '.join(passthrough)}")
            run_analyze(args, argv)
        else:
            run_compare(args, passthrough, argv)
    except (ValueError, OSError, RuntimeError) as err:  # OSError: a Hub id that cannot be loaded, a full disk, ...
        print(f"hf-maxsup {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


def compare_from_recipe(recipe: str, argv: Sequence[str] | None = None) -> int:
    """`python recipes/<recipe>.py --compare ...`: runs `hf-maxsup compare --recipe <recipe> ...` (the `--compare`
    flag removed), so that a recipe can offer the comparison of its losses itself."""
    argv = [arg for arg in (sys.argv[1:] if argv is None else argv) if arg != "--compare"]
    return main(["compare", "--recipe", os.path.abspath(recipe), *argv])


if __name__ == "__main__":
    sys.exit(main())
