"""Peak accelerator memory of a cell's attack, before it runs, and the largest batch that fits.

The peak is that of one attack step (forward, then the gradient to the input) once the engine holds
its per-image state: the highest point of the attack phase (the clean forward and the rescoring run
without a graph). It is affine in the batch size: ``fixed`` (the encoder's and head's weights) plus
``per_sample`` bytes per image, made of

- **activations**: what autograd keeps of a timm ViT for the input gradient, per sliding window
  (``cost.windows_per_image``) or per whole-image pass of T tokens of width D. The weights are
  frozen, so a linear layer keeps nothing but its weight. Per block and token: both LayerNorm inputs
  (2·D, float32: the residual stream) and their statistics, the GELU input (mlp·D = 4·D) and, with
  fused attention (timm's ``fused_attn``, its default: ``F.scaled_dot_product_attention``, assumed
  here), the qkv projection (3·D: SDPA keeps q, k, v as views of it), the attention output (D) and
  the log-sum-exp (one float per head): 10·D in all, no T x T matrix. Unfused
  (``fused_attn=False``), the copies of q, k, v the matmuls keep (3·D) and the softmax output
  (heads·T per token) instead. Plus the final norm's input and the patch embedding's input image.
- **transient**: the largest layer in flight on top of that: the MLP's hidden activation and the
  gradients passing through it ((2·mlp + 1)·D per token; unfused, the attention matrix and its
  gradient where larger), the patch embedding's two image-sized gradients (a narrow encoder's), or
  on the output side twice the largest output tensor (the gradient arriving at it and leaving it;
  four bins-sized maps in the DINOv2 depth head's normalisation).
- **outputs**: what the head, the window averaging and the objective keep: dense heads' BatchNorm
  and 1x1-conv inputs (the DINOv2 depth head's at 4x the token grid, and its bin maps), the windows'
  softmax and the averaged probabilities' clamp and log (``slide_average: probs``), the objective's
  log-softmax or depth maps, at the labels' native resolution where the cell scores there.
- **state**: the per-image tensors alive during the step: the image, its perturbation, iterate and
  gradient (the engine drops a step's tensors before the next one), the best iterate (APGD also its
  last, previous and best perturbation and best gradient),
  the sliding windows, the clean output, this step's output, the best output the
  engine records (APGD always, PGD with a success or damage function), the earlier members' results
  of a suite, the labels.

Sizes: the image is S x S (``resize``), short side S and the data set's aspect ratio (``slide``), or
native (``whole``, padded to the patch size); labels of dense tasks are scored at the typical native
size of the catalog's ``native_size`` (the synthetic set's 2S x 3S; unknown sets: the resized image).

Under ``precision: bf16`` or ``fp16`` the weights stay float32 and the graph keeps autocast's half
copy of every frozen weight until the backward (autocast caches only casts of weights that require
a gradient), so ``fixed`` grows by half the block weights; the blocks' matmul outputs take 2 bytes,
LayerNorm inputs and the output side are counted as float32. The head's cached features live on
the host (``features.Features``: a float16 file or a RAM array), so they take no accelerator memory;
head fitting (phase 1) is not estimated.

A trial may allocate its share of the GPU (``resources.gpu``) less ``CUDA_CONTEXT`` (the context and
its libraries, outside the allocator). Measured against ``benchmarks/memory_plan.py`` (the peak of
real engine steps; docs/benchmarks.md, "Attack memory"), the measured peak lies within
[0.89, 1.10] x the estimate (0.90 to 1.07 in the recorded CPU run, ViT-S/14 and ViT-B/14 0.98 to
1.01; CUDA not yet measured).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ssl_robust.attacks import ATTACKS, engine_runs, suite_members
from ssl_robust.config import CellCfg
from ssl_robust.cost import windows_per_image
from ssl_robust.data.catalog import DATASETS
from ssl_robust.data.load import task_info
from ssl_robust.encoders import ResolvedEncoder, ResolvedEncoders
from ssl_robust.tasks import TASKS, eval_mode

FLOAT = 4
HALF = 2
UPSAMPLE = 4  # DINOv2DepthHead's upsampling of the token grid
DEPTH_LOSS_MAPS = 4  # per-pixel float maps a depth objective keeps (clamp, log, difference, square)
PGD_INPUTS, APGD_INPUTS = 4, 8  # image-sized tensors alive during a step (see the module docstring)
CUDA_CONTEXT = 512 * 2 ** 20  # per process, outside the allocator: the CUDA context and its libraries


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of a cell's attack step: ``fixed + batch * per_sample``; ``parts`` splits the
    per-sample bytes (activations, transient, outputs, state)."""

    fixed: int
    per_sample: int
    parts: dict[str, int]

    def at(self, batch: int) -> int:
        """The peak at ``batch`` images."""
        return self.fixed + batch * self.per_sample

    def max_batch(self, memory: int) -> int:
        """The largest batch whose peak fits into ``memory`` bytes (0: not even one image)."""
        if memory < self.fixed + self.per_sample:
            return 0
        return (memory - self.fixed) // self.per_sample


