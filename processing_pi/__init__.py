"""Pre- and post-processing for π models: image resizing and the FAST action tokenizer."""

from .fast_action_tokenizer import FastActionTokenizer
from .image_processing_pi import resize_with_pad

__all__ = ["FastActionTokenizer", "resize_with_pad"]
