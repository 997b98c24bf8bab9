"""Measuring a model trained on scikit-learn's 8×8 digits: does it draw the digit asked for, and all its variety?

- **Digit accuracy.** An independent classifier (an RBF support-vector machine) is fitted on the real 8×8
  digits only; generated images of any size are brought back to 8×8 by area averaging (the inverse of the
  training upsampling up to blur) and read by it. The figure is the fraction of generated images read as the
  class they were generated for. The classifier's own held-out accuracy on real digits, both at 8×8 and after
  the training resolution's round trip (upsample as the training data is made, then area downsample), is
  reported beside it so that the figure can be judged.
- **Distribution.** Accuracy saturates (one prototype per class reads 100 %), so :class:`DigitDistribution`
  adds a Fréchet distance against its real-vs-real floor and improved precision and recall in a fixed feature
  space of real digits (:mod:`flow_pipelines.evaluation.distribution`).

:func:`evaluate_digit_pipeline` draws class-balanced samples from a pipeline and reports all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..images import quantize_images
from ..schedulers import model_evaluations, steps_for_model_evaluations
from .distribution import DEFAULT_NEIGHBOURS, DistributionReport, feature_frechet_distance, precision_recall

DIGIT_SIDE = 8
# load_digits stores pixel intensities 0..16.
_DIGITS_MAX_VALUE = 16.0
DIGIT_PCA_COMPONENTS = 24
"""Dimensions of the digits' feature space: the PCA keeps 93 % of the pixel variance."""
MAX_SAMPLES_PER_DIGIT = 87
"""Most generated images per digit a comparison can take: the real half that gives the floor holds 87 eights."""


def to_digit_features(images: torch.Tensor | np.ndarray | Sequence[Any]) -> np.ndarray:
    """Bring images in [0, 1] to the classifier's input: 8×8 grey by area averaging, flattened.

    Args:
        images: A tensor or array ``(B, H, W)``, ``(B, 1, H, W)`` or ``(B, C, H, W)`` (colour is averaged
            to grey) with values in [0, 1], or a list of PIL images (0..255).

    Returns:
        A float64 array ``(B, 64)`` in [0, 1].

    Raises:
        ValueError: For images smaller than 8×8 or of an unsupported shape.
    """
    if isinstance(images, (list, tuple)):
        arrays = [np.asarray(image.convert("L"), dtype=np.float32) / 255.0 for image in images]
        images = torch.from_numpy(np.stack(arrays))
    tensor = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    tensor = tensor.detach().to(torch.float32).cpu()
    if tensor.ndim == 3:
        tensor = tensor[:, None]
    if tensor.ndim != 4:
        raise ValueError(f"images must be (B, H, W) or (B, C, H, W); got shape {tuple(tensor.shape)}.")
    if tensor.shape[1] not in (1, 3, 4) and tensor.shape[-1] in (1, 3, 4):
        tensor = tensor.permute(0, 3, 1, 2)  # channels-last input
    if tensor.shape[-1] < DIGIT_SIDE or tensor.shape[-2] < DIGIT_SIDE:
        raise ValueError(
            f"images must be at least {DIGIT_SIDE}x{DIGIT_SIDE}; got {tuple(tensor.shape[-2:])}."
        )
    grey = tensor[:, :3].mean(dim=1, keepdim=True)
    small = F.interpolate(grey, size=(DIGIT_SIDE, DIGIT_SIDE), mode="area")
    return small.clamp(0.0, 1.0).reshape(small.shape[0], -1).double().numpy()


