"""Writers of tiny data sets in each official on-disk format (for loader and end-to-end tests).

Every writer takes the folder that plays ``data.root``, writes a handful of samples there and
returns what it wrote (labels, raw label maps or depth maps) so tests can compare against it.
Classification writers return ``{part: {"labels": [...], "images": uint8 [N, H, W, 3]}}``;
segmentation writers ``{official split: [raw label map, ...]}`` in file-name order; the NYU writer
its images, depths (metres, with invalid values) and 0-based split indices. ``bad_label`` puts one
out-of-range raw label into the first sample of the official train split.
"""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image


def voc_palette() -> list[int]:
    """The 256-colour palette of VOC's SegmentationClass PNGs (flat RGB list)."""
    palette = []
    for index in range(256):
        rgb, code = [0, 0, 0], index
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((code >> channel) & 1) << (7 - bit)
            code >>= 3
        palette += rgb
    return palette


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _hwc(data: np.ndarray) -> np.ndarray:
    """CIFAR rows [N, 3072] (channel-major 32x32 planes) -> [N, 32, 32, 3]."""
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _labels(rng: np.random.Generator, n: int, num_classes: int, bad: int | None) -> list[int]:
    labels = rng.integers(0, num_classes, n).tolist()
    if bad is not None:
        labels[0] = bad
    return labels


def write_cifar10(root: Path, per_batch: int = 2, n_test: int = 4, bad_label: int | None = None) -> dict:
    """``cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta`` (python pickles)."""
    rng, folder = _rng(10), Path(root) / "cifar-10-batches-py"
    out: dict = {part: {"labels": [], "images": []} for part in ("train", "test")}
    batches = [(f"data_batch_{i}", per_batch, "train") for i in range(1, 6)]
    batches.append(("test_batch", n_test, "test"))
    for name, n, part in batches:
        labels = _labels(rng, n, 10, bad_label if name == "data_batch_1" else None)
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        _dump(folder / name, {"batch_label": name, "labels": labels, "data": data,
                              "filenames": [f"{name}_{i}.png" for i in range(n)]})
        out[part]["labels"] += labels
        out[part]["images"].append(_hwc(data))
    _dump(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)],
                                    "num_cases_per_batch": per_batch, "num_vis": 3072})
    for part in out.values():
        part["images"] = np.concatenate(part["images"])
    return out


def write_cifar100(root: Path, n_train: int = 8, n_test: int = 4, bad_label: int | None = None) -> dict:
    """``cifar-100-python/train, test, meta`` (python pickles, fine and coarse labels)."""
    rng, folder, out = _rng(100), Path(root) / "cifar-100-python", {}
    for part, n in (("train", n_train), ("test", n_test)):
        fine = _labels(rng, n, 100, bad_label if part == "train" else None)
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        _dump(folder / part, {"filenames": [f"{part}_{i}.png" for i in range(n)], "batch_label": part,
                              "fine_labels": fine, "coarse_labels": [f % 20 for f in fine], "data": data})
        out[part] = {"labels": fine, "images": _hwc(data)}
    _dump(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                            "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return out


def write_stl10(root: Path, n_train: int = 8, n_test: int = 4, bad_label: int | None = None) -> dict:
    """``stl10_binary/{train,test}_{X,y}.bin``: column-major 96x96x3 uint8 images, 1-based labels."""
    rng, folder, out = _rng(96), Path(root) / "stl10_binary", {}
    folder.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)  # [N, H, W, C]
        labels = _labels(rng, n, 10, None)
        file_labels = np.asarray(labels, dtype=np.uint8) + 1
        if part == "train" and bad_label is not None:
            file_labels[0] = bad_label  # a raw 1-based file value
        images.transpose(0, 3, 2, 1).tofile(folder / f"{part}_X.bin")  # channel, column, row
        file_labels.tofile(folder / f"{part}_y.bin")
        out[part] = {"labels": labels, "images": images}
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    return out


def _blocks(rng: np.random.Generator, shape: tuple[int, int], values: list[int]) -> np.ndarray:
    """A label map of 4x4 constant blocks drawing from ``values`` (survives nearest resizing)."""
    blocks = rng.choice(values, size=(4, 4)).astype(np.uint8)
    rows = np.arange(shape[0]) * 4 // shape[0]
    cols = np.arange(shape[1]) * 4 // shape[1]
    return blocks[rows][:, cols]


def _write_image(path: Path, rng: np.random.Generator, shape: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)


