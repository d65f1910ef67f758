"""openpi's wire format: msgpack, with numpy arrays and scalars as maps
`{"__ndarray__": True, "data": bytes, "dtype": str, "shape": [...]}` / `{"__npgeneric__": True, "data": x, "dtype": str}`.

Written here rather than imported from openpi-client, which pins numpy < 2 and is a client package.
Only plain numeric dtypes cross the wire: object, void and complex arrays are refused (they are what
pickle-based formats would smuggle in), as is any data whose size does not match its dtype and shape.
"""

import msgpack
import numpy as np

_REFUSED_KINDS = ("O", "V", "c")


class WireError(ValueError):
    """A message that is not a valid msgpack-numpy observation."""


def _encode(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _REFUSED_KINDS:
        raise WireError(f"Cannot send arrays of dtype {obj.dtype}.")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _decode(obj: dict):
    if b"__ndarray__" in obj or b"__npgeneric__" in obj:
        try:
            dtype = np.dtype(obj[b"dtype"])
        except (KeyError, TypeError) as err:
            raise WireError(f"An array without a valid dtype: {err}") from None
        if dtype.kind in _REFUSED_KINDS:
            raise WireError(f"Arrays of dtype {dtype} are not accepted.")
        if b"__npgeneric__" in obj:
            try:
                return dtype.type(obj[b"data"])
            except (KeyError, TypeError, ValueError, OverflowError) as err:
                raise WireError(f"A numpy scalar whose data does not fit its dtype {dtype}: {err!r}") from None
        try:
            return np.frombuffer(obj[b"data"], dtype=dtype).reshape(obj[b"shape"]).copy()
        except (KeyError, TypeError, ValueError) as err:
            raise WireError(f"An array whose data does not match its dtype and shape: {err}") from None
    return obj


def packb(obj) -> bytes:
    return msgpack.packb(obj, default=_encode)


def unpackb(data: bytes):
    """Bytes -> Python objects with numpy arrays; anything malformed is a `WireError`."""
    try:
        return msgpack.unpackb(data, object_hook=_decode)
    except WireError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise WireError(f"Not a msgpack message: {err}") from None
