"""Sample quality: the training script against the simplest loop that does the same work.

Every run trains a class-conditional DiT (6 layers, width 128, 4 heads, patch 2) on scikit-learn's 8x8 digits
scaled to [-1, 1], batch 128, for ``--steps`` steps, and is measured the same way: 50 samples per digit from 8
Euler steps (8 model evaluations) at guidance 1 and at ``--guidance``, read by the digit classifier
(accuracy) and compared with held-out real digits (FD against its real-vs-real floor, improved precision and
recall; :mod:`flow_pipelines.evaluation.distribution`).

Runs (``--runs`` picks some):

- ``bare-diffusers``: a bare loop around diffusers' ``DiTTransformer2DModel``: AdamW (lr 5e-4, betas 0.9 and
  0.999, no weight decay), constant LR, no clipping, logit-normal(0, 1) noise levels, velocity target, the
  model's own 10 % label dropout, diffusers' ``EMAModel`` (decay min(0.999, (1 + n) / (10 + n))).
- ``bare-dit``: the same loop around the package's ``DiTModel`` of the same size (labels dropped to the null
  class 10 % of the time by the loop).
- ``bare-dit-label-init``: ``bare-dit`` with the class-embedding table drawn from N(0, 1) as diffusers' DiT
  draws it (nn.Embedding's default), instead of N(0, 0.02) (the DiT paper's, the package's).
- ``script-*``: ``train_scripts/train_flow.py`` run in-process with the flags of the run's name (below);
  its pipeline is sampled with the Euler scheduler on its saved configuration.

Run: ``python benchmarks/bare_loop.py`` (about 5 minutes per run on a 2-core CPU, one run after another).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flow_pipelines import DiTModel, FlowEulerScheduler, FlowPipeline  # noqa: E402
from flow_pipelines.evaluation.digits import DigitClassifier, DigitDistribution  # noqa: E402
from flow_pipelines.images import quantize_images  # noqa: E402

MODEL = {"num_layers": 6, "hidden_size": 128, "num_attention_heads": 4, "patch_size": 2}
SAMPLES_PER_CLASS = 50
SAMPLING_STEPS = 8
SCRIPT_FLAGS = [
    "--resolution", "8", "--patch_size", "2", "--hidden_size", "128", "--num_layers", "6",
    "--num_attention_heads", "4", "--time_sampling", "logit_normal", "--learning_rate", "5e-4",
    "--train_batch_size", "128",
]  # fmt: skip
BARE_OPTIMIZER_FLAGS = ["--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--max_grad_norm", "0"]
SCRIPT_RUNS: dict[str, list[str]] = {
    "script": [],
    "script-constant-lr": ["--lr_scheduler", "constant", "--lr_warmup_steps", "0"],
    "script-no-clipping": ["--max_grad_norm", "0"],
    "script-beta2-0.999": ["--adam_beta2", "0.999"],
    "script-bare-optimizer": [*BARE_OPTIMIZER_FLAGS, "--adam_beta2", "0.999"],
}
RUNS = ("bare-diffusers", "bare-dit", "bare-dit-label-init", *SCRIPT_RUNS)


def digit_batches(batch_size: int, generator: torch.Generator):
    """Endless shuffled epochs of the digits in [-1, 1], ``(B, 1, 8, 8)``, with their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images / 16.0 * 2.0 - 1.0).float()[:, None]
    labels = torch.from_numpy(digits.target).long()
    while True:
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield images[index], labels[index]


def diffusers_dit() -> torch.nn.Module:
    """diffusers' DiT of the benchmark's size."""
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=MODEL["num_attention_heads"],
        attention_head_dim=MODEL["hidden_size"] // MODEL["num_attention_heads"],
        in_channels=1,
        out_channels=1,
        num_layers=MODEL["num_layers"],
        sample_size=8,
        patch_size=MODEL["patch_size"],
        num_embeds_ada_norm=10,
    )


def package_dit(label_std: float | None = None) -> DiTModel:
    """The package's DiT of the same size; ``label_std`` redraws its class-embedding table with that spread."""
    model = DiTModel(sample_size=8, in_channels=1, num_classes=10, mlp_ratio=4.0, **MODEL)
    if label_std is not None:
        torch.nn.init.normal_(model.label_embed.embedding_table.weight, std=label_std)
    return model


def train_bare(
    model: torch.nn.Module, steps: int, drop_labels: bool, seed: int = 0
) -> tuple[torch.nn.Module, float]:
    """The bare loop; returns the EMA model and the mean loss of the last 100 steps."""
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.999), weight_decay=0.0)
    ema = EMAModel(model.parameters(), decay=0.999)
    losses = []
    model.train()
    for _, (images, labels) in zip(range(steps), digit_batches(128, generator), strict=False):
        if drop_labels:
            labels = torch.where(torch.rand(len(labels)) < 0.1, torch.full_like(labels, 10), labels)
        sigmas = torch.sigmoid(torch.randn(len(images)))[:, None, None, None]
        noise = torch.randn_like(images)
        noisy = (1 - sigmas) * images + sigmas * noise
        prediction = model(noisy, timestep=sigmas.flatten() * 1000, class_labels=labels).sample
        loss = (prediction - (noise - images)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())
        losses.append(loss.item())
    ema.copy_to(model.parameters())
    return model.eval(), float(np.mean(losses[-100:]))


