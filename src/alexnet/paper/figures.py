"""The paper's Figures 3 and 4 from a trained checkpoint (``alexnet figures``).

Figure 3: conv1's kernels. The paper shows the 48 kernels learned on GPU 1 above the 48 on
GPU 2; our towers are conv2's two input halves (``groups=2``), so conv1's first half of kernels
is tower 1 and the second half tower 2.

Figure 4 (left): eight images, each with the network's five most probable classes, the true
class's bar in red. Figure 4 (right): five of them as queries, each with the six gallery images
whose fc7 activations (the last hidden layer) are nearest in Euclidean distance (section 6.1).

Every image reaches the network exactly as in evaluation (the checkpoint's ``Pipeline``): the
stored image (CIFAR-10 32x32, prepared ImageNet 256x256), its centre ``input_size`` window,
then per-channel normalisation or the mean image. Class names come from the checkpoint. Image files
(``--images``, ``--gallery``) are read as ``alexnet predict`` reads them: EXIF orientation applied,
then brought to the stored size the checkpoint's pipeline says (centre square, resized).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.decode import BadImage, image_paths
from ..data.images import decode_file
from ..errors import UsageError
from ..runs.folder import RunFolder
from ..runs.load import load_run
from ..runtime import log
from ..use.predictor import Predictor
from ..use.retrieve import nearest_neighbours
from .plotting import pyplot

QUERIES = 8  # Figure 4 left: images with their top-5 (the paper shows eight)
NEIGHBOUR_QUERIES = 5  # Figure 4 right: query rows (the paper shows five)
NEIGHBOURS = 6  # gallery images per query (the paper's six)
TOP = 5  # classes per image in Figure 4 left
KERNEL_PIXELS = 44  # conv1 kernels are enlarged (nearest) to about this many pixels a side
TRUE_COLOUR, OTHER_COLOUR = "tab:red", "tab:blue"  # the paper draws the true class's bar in red

@dataclass
class ImageSet:
    """Some images of a split or a folder, and what is known about each."""

    images: Any  # slices like a uint8 (N, 3, H, W) tensor: a tensor, ShardImages or FolderImages
    indices: torch.Tensor  # which of ``images`` belong to the set, in order
    ids: list[str]  # "val[3]" or the file path, for figures.json
    labels: list[int | None]  # true class, None where unknown
    paths: list[Path | None]  # the file, for folders (a query is never its own neighbour)

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, size: int):
        for start in range(0, len(self.indices), size):
            yield self.images[self.indices[start:start + size]]

    def pixels(self, positions: list[int] | None = None) -> torch.Tensor:
        """The uint8 images at ``positions`` of the set (all by default)."""
        return self.images[self.indices if positions is None else self.indices[positions]]

    def head(self, n: int) -> ImageSet:
        return ImageSet(self.images, self.indices[:n], self.ids[:n], self.labels[:n], self.paths[:n])


class FolderImages:
    """Image files that slice like a uint8 (N, 3, size, size) tensor, as ``ShardImages`` do: decoded
    when sliced, so a large gallery is never all in memory."""

    def __init__(self, files: list[Path], pipeline):
        self.files, self.pipeline = files, pipeline

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx) -> torch.Tensor:
        return torch.stack([self.load(self.files[i]) for i in torch.as_tensor(idx).reshape(-1).tolist()])

    def load(self, path: Path) -> torch.Tensor:
        """The file as ``alexnet predict`` and ``retrieve`` read a user's photo: EXIF orientation
        applied (a phone's portrait shot stands upright), brought to the pipeline's stored size."""
        try:
            return decode_file(path.read_bytes(), self.pipeline)
        except BadImage as err:
            raise UsageError(f"{path}: {err}; remove it from the folder or convert it to JPEG or PNG") from None


def make_all(checkpoint: Path, images: Path | None, gallery: Path | None, gallery_limit: int, data_path: str | None,
             device: torch.device, out: Path | None, units: tuple[str, ...] = ()) -> dict[str, Path]:
    """Figures 3 and 4 of ``checkpoint`` into ``out`` (default ``RUN_DIR/figures``): Figure 4's images from
    the folder ``images`` (default: one validation image of each of eight classes), their neighbours
    from the folder ``gallery`` (default: ``gallery_limit`` training images)."""
    check_folders(images, gallery, gallery_limit)
    loaded = load_run(checkpoint, data_path=data_path)
    data = load_data(loaded, needed=images is None or gallery is None)
    pipeline = loaded.pipeline_for(data) if data is not None else loaded.pipeline  # exactly evaluation's input
    classes = loaded.classes or data.class_list()
    names, keys = class_names(classes)
    if loaded.config.model.num_classes != len(names):
        raise UsageError(f"checkpoint {checkpoint} has {loaded.config.model.num_classes} classes but its dataset "
                         f"has {len(names)}; pass --data with the dataset it was trained on")
    network = Predictor(loaded.model.to(device), pipeline.to(device), classes, device,
                        batch_size=loaded.config.data.eval_batch_size)
    queries = (folder_set(images, QUERIES, pipeline, keys) if images
               else split_set(data.val_images, data.val_labels, one_per_class(data.val_labels, QUERIES), "val"))
    gallery_set = (folder_set(gallery, gallery_limit, pipeline, keys) if gallery
                   else train_gallery(data, gallery_limit, loaded.config.seed))
    log(f"figures: {len(queries)} images, fc7 features of {len(gallery_set)} gallery images on {device}")
    out = out or default_out(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    return make_figures(network, queries, gallery_set, names, out, units)


def check_folders(images: Path | None, gallery: Path | None, gallery_limit: int) -> None:
    if gallery_limit < 1:
        raise UsageError(f"--gallery-limit must be at least 1; got {gallery_limit}")
    for flag, folder in (("--images", images), ("--gallery", gallery)):
        if folder is not None and not folder.is_dir():
            raise UsageError(f"{flag} {folder}: not a folder; pass a folder of image files (.jpg, .png, ...)")


def load_data(loaded, needed: bool):
    """The run's dataset, or None when both image sets are folders and the checkpoint gives the
    classes and the pipeline (a checkpoint saved without its pipeline needs the data's mean image)."""
    from ..data.datasets import load_dataset

    known = loaded.classes is not None and loaded.pipeline is not None
    return None if known and not needed else load_dataset(loaded.config.data, loaded.config.seed)


def class_names(classes: list[dict]) -> tuple[list[str], list[tuple[str, ...]]]:
    """Display names (the first of a name's comma-separated words: "tench, Tinca tinca" -> "tench"),
    and the names a file or folder may use for each class (that name, and the wnid or folder)."""
    names = [c["name"].split(",")[0].strip() or c["wnid"] for c in classes]
    return names, [tuple(dict.fromkeys((name, c["wnid"]))) for name, c in zip(names, classes)]


def one_per_class(labels: torch.Tensor, n: int) -> torch.Tensor:
    """The first validation image of each class in turn, ``n`` in all (splits stored class by
    class would otherwise give eight images of one class); then the first images left over."""
    firsts = [int((labels == c).nonzero()[0]) for c in labels.unique(sorted=True).tolist()][:n]
    taken = set(firsts)
    rest = [i for i in range(min(len(labels), 2 * n)) if i not in taken][:max(0, n - len(firsts))]
    return torch.tensor(sorted(firsts) + rest, dtype=torch.long)


def split_set(images, labels: torch.Tensor, indices: torch.Tensor, split: str) -> ImageSet:
    if not len(indices):
        flag = "--images" if split == "val" else "--gallery"
        raise UsageError(f"the dataset's {split} split is empty; pass {flag} DIR with image files instead")
    return ImageSet(images, indices, [f"{split}[{i}]" for i in indices.tolist()],
                    labels[indices].tolist(), [None] * len(indices))


def train_gallery(data, limit: int, seed: int) -> ImageSet:
    """A seeded class-balanced subset of the training split, in index order."""
    from ..data.subset import balanced_indices

    picked = balanced_indices(data.train_labels, len(data.classes), limit, seed).sort().values
    return split_set(data.train_images, data.train_labels, picked, "train")


def folder_set(folder: Path, limit: int, pipeline, keys: list[tuple[str, ...]]) -> ImageSet:
    """The first ``limit`` image files under ``folder`` (sorted, searched recursively)."""
    files = [p for p in image_paths(folder) if p.is_file()][:limit]  # hidden and system folders left out
    if not files:
        raise UsageError(f"{folder}: no image files (.jpg, .png, ...) in it; pass a folder of images")
    return ImageSet(FolderImages(files, pipeline), torch.arange(len(files)), [str(f) for f in files],
                    [true_class(f, keys) for f in files], list(files))


def true_class(path: Path, keys: list[tuple[str, ...]]) -> int | None:
    """The class that ``path``'s folder or file name names (``cat/1.png``, ``cat.png``, ``cat_1.png``,
    ``n01440764_tench.JPEG``), else None. The longest name wins: tiger_shark_1.png is not a tiger."""
    folder, stem = _words(path.parent.name), _words(path.stem)
    best, best_len = None, 0
    for label, names in enumerate(keys):
        for name in map(_words, names):
            rest = stem[len(name):] if stem.startswith(name) else None
            named = folder == name or (rest is not None and (not rest or not rest[0].isalpha()))
            if named and len(name) > best_len:
                best, best_len = label, len(name)
    return best


def _words(text: str) -> str:
    """Lower case with spaces for ``_`` and ``-``: "Great_White-shark" -> "great white shark"."""
    return " ".join(text.lower().replace("_", " ").replace("-", " ").split())


def default_out(checkpoint: Path) -> Path:
    """RUN_DIR/figures for RUN_DIR/checkpoints/X.pt, else a figures folder beside the checkpoint."""
    folder = RunFolder.of_checkpoint(checkpoint)
    return folder.figures if folder else checkpoint.parent / "figures"


def same_files(queries: ImageSet, gallery: ImageSet) -> torch.Tensor:
    """(Q, G) True where a query and a gallery image are the same file (the same path, resolved)."""
    gallery_paths = [p.resolve() if p else None for p in gallery.paths]
    return torch.tensor([[q is not None and q.resolve() == g for g in gallery_paths] for q in queries.paths],
                        dtype=torch.bool).reshape(len(queries.paths), len(gallery_paths))


def make_figures(network: Predictor, queries: ImageSet, gallery: ImageSet, names: list[str],
                 out: Path, units: tuple[str, ...] = ()) -> dict[str, Path]:
    """Compute Figures 3 and 4, draw them into ``out`` and write figures.json; returns the paths."""
    def fc7(images: ImageSet) -> torch.Tensor:
        return torch.cat([network.features(x, "fc7") for x in images.batches(network.batch_size)])

    probs = torch.cat([network.probabilities(x) for x in queries.batches(network.batch_size)])
    top5 = top5_records(probs, queries, names)
    first = queries.head(NEIGHBOUR_QUERIES)
    index, dist = nearest_neighbours(fc7(first), fc7(gallery), NEIGHBOURS, same_files(first, gallery))
    if not index.shape[1]:
        raise UsageError("the gallery holds only the query images themselves; pass --gallery DIR with other images")
    neighbours = neighbour_records(index, dist, first, gallery, names)
    paths = {"figure3": out / "figure3.png", "figure4_top5": out / "figure4_top5.png",
             "figure4_neighbours": out / "figure4_neighbours.png", "json": out / "figures.json"}
    model = network.model.config
    conv1 = network.model.conv1.weight.detach().float().cpu().numpy()
    draw_figure3(conv1, towers=2 if model.towers and model.variant != "torchvision" else 1, path=paths["figure3"])
    window, pixels = network.pipeline.window, queries.pixels()  # (files are decoded when sliced: once)
    draw_top5(hwc(window(pixels)), top5, paths["figure4_top5"])
    paths["figure4_gradcam"] = out / "figure4_gradcam.png"
    draw_gradcam(network, pixels, top5, paths["figure4_gradcam"])
    rows = [hwc(window(gallery.pixels(row))) for row in index.tolist()]
    draw_neighbours(hwc(window(first.pixels())), rows, neighbours, paths["figure4_neighbours"])
    records = {"top5": top5, "neighbours": neighbours}
    if units:
        paths["figure_units"] = out / "figure_units.png"
        records["units"] = draw_unit_figure(network, gallery, units, paths["figure_units"])
    paths["json"].write_text(json.dumps(records, indent=2) + "\n")
    return paths


def draw_unit_figure(network: Predictor, gallery: ImageSet, layers: tuple[str, ...], path: Path) -> dict:
    """What units see (``units.py``), drawn into ``path``; its records, with gallery ids for image positions."""
    from .units import draw_units, patch_tiles, strongest_patches

    records = strongest_patches(network, gallery, layers)
    draw_units(patch_tiles(network, gallery, records), records, path)
    for unit in (u for units in records.values() for u in units):
        unit["images"] = [gallery.ids[i] for i in unit["images"]]
    return records


def top5_records(probs: torch.Tensor, images: ImageSet, names: list[str]) -> list[dict]:
    values, classes = probs.topk(min(TOP, probs.shape[1]), dim=1)
    return [{"image": image, "label": label, "true": None if label is None else names[label],
             "top5": [{"label": c, "class": names[c], "probability": round(p, 6)} for c, p in zip(cs, ps)]}
            for image, label, cs, ps in zip(images.ids, images.labels, classes.tolist(), values.tolist())]


def neighbour_records(index: torch.Tensor, dist: torch.Tensor, queries: ImageSet, gallery: ImageSet,
                      names: list[str]) -> list[dict]:
    def entry(g: int, d: float) -> dict:
        label = gallery.labels[g]
        return {"gallery_position": g, "image": gallery.ids[g], "path": _str(gallery.paths[g]), "label": label,
                "class": None if label is None else names[label], "distance": d}

    return [{"query": queries.ids[q], "path": _str(queries.paths[q]), "label": queries.labels[q],
             "true": None if queries.labels[q] is None else names[queries.labels[q]],
             "neighbours": [entry(g, d) for g, d in zip(row, ds)]}
            for q, (row, ds) in enumerate(zip(index.tolist(), dist.tolist()))]


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def hwc(images: torch.Tensor) -> list:
    """uint8 (N, 3, H, W) -> N numpy (H, W, 3) arrays for imshow."""
    return list(images.permute(0, 2, 3, 1).contiguous().numpy())


# --------------------------------------------------------------------------- drawing


def kernel_mosaic(kernels, columns: int, scale: int, gap: int = 1):
    """(n, 3, k, k) kernels -> one (H, W, 3) image in 0..1 on white: each kernel stretched to 0..1
    on its own, enlarged ``scale`` times by repetition (nearest), in rows of ``columns``."""
    import numpy as np

    n, _, k, _ = kernels.shape
    low = kernels.min(axis=(1, 2, 3), keepdims=True)
    span = kernels.max(axis=(1, 2, 3), keepdims=True) - low
    tiles = (kernels - low) / np.where(span > 0, span, 1)
    tiles = tiles.repeat(scale, axis=2).repeat(scale, axis=3).transpose(0, 2, 3, 1)
    side, rows = k * scale, -(-n // columns)
    mosaic = np.ones((rows * (side + gap) - gap, columns * (side + gap) - gap, 3))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        mosaic[r * (side + gap):r * (side + gap) + side, c * (side + gap):c * (side + gap) + side] = tile
    return mosaic


def draw_figure3(kernels, towers: int, path: Path) -> None:
    """conv1's kernels, one block per tower (first half of the kernels = tower 1)."""
    import numpy as np

    plt = pyplot()
    n, _, k, _ = kernels.shape
    groups = np.split(kernels, towers)
    columns, scale = min(16, len(groups[0])), max(1, math.ceil(KERNEL_PIXELS / k))
    mosaics = [kernel_mosaic(g, columns, scale) for g in groups]
    height, width = mosaics[0].shape[:2]
    inches = max(5.0, 1.6 * width / 100)  # 1.6 screen pixels per mosaic pixel, at least 5 inches wide
    fig, axes = plt.subplots(towers, 1, squeeze=False, layout="constrained",
                             figsize=(inches, towers * (inches * height / width + 0.3) + 0.4))
    for i, (ax, mosaic) in enumerate(zip(axes[:, 0], mosaics)):
        ax.imshow(mosaic, interpolation="nearest")
        ax.set_title(f"tower {i + 1}" if towers > 1 else "one tower", fontsize=11)
        ax.axis("off")
    fig.suptitle(f"Figure 3: the {n} conv1 kernels ({k}x{k}x3), each scaled to 0..1", fontsize=12)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def draw_top5(images: list, records: list[dict], path: Path) -> None:
    """Figure 4 (left): each image above its top-5 bars; the true class's bar in red."""
    plt = pyplot()
    columns = min(4, len(records))
    rows = -(-len(records) // columns)
    fig = plt.figure(figsize=(3.2 * columns, 3.9 * rows))
    grid = fig.add_gridspec(rows, columns, hspace=0.3, wspace=0.8)
    for i, (image, record) in enumerate(zip(images, records)):
        cell = grid[divmod(i, columns)].subgridspec(2, 1, height_ratios=[3, 1.5], hspace=0.1)
        ax = fig.add_subplot(cell[0])
        ax.imshow(image)
        ax.axis("off")
        ax.set_title(record["true"] or Path(record["image"]).name, fontsize=10)
        bars = fig.add_subplot(cell[1])
        top = record["top5"]
        colours = [TRUE_COLOUR if t["label"] == record["label"] else OTHER_COLOUR for t in top]
        bars.barh(range(len(top)), [t["probability"] for t in top], color=colours)
        bars.set_yticks(range(len(top)), [t["class"] for t in top], fontsize=8)
        bars.invert_yaxis()
        bars.set_xlim(0, 1)
        bars.tick_params(axis="x", labelsize=7)
    fig.suptitle("Figure 4 (left): the five most probable classes of each image; the true class in red")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def draw_gradcam(network: Predictor, pixels: torch.Tensor, records: list[dict], path: Path) -> None:
    """Figure 4's images (uint8 ``pixels``) with Grad-CAM's map of their top class over what the network sees
    (``alexnet explain``)."""
    from ..use.explain import Explainer
    from ..use.overlay import overlay

    explainer = Explainer(network.model, network.pipeline, network.device)
    top = torch.tensor([r["top5"][0]["label"] for r in records])
    maps = explainer.maps(explainer.input(pixels), top, "gradcam")
    windows = network.pipeline.window(pixels.to(network.device)).cpu()
    plt = pyplot()
    columns = min(4, len(records))
    rows = -(-len(records) // columns)
    fig, axes = plt.subplots(rows, columns, squeeze=False, figsize=(2.6 * columns, 2.8 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, window, heat, record in zip(axes.flat, windows, maps, records):
        ax.imshow(overlay(window, heat, ""), interpolation="bilinear")
        ax.set_title(f"{record['top5'][0]['class']} {record['top5'][0]['probability']:.2f}", fontsize=9)
    fig.suptitle("Figure 4's images: where the network finds its top class (Grad-CAM at conv5)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_neighbours(queries: list, rows: list[list], records: list[dict], path: Path) -> None:
    """Figure 4 (right): a query per row, then its nearest gallery images in fc7 space."""
    plt = pyplot()
    columns = 1 + max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), columns, squeeze=False, layout="constrained",
                             figsize=(1.7 * columns, 2.0 * len(rows) + 0.4))
    for ax in axes.flat:
        ax.axis("off")
    for r, (query, row, record) in enumerate(zip(queries, rows, records)):
        axes[r, 0].imshow(query)
        axes[r, 0].set_title(f"query: {record['true'] or Path(record['query']).name}", fontsize=8, fontweight="bold")
        for j, (image, nb) in enumerate(zip(row, record["neighbours"])):
            axes[r, j + 1].imshow(image)
            axes[r, j + 1].set_title(f"{nb['class'] or Path(nb['image']).name}\nd={nb['distance']:.3g}", fontsize=7)
    fig.suptitle(f"Figure 4 (right): the {columns - 1} gallery images nearest each query in fc7 space")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
