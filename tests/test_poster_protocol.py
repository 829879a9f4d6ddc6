"""``sweeps/poster.yaml`` and ``sweeps/deacl_poster.yaml`` against the poster's seed code
(layer6ai-labs/ssl-robustness), and the data switches they use: window averaging, per-window strides,
VOC without background, whole-image depth."""
from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from ssl_robust.cell import run_cell
from ssl_robust.cell_views import views
from ssl_robust.config import CellCfg, DataCfg, EncoderCfg, HeadCfg
from ssl_robust.config_file import load_config
from ssl_robust.data.depth import EIGEN_FRAME, clean_depth, eigen_crop_mask
from ssl_robust.data.load import load_split, slide_stride, task_info
from ssl_robust.encoders import create_encoder
from ssl_robust.heads import TaskModel
from ssl_robust.sweep_config import DeaclSweepCfg, deacl_configs, load_sweep
from ssl_robust.tasks import TASKS, eval_mode
from tests.data.fixtures import write_nyuv2
from tests.helpers import REPO_ROOT


# Each setting as the seed code has it, with the file it is copied from.
SEED = {
    "image_size/dino_vitb16": (224, "conf/ssl_model/dino_v1_vitb16.yaml: image_size"),
    "image_size/dinov2_vits14": (518, "conf/ssl_model/dino_v2_vits14_distilled.yaml: image_size"),
    "image_size/dinov2_vitb14": (518, "conf/ssl_model/dino_v2_vitb14_distilled.yaml: image_size"),
    "slide_stride/224": (100, "conf/ssl_model/dino_v1_vitb16.yaml: stride_size"),
    "slide_stride/518": (341, "conf/ssl_model/dino_v2_vits14_distilled.yaml, dino_v2_vitb14_distilled.yaml: "
                              "stride_size"),
    "eps": ("8/255", "conf/action/adversarial_attack.yaml: attack_epsilon"),
    "step_size": ("2/255", "conf/action/adversarial_attack.yaml: attack_lr"),
    "steps": (20, "conf/action/adversarial_attack.yaml: attack_num_steps"),
    "classification_batch": (128, "conf/task/classification.yaml: batch_size"),
    "classification_until": (1000, "evaluators/evaluate.py: adversarial_classification_accuracy stops once "
                                   "(idx + 1) * batch_size >= 1000"),
    "slide_average": ("probs", "evaluators/utils.py: sliding_window_inference sums softmax(p) per window "
                               "and divides by the window count"),
    "voc_background": ("exclude", "data/pascal_voc_to_hg_dataset.py: ids_to_replace = [0, 255] -> 0; "
                                  "evaluators/utils.py: imPred * (imLab > 0), histogram range (1, numClass)"),
    "depth_eval": ("whole", "evaluators/evaluate.py: encoder_decoder.whole_inference; "
                            "models/downstream_models/depther/encoder_decoder.py: add_pad to a patch multiple"),
    "depth_frame": ((480, 640), "data/transforms.py: DepthEstimationTransform, A.Resize(height=480, width=640)"),
    "final_iterate": (True, "evaluators/attack.py: DownstreamPGD, SegPGD and DepthPGD return the last "
                            "iterate of all num_steps"),
    "head/classification": (
        {"optimizer": "adam", "lr": 0.5, "weight_decay": 0.0, "schedule": "constant", "epochs": 5, "batch_size": 128,
         "augment": "crop_flip"},
        "conf/task/classification.yaml: lr, batch_size, epochs; train/trainer.py: train_classifier, "
        "torch.optim.Adam(lr) without a scheduler; data/transforms.py: ClassificationTranform, "
        "RandomCrop(crop_size, padding=4 * crop_size // 32) + RandomHorizontalFlip"),
    "head/segmentation": (
        {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.0001, "schedule": "poly", "warmup_steps": 1500,
         "epochs": 50, "batch_size": 16, "augment": "crop_flip"},
        "conf/task/segmentation.yaml: lr, epochs, batch_size, warmup_iterations; train/trainer.py: train_segmenter, "
        "AdamW(weight_decay=1e-4), poly_lr_scheduler stepped per batch; data/transforms.py: SegmentationTransform, "
        "SmallestMaxSize + RandomCrop + Flip"),
    "head/depth": (
        {"optimizer": "adamw", "lr": 0.0001, "weight_decay": 0.01, "schedule": "constant", "epochs": 20,
         "batch_size": 128, "augment": "flip", "depth_loss": "silog_grad", "depth_head": "dinov2"},
        "conf/task/depth_estimation.yaml: lr, epochs, batch_size, sig_loss_weight 1, grad_loss_weight 0.5; "
        "train/trainer.py: train_depth_estimator, AdamW(weight_decay=0.01) without a scheduler; data/transforms.py: "
        "DepthEstimationTransform(augment=False), Resize(480, 640) + HorizontalFlip; "
        "models/downstream_models/depther/depth_head.py: ReLU + 0.1 bin weights"),
}

