"""The shape of the package: what a newcomer relies on when reading or installing it (docs/architecture.md)."""

import ast
import importlib.resources
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hf_maxsup"
RECIPES = ("image_classification.py", "text_classification.py", "translation.py", "quickstart_digits.py")


def package_modules() -> dict[str, ast.Module]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "scripts" in path.relative_to(PACKAGE).parts:  # the recipes, not modules of the package
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(), filename=str(path))
    return modules


def imported_modules(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The package's modules that `name` imports anywhere in its body, function-level imports included."""
    package = name if (PACKAGE / Path(*name.split(".")[1:]) / "__init__.py").is_file() else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            # `from . import mod` imports the submodule, not its package's __init__ (unless a name is not a module)
            candidates = submodules if all(sub in known for sub in submodules) else [base, *submodules]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(candidate for candidate in candidates if candidate in known and candidate != name)
    return found


def test_no_import_cycle():
    modules = package_modules()
    graph = {name: imported_modules(name, tree, set(modules)) for name, tree in modules.items()}
    # A package's __init__ re-exports its modules; an edge from a module to its own package is a cycle only
    # through the __init__, which the lazy top-level __init__ avoids: count the top-level one out.
    graph = {name: {dep for dep in deps if dep != "hf_maxsup"} for name, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(name, path):
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(dep) :], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_cycle_finder_finds_a_cycle():
    a = ast.parse("from .b import f\n")
    b = ast.parse("def g():\n    from .a import h\n")
    known = {"hf_maxsup.a", "hf_maxsup.b"}
    assert imported_modules("hf_maxsup.a", a, known) == {"hf_maxsup.b"}
    assert imported_modules("hf_maxsup.b", b, known) == {"hf_maxsup.a"}


def test_no_function_over_80_lines():
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in package_modules().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long, long


def test_the_losses_do_not_import_transformers():
    code = "import sys, hf_maxsup.losses; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_compare_reads_output_dirs_without_torch():
    """`compare` judges its members' folders (complete checkpoints, earlier runs) with runner.output_dir alone."""
    imports = "import sys, hf_maxsup.studies.members, hf_maxsup.runner.output_dir"
    code = f"{imports}; print(sorted({{'torch', 'transformers'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_recipes_ship_with_the_package():
    from setuptools import find_namespace_packages

    from hf_maxsup.studies.members import default_recipe

    assert Path(default_recipe()) == ROOT / "recipes" / "image_classification.py"
    assert (PACKAGE / "scripts").resolve() == ROOT / "recipes"
    # What pyproject.toml's [tool.setuptools.packages.find] puts in a wheel.
    assert "hf_maxsup.scripts" in find_namespace_packages(str(ROOT), include=["hf_maxsup*"])


def test_the_card_template_has_one_source():
    """`model_cards/` holds the one copy of the card template; the package reads it through `hf_maxsup/templates`, a
    link in a checkout (and a copy in a built wheel)."""
    from hf_maxsup.hub.card import TEMPLATE_NAME

    assert (PACKAGE / "templates").resolve() == ROOT / "model_cards"
    packaged = importlib.resources.files("hf_maxsup").joinpath("templates", TEMPLATE_NAME)
    assert packaged.read_bytes() == (ROOT / "model_cards" / TEMPLATE_NAME).read_bytes()


@pytest.mark.slow
def test_the_wheel_holds_the_recipes_and_their_configs(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path],
        check=True,
    )
    (wheel,) = tmp_path.glob("hf_maxsup-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"hf_maxsup/scripts/{recipe}" for recipe in RECIPES} <= names
    assert {"hf_maxsup/scripts/configs/deepspeed.yaml", "hf_maxsup/scripts/configs/ds_zero3.json"} <= names
    assert "hf_maxsup/templates/maxsup_model_card.md.jinja" in names


@pytest.mark.parametrize("task", ["image", "text", "translation"])
def test_the_reports_read_the_data_flags_of_the_recipes(task):
    """What `compare` reads from the recipe arguments to evaluate its members is what the recipe trained on: the
    same flag names with the same defaults (one declaration, in hf_maxsup.arguments)."""
    from dataclasses import fields

    from hf_maxsup import arguments
    from hf_maxsup.report.options import DataOptions, TranslationDataOptions, option_flags

    recipe_types = {
        "image": (arguments.ImageModelArguments, arguments.ImageDataArguments),
        "text": (arguments.ModelArguments, arguments.TextDataArguments),
        "translation": (arguments.TranslationModelArguments, arguments.TranslationDataArguments),
    }[task]
    options = TranslationDataOptions if task == "translation" else DataOptions
    recipe_defaults = {spec.name: spec.default for kind in recipe_types for spec in fields(kind)}
    report_defaults = {spec.name: spec.default for spec in fields(options)}
    read = {kwargs["dest"] for _, kwargs in option_flags(options, recipe=True)} - {"num_beams"}  # a training argument
    own_columns = {
        spec.name
        for kind in recipe_types[1].__mro__
        if kind.__module__ == arguments.__name__ and kind.__name__.endswith("Columns")
        for spec in fields(kind)
    }
    assert own_columns and own_columns <= read
    shared = read & set(recipe_defaults)
    assert shared >= own_columns | {"dataset_name", "train_file", "test_file", "validation_split_percentage"}
    assert {name: report_defaults[name] for name in shared} == {name: recipe_defaults[name] for name in shared}


def test_the_reports_read_the_recipes_aliases_too():
    """`--num_beams` and `--text_column_names` (run_translation.py's and run_classification.py's names) mean to the
    report what they mean to the recipe."""
    import argparse

    from hf_maxsup.report.options import DataOptions, TranslationDataOptions, option_flags

    def parse(options, argv):
        parser = argparse.ArgumentParser()
        for flags, kwargs in option_flags(options, recipe=True):
            parser.add_argument(*flags, **kwargs)
        given = {key: value for key, value in vars(parser.parse_args(argv)).items() if value is not None}
        return options(**given)

    assert parse(TranslationDataOptions, ["--num_beams", "4"]).num_beams == 4
    assert parse(TranslationDataOptions, ["--generation_num_beams", "3"]).num_beams == 3
    pair = parse(DataOptions, ["--text_column_names", "premise, hypothesis"])
    assert (pair.text_column_name, pair.text_pair_column_name) == ("premise", "hypothesis")
    with pytest.raises(ValueError, match="give one text column, or two"):
        parse(DataOptions, ["--text_column_names", "a,b,c"])
