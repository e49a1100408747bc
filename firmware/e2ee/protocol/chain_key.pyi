# Type stub of chain_key.py (the device code carries no hints); checked by tests/test_typing.py.
from _typeshed import ReadableBuffer

MESSAGE_INFO: bytes
CHAIN_KEY_SIZE: int
MESSAGE_KEY_SIZE: int
AEAD_KEY_SIZE: int
AEAD_NONCE_SIZE: int

def advance(ck: ReadableBuffer) -> tuple[bytes, bytes]: ...
def expand(mk: ReadableBuffer, info: bytes = ...) -> tuple[bytes, bytes]: ...
