"""The `hf-maxsup` command: train CE / LS / MaxSup side by side and report, or report on existing checkpoints.

    hf-maxsup compare --output_dir report/ --seeds 0 1 2 [recipe arguments ...]
    hf-maxsup analyze runs/ce runs/ls runs/maxsup --output_dir report/
    hf-maxsup distill --teachers runs/ce-seed0 runs/ls-seed0 runs/maxsup-seed0 --output_dir distill/ [recipe args]

`compare` runs the recipe (default: `recipes/image_classification.py` of this checkout) once per loss and seed, every
argument it does not know itself going to the recipe, then writes the report of [`hf_maxsup.report`] (classifiers, or
translation models: [`hf_maxsup.report.translation`]). Rerunning an interrupted comparison skips the finished members
and resumes the interrupted one from its last checkpoint. `analyze` writes the same report for checkpoints that exist
already (local folders or Hub ids). `distill` trains one student per teacher and seed and reports which teachers
distil well ([`hf_maxsup.distill_study`]). The report's data flags are built from the fields of
[`~hf_maxsup.report.DataOptions`] and [`~hf_maxsup.report.TranslationDataOptions`].
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence

__all__ = ["compare_from_recipe", "main", "run_recipe"]

log = functools.partial(print, flush=True)


def _add_flags(parser, options: type, *, recipe: bool) -> None:
    """Declares the flags of an options dataclass of the report: the recipe's data flags or the report's own."""
    from .report.options import option_flags

    for flags, kwargs in option_flags(options, recipe=recipe):
        parser.add_argument(*flags, **kwargs)


def _recipe_data(options: type, passthrough: Sequence[str]) -> dict:
    """The recipe arguments that also tell the report which data to evaluate on, as given to the recipe."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_flags(parser, options, recipe=True)
    return vars(parser.parse_known_args(passthrough)[0])


def _options(options: type, *given: dict):
    """`options` from the flags given (those left out, `None`, keep the field's default)."""
    names = {spec.name for spec in dataclasses.fields(options)}
    return options(
        **{key: value for flags in given for key, value in flags.items() if key in names and value is not None}
    )


def _add_report_options(parser: argparse.ArgumentParser) -> None:
    from .report import DataOptions

    group = parser.add_argument_group("report")
    group.add_argument("--output_dir", required=True, help="Folder of the report (report.md, results.json, PNGs).")
    group.add_argument(
        "--device",
        default=None,
        help="Where the report evaluates the models, e.g. cpu or cuda:0 (default: cuda when a GPU is available, "
        "else cpu); training is the recipe's.",
    )
    _add_flags(group, DataOptions, recipe=False)


def _add_recipe_options(parser: argparse.ArgumentParser, members: str) -> None:
    """The options of the commands that train through a recipe: which recipe, where its runs go, which Python."""
    parser.add_argument(
        "--recipe",
        default=None,
        help="Recipe script taking --loss/--seed/--output_dir (default: recipes/image_classification.py of this "
        "checkout).",
    )
    parser.add_argument("--runs_dir", default=None, help=f"Where the {members} go (default: OUTPUT_DIR/runs).")
    parser.add_argument("--python", default=sys.executable, help="Python interpreter that runs the recipe.")


def _add_compare_parser(commands) -> None:
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
    _add_recipe_options(compare, "members' output folders")
    _add_report_options(compare)


def _add_analyze_parser(commands) -> None:
    from .report import DataOptions

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
    _add_flags(
        analyze.add_argument_group("data (default: the embedded data of the checkpoints' task)"),
        DataOptions,
        recipe=True,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-maxsup",
        description="Compare CE, label smoothing and MaxSup on your model and data.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_compare_parser(commands)
    _add_analyze_parser(commands)
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
    _add_recipe_options(distill, "students")
    _add_report_options(distill)


def run_distill(args, passthrough, argv) -> dict:
    from .distill_study import run_study
    from .report import DataOptions

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
        data=_options(DataOptions, vars(args), _recipe_data(DataOptions, passthrough)),
        device=args.device,
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
    if loss is None:
        from .hub import read_card_metadata

        try:
            loss = (read_card_metadata(path) or {}).get("loss")
        except ValueError:  # a card we did not write: use the folder name
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
    from .report import DataOptions, Run, analyze_checkpoints

    if args.labels is not None and len(args.labels) != len(args.checkpoints):
        raise SystemExit(f"--labels names {len(args.labels)} groups for {len(args.checkpoints)} checkpoints.")
    for path in args.checkpoints:
        _check_checkpoint_path(path)
    runs = []
    for i, path in enumerate(args.checkpoints):
        loss, seed = _card_loss_and_seed(path) if os.path.isdir(path) else (None, None)
        label = args.labels[i] if args.labels else loss or os.path.basename(os.path.normpath(path))
        runs.append(Run(path=path, label=label, seed=seed))
    return analyze_checkpoints(
        runs,
        args.output_dir,
        _options(DataOptions, vars(args)),
        device=args.device,
        log=log,
        title="Side-by-side report",
        command="hf-maxsup " + shlex.join(argv),
    )


def run_compare(args, passthrough, argv) -> dict:
    import time

    from .compare import check_passthrough, default_recipe, member_task, plan_members, train_members
    from .report import DataOptions, Run, TranslationDataOptions, analyze_checkpoints, analyze_translation_checkpoints

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
        "device": args.device,
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
        data = _options(TranslationDataOptions, vars(args), _recipe_data(TranslationDataOptions, passthrough))
        content = analyze_translation_checkpoints(runs, args.output_dir, data, **report)
    else:
        data = _options(DataOptions, vars(args), _recipe_data(DataOptions, passthrough))
        content = analyze_checkpoints(runs, args.output_dir, data, title="CE / LS / MaxSup side by side", **report)
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
        from .report import resolve_device

        args.device = resolve_device(args.device)  # a device this machine lacks is refused before any work
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


def run_recipe(main: Callable[[], object], recipe: str) -> None:
    """A recipe script's entry point: its `main()`, or with `--compare` the side-by-side comparison of the losses
    through the script ([`compare_from_recipe`]), so that every recipe offers it."""
    if "--compare" in sys.argv:
        sys.exit(compare_from_recipe(recipe))
    main()
    _end_process_group()


def _end_process_group() -> None:
    """Destroys the process group of a distributed run as its script ends: without it, gloo's worker threads can
    outlive the interpreter and abort a finished run's process (SIGABRT, a non-zero exit after everything is saved)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
