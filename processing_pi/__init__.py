"""Pre- and post-processing for π models. So far: the reference's image resizing."""

from .image_processing_pi import resize_with_pad

__all__ = ["resize_with_pad"]