@dataclass
class DigitClassifier:
    """A digit classifier fitted on real 8×8 digits, with its held-out accuracy.

    Args:
        model: The fitted scikit-learn estimator (inputs: 64 values in [0, 1]).
        heldout_accuracy: Accuracy on the real digits it was not fitted on.
        heldout_images: The held-out real digits, ``(N, 8, 8)`` in [0, 1].
        heldout_labels: Their labels.
    """

    model: Any
    heldout_accuracy: float
    heldout_images: np.ndarray
    heldout_labels: np.ndarray

    @classmethod
    def fit(cls, test_size: float = 0.25, seed: int = 0) -> DigitClassifier:
        """Fit an RBF SVM on a stratified split of scikit-learn's digits.

        Args:
            test_size: Fraction held out to measure the classifier.
            seed: Split seed.

        Returns:
            The fitted classifier.

        Raises:
            ValueError: If ``test_size`` is not in (0, 1).
        """
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.svm import SVC

        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size={test_size} must lie in (0, 1).")
        digits = load_digits()
        images = digits.images / _DIGITS_MAX_VALUE
        train_x, test_x, train_y, test_y = train_test_split(
            images, digits.target, test_size=test_size, random_state=seed, stratify=digits.target
        )
        model = SVC(C=10.0, gamma="scale").fit(train_x.reshape(len(train_x), -1), train_y)
        accuracy = float((model.predict(test_x.reshape(len(test_x), -1)) == test_y).mean())
        return cls(model, accuracy, test_x, test_y)

    def predict(self, images: torch.Tensor | np.ndarray | Sequence[Any]) -> np.ndarray:
        """Read digits from images in [0, 1] of any size (see :func:`to_digit_features`).

        Args:
            images: The images.

        Returns:
            Predicted digits ``(B,)``.
        """
        return self.model.predict(to_digit_features(images))

    def accuracy(self, images: torch.Tensor | np.ndarray | Sequence[Any], labels: Sequence[int]) -> float:
        """Fraction of images read as their label.

        Args:
            images: The images, in [0, 1].
            labels: The digit each image should show.

        Returns:
            The accuracy in [0, 1].

        Raises:
            ValueError: If the counts differ.
        """
        labels = np.asarray(labels)
        predictions = self.predict(images)
        if len(predictions) != len(labels):
            raise ValueError(f"{len(predictions)} images but {len(labels)} labels.")
        return float((predictions == labels).mean())

    def roundtrip_accuracy(self, resolution: int, interpolation: str = "bilinear") -> float:
        """Held-out accuracy after the training data's upsampling to ``resolution`` and back.

        The held-out digits are made into images as the training data is (8-bit grey, PIL resize with
        ``interpolation``), then read like generated samples. It bounds what a perfect generator at that
        resolution could score.

        Args:
            resolution: The training resolution.
            interpolation: The training resize filter.

        Returns:
            The accuracy in [0, 1].
        """
        return self.accuracy(
            training_round_trip(self.heldout_images, resolution, interpolation), self.heldout_labels
        )


def training_round_trip(images: np.ndarray, resolution: int, interpolation: str = "bilinear") -> np.ndarray:
    """Real digits as the training data shows them: stored as 8-bit grey, resized to ``resolution``.

    Args:
        images: ``(N, 8, 8)`` digits in [0, 1].
        resolution: The training resolution.
        interpolation: The training resize filter.

    Returns:
        ``(N, 1, resolution, resolution)`` float images in [0, 1] (multiples of 1/255).
    """
    from PIL import Image

    from ..images import ImageTransform

    transform = ImageTransform(resolution, 1, center_crop=True, interpolation=interpolation)
    grey = np.rint(np.asarray(images) * 255.0).astype(np.uint8)
    return (
        torch.stack([transform(Image.fromarray(image, mode="L")) for image in grey]).float().numpy() / 255.0
    )


