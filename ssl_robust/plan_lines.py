"""What ``ssl-robust sweep --dry-run`` prints of each head and cell: the settings a number depends
on beyond the grid's axes (the head recipe, the test protocol, the attack's step rule), one line each;
with ``--gpu-memory``, each cell's estimated peak memory and the largest batch that fits."""
from __future__ import annotations

from ssl_robust.config import CellCfg
from ssl_robust.data.load import slide_stride
from ssl_robust.encoders import ResolvedEncoder
from ssl_robust.memory_plan import describe_bytes, estimate
from ssl_robust.tasks import TASKS, eval_mode


def _budget(value: float) -> str:
    return f"{value * 255:.3g}/255"


def head_line(cell: CellCfg, encoder: ResolvedEncoder) -> str:
    """The head fitted for ``cell``'s head group (its encoder resolved as ``encoder``): its recipe and
    the test protocol of its data set."""
    head, data, task = cell.head, cell.data, cell.data.resolved_task
    recipe = [f"{head.optimizer} lr={head.lr:g} weight_decay={head.weight_decay:g} {head.schedule}"
              + (f" (warm-up {head.warmup_steps} steps)" if head.warmup_steps else ""),
              f"epochs={head.epochs} batch={head.batch_size} augment={head.augment}"]
    if task == "classification":
        recipe.append(f"input={head.classifier_input}")
    if task == "depth":
        recipe.append(f"depth_head={head.depth_head} loss={head.depth_loss}")
    mode = eval_mode(data)
    protocol = [f"test={'all' if data.n_samples is None else data.n_samples} images", f"eval={mode}"]
    if mode == "slide":
        protocol.append(f"stride={slide_stride(data, encoder.image_size)} average={data.slide_average}")
    if data.name == "voc2012":
        protocol.append(f"background={data.voc_background}")
    if task == "depth":
        protocol.append(f"train_frames={data.nyu_train} eigen_crop={data.eigen_crop}")
    return (f"head {cell.head_id} {cell.encoder.name}@{encoder.image_size} {data.name} {task}: "
            f"{' '.join(recipe)} | {' '.join(protocol)}")


def attack_settings(cell: CellCfg) -> str:
    """The attack's step rule beyond eps and steps: step size, restarts, what is scored."""
    attack = cell.attack
    rule = "fooled samples stop" if attack.stop_when_fooled and TASKS.get(cell.data.resolved_task).fooled else \
        "every step"
    return (f"step_size={_budget(attack.resolved_step_size)} restarts={attack.restarts} "
            f"select={attack.select} ({rule})")


def memory_settings(cell: CellCfg, encoder: ResolvedEncoder, memory: int) -> str:
    """The cell's estimated peak at its batch size and the largest batch that fits into ``memory``
    bytes (one trial's); when its batch size does not fit, the batch size that would."""
    found = estimate(cell, encoder)
    fits = found.max_batch(memory)
    line = f"peak={describe_bytes(found.at(cell.batch_size))} max_batch={fits}"
    if fits == 0:
        return line + f" (one image needs {describe_bytes(found.at(1))}, more than {describe_bytes(memory)})"
    if fits < cell.batch_size:
        return line + (f" (batch_size={cell.batch_size} does not fit {describe_bytes(memory)}: "
                       f"batch_size={fits} would)")
    return line