def _write_mask(path: Path, mask: np.ndarray, palette: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = mask.shape
    image = Image.frombytes("P" if palette else "L", (width, height), mask.astype(np.uint8).tobytes())
    if palette:
        image.putpalette(voc_palette())
    image.save(path)


def write_voc(root: Path, n_train: int = 6, n_val: int = 4, shape: tuple[int, int] = (40, 56),
              bad_label: int | None = None) -> dict:
    """``VOCdevkit/VOC2012``: JPEGImages/*.jpg, palette SegmentationClass/*.png, ImageSets lists."""
    rng, base, out = _rng(2012), Path(root) / "VOCdevkit" / "VOC2012", {}
    for part, n in (("train", n_train), ("val", n_val)):
        ids = [f"2012_{part}_{i:06d}" for i in range(n)]
        out[part] = []
        for k, name in enumerate(ids):
            mask = _blocks(rng, shape, [0, 5, 20, 255])
            if part == "train" and k == 0 and bad_label is not None:
                mask[0, 0] = bad_label
            _write_image(base / "JPEGImages" / f"{name}.jpg", rng, shape)
            _write_mask(base / "SegmentationClass" / f"{name}.png", mask, palette=True)
            out[part].append(mask)
        lists = base / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{part}.txt").write_text("\n".join(ids) + "\n")
    return out


def write_ade20k(root: Path, n_train: int = 6, n_val: int = 4, shape: tuple[int, int] = (36, 48),
                 bad_label: int | None = None) -> dict:
    """``ADEChallengeData2016/{images,annotations}/{training,validation}``: JPEG + grey PNG (0..150)."""
    rng, base, out = _rng(150), Path(root) / "ADEChallengeData2016", {}
    for part, n in (("training", n_train), ("validation", n_val)):
        out[part] = []
        for k in range(n):
            name = f"ADE_{'train' if part == 'training' else 'val'}_{k + 1:08d}"
            mask = _blocks(rng, shape, [0, 1, 75, 150])
            if part == "training" and k == 0 and bad_label is not None:
                mask[0, 0] = bad_label
            _write_image(base / "images" / part / f"{name}.jpg", rng, shape)
            _write_mask(base / "annotations" / part / f"{name}.png", mask, palette=False)
            out[part].append(mask)
    return out


def write_cityscapes(root: Path, n_train: int = 6, n_val: int = 4, shape: tuple[int, int] = (32, 64),
                     bad_label: int | None = None) -> dict:
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelIds.png``."""
    rng, root, out = _rng(19), Path(root), {}
    for part, n, cities in (("train", n_train, ["aachen", "bremen"]), ("val", n_val, ["frankfurt"])):
        out[part] = []
        for k in range(n):
            city = cities[k % len(cities)]
            stem = f"{city}_{k:06d}_000019"
            mask = _blocks(rng, shape, [0, 1, 7, 8, 24, 33, 255])
            if part == "train" and k == 0 and bad_label is not None:
                mask[0, 0] = bad_label
            _write_image(root / "leftImg8bit" / part / city / f"{stem}_leftImg8bit.png", rng, shape)
            gt = root / "gtFine" / part / city / f"{stem}_gtFine_labelIds.png"
            _write_mask(gt, mask, palette=False)
            out[part].append(mask)
    return out


def write_nyuv2(root: Path, n_train: int = 6, n_test: int = 4,
                shape: tuple[int, int] = (96, 128)) -> dict:
    """``nyu_depth_v2_labeled.mat`` (HDF5, MATLAB axis order) and ``splits.mat`` (1-based indices).

    Depths are in metres and include invalid values (0, > 10 m, NaN) that loaders must zero.
    """
    rng, root = _rng(654), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    total = n_train + n_test
    images = rng.integers(0, 256, (total, *shape, 3), dtype=np.uint8)  # [N, H, W, 3]
    depths = rng.uniform(0.5, 9.5, (total, *shape)).astype(np.float32)  # [N, H, W] metres
    depths[:, 0, :4] = [0.0, 12.0, np.nan, 10.0]
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w", userblock_size=512) as f:
        f.create_dataset("images", data=images.transpose(0, 3, 2, 1))  # [N, 3, W, H]
        f.create_dataset("depths", data=depths.transpose(0, 2, 1))  # [N, W, H]
    order = rng.permutation(total) + 1
    train, test = np.sort(order[:n_train]), np.sort(order[n_train:])
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": train[:, None].astype(float),
                                           "testNdxs": test[:, None].astype(float)})
    return {"images": images, "depths": depths,
            "train": (train - 1).tolist(), "test": (test - 1).tolist()}


NYU_SYNC_LIST = "nyudepthv2_train_files_with_gt.txt"


def write_nyu_sync(root: Path, n_scenes: int = 2, frames: int = 3, shape: tuple[int, int] = (48, 64),
                   file_list: bool = True) -> dict:
    """BTS's raw-frame layout: ``sync/<scene>/rgb_XXXXX.jpg`` + ``sync_depth_XXXXX.png`` (uint16 mm).

    Depth PNGs hold 0 (invalid), 10000 (10 m, valid), 12000 and 65535 (beyond 10 m) at row 0,
    cols 0..3; scene 0 also has an ``rgb_`` frame without depth (not a training frame). With
    ``file_list`` writes ``nyudepthv2_train_files_with_gt.txt`` (BTS's line format) naming every
    frame. Returns ``{"lines": [...], "rgb": [path], "depth": [path], "depth_mm": [uint16 [H, W]]}``
    in sorted (= glob) order.
    """
    rng, root = _rng(518), Path(root)
    out: dict = {"lines": [], "rgb": [], "depth": [], "depth_mm": []}
    for s in range(n_scenes):
        scene = f"scene_{s:04d}"
        for k in range(frames):
            number = f"{7 * k:05d}"  # BTS samples every 7th raw frame
            rgb = root / "sync" / scene / f"rgb_{number}.jpg"
            depth = rgb.with_name(f"sync_depth_{number}.png")
            _write_image(rgb, rng, shape)
            depth_mm = rng.integers(500, 9500, shape).astype(np.uint16)
            depth_mm[0, :4] = [0, 10000, 12000, 65535]
            Image.fromarray(depth_mm).save(depth)
            out["lines"].append(f"/{scene}/{rgb.name} /{scene}/{depth.name} 518.8579")
            out["rgb"].append(rgb)
            out["depth"].append(depth)
            out["depth_mm"].append(depth_mm)
    if n_scenes and frames:
        _write_image(root / "sync" / "scene_0000" / f"rgb_{7 * frames:05d}.jpg", rng, shape)
    if file_list:
        (root / NYU_SYNC_LIST).write_text("\n".join(out["lines"]) + "\n")
    return out


IMAGENET_WNIDS = ("n01440764", "n01443537", "n01484850")  # tench, goldfish, great white shark
IMAGENET_SYNSET_FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
                          "wordnet_height", "num_train_images")


def _write_jpeg(path: Path, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A JPEG of smooth random colour blocks; returns its pixels as decoded (JPEG is lossy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    pixels = blocks[np.arange(shape[0]) * 4 // shape[0]][:, np.arange(shape[1]) * 4 // shape[1]]
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def _write_devkit(root: Path, ids: dict[str, int], truth: list[int]) -> None:
    """``ILSVRC2012_devkit_t12.tar.gz``: ``data/meta.mat`` (the synsets: leaves plus one inner
    node, as MATLAB structs) and ``data/ILSVRC2012_validation_ground_truth.txt``."""
    rows = [(ilsvrc_id, wnid, wnid, "", 0, np.zeros(0), 0, 3) for wnid, ilsvrc_id in ids.items()]
    rows.append((len(ids) + 1, "n00015388", "animal", "", len(ids), np.arange(1, len(ids) + 1), 1, 0))
    synsets = np.array(rows, dtype=[(name, "O") for name in IMAGENET_SYNSET_FIELDS])
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    members = {"ILSVRC2012_devkit_t12/data/meta.mat": meta.getvalue(),
               "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt":
                   "".join(f"{t}\n" for t in truth).encode()}
    with tarfile.open(Path(root) / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_imagenet(root: Path, per_class: int = 3, n_val: int = 6, flat_val: bool = False,
                   shape: tuple[int, int] = (24, 32)) -> dict:
    """ILSVRC-2012's layout for three classes: ``train/<wnid>/<wnid>_<k>.JPEG`` and the validation
    images ``val/<wnid>/ILSVRC2012_val_<n>.JPEG`` (as torchvision.datasets.ImageNet sorts them) or,
    with ``flat_val``, ``val/ILSVRC2012_val_<n>.JPEG`` labelled by the devkit archive (whose
    ILSVRC2012_IDs are not in wnid order, as in the release). Classes are the sorted wnids.

    Returns ``{"train"|"test": {"labels": [...], "images": uint8 [N, H, W, 3]}}`` in the loader's
    order (class folders sorted, then file names; flat: file names).
    """
    rng, root = _rng(2012), Path(root)
    out: dict = {part: {"labels": [], "images": []} for part in ("train", "test")}
    for label, wnid in enumerate(IMAGENET_WNIDS):
        for k in range(per_class):
            out["train"]["images"].append(_write_jpeg(root / "train" / wnid / f"{wnid}_{k}.JPEG", rng, shape))
            out["train"]["labels"].append(label)
    val_labels = [(n * 2) % len(IMAGENET_WNIDS) for n in range(n_val)]  # file order != class order
    val: list[tuple[int, int, np.ndarray]] = []
    for n, label in enumerate(val_labels, start=1):
        folder = root / "val" if flat_val else root / "val" / IMAGENET_WNIDS[label]
        val.append((label, n, _write_jpeg(folder / f"ILSVRC2012_val_{n:08d}.JPEG", rng, shape)))
    ids = {wnid: len(IMAGENET_WNIDS) - k for k, wnid in enumerate(IMAGENET_WNIDS)}
    _write_devkit(root, ids, [ids[IMAGENET_WNIDS[label]] for label in val_labels])
    for label, _, image in (val if flat_val else sorted(val, key=lambda item: item[:2])):
        out["test"]["labels"].append(label)
        out["test"]["images"].append(image)
    for part in out.values():
        part["images"] = np.stack(part["images"])
    return out
