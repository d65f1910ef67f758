from .configuration_pi import PiConfig

__all__ = ["PiConfig"]