@dataclass(frozen=True)
class Geometry:
    """The sizes a cell's step works on: the attacked image, the encoder's passes over it, their
    token grid, and the labels (None for classification)."""

    image: tuple[int, int]
    passes: int
    grid: tuple[int, int]
    tokens: int
    labels: tuple[int, int] | None


@dataclass(frozen=True)
class VitShape:
    """A timm ViT: width, blocks run, patch, prefix tokens, heads, MLP ratio; all its blocks and its
    square input size."""

    width: int
    depth: int
    patch: int
    prefix: int
    heads: int
    mlp: float
    blocks: int
    image_size: int


def vit(encoder: ResolvedEncoder, layer: int | None = None) -> VitShape:
    """The encoder's shape, with only the blocks up to ``layer`` (None: all) run."""
    depth = encoder.depth if layer is None else (layer % encoder.depth) + 1
    return VitShape(encoder.width, depth, encoder.patch_size, encoder.prefix_tokens, encoder.heads,
                    encoder.mlp_ratio, encoder.depth, encoder.image_size)


def native_size(cell: CellCfg, size: int) -> tuple[int, int]:
    """(H, W) a dense test image is scored at: the synthetic set's 2S x 3S, a known set's typical
    native size, else the short side S and the data set's aspect ratio."""
    if cell.data.name == "synthetic":
        return 2 * size, 3 * size
    spec = DATASETS.get(cell.data.name)
    return spec.native_size or (size, round(size * spec.aspect))