@torch.no_grad()
def euler_samples(model: torch.nn.Module, labels: np.ndarray, guidance: float, seed: int) -> torch.Tensor:
    """Samples of a diffusers DiT by the Euler rule on the uniform grid, in [0, 1] after 8-bit quantisation."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(labels), 1, 8, 8, generator=generator)
    conditional = torch.from_numpy(labels).long()
    null = torch.full_like(conditional, 10)
    sigmas = torch.linspace(1.0, 0.0, SAMPLING_STEPS + 1)
    for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
        timestep = torch.full((len(labels),), float(sigma) * 1000)
        velocity = model(x, timestep=timestep, class_labels=conditional).sample
        if guidance != 1.0:
            unconditional = model(x, timestep=timestep, class_labels=null).sample
            velocity = unconditional + guidance * (velocity - unconditional)
        x = x + (following - sigma) * velocity
    return quantize_images((x / 2 + 0.5).clamp(0, 1)).float() / 255


@torch.no_grad()
def pipeline_samples(pipeline: FlowPipeline, labels: np.ndarray, guidance: float, seed: int) -> torch.Tensor:
    """Samples of a pipeline with the Euler scheduler on its configuration, in [0, 1] after 8-bit quantisation."""
    pipeline.scheduler = FlowEulerScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    images = pipeline(
        labels.tolist(),
        num_inference_steps=SAMPLING_STEPS,
        guidance_scale=guidance,
        generator=generator,
        output_type="np",
    ).images
    return quantize_images(images).float() / 255


def train_script(flags: list[str], steps: int) -> tuple[FlowPipeline, float]:
    """Run the training script in-process; returns its pipeline and final loss."""
    from accelerate.state import AcceleratorState, GradientState

    spec = importlib.util.spec_from_file_location("train_flow", REPO / "train_scripts" / "train_flow.py")
    train_flow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_flow)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    output_dir = tempfile.mkdtemp(prefix="bare-loop-script-")
    args = train_flow.parse_args(
        [
            *SCRIPT_FLAGS, *flags, "--max_train_steps", str(steps), "--output_dir", output_dir,
            "--checkpointing_steps", "0", "--validation_steps", "0", "--evaluation_samples_per_class", "0",
            "--validation_images_per_class", "1", "--num_inference_steps", "1",
            "--cpu_threads", str(torch.get_num_threads()),
        ]
    )  # fmt: skip
    summary = train_flow.main(args)
    return FlowPipeline.from_pretrained(Path(output_dir) / "pipeline"), float(summary["final_loss"])


def main() -> None:
    """Train the chosen runs one after another and print the table (and, with --json, write it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--guidance", type=float, default=2.0, help="The guided setting measured beside 1.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampling noise.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows here.")
    args = parser.parse_args()
    classifier = DigitClassifier.fit()
    distribution = DigitDistribution(resolution=8)
    labels = np.repeat(np.arange(10), SAMPLES_PER_CLASS)
    rows = []
    print("| run | final loss | train s | guidance | accuracy | FD / floor | precision | recall |")
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        start = time.perf_counter()
        if run.startswith("bare"):
            torch.manual_seed(0)  # the same initial weights in every process
            if run == "bare-diffusers":
                model = diffusers_dit()
            else:
                model = package_dit(label_std=1.0 if run == "bare-dit-label-init" else None)
            model, loss = train_bare(model, args.steps, drop_labels=run != "bare-diffusers")
            trained = model if run == "bare-diffusers" else FlowPipeline(model, FlowEulerScheduler())
        else:
            trained, loss = train_script(SCRIPT_RUNS[run], args.steps)
        seconds = time.perf_counter() - start
        for guidance in (1.0, args.guidance):
            if isinstance(trained, FlowPipeline):
                images = pipeline_samples(trained, labels, guidance, args.seed)
            else:
                images = euler_samples(trained, labels, guidance, args.seed)
            report = distribution.compare(images, labels)
            row = {
                "run": run,
                "final_loss": loss,
                "train_seconds": seconds,
                "guidance": guidance,
                "accuracy": classifier.accuracy(images, labels),
                **report.as_dict(),
            }
            rows.append(row)
            print(
                f"| {run} | {loss:.3f} | {seconds:.0f} | {guidance:g} | {row['accuracy']:.3f} | "
                f"{report.fd_ratio:.2f} | {report.precision:.3f} | {report.recall:.3f} |",
                flush=True,
            )
    floor = rows[0]
    print(
        f"\nreal-vs-real at {floor['num_samples']} images: precision {floor['precision_floor']:.3f}, "
        f"recall {floor['recall_floor']:.3f}; {SAMPLING_STEPS} Euler steps; {args.steps} training steps"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
