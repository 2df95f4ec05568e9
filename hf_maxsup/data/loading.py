"""Loading the recipes' data and checking it before any work, with errors that name the flag, file, column and row.

Every recipe (and every report) gets its data through [`load_task_dataset`]: a dataset on the Hugging Face Hub, local
data files, an image folder, or, when nothing is given, a small real data set vendored in `hf_maxsup/_embedded/` so
that the recipes run offline out of the box. [`check_columns`] checks the columns the recipe reads (`labels` its
class labels).
"""

from __future__ import annotations

import codecs
import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, load_dataset
from PIL import Image

from ..arguments import DataSourceArguments, TextColumns
from .selection import select_splits

__all__ = ["TASKS", "check_columns", "load_embedded_dataset", "load_task_dataset"]

TASKS = ("image-classification", "text-classification", "translation")

_EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "_embedded"
_EMBEDDED_SUBDIRS = {
    "image-classification": "fashion_mnist",
    "text-classification": "reuters_r8",
    "translation": "bible_en_fr",
}
_EMBEDDED_SPLITS = ("train", "validation", "test")
_FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_TEXT_FORMATS = (".csv", ".json", ".jsonl")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; valid tasks are: {', '.join(TASKS)}.")


def load_embedded_dataset(task: str) -> DatasetDict:
    """
    Load the real data subset shipped with hf_maxsup for `task`; works offline.

    - `"image-classification"`: Fashion-MNIST (28x28 grayscale), columns `image` (`datasets.Image`) and `label`
      (`ClassLabel` with the 10 class names); 10,800 / 1,200 / 5,000 rows.
    - `"text-classification"`: Reuters-21578 R8, columns `text` and `label` (`ClassLabel`, 8 topics);
      4,936 / 549 / 2,189 rows.
    - `"translation"`: aligned Bible verses, King James Version and Louis Segond 1910, column
      `translation` = `{"en": ..., "fr": ...}`; 18,000 / 1,000 / 1,000 rows.

    See `hf_maxsup/_embedded/README.md` for sources, licences and how the subsets were made.

    Args:
        task (`str`):
            One of `"image-classification"`, `"text-classification"`, `"translation"`.

    Returns:
        [`~datasets.DatasetDict`]: with `train`, `validation` and `test` splits.
    """
    _check_task(task)
    folder = _EMBEDDED_DIR / _EMBEDDED_SUBDIRS[task]
    return load_dataset("parquet", data_files={split: str(folder / f"{split}.parquet") for split in _EMBEDDED_SPLITS})


def _local_files_builder(data_files: dict[str, str]) -> str:
    extensions = {Path(path).suffix.lower() for path in data_files.values()}
    if len(extensions) > 1:
        listed = ", ".join(f"{split}={path}" for split, path in data_files.items())
        raise ValueError(f"All data files must have the same format, got several extensions: {listed}.")
    extension = extensions.pop()
    if extension not in _FILE_BUILDERS:
        raise ValueError(
            f"Unsupported data file extension {extension!r}; use one of {', '.join(sorted(_FILE_BUILDERS))}."
        )
    return _FILE_BUILDERS[extension]


def _check_data_file(split: str, path: str) -> None:
    """Fail before loading on a missing, empty or (for text formats) non-UTF-8 file, naming the flag and the fix."""
    flag = f"--{split}_file"
    if not os.path.isfile(path):
        raise ValueError(f"{flag} {path}: no such file. Check the path.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{flag} {path} is empty: give a file with a header and at least one row.")
    if Path(path).suffix.lower() not in _TEXT_FORMATS:
        return
    _check_utf8(flag, path)
    if Path(path).suffix.lower() == ".csv":
        with open(path, encoding="utf-8") as f:
            lines = list(itertools.islice((line for line in f if line.strip()), 2))
        if len(lines) < 2:
            raise ValueError(
                f"{flag} {path} has no rows (only a header?): give a file with a header and at least one row."
            )


def _check_utf8(flag: str, path: str) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{flag} {path} is not UTF-8 (byte {offset + err.start}: {err.reason}). Convert it, e.g. "
                    f"`iconv -f latin1 -t utf-8 {path} > fixed{Path(path).suffix}`, and pass the converted file."
                ) from None
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ValueError(
            f"{flag} {path} is not UTF-8 (it ends inside a character). Convert it to UTF-8 and pass the converted file."
        ) from None


