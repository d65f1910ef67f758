"""A policy server for π models that openpi's robot clients (`openpi-client`) drive unchanged."""

from processing_pi import ObservationError

from .observations import PRESETS, preset
from .policy import BatchingPolicy
from .real_time import LocalPolicy, RealTimeChunkBroker
from .server import PolicyServer, serve_in_background

__all__ = ["PRESETS", "BatchingPolicy", "LocalPolicy", "ObservationError", "PolicyServer", "RealTimeChunkBroker", "preset",
           "serve_in_background"]
