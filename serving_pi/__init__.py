"""A policy server for π models that openpi's robot clients (`openpi-client`) drive unchanged."""

from .observations import PRESETS, ObservationError, ObservationLayout
from .policy import BatchingPolicy
from .server import PolicyServer, serve_in_background

__all__ = ["PRESETS", "BatchingPolicy", "ObservationError", "ObservationLayout", "PolicyServer", "serve_in_background"]
