"""Embedded default data set: letters of many scripts rendered from the fonts matplotlib ships.

Each class is one visually distinct letter; its 16 possible "writers" are the DejaVu Sans, Serif
and Sans Mono and STIXGeneral fonts in 4 styles each. Samples vary in font, stroke weight, size,
aspect, rotation, shear and position, with contrast changes and Gaussian noise; the "hard"
variant adds stronger jitter, distractor strokes and an occluding square (recipe: environment.md
§1a); the "outline" variant draws the hard variant's letters as their contour, another lettering
style (the cross-domain target of `make episodes-cross`). Images are 32 x 32 grayscale, glyph ink bright (255) on a dark (0) background.

Cache layout (folder: `cache_dir`, else `$LOWSHOT_CACHE`, else `$XDG_CACHE_HOME/lowshot`, else
`~/.cache/lowshot`), both files regenerated when a recorded version differs from the running one:
    glyph_classes.json                                 available classes and the versions used
    glyphs-<variant>-c<classes>-n<images>-t<test>-s<seed>.npz
        train_images, train_labels, test_images, test_labels, codepoints, label_names, versions
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import unicodedata
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import fontTools
import matplotlib
import numpy as np
import PIL
from fontTools.ttLib import TTFont
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont, ImageOps, features

from lowshot.data.base import DATASETS, ImageDataset
from lowshot.data.files import cache_root
from lowshot.errors import InputError
from lowshot.io.atomic import atomic_path
from lowshot.runtime import available_cpus, forked_map

GENERATOR_VERSION = 1  # bump whenever the recipe changes, so that caches regenerate
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)
MIN_FONTS = 4  # a letter needs this many writers to become a class
DEDUPE_COSINE = 0.85  # a letter this similar to a kept one (e.g. Cyrillic A vs Latin A) is dropped
MASTER_PX, PAD = 96, 3  # master font size; blank border so MaxFilter(5) cannot clip ink
CANVAS, SIZE = 64, 32  # samples are drawn at CANVAS px, then box-downsampled to SIZE px
CLASSES_FILE = "glyph_classes.json"
IMAGES_PER_PROCESS = 4000  # rendering forks a process per this many images (≈ 1 s of work), up to the CPUs
_STROKES = (None, ImageFilter.MaxFilter(5), ImageFilter.MaxFilter(3), ImageFilter.MinFilter(3))
_STROKE_P = (0.4, 0.25, 0.2, 0.15)


@dataclass(frozen=True)
class _Jitter:
    rotation_deg: float
    shear: float
    distractors: bool  # 0-2 random line strokes
    occlude: bool  # with p=.5 a black square of 15-30 % of the canvas side
    outline: bool = False  # the letter's contour: a ring from 1 px inside to 4 px outside its ink (master px)


VARIANTS = {"easy": _Jitter(8.0, 0.12, False, False), "hard": _Jitter(15.0, 0.25, True, True),
            "outline": _Jitter(15.0, 0.25, True, True, outline=True)}


def _outline(master: Image.Image) -> Image.Image:
    """The contour of a master's ink, on a border wide enough that the ring is never clipped."""
    wide = ImageOps.expand(master, 4)
    return ImageChops.subtract(wide.filter(ImageFilter.MaxFilter(9)), wide.filter(ImageFilter.MinFilter(3)))


def library_versions() -> Dict[str, str]:
    """Versions that change the generated pixels; a cache made with other versions is stale."""
    return {
        "generator": str(GENERATOR_VERSION), "pillow": PIL.__version__,
        "freetype": features.version("freetype2") or "", "matplotlib": matplotlib.__version__,
        "numpy": np.__version__, "fonttools": fontTools.version, "unicode": unicodedata.unidata_version,
    }


# ---- class list -------------------------------------------------------------------------------

def _is_letter(codepoint: int) -> bool:
    """A base letter: Lu/Ll/Lo, no decomposition, no "WITH", not a modifier or maths letter."""
    ch = chr(codepoint)
    name = unicodedata.name(ch, "")
    return (unicodedata.category(ch) in ("Lu", "Ll", "Lo") and not unicodedata.decomposition(ch)
            and not any(word in name for word in ("WITH", "MODIFIER", "MATHEMATICAL")))


