"""The `hf-maxsup` command: train CE / LS / MaxSup side by side and report, or report on existing checkpoints.

    hf-maxsup compare --output_dir report/ --seeds 0 1 2 [recipe arguments ...]
    hf-maxsup analyze runs/ce runs/ls runs/maxsup --output_dir report/
    hf-maxsup distill --teachers runs/ce-seed0 runs/ls-seed0 runs/maxsup-seed0 --output_dir distill/ [recipe args]
    hf-maxsup reanalyze report/

This module parses; each command is one call ([`ENTRY_POINTS`]). `compare` runs the recipe (default:
`recipes/image_classification.py` of this checkout) once per loss and seed, every argument it does not know itself
going to the recipe, then writes the report of its task ([`hf_maxsup.studies.compare`]). Rerunning an interrupted
comparison skips the finished members and resumes the interrupted one from its last checkpoint. `analyze` writes the
report of classifiers for checkpoints that exist already, local folders or Hub ids
([`hf_maxsup.report.classification`]). `distill` trains one student per teacher and seed and reports which teachers
distil well ([`hf_maxsup.studies.distill`]). `reanalyze` writes a report again from its own `results.json`, with the
current claims and tests, without its checkpoints ([`hf_maxsup.report.reanalysis`]). The report's data flags are
built from the fields of [`~hf_maxsup.report.DataOptions`] and [`~hf_maxsup.report.TranslationDataOptions`].
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import os
import shlex
import sys
from collections.abc import Callable, Sequence

from .report.device import resolve_device
from .report.options import DataOptions, TranslationDataOptions, option_flags
from .runner.help import recipe_help, wants_help

__all__ = ["ENTRY_POINTS", "build_parser", "compare_from_recipe", "end_process_group", "main", "run_recipe"]

# What each command calls, as "module:function", imported once its command line is parsed, as console-script entry
# points are: the studies and reports import torch and transformers (seconds), which `hf-maxsup --help`, a mistyped
# flag or a device this machine lacks must not wait for.
ENTRY_POINTS = {
    "analyze": "hf_maxsup.report.classification:analyze_paths",
    "compare": "hf_maxsup.studies.compare:run_compare",
    "distill": "hf_maxsup.studies.distill:run_study",
    "reanalyze": "hf_maxsup.report.reanalysis:reanalyze",
}

log = functools.partial(print, flush=True)


def entry_point(command: str) -> Callable:
    """The function [`ENTRY_POINTS`] names for `command`, imported now."""
    module, _, name = ENTRY_POINTS[command].partition(":")
    return getattr(importlib.import_module(module), name)


def _add_flags(parser, options: type, *, recipe: bool) -> None:
    """Declares the flags of an options dataclass of the report: the recipe's data flags or the report's own."""
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


def _add_command(commands, name: str, summary: str, description: str, example: str | None = None):
    """The parser of one command, with its `example` (a command line) under the options, kept on its own line.
    Abbreviations are off: an argument meant for the recipe must not be taken for one of ours that it abbreviates."""
    raw = {"formatter_class": argparse.RawDescriptionHelpFormatter, "epilog": f"example:\n  {example}"}
    return commands.add_parser(
        name, allow_abbrev=False, help=summary, description=description, **(raw if example else {})
    )


def _add_compare_parser(commands) -> None:
    compare = _add_command(
        commands,
        "compare",
        "Train the same model with each loss and seed through a recipe, then write the side-by-side report.",
        "Train the same model with each loss (default: ce, ls, maxsup) and seed through a recipe, then write the "
        "side-by-side report. Every argument not listed here is passed to the recipe (e.g. --num_train_epochs 1 "
        "--max_train_samples 2000 --loss_alpha 0.1); put them after `--` if they clash. Rerun the same command to "
        "resume: finished members are skipped, an interrupted one resumes from its last checkpoint.",
        "hf-maxsup compare --output_dir report/ --seeds 0 1 2 --num_train_epochs 1",
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
    analyze = _add_command(
        commands,
        "analyze",
        "Write the side-by-side report for existing checkpoints, without training.",
        "Write the side-by-side report for existing checkpoints (local folders or Hub ids), loaded with "
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
    """The parser of `hf-maxsup` and its three commands; arguments it does not know are the recipe's."""
    parser = argparse.ArgumentParser(
        prog="hf-maxsup",
        description="Compare CE, label smoothing and MaxSup on your model and data.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_compare_parser(commands)
    _add_analyze_parser(commands)
    _add_distill_parser(commands)
    _add_reanalyze_parser(commands)
    return parser


def _add_reanalyze_parser(commands) -> None:
    reanalyze = _add_command(
        commands,
        "reanalyze",
        "Write a report again from its results.json, with the current claims and tests (no checkpoints).",
        "Write the report of hf-maxsup compare, analyze or distill in FOLDER again from the per-run metrics of its "
        "results.json: the tables, the claims with their tests and the regime check are recomputed; the figures, the "
        "training time and the notes are kept.",
    )
    reanalyze.add_argument("folder", help="The report's folder (report.md, results.json).")
    reanalyze.add_argument(
        "--teachers_from",
        nargs="+",
        default=(),
        metavar="FOLDER",
        help="Distillation reports only: other studies evaluated on the same data whose teachers join this "
        "study's in the claims on teachers (e.g. the other seeds of each loss).",
    )


def _add_distill_parser(commands) -> None:
    distill = _add_command(
        commands,
        "distill",
        "Distil CE, LS and MaxSup teachers into the same student over seeds, then report which distil well.",
        "Train the same student from each teacher (e.g. the members of hf-maxsup compare) and seed through a recipe, "
        "with --teacher_model_name_or_path, and on the labels alone; then report the students' accuracy, NLL and ECE "
        "per teacher beside the teachers' own accuracy and the entropy of their non-target distribution "
        "(hf_maxsup.studies.distill). Every argument not listed here is passed to the recipe (the student: e.g. "
        "--model_architecture resnet-small --num_train_epochs 8). Rerun the same command to resume.",
        "hf-maxsup distill --teachers runs/ce-seed0 runs/ls-seed0 runs/maxsup-seed0 --seeds 0 1 2 --output_dir "
        "distill/ --model_architecture resnet-small",
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


def _distill(args, passthrough: Sequence[str], argv: Sequence[str]) -> dict:
    # The teachers' non-target entropy at T is measured on the training examples the students see.
    limit = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    limit.add_argument("--max_train_samples", type=int, default=None)
    content = entry_point("distill")(
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


def _analyze(args, argv: Sequence[str]) -> dict:
    if args.labels is not None and len(args.labels) != len(args.checkpoints):
        raise SystemExit(f"--labels names {len(args.labels)} groups for {len(args.checkpoints)} checkpoints.")
    return entry_point("analyze")(
        args.checkpoints,
        args.output_dir,
        _options(DataOptions, vars(args)),
        labels=args.labels,
        device=args.device,
        log=log,
        title="Side-by-side report",
        command="hf-maxsup " + shlex.join(argv),
    )


def _compare(args, passthrough: Sequence[str], argv: Sequence[str]) -> dict:
    return entry_point("compare")(
        args.output_dir,
        losses=args.losses,
        seeds=args.seeds,
        recipe=args.recipe,
        runs_dir=args.runs_dir,
        python=args.python,
        passthrough=passthrough,
        data=_options(DataOptions, vars(args), _recipe_data(DataOptions, passthrough)),
        translation_data=_options(
            TranslationDataOptions, vars(args), _recipe_data(TranslationDataOptions, passthrough)
        ),
        device=args.device,
        command="hf-maxsup " + shlex.join(argv),
        log=log,
    )


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
    if args.command in ("analyze", "reanalyze") and passthrough:
        parser.error(f"unrecognized arguments: {' '.join(passthrough)}")
    try:
        if args.command == "reanalyze":  # no model is evaluated: no device
            entry_point("reanalyze")(args.folder, teachers_from=args.teachers_from, log=log)
            return 0
        args.device = resolve_device(args.device)  # a device this machine lacks is refused before any work
        if args.command == "distill":
            _distill(args, passthrough, argv)
        elif args.command == "analyze":
            _analyze(args, argv)
        else:
            _compare(args, passthrough, argv)
    except (ValueError, OSError, RuntimeError) as err:  # OSError: a Hub id that cannot be loaded, a full disk, ...
        print(f"hf-maxsup {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


def compare_from_recipe(recipe: str, argv: Sequence[str] | None = None) -> int:
    """`python recipes/<recipe>.py --compare ...`: runs `hf-maxsup compare --recipe <recipe> ...` (the `--compare`
    flag removed), so that a recipe can offer the comparison of its losses itself."""
    argv = [arg for arg in (sys.argv[1:] if argv is None else argv) if arg != "--compare"]
    return main(["compare", "--recipe", os.path.abspath(recipe), *argv])


def run_recipe(main: Callable[[], object], recipe: str, arguments: tuple[type, ...] = ()) -> None:
    """A recipe script's entry point: its `main()`; with `--compare` the side-by-side comparison of the losses
    through the script ([`compare_from_recipe`]), so that every recipe offers it; otherwise with `-h` / `--help` the
    recipe's short help ([`~hf_maxsup.runner.help.recipe_help`]), before anything loads torch.

    Args:
        main (`Callable`): the script's `main`, whose module's docstring describes the recipe.
        recipe (`str`): the script's path.
        arguments (`tuple[type, ...]`): the recipe's model and data arguments, for the short help.
    """
    if "--compare" in sys.argv:
        sys.exit(compare_from_recipe(recipe))
    if wants_help(sys.argv[1:]):
        summary = (sys.modules[main.__module__].__doc__ or "").strip().split("\n\n")[0]
        print(recipe_help(os.path.basename(recipe), summary, arguments))
        sys.exit(0)
    main()
    end_process_group()


def end_process_group() -> None:
    """Ends the process group of a distributed run as its script ends. Every process first waits at a barrier, which
    gloo passes only once this process's earlier collectives are done: a process that left with one still in flight
    (its peer still busy, e.g. saving) had gloo's worker thread finish it during the interpreter's shutdown, free the
    tensors it held, take the GIL and abort the finished run (SIGABRT, "terminate called without an active
    exception")."""
    # Imported on call: the recipe has imported torch already, and `hf-maxsup --help` needs no torch.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