SEGMENTATION = ("ade20k", "cityscapes", "voc2012")


def seed(key: str):
    return SEED[key][0]


@pytest.fixture(scope="module")
def poster():
    return load_sweep(REPO_ROOT / "sweeps" / "poster.yaml")


def test_encoders_run_at_the_seeds_input_sizes(poster):
    sweep, cells = poster
    sizes = {e.name: e.image_size for e in sweep.encoders if e.enabled}
    assert sizes == {name: seed(f"image_size/{name}") for name in sizes}
    assert {(c.encoder.name, c.encoder.image_size) for c in cells} == set(sizes.items())


def test_segmentation_slides_with_the_seeds_stride_and_averages_probabilities(poster):
    _, cells = poster
    dense = [c for c in cells if c.data.name in SEGMENTATION]
    assert {c.data.name for c in dense} == set(SEGMENTATION)
    for cell in dense:
        size = cell.encoder.image_size
        assert eval_mode(cell.data) == "slide"
        assert slide_stride(cell.data, size) == seed(f"slide_stride/{size}")
        assert cell.data.slide_average == seed("slide_average")


def test_voc_is_scored_without_its_background(poster):
    _, cells = poster
    voc = [c for c in cells if c.data.name == "voc2012"]
    assert voc and all(c.data.voc_background == seed("voc_background") for c in voc)
    assert task_info(voc[0].data).num_classes == 20
    assert all(c.data.voc_background == "include" for c in cells if c.data.name != "voc2012")


def test_depth_is_scored_on_the_whole_native_frame(poster):
    _, cells = poster
    depth = [c for c in cells if c.data.resolved_task == "depth"]
    assert depth and all(eval_mode(c.data) == seed("depth_eval") for c in depth)
    assert EIGEN_FRAME == seed("depth_frame")  # NYUv2's native frame is the seed's input size
    assert all(c.encoder.model_kwargs.get("dynamic_img_size") for c in depth)


def test_classification_attacks_the_seeds_image_count(poster):
    _, cells = poster
    per_batch = seed("classification_batch")
    expected = math.ceil(seed("classification_until") / per_batch) * per_batch  # whole batches: 8 x 128
    assert expected == 1024
    assert {c.data.n_samples for c in cells if c.data.resolved_task == "classification"} == {expected}


def test_attacks_take_the_seeds_budget_and_run_every_step(poster):
    sweep, cells = poster
    assert float(Fraction(seed("eps"))) in sweep.eps
    task_attacks = [c for c in cells if c.attack.name != "standard"]
    assert all(c.attack.steps == seed("steps") for c in task_attacks)
    assert all(c.attack.step_size == pytest.approx(float(Fraction(seed("step_size")))) for c in cells)
    assert all(c.attack.random_start and c.attack.norm == "linf" for c in cells)
    assert seed("final_iterate") and all(c.attack.select == "final" for c in cells)
    assert all(not c.attack.stop_when_fooled for c in task_attacks)
    assert all(c.attack.stop_when_fooled for c in cells if c.attack.name == "standard")  # the suite's cascade


