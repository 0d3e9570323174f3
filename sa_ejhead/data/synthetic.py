"""SA-Shapes: a small, deterministic, multi-scale instance-segmentation dataset in COCO format
(docs/data.md). Layout written by :func:`generate_sa_shapes`::

    ROOT/
      info.json                      # generator version and parameters, per-split size counts
      annotations/train.json         # COCO instances format
      annotations/val.json
      train/000000.png ...
      val/000000.png ...
"""

import json
import logging
import math
import os
import shutil
import tempfile
import zlib

import cv2
import numpy as np
import pycocotools.mask as mask_util

logger = logging.getLogger(__name__)

# Bumped whenever the generator's output changes; a folder written by another version is rebuilt.
SA_SHAPES_VERSION = 1

# COCO category ids start at 1; colours (RGB) are the Visualizer's instance colours.
SA_SHAPES_CATEGORIES = [
    {"id": 1, "name": "circle", "color": (220, 20, 60)},
    {"id": 2, "name": "rectangle", "color": (0, 130, 200)},
    {"id": 3, "name": "triangle", "color": (60, 180, 75)},
    {"id": 4, "name": "star", "color": (245, 130, 48)},
    {"id": 5, "name": "ring", "color": (145, 30, 180)},
]

# COCO's area ranges (in original image pixels), used by COCOeval for AP_S / AP_M / AP_L.
SMALL_MAX_AREA = 32**2
MEDIUM_MAX_AREA = 96**2

# Target (un-occluded) object areas, sampled log-uniformly inside a bucket. The gaps around the
# COCO thresholds keep most objects in their bucket after occlusion removes a little area.
_SMALL_AREA = (16.0, 900.0)  # from about 4x4 px
_MEDIUM_AREA = (1200.0, 8000.0)
_LARGE_AREA = (10500.0, None)  # up to _LARGE_MAX_FRACTION of the image
_LARGE_MAX_FRACTION = 0.5
_BUCKET_PROBS = (0.4, 0.32, 0.28)  # small, medium, large
_MAX_LARGE_PER_IMAGE = 2
_OBJECTS_PER_IMAGE = (3, 9)  # inclusive range of attempted objects
_MIN_VISIBLE_FRACTION = 0.5  # an object may lose at most half of its area to occluders
_MIN_AREA = 12  # pixels; smaller objects are not annotated (and not drawn)
_PLACEMENT_TRIES = 25


def _split_seed(seed, split, index):
    """Return the random seed of one image, independent of how many images a split has."""
    return [int(seed), zlib.crc32(split.encode("utf-8")), int(index)]


def _muted_color(rng):
    """A low-saturation mid-tone colour (RGB floats), so saturated objects stand out."""
    base = rng.uniform(70, 180)
    return np.clip(base + rng.normal(0, 18, size=3), 30, 220)


