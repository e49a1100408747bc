# Type stub of delivery.py (the device code carries no hints); checked by tests/test_typing.py.
from collections.abc import Callable

from _typeshed import ReadableBuffer

from e2ee.protocol.session import SessionManager

DATA: int
RECEIPT: int
BITS: int
WINDOW: int
MAX_PAYLOAD: int
RESET_INTERVAL: int
TTL: int
MAX_RESETS: int
RECEIPT_GRACE: int
PROBE_AFTER: int
SENT: str
DELIVERED: str
FAILED: str

class DeliveryError(ValueError): ...
class Malformed(DeliveryError): ...
class OutboxFull(DeliveryError): ...
class ResetRefused(DeliveryError): ...
class Undeliverable(DeliveryError): ...

def reset_message(requester: str, target: str, keys: ReadableBuffer) -> bytes: ...
def encode_data(stream: bytes, seq: int, payload: ReadableBuffer) -> bytes: ...
def encode_receipt(stream: bytes, low: int, bits: int) -> bytes: ...
# (DATA, stream, seq, payload) or (RECEIPT, stream, low, bits)
def decode(plaintext: ReadableBuffer) -> tuple[int, bytes, int, memoryview | int]: ...

# on_status(peer, seq, status, reason)
_StatusCallback = Callable[[str, int, str, str | None], object]

class Delivery:
    sessions: SessionManager
    device_id: str
    window: int
    max_outbox: int
    ttl: int
    reset_interval: int
    max_peers: int
    resets_asked: int
    resets_taken: int
    def __init__(self, sessions: SessionManager, directory: str, storage_key: ReadableBuffer, device_id: str,
                 starter: Callable[[str], object] | None = None, on_status: _StatusCallback | None = None,
                 window: int = ..., max_outbox: int = 64, ttl: int = ..., reset_interval: int = ...,
                 max_peers: int = 16, clock: Callable[[], float] | None = None) -> None: ...
    def send(self, peer: str, payload: ReadableBuffer) -> int: ...
    def pending(self, peer: str) -> int: ...
    def reconnected(self) -> None: ...
    def started(self, peer: str) -> None: ...
    def flush(self, publish: Callable[[str, bytes], object]) -> int: ...
    def handle(self, sender: str, data: ReadableBuffer, deliver: Callable[[str, memoryview], object]) -> int | None: ...