@pytest.mark.parametrize("task", ["classification", "segmentation", "depth"])
def test_heads_train_with_the_seeds_recipe_of_their_task(poster, task):
    _, cells = poster
    heads = {c.head for c in cells if c.data.resolved_task == task}
    recipe = seed(f"head/{task}")
    assert len(heads) == 1 and {key: getattr(next(iter(heads)), key) for key in recipe} == recipe


def test_the_deacl_rows_are_the_poster_recipes_students_at_their_last_epoch(poster):
    sweep, _ = poster
    deacl = [e.deacl for e in sweep.encoders if e.deacl]
    preset = load_config(DeaclSweepCfg, REPO_ROOT / "sweeps" / "deacl_poster.yaml")
    assert [(d.experiment, d.epochs) for d in deacl] == [(preset.name, [preset.deacl.epochs])]
    released = "dinov1_vitb16_imagenet_lr0-05_eps4_nodecay-ep=100.ckpt, checkpoint_key: backbone.encoder."
    assert released in (REPO_ROOT / "sweeps" / "poster.yaml").read_text()  # the commented alternative


def test_the_poster_preset_is_the_seeds_recipe() -> None:
    """sweeps/deacl_poster.yaml: DINO ViT-B/16 on ImageNet as the seed's DeACL run (4 devices x 128
    on one device: 128 x 4 accumulated micro-batches, the same lr)."""
    sweep = load_config(DeaclSweepCfg, REPO_ROOT / "sweeps" / "deacl_poster.yaml")
    (cfg,) = deacl_configs(sweep)
    assert (cfg.encoder.name, cfg.data.name, cfg.val_fraction) == ("dino_vitb16", "imagenet", 0)
    a = cfg.attack
    assert (a.eps, a.step_size, a.steps, a.norm, a.random_start) == (4 / 255, 2 / 255, 5, "linf", True)
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.gamma) == ("sgd", 0.05, 0.0, 0.0, 2.0)
    assert (cfg.warmup_epochs, cfg.warmup_start_lr, cfg.warmup_unit, cfg.epochs) == (10, 0.003, "epoch", 101)
    assert (cfg.batch_size * cfg.grad_accum, cfg.precision, cfg.augment) == (512, "fp16", "seed")
    assert max(sweep.benchmark.epochs) == cfg.epochs


# ----------------------------------------------------------------------------- the switches' configs

def test_probability_averaging_on_depth_is_refused_naming_the_field():
    with pytest.raises(ValidationError, match=r"data\.slide_average='probs' needs a segmentation task"):
        DataCfg(name="nyuv2", slide_average="probs")
    with pytest.raises(ValidationError, match=r"data\.slide_average"):
        DataCfg(task="depth", slide_average="probs")
    assert DataCfg(name="ade20k", slide_average="probs").slide_average == "probs"
    assert DataCfg(slide_average="probs").slide_average == "probs"  # a sweep's defaults: checked per cell


def test_voc_background_applies_to_voc_only():
    with pytest.raises(ValidationError, match=r"data\.voc_background applies to voc2012 only"):
        DataCfg(name="ade20k", voc_background="exclude")
    assert task_info(DataCfg(name="voc2012")).num_classes == 21


def test_per_window_strides_resolve_by_window_size():
    cfg = DataCfg(name="ade20k", slide_stride={224: 100, 518: 341})
    assert (slide_stride(cfg, 224), slide_stride(cfg, 518)) == (100, 341)
    with pytest.raises(ValueError, match=r"data\.slide_stride gives strides for \[224, 518\]-px windows"):
        slide_stride(cfg, 448)
    with pytest.raises(ValueError, match=r"data\.slide_stride=341 exceeds the 224-px window"):
        slide_stride(DataCfg(slide_stride=341), 224)
    with pytest.raises(ValidationError):
        DataCfg(slide_stride={518: 0})
    again = CellCfg.model_validate(CellCfg(data=cfg).model_dump(mode="json"))  # JSON keys are strings
    assert again.data.slide_stride == {224: 100, 518: 341} and again.cell_id == CellCfg(data=cfg).cell_id