class DigitDistribution:
    """The digits' fixed feature space and reference, for FD (with its floor) and precision and recall.

    The feature space is a PCA (``num_components`` dimensions) of the pixels of all 1,797 of scikit-learn's
    digits at their own 8×8, so it is the same whatever the resolution of the model. The digits are split in
    two halves, stratified by class with a fixed seed: the second half is the reference, the first supplies
    the real-vs-real floor (a draw with the generated set's class counts). Images of any resolution are
    compared as the classifier reads them (area-averaged to 8×8 grey, :func:`to_digit_features`), and the real
    images first take the trip the training data took (stored as 8-bit grey, resized to ``resolution`` with
    the training filter), so that a model is measured against what it was shown. The model was trained on
    both halves: these figures measure how well it matches the distribution, not whether it memorised it.

    Args:
        resolution: The side of the images the model makes (8 is the digits' own).
        interpolation: The training data's resize filter.
        num_components: Feature dimensions.
        k: Neighbour of precision and recall.
        seed: Seed of the split.

    Attributes:
        floor_images: The real half that gives the floor, ``(N, 1, resolution, resolution)`` in [0, 1].
        reference_images: The reference half, likewise.

    Raises:
        ValueError: For a resolution below 8 or a component count outside [2, 64].
    """

    def __init__(
        self,
        resolution: int = DIGIT_SIDE,
        interpolation: str = "bilinear",
        num_components: int = DIGIT_PCA_COMPONENTS,
        k: int = DEFAULT_NEIGHBOURS,
        seed: int = 0,
    ) -> None:
        from sklearn.datasets import load_digits
        from sklearn.decomposition import PCA
        from sklearn.model_selection import train_test_split

        if resolution < DIGIT_SIDE:
            raise ValueError(f"resolution={resolution} must be >= {DIGIT_SIDE} (the digits are 8x8).")
        if not 2 <= num_components <= DIGIT_SIDE * DIGIT_SIDE:
            raise ValueError(f"num_components={num_components} must lie in [2, 64].")
        digits = load_digits()
        self.pca = PCA(n_components=num_components, random_state=seed).fit(
            to_digit_features(digits.images / 16.0)
        )
        images = training_round_trip(digits.images / 16.0, resolution, interpolation)
        floor_x, reference_x, floor_y, reference_y = train_test_split(
            images, digits.target, test_size=0.5, random_state=seed, stratify=digits.target
        )
        self.resolution = resolution
        self.k = k
        self.floor_images = floor_x
        self.floor_features = self.features(floor_x)
        self.floor_labels = np.asarray(floor_y)
        self.reference_images = reference_x
        self.reference_features = self.features(reference_x)
        self.reference_labels = np.asarray(reference_y)
        self._floor_order = np.random.default_rng(seed).permutation(len(self.floor_labels))

    def features(self, images: torch.Tensor | np.ndarray | Sequence[Any]) -> np.ndarray:
        """Feature vectors of images in [0, 1] (any size of at least 8×8; see ``to_digit_features``).

        Args:
            images: The images.

        Returns:
            ``(N, num_components)`` features.
        """
        return self.pca.transform(to_digit_features(images))

    @property
    def max_balanced_samples(self) -> int:
        """Most generated images, balanced over the ten digits, that a comparison can take (870).

        The floor needs as many real images of each class as there are generated ones; the floor half holds
        87 to 91 of each digit (:data:`MAX_SAMPLES_PER_DIGIT` of the rarest).
        """
        return 10 * int(np.bincount(self.floor_labels, minlength=10).min())

    def floor_set(self, labels: Sequence[int]) -> np.ndarray:
        """Real features with the same class counts as ``labels`` (a fixed draw from the floor half).

        Args:
            labels: The generated images' classes.

        Returns:
            ``(len(labels), num_components)`` real features.

        Raises:
            ValueError: If a class is asked for more often than the floor half holds it, or is not a digit.
        """
        labels = np.asarray(labels)
        chosen = []
        for digit, count in zip(*np.unique(labels, return_counts=True), strict=True):
            candidates = self._floor_order[self.floor_labels[self._floor_order] == digit]
            if digit not in range(10) or count > len(candidates):
                raise ValueError(
                    f"{count} images of class {digit}, but the real set that gives the floor has "
                    f"{len(candidates)}; compare at most {self.max_balanced_samples} images, balanced over the digits 0..9."
                )
            chosen.append(candidates[:count])
        return self.floor_features[np.concatenate(chosen)]

    def compare(
        self, images: torch.Tensor | np.ndarray | Sequence[Any], labels: Sequence[int]
    ) -> DistributionReport:
        """FD, precision and recall of generated images against the reference, with the real-vs-real floor.

        Args:
            images: Generated images in [0, 1] (quantised as saved, ideally).
            labels: Their classes (the floor set matches their counts).

        Returns:
            The report.

        Raises:
            ValueError: If the counts differ, or as :meth:`floor_set`.
        """
        generated = self.features(images)
        if len(generated) != len(labels):
            raise ValueError(f"{len(generated)} images but {len(labels)} labels.")
        real = self.floor_set(labels)
        reference = self.reference_features
        precision, recall = precision_recall(reference, generated, self.k)
        precision_floor, recall_floor = precision_recall(reference, real, self.k)
        return DistributionReport(
            fd=feature_frechet_distance(generated, reference),
            fd_floor=feature_frechet_distance(real, reference),
            precision=precision,
            recall=recall,
            precision_floor=precision_floor,
            recall_floor=recall_floor,
            num_samples=int(len(generated)),
            num_reference=int(len(reference)),
        )


