"""Linear-probe transfer: how useful the frozen penultimate features of a trained classifier are on another task.

The MaxSup paper freezes ImageNet-trained ResNet-50 backbones, fits a linear classifier on their penultimate
features of CIFAR-10 and reports its test accuracy: CE 81.4, LS 74.6, MaxSup 81.0. Label smoothing collapses each
class to a tight cluster and so discards information that other tasks need; MaxSup keeps more of it.

[`linear_probe`] fits and scores the probe on features you collected (e.g. with [`collect_features`]);
[`few_shot_probe`] fits it on a few labels per class, averaged over random draws of those labels;
[`digits_probe_dataset`] is an offline target task for small grayscale image models: scikit-learn's bundled
handwritten digits, upscaled from 8x8 to the model's input size.
"""

import numpy as np

from ._utils import to_labels, to_numpy

__all__ = ["digits_probe_dataset", "few_shot_probe", "linear_probe"]


def linear_probe(
    train_features, train_labels, test_features, test_labels, C: float = 1.0, max_iter: int = 5000
) -> float:
    """Accuracy of a logistic-regression probe fitted on frozen features.

    The features are standardised with the training split's mean and standard deviation, then a multinomial
    `sklearn.linear_model.LogisticRegression` (L2, L-BFGS) is fitted on the training split and scored on the test
    split. Deterministic for given inputs.

    Args:
        train_features (`np.ndarray` or `torch.Tensor` of shape `(N, D)`): features of the probe's training examples.
        train_labels (`np.ndarray` or `torch.Tensor` of shape `(N,)`): their integer labels.
        test_features (`np.ndarray` or `torch.Tensor` of shape `(M, D)`): features of the test examples.
        test_labels (`np.ndarray` or `torch.Tensor` of shape `(M,)`): their integer labels.
        C (`float`, *optional*, defaults to 1.0): inverse L2 regularisation strength.
        max_iter (`int`, *optional*, defaults to 5000): L-BFGS iterations.

    Returns:
        `float`: top-1 accuracy on the test split, in [0, 1].
    """
    # scikit-learn is optional (the `analysis` extra): imported when a probe is fitted.
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as err:
        raise ImportError("The linear probe needs scikit-learn: run `pip install hf_maxsup[analysis]`.") from err
    train_features, test_features = to_numpy(train_features), to_numpy(test_features)
    for name, features in (("train_features", train_features), ("test_features", test_features)):
        if features.ndim != 2 or len(features) == 0 or not np.isfinite(features).all():
            raise ValueError(f"{name} must be a finite array of shape (N, D) with N >= 1, got {features.shape}.")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"train and test features differ in width: {train_features.shape} vs {test_features.shape}.")
    train_labels = to_labels(train_labels, len(train_features))
    test_labels = to_labels(test_labels, len(test_features))
    if len(np.unique(train_labels)) < 2:
        raise ValueError("the probe's training split must hold at least two classes.")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    probe.fit(train_features, train_labels)
    return float((probe.predict(test_features) == test_labels).mean())


def few_shot_probe(
    train_features, train_labels, test_features, test_labels, shots: int = 20, draws: int = 20, seed: int = 0
) -> float:
    """Mean accuracy of [`linear_probe`]s each fitted on `shots` training examples per class (drawn without
    replacement, the draws fixed by `seed`, so every model is probed on the same examples) and scored on the whole
    test split, over `draws` draws.

    Args:
        train_features, train_labels, test_features, test_labels: as for [`linear_probe`].
        shots (`int`, *optional*, defaults to 20): labelled examples per class in each fit.
        draws (`int`, *optional*, defaults to 20): fits averaged.
        seed (`int`, *optional*, defaults to 0): seed of the draws.

    Returns:
        `float`: the mean test accuracy, in [0, 1].

    Raises:
        `ValueError`: `shots` or `draws` below 1, or a class with fewer than `shots` training examples.
    """
    train_labels = to_labels(train_labels, len(to_numpy(train_features)))
    classes, counts = np.unique(train_labels, return_counts=True)
    if shots < 1 or draws < 1:
        raise ValueError(f"shots and draws must be at least 1; got {shots} and {draws}.")
    if counts.min() < shots:
        raise ValueError(
            f"class {classes[counts.argmin()]} has {counts.min()} training examples, fewer than {shots} shots."
        )
    rng = np.random.default_rng(seed)
    train_features = to_numpy(train_features)
    accuracies = []
    for _ in range(draws):
        chosen = np.concatenate([rng.choice(np.flatnonzero(train_labels == c), shots, replace=False) for c in classes])
        accuracies.append(linear_probe(train_features[chosen], train_labels[chosen], test_features, test_labels))
    return float(np.mean(accuracies))


def digits_probe_dataset(image_size: int = 28, test_size: float = 0.5, seed: int = 0, max_samples: int | None = None):
    """scikit-learn's handwritten digits (1,797 images of 8x8 pixels, 10 classes) as images for a linear probe.

    The 0-16 intensities are scaled to 0-255 (ink bright on a dark background, as in MNIST and Fashion-MNIST) and
    upscaled with bilinear interpolation to `image_size` x `image_size` grayscale PIL images. The split is stratified
    and fixed by `seed`, so every model is probed on the same examples. Bundled with scikit-learn: works offline.

    Args:
        image_size (`int`, *optional*, defaults to 28): side of the returned images.
        test_size (`float`, *optional*, defaults to 0.5): share of the images held out to score the probe.
        seed (`int`, *optional*, defaults to 0): seed of the split.
        max_samples (`int`, *optional*): keep a stratified subset of this many images (quick checks); all 1,797 if
            not given.

    Returns:
        `datasets.DatasetDict` with `train` and `test` splits, columns `image` (PIL, mode `"L"`) and `label` (`int`).
    """
    # scikit-learn is optional (the `analysis` extra): imported when the probe data is built.
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError("The digits probe needs scikit-learn: run `pip install hf_maxsup[analysis]`.") from err
    # Imported with the probe data: the array functions of this package need neither datasets nor PIL.
    from datasets import Dataset, DatasetDict, Features, Image, Value
    from PIL import Image as PILImage

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = [
        PILImage.fromarray(image, mode="L").resize((image_size, image_size), PILImage.Resampling.BILINEAR)
        for image in pixels
    ]
    index = np.arange(len(images))
    if max_samples is not None and max_samples < len(index):
        index, _ = train_test_split(index, train_size=max_samples, stratify=digits.target, random_state=seed)
    train_index, test_index = train_test_split(
        index, test_size=test_size, stratify=digits.target[index], random_state=seed
    )
    features = Features({"image": Image(), "label": Value("int64")})

    def split(ids):
        return Dataset.from_dict(
            {"image": [images[i] for i in ids], "label": [int(digits.target[i]) for i in ids]}, features=features
        )

    return DatasetDict({"train": split(train_index), "test": split(test_index)})
