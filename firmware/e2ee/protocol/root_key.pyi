# Type stub of root_key.py (the device code carries no hints); checked by tests/test_typing.py.
from _typeshed import ReadableBuffer

RATCHET_INFO: bytes
ROOT_KEY_SIZE: int

def advance(rk: ReadableBuffer, dh_out: ReadableBuffer) -> tuple[bytes, bytes]: ...
