"""Processing pieces against the reference's outputs (fixtures/processor)."""

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import FIXTURES
from processing_pi import resize_with_pad

IO = load_file(FIXTURES / "processor" / "processor_io.safetensors")
SIZES = sorted({key.split(".")[1] for key in IO if key.startswith("resize.")})


@pytest.mark.parametrize("size", SIZES)
def test_resize_with_pad_is_byte_identical_to_the_reference(size):
    assert len(SIZES) >= 4
    out = resize_with_pad(IO[f"resize.{size}.input"], 224, 224)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, IO[f"resize.{size}.output"])


def test_resize_with_pad_keeps_leading_batch_dimensions():
    images = np.stack([IO["resize.480x640.input"], IO["resize.480x640.input"][::-1].copy()])[None]
    out = resize_with_pad(images, 224, 224)
    assert out.shape == (1, 2, 224, 224, 3)
    np.testing.assert_array_equal(out[0, 0], IO["resize.480x640.output"])


@pytest.mark.parametrize("images, message", [
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    (np.zeros((10, 10), np.uint8), r"\[\.\.\., H, W, C\]"),
])
def test_resize_with_pad_rejects_what_it_cannot_resize(images, message):
    with pytest.raises(ValueError, match=message):
        resize_with_pad(images, 224, 224)