def _outlined_letters(path: str) -> set:
    """Letters that the font's best cmap maps to a glyph with contours (composites resolved)."""
    with TTFont(path, lazy=True) as tt:
        glyf = tt["glyf"]
        return {cp for cp, name in tt.getBestCmap().items()
                if _is_letter(cp) and len(glyf[name].getCoordinates(glyf)[1]) > 0}


def _candidates() -> Dict[int, Tuple[int, ...]]:
    """Letters drawn by at least MIN_FONTS fonts -> indices into FONT_FILES, ascending."""
    folder = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    covered = [_outlined_letters(os.path.join(folder, name)) for name in FONT_FILES]
    fonts_of = {cp: tuple(i for i, s in enumerate(covered) if cp in s) for cp in set().union(*covered)}
    return {cp: fonts_of[cp] for cp in sorted(fonts_of) if len(fonts_of[cp]) >= MIN_FONTS}


@functools.lru_cache(maxsize=None)
def _font(font_id: int) -> ImageFont.FreeTypeFont:
    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", FONT_FILES[font_id])
    # BASIC layout: libraqm may be missing elsewhere, and a lone letter needs no shaping.
    return ImageFont.truetype(path, MASTER_PX, layout_engine=ImageFont.Layout.BASIC)


def render_master(font_id: int, codepoint: int) -> Image.Image:
    """The letter at MASTER_PX in FONT_FILES[font_id], cropped to its ink plus a PAD border ("L" mode)."""
    font, ch = _font(font_id), chr(codepoint)
    left, top, right, bottom = font.getbbox(ch)
    img = Image.new("L", (right - left + 2 * PAD, bottom - top + 2 * PAD))
    ImageDraw.Draw(img).text((PAD - left, PAD - top), ch, font=font, fill=255)
    box = img.getbbox()
    if box is None:
        raise ValueError(f"{FONT_FILES[font_id]} draws no ink for U+{codepoint:04X}")
    return ImageOps.expand(img.crop(box), PAD)


def shape_vector(master: Image.Image, box: int = 26) -> np.ndarray:
    """Dedupe descriptor of shape (SIZE * SIZE,): ink fitted to `box` px, blurred, centred, unit norm."""
    ink = master.crop((PAD, PAD, master.width - PAD, master.height - PAD))
    scale = box / max(ink.size)
    w, h = (max(1, round(side * scale)) for side in ink.size)
    canvas = Image.new("L", (SIZE, SIZE))
    canvas.paste(ink.resize((w, h), Image.Resampling.BILINEAR), ((SIZE - w) // 2, (SIZE - h) // 2))
    v = np.asarray(canvas.filter(ImageFilter.GaussianBlur(1)), np.float64).ravel()
    v = v - v.mean()
    return v / np.linalg.norm(v)


def reference_font(font_ids: Tuple[int, ...]) -> int:
    """The font that draws a class for the dedupe: DejaVu Sans when it covers the letter."""
    return 0 if 0 in font_ids else font_ids[0]


def _dedupe(candidates: Dict[int, Tuple[int, ...]]) -> Dict[int, Tuple[int, ...]]:
    """Greedily keep, in code point order, letters with cosine <= DEDUPE_COSINE to all kept ones."""
    kept, n, out = np.zeros((len(candidates), SIZE * SIZE)), 0, {}
    for cp, fonts in candidates.items():
        v = shape_vector(render_master(reference_font(fonts), cp))
        if np.all(kept[:n] @ v <= DEDUPE_COSINE):
            kept[n], n, out[cp] = v, n + 1, fonts
    return out


def available_classes(cache_dir: Optional[str] = None) -> Dict[int, Tuple[int, ...]]:
    """Visually distinct letters (cached): code point -> indices into FONT_FILES, ascending."""
    path, versions = os.path.join(cache_root(cache_dir), CLASSES_FILE), library_versions()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        with open(path) as f:
            cached = json.load(f)
        if cached["versions"] == versions:
            return {int(cp): tuple(fonts) for cp, fonts in cached["classes"]}
    classes = _dedupe(_candidates())
    text = json.dumps({"versions": versions, "classes": [[cp, list(f)] for cp, f in classes.items()]})
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return classes


# ---- rendering --------------------------------------------------------------------------------

def _draw_params(rng: np.random.Generator, n: int, n_fonts: int, jitter: _Jitter) -> Dict[str, np.ndarray]:
    """Random parameters of n samples; every array has n rows."""
    return {
        "font": rng.integers(n_fonts, size=n), "stroke": rng.choice(len(_STROKES), size=n, p=_STROKE_P),
        "box": rng.uniform(0.65, 0.85, n) * CANVAS, "aspect": np.exp(rng.normal(0, 0.08, n)),
        "rotation": np.deg2rad(rng.normal(0, jitter.rotation_deg, n)),
        "shear": rng.normal(0, jitter.shear, n), "shift": rng.normal(0, 0.03 * CANVAS, (n, 2)),
        "lines": rng.integers(0, 3, n) * jitter.distractors, "line_xy": rng.uniform(0, CANVAS, (n, 2, 4)),
        "line_width": rng.integers(3, 7, (n, 2)),
        "occlude": (rng.random(n) < 0.5) & jitter.occlude,
        "occluder": rng.uniform(0.15, 0.30, n) * CANVAS, "occluder_xy": rng.random((n, 2)),
        "contrast": rng.uniform(0.7, 1.0, n), "noise": rng.uniform(0, 0.08, n),
    }


def _affine(size: Tuple[int, int], p: Dict[str, np.ndarray], k: int) -> Tuple[float, ...]:
    """Coefficients mapping canvas pixels back onto the master (what `Image.transform` wants)."""
    w, h = size
    scale, root_aspect = p["box"][k] / (max(w, h) - 2 * PAD), np.sqrt(p["aspect"][k])
    cos, sin = np.cos(p["rotation"][k]), np.sin(p["rotation"][k])
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, p["shear"][k]], [0.0, 1.0]])
    inverse = np.linalg.inv(forward @ np.diag([scale * root_aspect, scale / root_aspect]))
    offset = np.array([w / 2, h / 2]) - inverse @ (CANVAS / 2 + p["shift"][k])
    return tuple(np.array([*inverse[0], offset[0], *inverse[1], offset[1]]).tolist())


