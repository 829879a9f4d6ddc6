"""Attack strength: ssl_robust's attacks beside torchattacks' on the same models, inputs and budgets.

Labels (and dense targets) are each model's own clean predictions, so clean scores are perfect and
every point lost is the attack's doing. Classification rows, L-inf:

- ``vit``: a random-init tiny ViT (``tiny_dinov2``), mean-pooled patch tokens -> linear head;
- ``cnn``: a small CNN fitted to random labels on random images;
- ``cnn_x100``: the same CNN with its logits times 100 (same argmax, saturated cross-entropy).

Ours: PGD-CE, APGD-CE, APGD-DLR, APGD-T and the standard suite (APGD-CE, then APGD-T on what is left),
all through ``evaluate``; torchattacks: APGD-CE, APGD-T and their union (robust only if both failed),
and how many samples' outcomes differ between ours and torchattacks' (APGD-CE, APGD-T, suite vs union).
One segmentation row (a tiny conv net on synthetic masks: SegPGD, SEA's four losses under APGD, the
suite's worst case) and one depth row (a tiny softplus conv net: DepthPGD, APGD on the three depth
losses, the suite's worst case) follow.

    .venv/bin/python benchmarks/attack_strength.py [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from ssl_robust.config import EncoderCfg
from ssl_robust.data.synthetic import NUM_OBJECT_CLASSES, SyntheticDataset
from ssl_robust.encoders import create_encoder
from ssl_robust.evaluation import Evaluation, evaluate

NUM_CLASSES = 10
CLS_ROWS = [("vit", 0.25, 10), ("vit", 0.5, 20), ("vit", 1.0, 20),  # (model, eps * 255, steps)
            ("cnn", 8.0, 20), ("cnn_x100", 8.0, 20), ("cnn_x100", 12.0, 20)]
OURS = {"PGD-CE": "pgd", "APGD-CE": "apgd_ce", "APGD-DLR": "apgd_dlr", "APGD-T": "apgd_t", "standard": "standard"}
SEG_MEMBERS = ("apgd_masked_ce", "apgd_balanced_ce", "apgd_js", "apgd_masked_spherical")
DEPTH_MEMBERS = ("apgd_depth_l1", "apgd_depth_l2", "apgd_depth_log")
PAIRS = {"APGD-CE": "TA APGD-CE", "APGD-T": "TA APGD-T", "standard": "TA union"}  # ours -> its torchattacks peer


class Counted(nn.Module):
    """The attacked model, counting sample-forwards of inputs that require grad (torchattacks' gradient steps)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.grad_samples = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            self.grad_samples += x.shape[0]
        return self.model(x)


class PooledViT(nn.Module):
    """Encoder -> mean of the patch tokens -> linear head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.encoder = create_encoder(EncoderCfg(name="tiny_dinov2"))
        self.head = nn.Linear(self.encoder.embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.tokens(x).mean(dim=(2, 3)))


class SmallCNN(nn.Module):
    """Two stride-2 convolutions, global average pool, linear; logits times ``scale``."""

    def __init__(self, num_classes: int, scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.scale


def dense_net(out_channels: int) -> nn.Sequential:
    """Three convolutions at input resolution: [B, 3, H, W] -> [B, out_channels, H, W]."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, out_channels, 1))


class DepthNet(nn.Module):
    """A dense conv net with a softplus output: positive depth [B, 1, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = dense_net(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.net(x)) + 0.1


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, steps: int, lr: float = 1e-2) -> float:
    """Full-batch Adam on (x, y); the model is left frozen in eval mode; returns the last loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().requires_grad_(False)
    return float(loss.detach())


def synthetic(task: str, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images and targets of the synthetic training split."""
    data = SyntheticDataset("train", task, size)
    images, targets = zip(*(data[i] for i in range(n)))
    if task == "classification":
        return torch.stack(images), torch.tensor(targets)
    return torch.stack(images), torch.stack(targets)


def classifiers(n: int, fit_steps: int) -> tuple[dict[str, nn.Module], dict[str, torch.Tensor], dict[str, float]]:
    """The classification models by name, the images each is attacked on, the CNN's training accuracy."""
    torch.manual_seed(0)
    vit = PooledViT(NUM_CLASSES).eval().requires_grad_(False)
    vit_images = synthetic("classification", n, vit.encoder.image_size)[0]
    cnn = SmallCNN(NUM_CLASSES)
    cnn_images, random_labels = torch.rand(n, 3, 32, 32), torch.randint(NUM_CLASSES, (n,))
    fit(cnn, cnn_images, random_labels, F.cross_entropy, fit_steps)
    with torch.no_grad():
        train_acc = float((cnn(cnn_images).argmax(1) == random_labels).float().mean())
    scaled = SmallCNN(NUM_CLASSES, scale=100.0)
    scaled.load_state_dict(cnn.state_dict())
    scaled.eval().requires_grad_(False)
    models = {"vit": vit, "cnn": cnn, "cnn_x100": scaled}
    images = {"vit": vit_images, "cnn": cnn_images, "cnn_x100": cnn_images}
    return models, images, {"cnn_random_label_fit": train_acc}


def robust_after(model: nn.Module, adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(adv).argmax(1) == labels


def failed_checks(evaluation: Evaluation) -> list[str]:
    return sorted(name for name, held in evaluation.checks.items() if not held)


def classification_row(model: nn.Module, x: torch.Tensor, eps: float, steps: int) -> dict:
    """Robust accuracy and sample-gradient-steps of every attack on one model at one budget."""
    with torch.no_grad():
        labels = model(x).argmax(1)
    row: dict = {"n": len(x), "robust": {}, "grad_steps": {}, "failed_checks": {}, "seconds": {}}
    ours = {}
    for label, attack in OURS.items():
        start = time.perf_counter()
        result = evaluate(model, x, labels, task="classification", eps=eps, attacks=attack, steps=steps, seed=0,
                          batch_size=len(x))
        row["seconds"][label] = time.perf_counter() - start
        row["robust"][label], row["grad_steps"][label] = result.score, result.grad_steps
        row["failed_checks"][label] = failed_checks(result)
        ours[label] = torch.tensor(result.robust)
    counted = Counted(model)
    peers = {"TA APGD-CE": torchattacks.APGD(counted, eps=eps, steps=steps, loss="ce", n_restarts=1, seed=0),
             "TA APGD-T": torchattacks.APGDT(counted, eps=eps, steps=steps, n_classes=NUM_CLASSES, n_restarts=1,
                                             seed=0)}
    flags = {}
    for label, attack in peers.items():
        counted.grad_samples, start = 0, time.perf_counter()
        flags[label] = robust_after(model, attack(x, labels), labels)
        row["seconds"][label] = time.perf_counter() - start
        row["robust"][label] = float(flags[label].float().mean())
        row["grad_steps"][label] = counted.grad_samples
    flags["TA union"] = flags["TA APGD-CE"] & flags["TA APGD-T"]
    row["robust"]["TA union"] = float(flags["TA union"].float().mean())
    row["differing_samples"] = {mine: int((ours[mine] != flags[peer]).sum()) for mine, peer in PAIRS.items()}
    row["suite_over_apgd_ce_steps"] = row["grad_steps"]["standard"] / max(row["grad_steps"]["APGD-CE"], 1)
    return row


def dense_row(task: str, model: nn.Module, x: torch.Tensor, own_attack: str, members: tuple[str, ...],
              eps: float, steps: int) -> dict:
    """The task's own PGD attack and the standard suite's members and worst case, scored by ``evaluate``."""
    with torch.no_grad():
        out = model(x)
    targets = out.argmax(1) if task == "segmentation" else out.squeeze(1)
    depth_range = {"max_depth": float(targets.max())} if task == "depth" else {}  # every pixel of the prediction
    own, suite = (evaluate(model, x, targets, task=task, eps=eps, attacks=attack, steps=steps, seed=0,
                           batch_size=len(x), **depth_range) for attack in (own_attack, "standard"))
    scores = {own_attack: own.score, **{m: suite.per_attack[m].score for m in members}, "standard": suite.score}
    return {"n": len(x), "eps": eps, "steps": steps, "clean": suite.clean_score, "members": list(members),
            "scores": scores, "grad_steps": {own_attack: own.grad_steps, "standard": suite.grad_steps},
            "failed_checks": {own_attack: failed_checks(own), "standard": failed_checks(suite)}}


def segmentation(n: int, size: int, fit_steps: int) -> tuple[nn.Module, torch.Tensor]:
    """A dense conv net fitted to the synthetic masks (object classes + background)."""
    torch.manual_seed(0)
    x, masks = synthetic("segmentation", n, size)
    model = dense_net(NUM_OBJECT_CLASSES + 1)
    fit(model, x, masks, lambda out, y: F.cross_entropy(out, y, ignore_index=255), fit_steps)
    return model, x


def depth(n: int, size: int, fit_steps: int) -> tuple[nn.Module, torch.Tensor]:
    """A softplus conv net fitted (L1, valid pixels) to the synthetic depth maps (1 to 8 m)."""
    torch.manual_seed(0)
    x, target = synthetic("depth", n, size)
    model = DepthNet()
    fit(model, x, target, lambda out, y: (out.squeeze(1) - y).abs()[y > 0].mean(), fit_steps)
    return model, x


def table(headers: list[str], rows: list[list[str]], first: int = 16) -> str:
    """Fixed-width columns: the first left-aligned and ``first`` wide, the others right-aligned."""
    widths = [first] + [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers) if i > 0]

    def line(cells: list[str]) -> str:
        return " ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), "-" * len(line(headers)), *map(line, rows)])


def row_key(row: dict) -> list[str]:
    return [row["model"], f"{row['eps255']:g}", str(row["steps"])]


def print_classification(rows: list[dict]) -> None:
    methods = [*OURS, "TA APGD-CE", "TA APGD-T", "TA union"]
    print(f"\nClassification, L-inf, robust accuracy (clean = 1, labels = own predictions), n = {rows[0]['n']}\n")
    print(table(["model", "eps*255", "steps", *methods, "samples differing CE/T/suite"],
                [row_key(r) + [f"{r['robust'][m]:.3f}" for m in methods]
                 + ["/".join(str(d) for d in r["differing_samples"].values())] for r in rows]))
    steps = [*OURS, "TA APGD-CE", "TA APGD-T"]
    print("\nSample-gradient-steps spent (TA: forwards of inputs that require grad, counted at the model)\n")
    print(table(["model", "eps*255", "steps", *steps, "suite / APGD-CE steps"],
                [row_key(r) + [str(r["grad_steps"][m]) for m in steps] + [f"{r['suite_over_apgd_ce_steps']:.2f}"]
                 for r in rows]))
    for r in rows:
        failed = {m: c for m, c in r["failed_checks"].items() if c}
        if failed:
            print(f"checks failed on {r['model']} at {r['eps255']:g}/255: {failed}")


def print_dense(title: str, metric: str, row: dict) -> None:
    names = list(row["scores"])
    print(f"\n{title}, L-inf eps {row['eps'] * 255:g}/255, {row['steps']} steps, n = {row['n']}, {metric} "
          f"(clean {row['clean']:.3f}, targets = own predictions)\n")
    print(table(["attack", metric], [[name, f"{row['scores'][name]:.4f}"] for name in names], first=22))
    print(f"sample-gradient-steps: {row['grad_steps']}")
    failed = {m: c for m, c in row["failed_checks"].items() if c}
    if failed:
        print(f"checks failed: {failed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="classification samples per row")
    parser.add_argument("--dense-n", type=int, default=64, help="segmentation and depth images")
    parser.add_argument("--dense-size", type=int, default=32)
    parser.add_argument("--dense-steps", type=int, default=100)
    parser.add_argument("--seg-eps", type=float, default=4.0, help="times 1/255")
    parser.add_argument("--depth-eps", type=float, default=4.0, help="times 1/255")
    parser.add_argument("--fit-steps", type=int, default=600, help="Adam steps fitting the CNN and the dense nets")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads; these models are so small that more threads only spin")
    parser.add_argument("--quick", action="store_true", help="64 samples, 16 dense images, 30 dense steps")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.n, args.dense_n, args.dense_steps = 64, 16, 30
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"torch {torch.__version__}, torchattacks {torchattacks.__version__}, threads {torch.get_num_threads()}")

    models, images, fits = classifiers(args.n, args.fit_steps)
    rows = []
    for name, eps255, steps in CLS_ROWS:
        rows.append({"model": name, "eps255": eps255, "steps": steps,
                     **classification_row(models[name], images[name], eps255 / 255, steps)})
    print_classification(rows)

    seg_model, seg_x = segmentation(args.dense_n, args.dense_size, args.fit_steps)
    seg = dense_row("segmentation", seg_model, seg_x, "segpgd", SEG_MEMBERS, args.seg_eps / 255, args.dense_steps)
    print_dense("Segmentation", "mIoU", seg)
    depth_model, depth_x = depth(args.dense_n, args.dense_size, args.fit_steps)
    dep = dense_row("depth", depth_model, depth_x, "depthpgd", DEPTH_MEMBERS, args.depth_eps / 255, args.dense_steps)
    print_dense("Depth", "RMSE", dep)

    wall = time.perf_counter() - start
    print(f"\nwall time {wall:.1f} s; CNN random-label training accuracy {fits['cnn_random_label_fit']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({
            "torch": torch.__version__, "torchattacks": torchattacks.__version__, "threads": torch.get_num_threads(),
            "wall_s": wall, "config": {k: str(v) for k, v in vars(args).items()}, "fits": fits,
            "classification": rows, "segmentation": seg, "depth": dep}, indent=2))


if __name__ == "__main__":
    main()
