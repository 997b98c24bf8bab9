"""Digit accuracy: does a model trained on scikit-learn's 8×8 digits draw the digit it is asked for?

An independent classifier (an RBF support-vector machine) is fitted on the real 8×8 digits only;
generated images of any size are brought back to 8×8 by area averaging (the inverse of the training
upsampling up to blur) and read by it. The figure reported is the fraction of generated images read as
the class they were generated for. The classifier's own held-out accuracy on real digits, both at 8×8
and after the training resolution's round trip (upsample as the training data is made, then area
downsample), is reported beside it so that the figure can be judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DIGIT_SIDE = 8
# load_digits stores pixel intensities 0..16.
_DIGITS_MAX_VALUE = 16.0


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
        from PIL import Image

        from ..images import ImageTransform

        transform = ImageTransform(resolution, 1, center_crop=True, interpolation=interpolation)
        grey = np.rint(self.heldout_images * 255.0).astype(np.uint8)
        upsampled = torch.stack([transform(Image.fromarray(image, mode="L")) for image in grey])
        return self.accuracy(upsampled.float() / 255.0, self.heldout_labels)


@torch.no_grad()
def evaluate_digit_pipeline(
    pipeline: Any,
    classifier: DigitClassifier | None = None,
    samples_per_class: int = 50,
    num_inference_steps: int = 20,
    guidance_scale: float = 2.0,
    seed: int = 0,
    batch_size: int = 250,
    interpolation: str = "bilinear",
) -> dict[str, float | int]:
    """Generate digits with a pipeline and measure how many the classifier reads as the class asked for.

    Args:
        pipeline: A ``FlowPipeline`` trained on the digits (classes 0..9).
        classifier: The classifier (fitted here if None).
        samples_per_class: Images per digit.
        num_inference_steps: Sampling steps.
        guidance_scale: Classifier-free guidance scale.
        seed: Seed of the sampling noise.
        batch_size: Images per pipeline call.
        interpolation: The training resize filter (for the round-trip reference figure).

    Returns:
        ``{"digit_accuracy", "per_class_min_accuracy", "num_samples", "num_inference_steps",
        "guidance_scale", "classifier_heldout_accuracy", "classifier_roundtrip_accuracy"}``.

    Raises:
        ValueError: If the pipeline does not have 10 classes or ``samples_per_class`` < 1.
    """
    if samples_per_class < 1:
        raise ValueError(f"samples_per_class={samples_per_class} must be >= 1.")
    num_classes = int(pipeline.transformer.config.num_classes)
    if num_classes != 10:
        raise ValueError(f"Digit accuracy needs a 10-class model; this one has {num_classes} classes.")
    classifier = classifier or DigitClassifier.fit()
    labels = np.repeat(np.arange(10), samples_per_class)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    predictions = []
    for start in range(0, len(labels), batch_size):
        chunk = labels[start : start + batch_size].tolist()
        images = pipeline(
            class_labels=chunk,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="pt",
        ).images
        predictions.append(classifier.predict(images))
    predicted = np.concatenate(predictions)
    correct = predicted == labels
    per_class = [float(correct[labels == digit].mean()) for digit in range(10)]
    resolution = int(pipeline.transformer.config.sample_size) * int(getattr(pipeline, "vae_scale_factor", 1))
    return {
        "digit_accuracy": float(correct.mean()),
        "per_class_min_accuracy": min(per_class),
        "num_samples": int(len(labels)),
        "num_inference_steps": int(num_inference_steps),
        "guidance_scale": float(guidance_scale),
        "classifier_heldout_accuracy": classifier.heldout_accuracy,
        "classifier_roundtrip_accuracy": classifier.roundtrip_accuracy(resolution, interpolation),
    }