def _sample(master: Image.Image, p: Dict[str, np.ndarray], k: int) -> np.ndarray:
    """Sample k of shape (SIZE, SIZE), uint8, before contrast and noise."""
    img = master.transform((CANVAS, CANVAS), Image.Transform.AFFINE, _affine(master.size, p, k),
                           Image.Resampling.BILINEAR, fillcolor=0)
    draw = ImageDraw.Draw(img)
    for j in range(p["lines"][k]):
        draw.line(p["line_xy"][k, j].tolist(), fill=255, width=int(p["line_width"][k, j]))
    if p["occlude"][k]:
        side = p["occluder"][k]
        x0, y0 = p["occluder_xy"][k] * (CANVAS - side)
        draw.rectangle((x0, y0, x0 + side, y0 + side), fill=0)
    return np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BOX))


def render_class(codepoint: int, font_ids: Tuple[int, ...], n: int, variant: str = "hard",
                 seed: int = 0) -> np.ndarray:
    """n samples of one letter, uint8 of shape (n, SIZE, SIZE); depends only on these arguments."""
    rng, jitter = np.random.default_rng([seed, codepoint]), VARIANTS[variant]
    p = _draw_params(rng, n, len(font_ids), jitter)
    masters = [render_master(font_id, codepoint) for font_id in font_ids]
    stroked: Dict[Tuple[int, int], Image.Image] = {}
    images = np.empty((n, SIZE, SIZE), np.uint8)
    for k, key in enumerate(zip(p["font"].tolist(), p["stroke"].tolist())):
        if key not in stroked:
            stroke = _STROKES[key[1]]
            stroked[key] = masters[key[0]].filter(stroke) if stroke else masters[key[0]]
            stroked[key] = _outline(stroked[key]) if jitter.outline else stroked[key]
        images[k] = _sample(stroked[key], p, k)
    x = images / 255.0 * p["contrast"][:, None, None]
    x += rng.standard_normal(x.shape) * p["noise"][:, None, None]
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


# ---- data set ---------------------------------------------------------------------------------