def _root_cause(err: BaseException) -> BaseException:
    # `datasets` wraps the parser's error (pandas, pyarrow) in a DatasetGenerationError whose message hides it.
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return err


def _load_data_files(data_files: dict[str, str], cache_dir: str | None) -> DatasetDict:
    for split, path in data_files.items():
        _check_data_file(split, path)
    builder = _local_files_builder(data_files)
    try:
        dataset = load_dataset(builder, data_files=data_files, cache_dir=cache_dir)
    except Exception as err:
        _check_same_column_types(builder, data_files, cache_dir, err)
        cause = _root_cause(err)
        listed = ", ".join(f"--{split}_file {path}" for split, path in data_files.items())
        raise ValueError(
            f"could not read {listed}: {type(cause).__name__}: {cause}. Check that the file is valid "
            f"{builder} (one header row for csv, one object per line for "
            "jsonl)."
        ) from err
    for split, data in dataset.items():
        if len(data) == 0:
            raise ValueError(
                f"--{split}_file {data_files[split]} has no rows (only a header?): give a file with at least one row."
            )
    return dataset


def _check_same_column_types(builder: str, data_files: dict[str, str], cache_dir: str | None, err: Exception) -> None:
    """After the files failed to load together, name a column whose values have another type in one file than in
    another (`datasets` casts every file to the first one's types: integer labels in one and label names in the other
    fail as a parse error of the second file)."""
    if len(data_files) < 2:
        return
    try:
        alone = {
            split: load_dataset(builder, data_files={split: path}, cache_dir=cache_dir)[split].features
            for split, path in data_files.items()
        }
    except Exception:  # a file unreadable on its own: the caller's message names the parser's error
        return
    (first, types), *others = alone.items()
    for split, features in others:
        for column in [column for column in types if column in features and features[column] != types[column]]:
            raise ValueError(
                f"column {column!r} has values of another type in --{split}_file {data_files[split]} "
                f"({_type_name(features[column])}) than in --{first}_file {data_files[first]} "
                f"({_type_name(types[column])}), so the files cannot be read as one data set. Write that column "
                "the same way in every file (e.g. the label names, or their integer ids, in all of them)."
            ) from err


def _type_name(feature) -> str:
    dtype = str(getattr(feature, "dtype", feature))
    return "strings" if "string" in dtype else f"{dtype} values"


def _image_files(folder: str) -> list[str]:
    return sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(_IMAGE_EXTENSIONS)
    )