@torch.no_grad()
def evaluate_digit_pipeline(
    pipeline: Any,
    classifier: DigitClassifier | None = None,
    distribution: DigitDistribution | None = None,
    samples_per_class: int = 50,
    num_inference_steps: int = 20,
    guidance_scale: float = 2.0,
    seed: int = 0,
    batch_size: int = 250,
    interpolation: str = "bilinear",
) -> dict[str, float | int]:
    """Generate class-balanced digits with a pipeline; report accuracy, FD against its floor, precision and recall.

    The samples are quantised to 8 bits, as a saved PNG would be, before they are measured.

    Args:
        pipeline: A ``FlowPipeline`` trained on the digits (classes 0..9).
        classifier: The classifier (fitted here if None).
        distribution: The feature space and reference (built here for the pipeline's resolution if None).
        samples_per_class: Images per digit (at most :data:`MAX_SAMPLES_PER_DIGIT`).
        num_inference_steps: Sampling steps.
        guidance_scale: Classifier-free guidance scale.
        seed: Seed of the sampling noise.
        batch_size: Images per pipeline call.
        interpolation: The training resize filter (for the real images' round trip).

    Returns:
        ``{"digit_accuracy", "per_class_min_accuracy", "num_samples", "num_inference_steps",
        "num_model_evaluations", "guidance_scale", "classifier_heldout_accuracy",
        "classifier_roundtrip_accuracy"}`` and the figures of :meth:`DistributionReport.as_dict` (``fd``,
        ``fd_floor``, ``fd_ratio``, ``precision``, ``recall`` and their floors, ``num_reference``).

    Raises:
        ValueError: If the pipeline does not have 10 classes, or ``samples_per_class`` is not in [1, 87].
    """
    num_classes = int(pipeline.transformer.config.num_classes)
    if num_classes != 10:
        raise ValueError(f"Digit accuracy needs a 10-class model; this one has {num_classes} classes.")
    resolution = int(pipeline.transformer.config.sample_size) * int(getattr(pipeline, "vae_scale_factor", 1))
    distribution = distribution or DigitDistribution(resolution, interpolation)
    most = distribution.max_balanced_samples // 10
    if not 1 <= samples_per_class <= most:
        raise ValueError(
            f"samples_per_class={samples_per_class} must lie in [1, {most}] (the real set that gives the floor "
            f"has {most} images of its rarest digit)."
        )
    classifier = classifier or DigitClassifier.fit()
    labels = np.repeat(np.arange(10), samples_per_class)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    batches = []
    for start in range(0, len(labels), batch_size):
        images = pipeline(
            class_labels=labels[start : start + batch_size].tolist(),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="np",
        ).images
        batches.append(quantize_images(images).float() / 255.0)
    images = torch.cat(batches)
    correct = classifier.predict(images) == labels
    per_class = [float(correct[labels == digit].mean()) for digit in range(10)]
    return {
        "digit_accuracy": float(correct.mean()),
        "per_class_min_accuracy": min(per_class),
        "num_samples": int(len(labels)),
        "num_inference_steps": int(num_inference_steps),
        "num_model_evaluations": model_evaluations(pipeline.scheduler, num_inference_steps),
        "guidance_scale": float(guidance_scale),
        "classifier_heldout_accuracy": classifier.heldout_accuracy,
        "classifier_roundtrip_accuracy": classifier.roundtrip_accuracy(resolution, interpolation),
        **distribution.compare(images, labels).as_dict(),
    }


REPORTED_MODEL_EVALUATIONS: tuple[int, ...] = (8, 20)
"""Sampling budgets (model evaluations per image) at which a digits run is reported."""


def digit_report(
    pipeline: Any,
    guidance_scales: Sequence[float],
    model_evaluations: Sequence[int] = REPORTED_MODEL_EVALUATIONS,
    samples_per_class: int = 50,
    seed: int = 0,
    interpolation: str = "bilinear",
) -> list[dict[str, float | int]]:
    """:func:`evaluate_digit_pipeline` at every guidance scale and sampling budget, with the pipeline's scheduler.

    A budget is a number of model evaluations per image (a guided evaluation counted once); the scheduler
    takes the most steps that fit in it (:func:`~flow_pipelines.schedulers.steps_for_model_evaluations`).

    Args:
        pipeline: A ``FlowPipeline`` trained on the digits.
        guidance_scales: Guidance scales (duplicates are measured once).
        model_evaluations: Budgets.
        samples_per_class: Images per digit at each setting.
        seed: Seed of the sampling noise (the same at every setting).
        interpolation: The training resize filter.

    Returns:
        One :func:`evaluate_digit_pipeline` record per (guidance, budget), guidance-major.
    """
    resolution = int(pipeline.transformer.config.sample_size) * int(getattr(pipeline, "vae_scale_factor", 1))
    classifier = DigitClassifier.fit()
    distribution = DigitDistribution(resolution, interpolation)
    rows = []
    for guidance in dict.fromkeys(float(g) for g in guidance_scales):
        for budget in model_evaluations:
            rows.append(
                evaluate_digit_pipeline(
                    pipeline,
                    classifier,
                    distribution,
                    samples_per_class=samples_per_class,
                    num_inference_steps=steps_for_model_evaluations(pipeline.scheduler, budget),
                    guidance_scale=guidance,
                    seed=seed,
                    interpolation=interpolation,
                )
            )
    return rows


def format_digit_report(rows: Sequence[dict[str, Any]]) -> str:
    """The records of :func:`digit_report` as a Markdown table, the real-vs-real floor in brackets.

    Args:
        rows: Records of :func:`evaluate_digit_pipeline`.

    Returns:
        The table (header, separator, one line per record).
    """
    lines = [
        "| guidance | model evaluations | digit accuracy | FD / real floor | precision (real) | recall (real) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['guidance_scale']:g} | {row['num_model_evaluations']} | {row['digit_accuracy']:.3f} | "
            f"{row['fd_ratio']:.2f} | {row['precision']:.3f} ({row['precision_floor']:.3f}) | "
            f"{row['recall']:.3f} ({row['recall_floor']:.3f}) |"
        )
    return "\n".join(lines)
