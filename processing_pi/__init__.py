"""Pre- and post-processing for π models: images, prompts, tokenizer, normalisation, FAST action tokens."""

from .fast_action_tokenizer import FastActionTokenizer
from .image_processing_pi import PiImageProcessor, resize_with_pad
from .normalization import NormStats
from .processing_pi import PiActionOutput, PiProcessor
from .prompts import tokenizer_from_sentencepiece
from .robots import ObservationError, Robot

__all__ = [
    "FastActionTokenizer",
    "NormStats",
    "ObservationError",
    "PiActionOutput",
    "PiImageProcessor",
    "PiProcessor",
    "Robot",
    "resize_with_pad",
    "tokenizer_from_sentencepiece",
]