def test_whole_needs_a_dense_task():
    with pytest.raises(ValueError, match="data.eval='whole' needs a dense task"):
        eval_mode(DataCfg(task="classification", eval="whole"))


# Cell ids that switches added later must not change: a new field at its default leaves every id as it is.
OLD_CELL_IDS = {
    "358c93de7be2219c": {"encoder": {"name": "dinov2_vits14"}, "data": {"name": "voc2012", "n_samples": None},
                         "attack": {"name": "segpgd", "eps": "8/255", "steps": 20, "step_size": "2/255",
                                    "select": "final"}},
    "cbd5048495863fa7": {"encoder": {"name": "dinov2_vitb14"},
                         "data": {"name": "nyuv2", "n_samples": None, "nyu_train": "sync"},
                         "attack": {"name": "depthpgd", "eps": "4/255", "steps": 20}, "head": {"depth_head": "dinov2"}},
    "34e937b5756adbff": {"encoder": {"name": "dino_vitb16", "image_size": 224},
                         "data": {"name": "cifar10", "n_samples": 1000},
                         "attack": {"name": "pgd", "eps": "8/255", "steps": 20, "stop_when_fooled": False}},
    "2aee7a8c0ef9fa52": {"encoder": {"name": "dinov2_vits14"}, "data": {"name": "ade20k", "slide_stride": 341},
                         "attack": {"name": "embed"}},
}


@pytest.mark.parametrize("cell_id", sorted(OLD_CELL_IDS))
def test_old_configs_keep_their_cell_ids(cell_id):
    assert CellCfg.model_validate(OLD_CELL_IDS[cell_id]).cell_id == cell_id


@pytest.mark.parametrize("data", [{"name": "voc2012", "voc_background": "exclude"},
                                  {"name": "voc2012", "slide_average": "probs"},
                                  {"name": "voc2012", "slide_stride": {518: 341}}, {"name": "nyuv2", "eval": "whole"}])
def test_the_new_settings_change_the_cell_id(data):
    base = {"encoder": {"name": "dinov2_vits14"}, "attack": {"name": "embed"}}
    plain = CellCfg.model_validate({**base, "data": {"name": data["name"]}})
    assert CellCfg.model_validate({**base, "data": data}).cell_id != plain.cell_id


# ----------------------------------------------------------------------------- whole-image depth

TINY = {"name": "dinov2_vits14", "pretrained": False, "image_size": 28,
        "model_kwargs": {"depth": 1, "embed_dim": 24, "num_heads": 2, "init_values": 1.0, "dynamic_img_size": True}}
NATIVE = (96, 128)  # the fixture's frame: 7 x 10 patches of 14 px once padded to 98 x 140


def _whole_cell(root: Path, **encoder) -> CellCfg:
    return CellCfg.model_validate({
        "encoder": {**TINY, **encoder},
        "data": {"name": "nyuv2", "root": str(root), "n_samples": None, "val_fraction": 0.25, "eval": "whole"},
        "head": {"epochs": 2, "batch_size": 8, "n_bins": 16, "depth_head": "dinov2"},
        "attack": {"name": "depthpgd", "eps": "8/255", "steps": 2},
        "batch_size": 4,
    })


def _model(cfg: CellCfg) -> TaskModel:
    encoder = create_encoder(EncoderCfg(**cfg.encoder.model_dump()))
    head_cfg = HeadCfg(n_bins=16, depth_head="dinov2")
    head = TASKS.get("depth").build_head(task_info(cfg.data), encoder.embed_dim, head_cfg)
    return TaskModel(encoder, head).eval().requires_grad_(False)


