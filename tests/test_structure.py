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
        "text": (arguments.TextModelArguments, arguments.TextDataArguments),
        "translation": (arguments.TranslationModelArguments, arguments.TranslationDataArguments),
    }[task]
    options = TranslationDataOptions if task == "translation" else DataOptions
    recipe_defaults = {spec.name: spec.default for kind in recipe_types for spec in fields(kind)}
    report_defaults = {spec.name: spec.default for spec in fields(options)}
    read = {kwargs["dest"] for _, kwargs in option_flags(options, recipe=True)} - {"num_beams"}  # a training argument
    own_columns = {
        spec.name
        for kind in recipe_types[1].__mro__
        if kind.__module__.startswith(arguments.__name__) and kind.__name__.endswith("Columns")
        for spec in fields(kind)
    }
    assert own_columns and own_columns <= read
    shared = read & set(recipe_defaults)
    assert shared >= own_columns | {"dataset_name", "train_file", "test_file", "validation_split_percentage"}
    assert {name: report_defaults[name] for name in shared} == {name: recipe_defaults[name] for name in shared}


def test_the_reports_read_the_recipes_aliases_too():
    """`--num_beams`, `--text_column_names` and `--task_name` (run_translation.py's, run_classification.py's and
    run_glue.py's names) mean to the report what they mean to the recipe."""
    import argparse

    from hf_maxsup.arguments import GLUE_DATASET as GLUE
    from hf_maxsup.report.options import DataOptions, TranslationDataOptions, option_flags

    def parse(options, argv):
        parser = argparse.ArgumentParser()
        for flags, kwargs in option_flags(options, recipe=True):
            parser.add_argument(*flags, **kwargs)
        given = {key: value for key, value in vars(parser.parse_args(argv)).items() if value is not None}
        return options(**given)

    assert parse(TranslationDataOptions, ["--num_beams", "4"]).num_beams == 4
    assert parse(TranslationDataOptions, ["--generation_num_beams", "3"]).num_beams == 3
    joined = parse(DataOptions, ["--text_column_names", "title, body,category"])
    assert (joined.text_columns(), joined.text_pair_column_name) == (["title", "body", "category"], None)
    assert parse(DataOptions, ["--text_column_name", "a,b"]).text_columns() == ["a", "b"]  # the README's spelling
    pair = parse(DataOptions, ["--text_column_names", "premise", "--text_pair_column_name", "hypothesis"])
    assert (pair.text_columns(), pair.text_pair_column_name) == (["premise"], "hypothesis")
    glue = parse(DataOptions, ["--task_name", "MRPC"])
    assert (glue.text_columns(), glue.text_pair_column_name, glue.dataset_name) == (["sentence1"], "sentence2", GLUE)
    with pytest.raises(ValueError, match="regression"):
        parse(DataOptions, ["--task_name", "stsb"])


MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def package_sources() -> dict[str, str]:
    """Module name -> source text, for the checks that read lines and comments."""
    sources = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "scripts" in path.relative_to(PACKAGE).parts:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        sources[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path.read_text()
    return sources


def test_no_module_over_450_lines():
    long = {name: len(text.splitlines()) for name, text in package_sources().items()}
    assert not {name: count for name, count in long.items() if count > MAX_MODULE_LINES}


def test_no_function_over_60_lines():
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in package_modules().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


def function_level_imports(tree: ast.Module):
    """The import statements inside function bodies, with their function."""
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield function, node


def is_own_module(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return bool(node.level) or (node.module or "").split(".")[0] == "hf_maxsup"
    return any(alias.name.split(".")[0] == "hf_maxsup" for alias in node.names)


def import_reason(lines: list[str], lineno: int) -> str:
    """The comment that says why the import at `lineno` (1-based) is made in a function: on its line, or in the
    comment lines just above it or above the `try:` and imports it is grouped with."""
    index = lineno - 1
    reason = lines[index].partition("#")[2]
    index -= 1
    while index >= 0 and lines[index].strip().startswith(("from ", "import ", "try:")):
        reason += lines[index].partition("#")[2]
        index -= 1
    while index >= 0 and lines[index].strip().startswith("#"):
        reason += lines[index].strip()
        index -= 1
    return reason


def test_function_level_imports_are_lazy_optional_dependencies_with_a_reason():
    """No module imports the package's own modules inside a function, except where what it imports needs an optional
    dependency (triton, the [analysis] extra); every function-level import says why in a comment."""
    sources = package_sources()
    found = []
    for name, tree in package_modules().items():
        lines = sources[name].splitlines()
        for function, node in function_level_imports(tree):
            reason = import_reason(lines, node.lineno)
            where = f"{name}.{function.name} line {node.lineno}"
            if not reason.strip():
                found.append(f"{where}: no comment saying why the import is made in the function")
            elif is_own_module(node) and "optional" not in reason:
                found.append(f"{where}: a function-level import of the package's own module")
    assert not found, found


def test_the_import_checks_find_what_they_look_for():
    source = (
        "def f():\n    from .b import g\n\n"
        "def h():\n    # optional\n    try:\n        import numpy\n    except ImportError:\n        pass\n"
    )
    imports = [(function.name, is_own_module(node)) for function, node in function_level_imports(ast.parse(source))]
    assert imports == [("f", True), ("h", False)]
    lines = source.splitlines()
    assert import_reason(lines, 2) == "" and import_reason(lines, 7) == "# optional"


def test_no_private_name_imported_from_another_module():
    """Modules import each other's public names only (a backend module such as `kernels._c` is private to its
    package, whose dispatcher imports it)."""
    modules = package_modules()
    found = [
        f"{name}: from {'.' * node.level}{node.module or ''} import {alias.name}"
        for name, tree in modules.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("hf_maxsup"))
        for alias in node.names
        if alias.name.startswith("_")
        and alias.name != "__version__"
        and not any(module.endswith(f".{alias.name}") for module in modules)
    ]
    assert not found, found


def test_package_faces_hold_no_logic():
    """A package's `__init__` re-exports its modules' names; functions and classes live in named modules."""
    found = [
        f"{path.relative_to(ROOT)}: {node.name}"
        for path in PACKAGE.rglob("__init__.py")
        if "scripts" not in path.relative_to(PACKAGE).parts
        for node in ast.parse(path.read_text()).body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    ]
    assert not found, found


@pytest.mark.parametrize(
    "job, text, home",
    [
        ("the PEFT unwrap", "get_base_model()", "hf_maxsup/auto.py"),
        ("the task -> Auto-class table", '"AutoModelForSequenceClassification"', "hf_maxsup/auto.py"),
        ("the reader of a card's hf_maxsup metadata", 'get("hf_maxsup")', "hf_maxsup/hub/metadata.py"),
        ("the output-dir lock file", "_hf_maxsup.lock", "hf_maxsup/runner/output_dir.py"),
    ],
)
def test_one_home_for_each_job(job, text, home):
    holders = sorted(
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if "scripts" not in path.relative_to(PACKAGE).parts and text in path.read_text()
    )
    assert holders == [home], f"{job} is written in {holders}"
