# Type stub of x3dh.py (the device code carries no hints); checked by tests/test_typing.py.
from _typeshed import ReadableBuffer

from e2ee.protocol.keys import KeyAgreementError as KeyAgreementError
from e2ee.protocol.keys import KeyStore, PrekeyBundle, _Rng
from e2ee.protocol.keys import UnknownOneTimePrekey as UnknownOneTimePrekey
from e2ee.protocol.keys import UnknownPrekey as UnknownPrekey
from e2ee.protocol.keys import UnknownSignedPrekey as UnknownSignedPrekey

__all__ = ("initiate", "respond", "KeyAgreementError", "BadSignedPrekey", "WeakSharedSecret", "InvalidPublicKey",
           "UnknownPrekey", "UnknownSignedPrekey", "UnknownOneTimePrekey")

class BadSignedPrekey(KeyAgreementError): ...
class WeakSharedSecret(KeyAgreementError): ...
class InvalidPublicKey(KeyAgreementError): ...

# (SK, AD, EK_A.pub, spk_id, opk_id)
def initiate(keystore: KeyStore, bundle: PrekeyBundle, ephemeral: ReadableBuffer | None = None,
             rng: _Rng | None = None) -> tuple[bytes, bytes, bytes, int, int | None]: ...
# (SK, AD, delete_opk_id)
def respond(keystore: KeyStore, ik_a: ReadableBuffer, is_a: ReadableBuffer, base_key: ReadableBuffer, spk_id: int,
            opk_id: int | None = None) -> tuple[bytes, bytes, int | None]: ...