def _choose(available: Dict[int, Tuple[int, ...]], num_classes: int, seed: int) -> List[int]:
    """A seeded choice of num_classes code points, ascending (so label order is stable)."""
    if num_classes > len(available):
        raise InputError(None, f"glyphs: {num_classes} classes asked for, but only {len(available)} "
                         f"visually distinct letters are available")
    pick = np.random.default_rng(seed).permutation(len(available))[:num_classes]
    codepoints = list(available)
    return sorted(codepoints[i] for i in pick)


def _render_item(item: Tuple[int, Tuple[int, ...]], n: int, variant: str, seed: int) -> np.ndarray:
    """`render_class` of one (code point, font ids)."""
    return render_class(*item, n, variant, seed)


def _generate(codepoints: List[int], available: Dict[int, Tuple[int, ...]], images_per_class: int,
              test_per_class: int, variant: str, seed: int) -> Dict[str, np.ndarray]:
    """All arrays of the cache file; images of shape (classes * count, 1, SIZE, SIZE)."""
    render = functools.partial(_render_item, n=images_per_class, variant=variant, seed=seed)
    processes = min(available_cpus(), len(codepoints) * images_per_class // IMAGES_PER_PROCESS)
    items = [(cp, available[cp]) for cp in codepoints]
    images = np.stack(list(forked_map(render, items, processes, chunksize=4)))[:, :, None]
    n_train, labels = images_per_class - test_per_class, np.arange(len(codepoints), dtype=np.int64)
    return {
        "train_images": images[:, :n_train].reshape(-1, 1, SIZE, SIZE),
        "train_labels": np.repeat(labels, n_train),
        "test_images": images[:, n_train:].reshape(-1, 1, SIZE, SIZE),
        "test_labels": np.repeat(labels, test_per_class),
        "codepoints": np.array(codepoints, np.int64),
        "label_names": np.array([f"U+{cp:04X} {unicodedata.name(chr(cp))}" for cp in codepoints]),
        "versions": np.array(json.dumps(library_versions(), sort_keys=True)),
    }


def _load(path: str) -> Optional[Dict[str, np.ndarray]]:
    """The cached arrays, or None if the file is missing, unreadable or made with other versions."""
    with contextlib.suppress(OSError, ValueError, KeyError, zipfile.BadZipFile):
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["versions"])) == library_versions():
                return {key: z[key] for key in z.files}
    return None


def _check(num_classes: int, images_per_class: int, test_per_class: int, variant: str) -> None:
    if variant not in VARIANTS:
        raise InputError(None, f"glyphs: unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    if num_classes < 1 or images_per_class < 1 or not 0 <= test_per_class <= images_per_class:
        raise InputError(None, "glyphs: need num_classes >= 1 and 0 <= test_per_class <= images_per_class, "
                         f"got {num_classes}, {test_per_class}, {images_per_class}")


@DATASETS.register("glyphs")
def glyphs(num_classes: int = 400, images_per_class: int = 120, test_per_class: int = 50,
           variant: str = "hard", seed: int = 0, cache_dir: Optional[str] = None) -> ImageDataset:
    """Rendered letters, generated on first use and cached (see the module docstring).

    Per class the first `images_per_class - test_per_class` samples are train, the rest test.
    A class's images depend only on (code point, seed, variant, images_per_class), never on
    which other classes are chosen. Raises ValueError if more classes are asked for than exist.
    """
    _check(num_classes, images_per_class, test_per_class, variant)
    root = cache_root(cache_dir)
    path = os.path.join(root, f"glyphs-{variant}-c{num_classes}-n{images_per_class}"
                              f"-t{test_per_class}-s{seed}.npz")
    arrays = _load(path)
    if arrays is None:
        available = available_classes(root)
        codepoints = _choose(available, num_classes, seed)
        arrays = _generate(codepoints, available, images_per_class, test_per_class, variant, seed)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)  # uncompressed: zlib took 4 s on the demo's noisy images and saved a third
    meta = {"generator_version": GENERATOR_VERSION, "versions": json.loads(str(arrays["versions"])),
            "seed": seed, "variant": variant, "num_classes": num_classes,
            "images_per_class": images_per_class, "test_per_class": test_per_class,
            "image_size": SIZE, "ink": "bright on dark", "fonts": list(FONT_FILES),
            "codepoints": arrays["codepoints"].tolist(), "cache_file": path}
    return ImageDataset("glyphs", arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                        arrays["test_labels"], arrays["label_names"].tolist(), meta)