def _background(rng, height, width):
    """One textured background: an H x W x 3 float32 RGB image."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = _muted_color(rng), _muted_color(rng)
    kind = rng.integers(4)
    if kind == 0:  # linear gradient
        angle = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    elif kind == 1:  # stripes at a random angle and period
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(6, 40)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
    elif kind == 2:  # checkerboard
        cell = int(rng.integers(8, 48))
        t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    else:  # blurred noise ("clouds")
        small = rng.uniform(0, 1, size=(max(2, height // 16), max(2, width // 16)))
        t = cv2.resize(small.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
        t = np.clip(t, 0, 1)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    return img.astype(np.float32)


def _regular_points(cx, cy, radii, angle0):
    """Vertices of a star-like polygon: ``radii[k]`` at angle ``angle0 + 2*pi*k/len(radii)``."""
    n = len(radii)
    ang = angle0 + 2 * math.pi * np.arange(n) / n
    return np.stack([cx + radii * np.cos(ang), cy + radii * np.sin(ang)], axis=1)


def _circle_vertices(radius):
    return int(np.clip(round(radius * 1.5), 12, 64))


def _shape_geometry(rng, name, area):
    """Sample a shape of class ``name`` and ``area`` pixels, centred at the origin.

    Returns:
        tuple(list[ndarray], ndarray|None, float): the outer polygon(s) as N x 2 arrays, an inner
        polygon to cut out (``ring`` only) or None, and the radius of its circumscribed circle.
    """
    angle = rng.uniform(0, 2 * math.pi)
    if name == "circle":
        aspect = rng.uniform(0.8, 1.25)  # slightly elliptic
        r = math.sqrt(area / math.pi)
        n = _circle_vertices(r)
        ang = 2 * math.pi * np.arange(n) / n
        pts = np.stack([r * aspect**0.5 * np.cos(ang), r / aspect**0.5 * np.sin(ang)], axis=1)
        return [_rotate(pts, angle)], None, r * max(aspect, 1 / aspect) ** 0.5
    if name == "rectangle":
        aspect = math.exp(rng.uniform(math.log(0.4), math.log(2.5)))
        w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
        return [_rotate(pts, angle)], None, math.hypot(w, h) / 2
    if name == "triangle":
        # an equilateral triangle (area 1.299 R^2) with jittered vertices
        r = math.sqrt(area / 1.299)
        radii = r * rng.uniform(0.85, 1.15, size=3)
        ang = angle + 2 * math.pi * np.arange(3) / 3 + rng.uniform(-0.2, 0.2, size=3)
        pts = np.stack([radii * np.cos(ang), radii * np.sin(ang)], axis=1)
        return [pts], None, float(radii.max())
    if name == "star":
        # 5 points, inner radius 0.45 R: area = 5 * R * 0.45 R * sin(36 deg) = 1.3225 R^2
        r = math.sqrt(area / 1.3225)
        radii = np.tile([r, 0.45 * r], 5)
        return [_regular_points(0.0, 0.0, radii, angle)], None, r
    if name == "ring":
        k = rng.uniform(0.45, 0.6)  # inner / outer radius
        r = math.sqrt(area / (math.pi * (1 - k * k)))
        r = max(r, 6.0)  # keep a visible hole
        n = _circle_vertices(r)
        outer = _regular_points(0.0, 0.0, np.full(n, r), angle)
        inner = _regular_points(0.0, 0.0, np.full(n, k * r), angle)
        return [outer], inner, r
    raise ValueError(f"unknown shape {name!r}")


def _rotate(pts, angle):
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _polygon_to_coco(pts):
    """N x 2 array -> COCO flat polygon, rounded to 0.01 px (the stored values are drawn)."""
    return np.round(pts.reshape(-1).astype(np.float64), 2).tolist()


def _rasterize(polygons, height, width):
    """Rasterize COCO flat polygons with pycocotools (exactly as COCO tools read them back)."""
    rles = mask_util.frPyObjects(polygons, height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def _mask_box(mask):
    """Return the tight (row slice, column slice) of a bool mask, or None if it is empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _still_visible(obj, new_full, box):
    """Whether ``obj`` keeps enough visible area once ``new_full`` (tight box ``box``) covers it."""
    lost = (obj["visible"][box] & new_full[box]).sum()
    if lost == 0:
        return True
    left = int(obj["visible"].sum()) - int(lost)
    return left >= max(_MIN_VISIBLE_FRACTION * obj["area"], _MIN_AREA)


