"""Severity tables of the two corruption benchmarks: ImageNet-C and CIFAR-10-C.

``IMAGENET_C`` is ``imagecorruptions`` 1.1.2 (``imagecorruptions/corruptions.py``),
the size-agnostic port of Hendrycks' ``make_imagenet_c.py``. ``CIFAR10_C`` is
Hendrycks & Dietterich's ``ImageNet-C/create_c/make_cifar_c.py``
(github.com/hendrycks/robustness, commit ca360085), run through the same
size-agnostic algorithms; where his CIFAR code used a different algorithm the
preset's ``options`` select it (see docs/corruptions.md for every difference).

Each entry: (five per-severity parameters, options). A parameter is a number or
a tuple, in the order the reference's ``c = [...]`` lists them.
"""

from __future__ import annotations

from typing import Any

Params = list[Any]
Preset = dict[str, tuple[Params, dict[str, Any]]]

# Families as in Hendrycks & Dietterich (2019) and imagecorruptions.get_corruption_names.
GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"),
    "weather": ("snow", "frost", "fog", "brightness", "spatter"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate"),
}

# The 15 benchmark corruptions, in the reference's order, then the 4 held-out ones.
COMMON = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
HELD_OUT = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL = COMMON + HELD_OUT

IMAGENET_C: Preset = {
    "gaussian_noise": ([0.08, 0.12, 0.18, 0.26, 0.38], {}),
    "shot_noise": ([60, 25, 12, 5, 3], {}),
    "impulse_noise": ([0.03, 0.06, 0.09, 0.17, 0.27], {}),
    "speckle_noise": ([0.15, 0.2, 0.35, 0.45, 0.6], {}),
    "gaussian_blur": ([1, 2, 3, 4, 6], {}),
    # (sigma, max_delta, iterations)
    "glass_blur": ([(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)], {}),
    # (disk radius, alias blur)
    "defocus_blur": ([(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)], {}),
    # (radius, sigma)
    "motion_blur": ([(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)], {}),
    # zoom factors np.arange(start, stop, step)
    "zoom_blur": (
        [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)],
        {"center_trim": False},
    ),
    # (fog strength, wibble decay)
    "fog": ([(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)], {}),
    # (image weight, frost weight)
    "frost": (
        [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
        {"texture_scale": None},
    ),
    # (loc, scale, zoom, threshold, blur radius, blur sigma, image blend)
    "snow": (
        [
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ],
        {},
    ),
    # (loc, scale, sigma, threshold, intensity, mud?)
    "spatter": (
        [
            (0.65, 0.3, 4, 0.69, 0.6, 0),
            (0.65, 0.3, 3, 0.68, 0.6, 0),
            (0.65, 0.3, 2, 0.68, 0.5, 0),
            (0.65, 0.3, 1, 0.65, 1.5, 1),
            (0.67, 0.4, 1, 0.65, 1.5, 1),
        ],
        {},
    ),
    "brightness": ([0.1, 0.2, 0.3, 0.4, 0.5], {}),
    "contrast": ([0.4, 0.3, 0.2, 0.1, 0.05], {}),
    # (saturation factor, offset)
    "saturate": ([(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)], {}),
    "jpeg_compression": ([25, 18, 15, 10, 7], {}),
    "pixelate": ([0.6, 0.5, 0.4, 0.3, 0.25], {"upsample": "nearest"}),
    # alpha; sigma = 1 % and max displacement = 0.5 % of the image size
    "elastic_transform": (
        [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12],
        {"variant": "imagecorruptions"},
    ),
}

CIFAR10_C: Preset = {
    "gaussian_noise": ([0.04, 0.06, 0.08, 0.09, 0.10], {}),
    "shot_noise": ([500, 250, 100, 75, 50], {}),
    "impulse_noise": ([0.01, 0.02, 0.03, 0.05, 0.07], {}),
    "speckle_noise": ([0.06, 0.1, 0.12, 0.16, 0.2], {}),
    "gaussian_blur": ([0.4, 0.6, 0.7, 0.8, 1], {}),
    "glass_blur": ([(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)], {}),
    "defocus_blur": ([(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)], {}),
    # Hendrycks used ImageMagick's motion blur (Wand) with these (radius, sigma);
    # we run imagecorruptions' shift-and-add kernel with them.
    "motion_blur": ([(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)], {}),
    "zoom_blur": (
        [(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)],
        {"center_trim": True},
    ),
    "fog": ([(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)], {}),
    # textures shrunk by 0.2 for a 32-pixel image (scaled with the image side)
    "frost": (
        [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
        {"texture_scale": 0.2},
    ),
    "snow": (
        [
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ],
        {},
    ),
    "spatter": (
        [
            (0.62, 0.1, 0.7, 0.7, 0.5, 0),
            (0.65, 0.1, 0.8, 0.7, 0.5, 0),
            (0.65, 0.3, 1, 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1),
            (0.65, 0.1, 0.5, 0.68, 0.6, 1),
        ],
        {},
    ),
    "brightness": ([0.05, 0.1, 0.15, 0.2, 0.3], {}),
    "contrast": ([0.75, 0.5, 0.4, 0.3, 0.15], {}),
    "saturate": ([(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)], {}),
    "jpeg_compression": ([80, 65, 58, 50, 40], {}),
    "pixelate": ([0.95, 0.9, 0.85, 0.75, 0.65], {"upsample": "box"}),
    # (alpha, sigma, affine jitter) as fractions of the image side: Hendrycks'
    # IMSIZE·(…) constants with IMSIZE = 32, random affine then elastic field.
    "elastic_transform": (
        [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],
        {"variant": "affine"},
    ),
}

PRESETS: dict[str, Preset] = {"imagenet_c": IMAGENET_C, "cifar10_c": CIFAR10_C}
