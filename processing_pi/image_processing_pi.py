"""Camera images as π models see them: resized with padding to the model's square resolution, in [-1, 1].

The reference shrinks (or grows) an image to fit inside the target size keeping its aspect ratio,
with PIL's bilinear filter, and centres it on a black canvas. We call PIL for the resampling and only
reproduce the geometry (sizes truncated, offsets floored), which is what makes the bytes identical.
torchvision is not used (it cannot be installed beside the CPU build of torch here).

LeRobot's ports (`conventions="lerobot"`) resize in float instead: pixels / 255, bilinear interpolation
without antialiasing (`torch.nn.functional.interpolate`, `align_corners=False`), clamped to [0, 1], the
same centred black padding, then `2x − 1`. A policy trained in LeRobot has seen its cameras that way.
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor


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


def _padding(size: int, resized: int) -> tuple[int, int]:
    before = (size - resized) // 2
    return before, size - resized - before


def resize_with_pad_float(images: torch.Tensor, size: int) -> torch.Tensor:
    """float [B, 3, H, W] in [0, 1] -> [B, 3, size, size], LeRobot's way: bilinear, clamped, centred black padding."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    ratio = max(width / size, height / size)
    new_height, new_width = int(height / ratio), int(width / ratio)
    resized = F.interpolate(images, size=(new_height, new_width), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return F.pad(resized, (*_padding(size, new_width), *_padding(size, new_height)))


class PiImageProcessor(BaseImageProcessor):
    """One camera's images -> `pixel_values` [B, 3, size, size] float32 in [-1, 1], the reference's way.

    Accepts uint8 HWC arrays, PIL images, float arrays in `float_range` (default [0, 1]) and channel-first
    arrays or tensors, single or batched, any size. Floats become uint8 (`255·x`, truncated), everything
    is resized with padding to `size`, then mapped by `x / 255 · 2 − 1`. With `conventions="lerobot"`, images
    become floats in [0, 1] first (`x / 255`; floats as given) and are resized as LeRobot does (module docstring).
    """

    model_input_names = ["pixel_values"]

    def __init__(self, size: int = 224, float_range: tuple[float, float] = (0.0, 1.0), conventions: str = "openpi",
                 **kwargs):
        super().__init__(**kwargs)
        if conventions not in ("openpi", "lerobot"):
            raise ValueError(f"conventions must be 'openpi' or 'lerobot', got {conventions!r}.")
        self.conventions = conventions
        self.size = int(size)
        self.float_range = tuple(float(v) for v in float_range)
        if self.float_range not in ((0.0, 1.0), (-1.0, 1.0)):
            raise ValueError(f"float_range must be (0, 1) or (-1, 1), got {float_range}.")

    def _array(self, images, camera: str) -> np.ndarray:
        """Any accepted input -> [B, H, W, 3], uint8 or float within `float_range`."""
        if isinstance(images, Image.Image):
            images = np.asarray(images.convert("RGB"))
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError(f"Camera {camera!r}: empty list of images.")
            arrays = [self._array(image, camera) for image in images]
            if len({array.dtype for array in arrays}) > 1:
                raise ValueError(f"Camera {camera!r}: a list mixes uint8 and float images.")
            return np.concatenate(arrays)
        if hasattr(images, "detach"):  # a torch tensor
            images = images.detach().cpu().numpy()
        array = np.asarray(images)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or 0 in array.shape:
            raise ValueError(f"Camera {camera!r}: expected an image [H, W, 3] or a batch [B, H, W, 3], got shape {array.shape}.")
        if array.shape[-1] not in (1, 3) and array.shape[1] in (1, 3):  # channel-first
            array = array.transpose(0, 2, 3, 1)
        if array.shape[-1] != 3:
            raise ValueError(f"Camera {camera!r}: expected 3 colour channels, got {array.shape[-1]} (shape {array.shape}).")
        height, width = array.shape[1:3]
        if min(height, width) * self.size < max(height, width):  # its short side would resize to no pixel
            raise ValueError(f"Camera {camera!r}: a {height}x{width} image is too narrow to resize to {self.size}x"
                             f"{self.size} with padding (its short side would be less than a pixel).")
        if array.dtype == np.uint8:
            return array
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"Camera {camera!r}: images must be uint8 or float, got {array.dtype}.")
        low, high = self.float_range
        if not np.isfinite(array).all() or array.min() < low or array.max() > high:
            raise ValueError(
                f"Camera {camera!r}: float images must lie in [{low:g}, {high:g}] (float_range), "
                f"got values in [{float(np.nanmin(array))!r}, {float(np.nanmax(array))!r}]."
            )
        return array

    def to_uint8(self, images, camera: str = "image") -> np.ndarray:
        """Any accepted input -> uint8 [B, H, W, 3]."""
        array = self._array(images, camera)
        if array.dtype == np.uint8:
            return array
        low, high = self.float_range
        return (255 * (array - low) / (high - low)).astype(np.uint8)

    def to_unit_float(self, images, camera: str = "image") -> torch.Tensor:
        """Any accepted input -> float32 [B, 3, H, W] in [0, 1] (uint8 / 255), as LeRobot feeds its policies."""
        array = self._array(images, camera)
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / np.float32(255)
        else:
            low, high = self.float_range
            array = array.astype(np.float32) if (low, high) == (0.0, 1.0) else ((array - low) / (high - low)).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)

    def preprocess(self, images, camera: str = "image", return_tensors=None, **kwargs) -> BatchFeature:
        # a list's images may differ in size: each is resized on its own (an empty list is `_array`'s error)
        items = images if isinstance(images, (list, tuple)) and images else [images]
        if self.conventions == "lerobot":
            resized = torch.cat([resize_with_pad_float(self.to_unit_float(item, camera), self.size) for item in items])
            pixel_values = (resized * 2.0 - 1.0).numpy()
        else:
            resized = np.concatenate([resize_with_pad(self.to_uint8(item, camera), self.size, self.size) for item in items])
            pixel_values = (resized.astype(np.float32) / 255.0 * 2.0 - 1.0).transpose(0, 3, 1, 2)
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)