def _sample_area(rng, bucket, height, width):
    lo, hi = (_SMALL_AREA, _MEDIUM_AREA, _LARGE_AREA)[bucket]
    if hi is None:
        hi = _LARGE_MAX_FRACTION * height * width
    hi = max(hi, lo * 1.01)
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _object_color(rng):
    """A saturated colour (RGB floats) from a random hue."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(150, 255), rng.uniform(150, 255)]]])
    rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return rgb.astype(np.float32)


def _render_image(rng, height, width):
    """Render one image: the H x W x 3 uint8 RGB image and, in depth order, one dict per object
    (``category_id``, ``full`` and ``visible`` bool masks, COCO ``polygons``, ``has_hole``...)."""
    img = _background(rng, height, width)
    num = int(rng.integers(_OBJECTS_PER_IMAGE[0], _OBJECTS_PER_IMAGE[1] + 1))
    buckets = rng.choice(3, size=num, p=_BUCKET_PROBS)
    if (buckets == 2).sum() > _MAX_LARGE_PER_IMAGE:
        extra = np.flatnonzero(buckets == 2)[_MAX_LARGE_PER_IMAGE:]
        buckets[extra] = rng.integers(0, 2, size=len(extra))
    areas = np.array([_sample_area(rng, b, height, width) for b in buckets])
    # mostly back-to-front by size, so that small objects sit on large ones; a few are moved to
    # a random depth so that large objects also occlude smaller ones
    order = list(np.argsort(-areas, kind="stable"))
    for _ in range(int(rng.integers(0, 3))):
        i, j = rng.integers(0, num, size=2)
        order[i], order[j] = order[j], order[i]

    objects = []
    for idx in order:
        cat = SA_SHAPES_CATEGORIES[int(rng.integers(len(SA_SHAPES_CATEGORIES)))]
        outer, inner, extent = _shape_geometry(rng, cat["name"], float(areas[idx]))
        margin = extent + 1.0
        if 2 * margin >= min(height, width):
            scale = (min(height, width) / 2 - 2.0) / extent
            outer = [p * scale for p in outer]
            inner = None if inner is None else inner * scale
            margin = min(height, width) / 2 - 1.0
        for _ in range(_PLACEMENT_TRIES):
            cx = rng.uniform(margin, width - margin)
            cy = rng.uniform(margin, height - margin)
            polys = [_polygon_to_coco(p + [cx, cy]) for p in outer]
            full = _rasterize(polys, height, width)
            if inner is not None:
                hole = _rasterize([_polygon_to_coco(inner + [cx, cy])], height, width)
                full &= ~hole
            box = _mask_box(full)
            if box is None or full[box].sum() < _MIN_AREA:
                break  # too small to be seen: skip this object
            if all(_still_visible(o, full, box) for o in objects):
                for o in objects:
                    o["visible"][box] &= ~full[box]
                objects.append(
                    {
                        "category_id": cat["id"],
                        "full": full,
                        "area": int(full[box].sum()),
                        "visible": full.copy(),
                        "polygons": polys,
                        "has_hole": inner is not None,
                        "color": _object_color(rng),
                        "shade": rng.normal(0, 12, size=3),
                    }
                )
                break

    # paint back to front: a flat colour with a gentle shading gradient across the object
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for o in objects:
        ys, xs = np.nonzero(o["full"])
        t = ((xs - xs.mean()) + (ys - ys.mean())) / max(float(np.ptp(xs) + np.ptp(ys)), 1.0)
        img[ys, xs] = o["color"][None, :] + t[:, None] * o["shade"][None, :] * 2
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * 3.0  # sensor noise
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects


def _annotation(obj, ann_id, image_id, height, width):
    """COCO annotation of one rendered object (visible mask, tight box, pixel area)."""
    vis = obj["visible"]
    ys, xs = np.nonzero(vis)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    occluded = bool((obj["full"] & ~vis).any())
    if occluded or obj["has_hole"]:
        rle = mask_util.encode(np.asfortranarray(vis.astype(np.uint8)))
        segm = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
    else:
        segm = obj["polygons"]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj["category_id"],
        "segmentation": segm,
        "area": int(vis.sum()),
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "iscrowd": 0,
    }


def size_counts(annotations):
    """Count COCO annotations per size bucket (by ``area``): ``{"small", "medium", "large"}``."""
    counts = {"small": 0, "medium": 0, "large": 0}
    for a in annotations:
        if a["area"] < SMALL_MAX_AREA:
            counts["small"] += 1
        elif a["area"] < MEDIUM_MAX_AREA:
            counts["medium"] += 1
        else:
            counts["large"] += 1
    return counts


def _write_split(folder, split, num_images, height, width, seed):
    """Render and write one split; return its COCO dict."""
    os.makedirs(os.path.join(folder, split))
    images, annotations = [], []
    for i in range(num_images):
        rng = np.random.default_rng(_split_seed(seed, split, i))
        img, objects = _render_image(rng, height, width)
        file_name = f"{split}/{i:06d}.png"
        path = os.path.join(folder, file_name)
        ok = cv2.imwrite(path, img[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise OSError(f"could not write {path}")
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            annotations.append(_annotation(obj, len(annotations) + 1, image_id, height, width))
    categories = [
        {"id": c["id"], "name": c["name"], "supercategory": "shape"} for c in SA_SHAPES_CATEGORIES
    ]
    return {
        "info": {"description": f"SA-Shapes {split} (sa_ejhead synthetic, seed {seed})"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _params(num_train, num_val, height, width, seed):
    return {
        "version": SA_SHAPES_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "height": int(height),
        "width": int(width),
    }


def generate_sa_shapes(root, *, num_train=400, num_val=80, height=192, width=256, seed=0):
    """Generate an SA-Shapes dataset into the new folder ``root``; return its ``info.json``.

    Image ``i`` of split ``s`` depends only on ``(seed, s, i)`` and the image size (at least
    64 x 64): the same arguments give byte-identical files. They are written to a temporary folder
    beside ``root``, then renamed to it (if another process created ``root`` meanwhile, its copy is
    kept), so an interrupted generation is never reused.
    """
    if min(height, width) < 64:
        raise ValueError(f"SA-Shapes images must be at least 64x64, got {height}x{width}")
    root = os.path.abspath(root)
    if os.path.exists(root):
        raise FileExistsError(f"{root} already exists; SA-Shapes is only written to a new folder")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    try:
        info = _params(num_train, num_val, height, width, seed)
        info["splits"] = {}
        os.makedirs(os.path.join(tmp, "annotations"))
        for split, n in (("train", num_train), ("val", num_val)):
            coco = _write_split(tmp, split, n, height, width, seed)
            with open(os.path.join(tmp, "annotations", f"{split}.json"), "w") as f:
                json.dump(coco, f)
            info["splits"][split] = {
                "images": len(coco["images"]),
                "annotations": len(coco["annotations"]),
                "sizes": size_counts(coco["annotations"]),
                "rle": sum(isinstance(a["segmentation"], dict) for a in coco["annotations"]),
            }
        with open(os.path.join(tmp, "info.json"), "w") as f:
            json.dump(info, f, indent=2)
        try:
            os.rename(tmp, root)
        except OSError:
            if not os.path.isdir(root):
                raise
            logger.info(f"{root} was created by another process meanwhile; using it")
            shutil.rmtree(tmp, ignore_errors=True)
            info = _read_info(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _read_info(root):
    with open(os.path.join(root, "info.json")) as f:
        return json.load(f)


def ensure_sa_shapes(root, *, num_train=400, num_val=80, height=192, width=256, seed=0):
    """The ``info.json`` of the SA-Shapes set at ``root`` (arguments as
    :func:`generate_sa_shapes`), generated first if missing. A folder written with other
    parameters or by another generator version is replaced (the new set generated beside it
    first, then swapped in)."""
    root = os.path.abspath(root)
    want = _params(num_train, num_val, height, width, seed)
    try:
        info = _read_info(root)
    except (OSError, ValueError):
        info = None
    if info is not None and all(info.get(k) == v for k, v in want.items()):
        return info
    params = {k: v for k, v in want.items() if k != "version"}
    if not os.path.exists(root):
        logger.info(f"Generating the SA-Shapes dataset in {root} ...")
        return generate_sa_shapes(root, **params)
    logger.warning(f"{root} holds another SA-Shapes version or parameters: regenerating it")
    new = root + f".new-{os.getpid()}"
    info = generate_sa_shapes(new, **params)
    old = root + f".old-{os.getpid()}"
    os.rename(root, old)
    os.rename(new, root)
    shutil.rmtree(old, ignore_errors=True)
    return info