def geometry(cell: CellCfg, shape: VitShape) -> Geometry:
    """Image, passes, token grid and labels of the cell's evaluation mode (``tasks.eval_mode``)."""
    size, patch = shape.image_size, shape.patch
    dense = TASKS.get(cell.data.resolved_task).default_eval == "slide"
    mode = eval_mode(cell.data)
    if mode == "resize":
        image, passes, frame = (size, size), 1, (size, size)
    elif mode == "slide":
        image = (size, round(size * DATASETS.get(cell.data.name).aspect))
        passes, frame = windows_per_image(cell, size), (size, size)
    else:
        image = native_size(cell, size)
        passes, frame = 1, tuple(math.ceil(side / patch) * patch for side in image)
    grid = (frame[0] // patch, frame[1] // patch)
    labels = None if not dense else (image if mode == "resize" else native_size(cell, size))
    return Geometry(image, passes, grid, grid[0] * grid[1] + shape.prefix, labels)


def weight_bytes(cell: CellCfg, shape: VitShape) -> int:
    """Parameters and buffers of encoder and head, float32 (autocast keeps them so)."""
    d, p, mlp = shape.width, shape.patch, shape.mlp
    full = shape.blocks
    grid = (shape.image_size // p) ** 2
    block = (4 + 2 * mlp) * d * d + (5 + mlp) * d + 4 * d + 2 * d  # linears, biases, 2 norms, LayerScale
    encoder = full * block + 3 * p * p * d + d + (grid + shape.prefix) * d + 2 * d
    task, info = cell.data.resolved_task, task_info(cell.data)
    if task == "classification":
        head = ((2 * d if cell.head.classifier_input == "cls_patch_mean" else d) + 1) * info.num_classes
    elif task == "segmentation":
        head = 4 * d + (d + 1) * info.num_classes
    else:
        head = 8 * d + (2 * d + 2) * cell.head.n_bins
    return int(encoder + head) * FLOAT


def _act_bytes(cell: CellCfg) -> int:
    return FLOAT if cell.precision == "fp32" else HALF


def encoder_activations(cell: CellCfg, shape: VitShape, tokens: int, pixels: int,
                        fused_attn: bool = True) -> int:
    """Bytes autograd keeps of one image pass of ``tokens`` tokens (``pixels``: its padded input)."""
    d, t, a = shape.width, tokens, _act_bytes(cell)
    block = 2 * t * d * FLOAT + 4 * t * FLOAT + shape.mlp * t * d * a  # norms' inputs and statistics, GELU input
    if fused_attn:
        block += 4 * t * d * a + shape.heads * t * FLOAT  # qkv, output, log-sum-exp
    else:
        block += 3 * t * d * a + shape.heads * t * t * a  # q, k, v copies for the matmuls, softmax output
    return int(shape.depth * block + t * d * FLOAT + 2 * t * FLOAT + 3 * pixels * a)


def encoder_transient(cell: CellCfg, shape: VitShape, tokens: int, pixels: int, fused_attn: bool = True) -> int:
    """The largest layer in flight: the MLP's hidden activation and its gradients (unfused: the
    attention matrix and its gradient, where larger), or the patch embedding's two float32 images
    (the gradient reaching its normalised input and the one leaving it; under autocast also the
    normalised input beside its half copy), where larger still (a narrow encoder's images)."""
    hidden = (2 * shape.mlp + 1) * shape.width * tokens
    attention = 0 if fused_attn else 2 * shape.heads * tokens * tokens
    return int(max(max(hidden, attention) * _act_bytes(cell), 2 * 3 * pixels * FLOAT))


def _output_elements(task: str, classes: int, labels: tuple[int, int] | None) -> int:
    if labels is None:
        return classes
    return labels[0] * labels[1] * (classes if task == "segmentation" else 1)


def output_side(cell: CellCfg, shape: VitShape, geo: Geometry) -> tuple[int, int]:
    """(bytes kept, bytes in flight) of the head, the window averaging and the objective, per image,
    for a task attack: in flight, the largest output tensor and its gradient (the DINOv2 depth head's
    normalisation: four bins-sized maps in its backward, where more)."""
    task, info, mode = cell.data.resolved_task, task_info(cell.data), eval_mode(cell.data)
    d, cells = shape.width, geo.grid[0] * geo.grid[1] * geo.passes
    if task == "classification":
        return 0, 2 * info.num_classes * FLOAT
    frame = (geo.grid[0] * shape.patch) * (geo.grid[1] * shape.patch) * geo.passes  # head outputs, all passes
    image = geo.image[0] * geo.image[1]
    labels = geo.labels[0] * geo.labels[1]
    if task == "segmentation":
        c = info.num_classes
        kept = 2 * d * cells + c * labels
        if mode == "slide" and cell.data.slide_average == "probs":
            kept += c * frame + 2 * c * labels  # the windows' softmax; clamp and log at the labels' size
        return kept * FLOAT, 2 * max(c * frame, c * image, c * labels) * FLOAT
    bins = cell.head.n_bins
    if cell.head.depth_head == "dinov2":
        fine = cells * UPSAMPLE ** 2
        kept = 2 * 2 * d * fine + 2 * bins * fine + fine
        flight = max(2 * max(2 * d * fine, frame, labels), 4 * bins * fine)
    else:
        kept = 2 * 2 * d * cells + bins * cells
        flight = 2 * max(2 * d * cells, bins * cells, frame, labels)
    return (kept + DEPTH_LOSS_MAPS * labels) * FLOAT, flight * FLOAT


def _records_outputs(cell: CellCfg, optimizer: str) -> bool:
    """Whether the engine keeps a best output per image (APGD always; PGD with a success or a
    damage function, as ``cell.attack_setup`` gives it)."""
    attack, task = cell.attack, TASKS.get(cell.data.resolved_task)
    if ATTACKS.get(suite_members(attack.name, task.name)[0]).on_embedding:
        return False
    final_iterate = (task.fooled is not None and attack.select == "final" and not attack.stop_when_fooled
                     and not ATTACKS.get(attack.name).suite)
    success = task.fooled is not None and not final_iterate
    damage = attack.select == "worst" and task.damage is not None
    return optimizer == "apgd" or success or damage


def state_bytes(cell: CellCfg, shape: VitShape, geo: Geometry, representation: int) -> int:
    """Per-image tensors alive during the step: images, outputs, labels (and EmbedAttack's target)."""
    task, info = cell.data.resolved_task, task_info(cell.data)
    optimizer = cell.attack.resolved_optimizer
    inputs = (APGD_INPUTS if optimizer == "apgd" else PGD_INPUTS) * 3 * geo.image[0] * geo.image[1]
    if geo.passes > 1:
        inputs += geo.passes * 3 * (geo.grid[0] * shape.patch) * (geo.grid[1] * shape.patch)  # the windows
    output = _output_elements(task, info.num_classes, geo.labels)
    on_embedding = ATTACKS.get(suite_members(cell.attack.name, task)[0]).on_embedding
    outputs = output  # the clean output
    if on_embedding:
        outputs += 2 * representation  # the step's representation and the clean target
    else:
        kept = 1 + _records_outputs(cell, optimizer)  # this step's and the best
        runs = engine_runs(cell.attack.name, task, info.num_classes, cell.attack.targets)
        outputs += kept * output + (runs - 1) * output * _records_outputs(cell, optimizer)
    labels = 1 if geo.labels is None else geo.labels[0] * geo.labels[1]
    return (inputs + outputs) * FLOAT + labels * (FLOAT if task == "depth" else 8)


def representation_elements(cell: CellCfg, shape: VitShape, geo: Geometry) -> int:
    """What EmbedAttack pushes, per image: CLS or the token grids of all passes."""
    tokens = TASKS.get(cell.data.resolved_task).embedding == "tokens"
    return shape.width * (geo.grid[0] * geo.grid[1] * geo.passes if tokens else 1)


def estimate(cell: CellCfg, encoder: ResolvedEncoder, fused_attn: bool = True) -> MemoryEstimate:
    """The peak of one attack step of ``cell`` (its encoder resolved as ``encoder``), affine in its batch size."""
    attack = ATTACKS.get(suite_members(cell.attack.name, cell.data.resolved_task)[0])
    shape = vit(encoder, cell.attack.layer if attack.on_embedding else cell.encoder.layer)
    geo = geometry(cell, shape)
    pixels = (geo.grid[0] * shape.patch) * (geo.grid[1] * shape.patch)
    representation = representation_elements(cell, shape, geo)
    state = state_bytes(cell, shape, geo, representation)
    transient = geo.passes * encoder_transient(cell, shape, geo.tokens, pixels, fused_attn)
    activations = kept = 0
    if cell.attack.moves_input and cell.attack.gradient_steps > 0:
        activations = geo.passes * encoder_activations(cell, shape, geo.tokens, pixels, fused_attn)
        if attack.on_embedding:
            kept, flight = representation * FLOAT, 2 * representation * FLOAT
        else:
            kept, flight = output_side(cell, shape, geo)
        transient = max(transient, flight)
    parts = {"activations": activations, "transient": transient, "outputs": kept, "state": state}
    fixed = weight_bytes(cell, shape)
    if cell.precision != "fp32":  # autocast's half copy of each frozen weight, kept for the input gradient
        fixed += int(shape.depth * (4 + 2 * shape.mlp) * shape.width ** 2 + 3 * shape.patch ** 2 * shape.width) * HALF
    return MemoryEstimate(fixed, sum(parts.values()), parts)


def _fraction(gpu_share: float) -> float:
    """The fraction of a GPU a trial gets from ``resources.gpu`` (0 or more than 1: one whole GPU)."""
    return gpu_share if 0 < gpu_share < 1 else 1.0


def trial_memory(gpu_memory: int, gpu_share: float) -> int:
    """Bytes one trial may allocate: its share of the GPU (``resources.gpu``) less the CUDA context."""
    return max(int(gpu_memory * _fraction(gpu_share)) - CUDA_CONTEXT, 0)


def describe_bytes(value: int) -> str:
    """``12.3GiB``, ``456MiB`` or ``7.8KiB``."""
    if value >= 2 ** 30:
        return f"{value / 2 ** 30:.1f}GiB"
    if value >= 2 ** 20:
        return f"{value / 2 ** 20:.0f}MiB"
    return f"{value / 2 ** 10:.1f}KiB"


def unfit(cells: list[CellCfg], memory: int, encoders: ResolvedEncoders) -> list[tuple[CellCfg, MemoryEstimate]]:
    """The cells of which not even one image fits into ``memory`` bytes, with their estimates."""
    estimates = ((cell, estimate(cell, encoders.of(cell.encoder))) for cell in cells)
    return [(cell, found) for cell, found in estimates if found.max_batch(memory) == 0]


def summary(cells: list[CellCfg], gpu_memory: int, gpu_share: float, encoders: ResolvedEncoders) -> list[str]:
    """The dry run's memory totals: the memory of one trial, how many cells fit at their batch
    size, and the largest peak."""
    memory = trial_memory(gpu_memory, gpu_share)
    share = f" x {gpu_share:g} (resources.gpu)" if _fraction(gpu_share) < 1 else ", one GPU per trial,"
    lines = [(f"memory: {describe_bytes(gpu_memory)} per GPU{share} less {describe_bytes(CUDA_CONTEXT)} CUDA "
              f"context = {describe_bytes(memory)} per trial; peaks of one attack step, fused attention")]
    estimates = [(cell, estimate(cell, encoders.of(cell.encoder))) for cell in cells]
    over = [cell for cell, found in estimates if found.at(cell.batch_size) > memory]
    line = f"  {len(cells) - len(over)} of {len(cells)} cells fit at their batch_size"
    if over:
        line += f"; {len(over)} do not (their lines give the largest batch that fits)"
    lines.append(line)
    if estimates:
        cell, found = max(estimates, key=lambda item: item[1].at(item[0].batch_size))
        lines.append(f"  largest peak: {describe_bytes(found.at(cell.batch_size))} (cell {cell.cell_id}, "
                     f"batch_size={cell.batch_size})")
    return lines
