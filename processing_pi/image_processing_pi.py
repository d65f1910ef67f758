"""Camera images as π models see them: resized with padding to the model's square resolution.

The reference shrinks (or grows) an image to fit inside the target size keeping its aspect ratio,
with PIL's bilinear filter, and centres it on a black canvas. We call PIL for the resampling and only
reproduce the geometry (sizes truncated, offsets floored), which is what makes the bytes identical.
"""

import numpy as np
from PIL import Image


def _resize_one(image: np.ndarray, height: int, width: int) -> np.ndarray:
    cur_height, cur_width = image.shape[:2]
    if (cur_height, cur_width) == (height, width):
        return image
    ratio = max(cur_width / width, cur_height / height)
    new_height, new_width = int(cur_height / ratio), int(cur_width / ratio)
    resized = Image.fromarray(image).resize((new_width, new_height), resample=Image.BILINEAR)
    canvas = Image.new(resized.mode, (width, height), 0)
    canvas.paste(resized, ((width - new_width) // 2, (height - new_height) // 2))
    return np.asarray(canvas)


def resize_with_pad(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [..., H, W, C] -> uint8 [..., height, width, C], aspect ratio kept, zero padding centred."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim < 3:
        raise ValueError(f"resize_with_pad takes uint8 images [..., H, W, C], got {images.dtype} {images.shape}.")
    if images.shape[-3] == 0 or images.shape[-2] == 0:
        raise ValueError(f"Cannot resize an empty image of shape {images.shape}.")
    flat = images.reshape(-1, *images.shape[-3:])
    resized = np.stack([_resize_one(image, height, width) for image in flat])
    return resized.reshape(*images.shape[:-3], *resized.shape[1:])
