"""Constants shared by the evaluation, prediction and API tests."""

from __future__ import annotations

from resnext.data.digits import DIGITS_MEAN, DIGITS_STD

TINY = {"widths": (16, 32, 64), "stem_width": 16}  # a ResNeXt-29 that runs in milliseconds
# The preprocessing `resnext train` stores for the built-in digits.
DIGITS_PRE = {
    "image_size": 32,
    "eval_resize": None,
    "interpolation": "bilinear",
    "mean": list(DIGITS_MEAN),
    "std": list(DIGITS_STD),
}
