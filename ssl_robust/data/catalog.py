"""Every data set by name, with its tasks and label facts: declarations only, no torch.

Configs validate data set names and tasks here; the loaders (``data/load.py``) register one
builder per name in ``base.LOADERS``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ssl_robust.registry import Registry


@dataclass(frozen=True)
class TaskInfo:
    """What a head and a metric need to know about a task on a data set.

    The depth range lives here only: the loader masks depth outside it, the depth head spreads its
    bins over it and the metrics score inside it.
    """

    task: str  # a name in tasks.TASKS
    num_classes: int = 0
    ignore_index: int = 255
    min_depth: float = 1e-3
    max_depth: float = 10.0


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set: its tasks (the first is its own), whether it needs a root, how to get it."""

    infos: dict[str, TaskInfo] = field(default_factory=dict)
    needs_root: bool = True
    how_to_get: str = ""
    sizes: dict[str, int] = field(default_factory=dict)  # images per split (train before the val carve-out)
    aspect: float = 1.0  # long side / short side of a typical test image (sliding-window count)
    native_size: tuple[int, int] | None = None  # (H, W) of a typical test image, for dense sets scored at it

    @property
    def default_task(self) -> str:
        return next(iter(self.infos))


def _torchvision_how(archive: str, url: str) -> str:
    return (f"Set data.download=true to fetch it with torchvision, or download {archive} from {url} "
            f"and extract it under data.root.")


_MANUAL = " (data.download is not supported for this data set)."


def _classification(num_classes: int, how: str, train: int, test: int) -> DatasetSpec:
    return DatasetSpec({"classification": TaskInfo("classification", num_classes=num_classes)}, how_to_get=how,
                       sizes={"train": train, "test": test})


def _segmentation(num_classes: int, how: str, train: int, test: int, native: tuple[int, int]) -> DatasetSpec:
    return DatasetSpec({"segmentation": TaskInfo("segmentation", num_classes=num_classes)}, how_to_get=how,
                       sizes={"train": train, "test": test}, aspect=native[1] / native[0], native_size=native)


DATASETS: Registry[DatasetSpec] = Registry("dataset")
SYNTHETIC_CLASSES = 4
DATASETS.register("synthetic")(DatasetSpec({
    "classification": TaskInfo("classification", num_classes=SYNTHETIC_CLASSES),
    "segmentation": TaskInfo("segmentation", num_classes=SYNTHETIC_CLASSES + 1),
    "depth": TaskInfo("depth", min_depth=1e-3, max_depth=10.0),
}, needs_root=False, sizes={"train": 512, "val": 128, "test": 256}, aspect=1.5))
DATASETS.register("cifar10")(_classification(10, _torchvision_how(
    "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar.html"), 50_000, 10_000))
DATASETS.register("cifar100")(_classification(100, _torchvision_how(
    "cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar.html"), 50_000, 10_000))
DATASETS.register("stl10")(_classification(10, _torchvision_how(
    "stl10_binary.tar.gz", "https://cs.stanford.edu/~acoates/stl10/"), 5_000, 8_000))
DATASETS.register("imagenet")(_classification(1000, (
    "Download ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz from "
    "https://image-net.org/download-images (log in); extract the train archive's per-class tars into "
    "data.root/train/<wnid>/ and the val archive into data.root/val/, keeping the devkit archive in "
    "data.root (or use the val/<wnid>/ folders torchvision.datasets.ImageNet sorts them into)" + _MANUAL),
    1_281_167, 50_000))
DATASETS.register("voc2012")(_segmentation(21, (
    "Download VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ "
    "and extract it under data.root" + _MANUAL), 1_464, 1_449, (375, 500)))
DATASETS.register("ade20k")(_segmentation(150, (
    "Download ADEChallengeData2016.zip from http://sceneparsing.csail.mit.edu/ and extract it "
    "under data.root" + _MANUAL), 20_210, 2_000, (512, 683)))
DATASETS.register("cityscapes")(_segmentation(19, (
    "Log in at https://www.cityscapes-dataset.com/downloads/, download leftImg8bit_trainvaltest.zip "
    "and gtFine_trainvaltest.zip and extract both under data.root" + _MANUAL), 2_975, 500, (1024, 2048)))
DATASETS.register("nyuv2")(DatasetSpec({"depth": TaskInfo("depth", min_depth=1e-3, max_depth=10.0)}, how_to_get=(
    "Download nyu_depth_v2_labeled.mat (the labelled data set) and splits.mat (the standard "
    "795/654 train/test split) from https://cs.nyu.edu/~fergus/datasets/nyu_depth_v2.html into "
    "data.root" + _MANUAL + " With data.nyu_train=sync the head trains on the raw frames instead: "
    "get BTS's sync.zip (https://github.com/cleinc/bts, pytorch/README.md 'Preparation for "
    "Training': utils/download_from_gdrive.py 1AysroWpfISmm-yRFGBgFTrLy6FjQwvwP sync.zip) and unzip "
    "it into data.root, giving data.root/sync/<scene>/rgb_XXXXX.jpg and sync_depth_XXXXX.png; "
    "optionally copy BTS's train_test_inputs/nyudepthv2_train_files_with_gt.txt into data.root."),
    sizes={"train": 795, "test": 654}, aspect=4 / 3, native_size=(480, 640)))


def task_names() -> list[str]:
    """Every task some registered data set serves, in registration order."""
    return list(dict.fromkeys(task for name in DATASETS.names() for task in DATASETS.get(name).infos))