def _check_image_folder(split: str, folder: str) -> None:
    """Fail before training on a missing or empty image folder or on files PIL cannot read, naming them.

    `Image.verify` reads each file without decoding all its pixels, which finds truncated PNGs and files that are
    not images at a fraction of a decode's cost (a truncated JPEG can still pass it: see `image_transform`).
    """
    flag = f"--{split}_dir"
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {folder}: no such directory. Give a folder laid out as <dir>/<label>/<image>.")
    files = _image_files(folder)
    if not files:
        raise ValueError(
            f"{flag} {folder} holds no images ({', '.join(_IMAGE_EXTENSIONS)}): lay it out as <dir>/<label>/<image>."
        )
    bad = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # PIL raises OSError, SyntaxError, struct.error, ... on broken files
            bad.append(f"{path} ({err})")
    if bad:
        listed = "".join(f"\n  {entry}" for entry in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ValueError(
            f"{flag} {folder}: {len(bad)} of {len(files)} images cannot be read:{listed}{more}\n"
            "Delete or replace them, then run again."
        )


def _check_no_empty_cells(dataset: DatasetDict, columns, data_files: dict[str, str]) -> None:
    """Name the file (or split), column and row of the first empty cell of each column a recipe reads."""
    for split, data in dataset.items():
        where = f"--{split}_file {data_files[split]}" if split in data_files else f"split {split!r}"
        for column in [column for column in columns if column in data.column_names]:
            table = data.data.table.select([column])
            # An image's struct has a null `bytes` field when it is read from its path.
            table = table if isinstance(data.features[column], datasets.Image) else table.flatten()
            for name, values in zip(table.column_names, table.columns):
                if values.null_count:
                    row = pc.index(pc.is_null(values), True).as_py()
                    raise ValueError(
                        f"{where}: column {name!r} is empty in row {row + 1} (data rows counted from "
                        f"1, without the header), and in {values.null_count} rows in all. Fill in or "
                        "remove those rows."
                    )


def _load_hub_dataset(task: str, dataset_name: str, config_name: str | None, cache_dir, token) -> DatasetDict:
    try:
        return load_dataset(dataset_name, config_name, cache_dir=cache_dir, token=token)
    except Exception as err:
        # Offline, `datasets` fails with a message about the Hub that does not say how to train without it.
        config = f" (config {config_name!r})" if config_name else ""
        hint = " or image folders with --train_dir/--validation_dir" if task == "image-classification" else ""
        raise RuntimeError(
            f"Could not load dataset {dataset_name!r}{config}: {err}\n"
            "If you are offline or the Hub is unreachable, pass local data files with "
            f"--train_file/--validation_file/--test_file (csv, json, jsonl or parquet){hint}, "
            f"or leave out --dataset_name to use the embedded {task} data shipped with hf_maxsup."
        ) from err


def _load_image_folders(task: str, data_dirs: dict[str, str], cache_dir) -> DatasetDict:
    if task != "image-classification":
        raise ValueError("--train_dir/--validation_dir (image folders) are only supported for image-classification.")
    for split, path in data_dirs.items():
        _check_image_folder(split, path)
    _check_same_classes(data_dirs)
    # "**" lets `imagefolder` take the class name from each image's parent folder.
    dataset = load_dataset(
        "imagefolder",
        data_files={split: os.path.join(path, "**") for split, path in data_dirs.items()},
        cache_dir=cache_dir,
    )
    if "label" not in dataset["train" if "train" in dataset else next(iter(dataset))].column_names:
        # imagefolder labels images by their parent folder only when there are several.
        raise ValueError(
            f"{', '.join(f'--{split}_dir {path}' for split, path in data_dirs.items())}: the images "
            "are in only one class folder (or none). Lay them out as <dir>/<label>/<image> with at "
            "least two labels."
        )
    return dataset


def _check_same_classes(data_dirs: dict[str, str]) -> None:
    """An evaluation folder's class folders must be among the training folder's: `imagefolder` would make a class of
    one that only the evaluation folder has, which the model never trains on but is scored on."""
    classes = {
        split: {os.path.basename(os.path.dirname(path)) for path in _image_files(folder)}
        for split, folder in data_dirs.items()
    }
    trained = classes.get("train")
    for split, found in classes.items():
        if trained is not None and split != "train" and found - trained:
            raise ValueError(
                f"--{split}_dir {data_dirs[split]} has class folder(s) {', '.join(sorted(found - trained))} that "
                f"--train_dir {data_dirs['train']} lacks (it has {', '.join(sorted(trained))}): the model would get "
                "a class it never trains on, and be scored on it. Remove them, or add training images of them."
            )


def load_task_dataset(
    task: str,
    source: DataSourceArguments | None = None,
    *,
    image_folders: dict[str, str] | None = None,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    seed: int = 42,
    non_empty_columns: Sequence[str] = (),
) -> DatasetDict:
    """
    Load the data for a recipe from exactly one of these sources (mixing them is an error):

    1. `source.dataset_name` (+ `dataset_config_name`): a dataset on the Hugging Face Hub (or a local dataset script
       or folder), through `datasets.load_dataset`.
    2. `source.train_file` / `validation_file` / `test_file`: local csv, json, jsonl or parquet files, all of one
       format.
    3. `image_folders` (image classification only): image folders laid out as `<dir>/<label>/<image>`, loaded with
       the `imagefolder` builder.
    4. Nothing: the embedded data of [`load_embedded_dataset`].

    The splits and columns the source's flags name are kept ([`~hf_maxsup.data.selection.select_splits`]); for text,
    the text columns no flag named are found in the data ([`~hf_maxsup.arguments.TextColumns.detect_text_columns`]).
    When there is a `train` split but no `validation` split, `source.validation_fraction()` of `train` is held out
    (shuffled with `seed`) as `validation`.

    Args:
        task (`str`): one of `"image-classification"`, `"text-classification"`, `"translation"`.
        source ([`~hf_maxsup.arguments.DataSourceArguments`], *optional*): the recipe's (or report's) data source
            flags; by default none, so the embedded data.
        image_folders (`dict[str, str]`, *optional*): split (`train`, `validation`) -> image folder, as
            [`~hf_maxsup.arguments.ImageColumns.image_folders`] gives them.
        cache_dir (`str`, *optional*): where `datasets` caches downloaded and prepared data.
        token (`str` or `bool`, *optional*): Hub token for private datasets.
        seed (`int`, *optional*, defaults to 42): seed of the held-out validation split.
        non_empty_columns (`Sequence[str]`, *optional*): columns that must have no empty cell (the ones a recipe
            reads); checked before the split, so that the error names the file and row.

    Returns:
        [`~datasets.DatasetDict`]

    Raises:
        `ValueError`: unknown task, sources mixed, image folders for a text task, unsupported / mixed file formats, a
        missing, empty, unreadable or non-UTF-8 file, an unreadable image, or an empty cell in `non_empty_columns`.
        `RuntimeError`: the Hub dataset could not be loaded (e.g. offline); the original exception is chained.
    """
    _check_task(task)
    source = source or DataSourceArguments()
    data_files = source.data_files()
    dataset = select_splits(_load_source(task, source, data_files, image_folders or {}, cache_dir, token), source)
    if task == "text-classification" and isinstance(source, TextColumns):
        source.detect_text_columns(dataset["train" if "train" in dataset else next(iter(dataset))].column_names)
        non_empty_columns = [*non_empty_columns, *source.text_columns(), *filter(None, [source.text_pair_column_name])]
    _check_no_empty_cells(dataset, dict.fromkeys(non_empty_columns), data_files)
    return _hold_out_validation(dataset, source.validation_fraction(), seed)


def _load_source(task: str, source: DataSourceArguments, data_files: dict, data_dirs: dict, cache_dir, token):
    """The data of the one source given (see [`load_task_dataset`]), the embedded data when none is."""
    if sum(map(bool, (source.dataset_name, data_files, data_dirs))) > 1:
        raise ValueError(
            "Pass only one data source: --dataset_name, local files (--train_file/--validation_file/--test_file) "
            "or image folders (--train_dir/--validation_dir)."
        )
    if source.dataset_name is not None:
        return _load_hub_dataset(task, source.dataset_name, source.dataset_config_name, cache_dir, token)
    if data_dirs:
        return _load_image_folders(task, data_dirs, cache_dir)
    if data_files:
        return _load_data_files(data_files, cache_dir)
    return load_embedded_dataset(task)


def _hold_out_validation(dataset: DatasetDict, fraction: float, seed: int) -> DatasetDict:
    """`dataset` with `fraction` of `train` held out as `validation` when it has a train split but no validation
    split (and `fraction` > 0)."""
    if "train" in dataset and "validation" not in dataset and fraction > 0:
        split = dataset["train"].train_test_split(test_size=fraction, seed=seed)
        dataset["train"], dataset["validation"] = split["train"], split["test"]
    return dataset


def check_columns(dataset: Dataset | DatasetDict, columns: dict[str | None, str]) -> None:
    """
    Check that the columns a recipe was told to use exist, naming the flag that set each one.

    Args:
        dataset ([`~datasets.Dataset`] or [`~datasets.DatasetDict`]):
            The data; every split of a `DatasetDict` is checked.
        columns (`dict[str, str]`):
            Column name -> command-line flag that set it, e.g. `{"sentence": "--text_column_name"}`. Entries whose
            column is `None` (an optional flag left unset) are skipped.

    Raises:
        `ValueError`: e.g. `column 'sentence' (--text_column_name) not found in split 'train'; available columns:
        text, label`.
    """
    splits = dataset.items() if isinstance(dataset, DatasetDict) else [(None, dataset)]
    for split, data in splits:
        for column, flag in columns.items():
            if column is not None and column not in data.column_names:
                where = f" in split {split!r}" if split is not None else ""
                raise ValueError(
                    f"column {column!r} ({flag}) not found{where}; available columns: {', '.join(data.column_names)}"
                )