def test_whole_loads_the_test_frames_at_native_size(tmp_path):
    write_nyuv2(tmp_path, shape=NATIVE)
    test, _ = load_split(_whole_cell(tmp_path).data, "test", image_size=28, sizing="native")
    image, depth = test[0]
    assert image.shape == (3, *NATIVE) and depth.shape == NATIVE
    with pytest.raises(ValueError, match="must be one size"):  # synthetic frames come in two shapes
        load_split(DataCfg(task="depth", eval="whole"), "test", image_size=28, sizing="native")


def test_whole_runs_the_padded_native_frame_once_and_scores_at_native_size(tmp_path):
    cfg = _whole_cell(tmp_path)
    model = _model(cfg)
    seen: list[tuple[int, int]] = []
    model.encoder.model.patch_embed.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
    view = views(cfg, model, TASKS.get("depth"), NATIVE)
    x = torch.rand(2, 3, *NATIVE)
    out = view.scored(x)
    assert seen == [(98, 140)] and out.shape == (2, *NATIVE)
    border = torch.nn.functional.pad(torch.zeros(1, 1, *NATIVE), (6, 6, 1, 1), value=1.0)
    padded = torch.nn.functional.pad(x, (6, 6, 1, 1)) + model.encoder.mean * border  # mean colour around
    assert torch.allclose(out, model(padded)[:, 1:97, 6:134], atol=1e-6)
    assert view.representation(x).shape == (2, 24, 7, 10)


def test_whole_needs_an_encoder_that_takes_any_size(tmp_path):
    tiny = {**TINY, "model_kwargs": {k: v for k, v in TINY["model_kwargs"].items() if k != "dynamic_img_size"}}
    cfg = _whole_cell(tmp_path, **tiny)
    with pytest.raises(ValueError, match="dynamic_img_size: true"):
        views(cfg, _model(cfg), TASKS.get("depth"), NATIVE)


def test_a_whole_image_depth_cell_scores_every_valid_native_pixel(tmp_path):
    written = write_nyuv2(tmp_path, shape=NATIVE)
    metrics = run_cell(_whole_cell(tmp_path))
    crop = eigen_crop_mask(*NATIVE)
    depths = [clean_depth(written["depths"][i], 10.0) for i in written["test"]]
    expected = sum(int(((d > 1e-3) & crop).sum()) for d in depths)
    assert metrics["eval/pixels"] == expected
    assert np.isfinite(metrics["clean/rmse"]) and metrics["check/eps0_equals_clean"] == 1.0
    assert metrics["check/delta_in_ball"] == metrics["check/x_adv_in_box"] == 1.0


# ----------------------------------------------------------------------------- docs/protocol.md

def _protocol_rows() -> list[dict[str, str]]:
    """Every table row of docs/protocol.md as {header: cell}."""
    rows, header = [], None
    for line in (REPO_ROOT / "docs" / "protocol.md").read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if header is None:
            header = cells
        elif not set(line) <= set("|-: "):
            rows.append(dict(zip(header, cells)))
    return rows


def _field(cell: CellCfg, dotted: str):
    value = cell
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def test_protocol_rows_that_say_here_keep_the_default_in_the_poster_preset(poster):
    _, cells = poster
    default = CellCfg()
    claimed = [row for row in _protocol_rows() if row.get("`sweeps/poster.yaml`") == "here"]
    assert len(claimed) >= 8
    for row in claimed:
        switches = {m for m in re.findall(r"`((?:encoder|data|head|attack)\.[a-z_]+)", row["switch"])
                    if m != "attack.name"}
        for name in switches:
            assert {str(_field(c, name)) for c in cells} == {str(_field(default, name))}, (row["choice"], name)


def test_the_protocol_tables_have_a_preset_column_for_the_posters_settings():
    rows = _protocol_rows()
    assert {row["choice"] for row in rows if "`sweeps/poster.yaml`" in row} >= {
        "input size", "window stride", "window averaging", "VOC 2012 classes", "classification recipe"}
