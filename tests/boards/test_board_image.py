"""What `e2ee flash` puts on a board (e2ee_host.micropython.compile_board_image): never a host-only
module, and of the crypto backends only the one the board runs. An image made for a port without
native code (bytecode only, the pure backend) runs the crypto on MicroPython; the viper image is
run by the flash and provision tests (tests/boards/test_flash_provision.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
from support import ROOT

from e2ee_host import micropython as e2ee_micropython
from e2ee_host.micropython import BACKEND_PACKAGES, HOST_ONLY, board_backend, compile_board_image


def _image(tmp_path: Path, arch: str | None, backend: str | None) -> set[str]:
    files = compile_board_image(tmp_path, arch, backend)
    return {f.relative_to(tmp_path).as_posix() for f in files}


def test_backend_per_board() -> None:
    assert board_backend("xtensawin", cmodule=False) == "viper"  # ESP32
    assert board_backend("armv6m", cmodule=False) == "viper"  # RP2040
    assert board_backend(None, cmodule=False) == "pure"  # a port built without native code
    assert board_backend("xtensawin", cmodule=True) is None  # the C module has every primitive
    with pytest.raises(ValueError):
        compile_board_image(Path("/nonexistent"), None, "viper")


@pytest.mark.parametrize("arch,backend", [("xtensawin", "viper"), ("armv6m", "viper"), (None, "pure"),
                                          ("xtensawin", None)])
def test_image_holds_no_host_only_module_nor_another_backend(tmp_path, arch, backend) -> None:  # type: ignore[no-untyped-def]
    image = _image(tmp_path, arch, backend)
    assert not {f for f in image for h in HOST_ONLY if f == h.replace(".py", ".mpy")}
    for name, package in BACKEND_PACKAGES.items():
        shipped = {f for f in image if f.startswith(package + "/")}
        assert bool(shipped) == (name == backend), (name, sorted(shipped))
    # everything else of the device package is there
    rest = {f.relative_to(ROOT / "firmware").with_suffix(".mpy").as_posix()
            for f in (ROOT / "firmware" / "e2ee").rglob("*.py")}
    rest -= {h.replace(".py", ".mpy") for h in HOST_ONLY}
    rest = {f for f in rest if not any(f.startswith(p + "/") for p in BACKEND_PACKAGES.values())}
    assert rest <= image


def test_pure_image_runs_on_micropython(micropython, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Bytecode only (no -march), pure backend: the crypto interface resolves every primitive
    from it and signs, verifies and seals."""
    _image(tmp_path / "lib", None, "pure")
    code = ("from e2ee import crypto\n"
            "print(crypto.default.name)\n"
            "pub = crypto.ed25519_public_key(bytes(32))\n"
            "crypto.ed25519_verify(pub, (b'in ', b'parts'), crypto.ed25519_sign(bytes(32), b'in parts'))\n"
            "print(bytes(crypto.aead_decrypt(bytes(32), bytes(12), crypto.aead_encrypt(bytes(32), bytes(12), b'ok'))))")
    runner = type(micropython)(micropython.binary, tmp_path / "lib", heapsize="120K")
    assert runner.run(code).split() == ["pure", "b'ok'"]
    assert e2ee_micropython.native_arch(micropython.binary)  # the binary could run viper: the image chose
