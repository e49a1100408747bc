"""Where the project's data folders are, in a source checkout and in an installed wheel alike
(docs/host-client.md, "Installing the package"): the service's Alembic migrations, the Mosquitto
configuration and the firmware examples (the device SDK is the `e2ee` package itself, see
`sdk_root`).

A checkout keeps them at the top of the tree (`provisioning/alembic`, `broker-config`,
`firmware/examples`); a wheel carries them inside the packages that read them (pyproject.toml maps
each folder there), so an installed `e2ee` command finds them without the checkout.

    folder("broker-config") / "mosquitto.conf.template"
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["FOLDERS", "ResourceMissing", "folder", "sdk_root"]

# folder in the checkout -> (package, folder inside it) in a wheel; pyproject.toml's package-dir
# maps the same pairs
FOLDERS = {
    "provisioning/alembic": ("e2ee_provisioning", "alembic"),
    "broker-config": ("e2ee_host", "broker_config"),
    "firmware/examples": ("e2ee_host", "firmware_examples"),
}
# The checkout's root, seen from host/e2ee_host/ (in a wheel: site-packages' parent, never used).
_CHECKOUT = Path(__file__).resolve().parents[2]


class ResourceMissing(FileNotFoundError):
    """Neither the installed package nor a checkout holds the folder (a broken install)."""


def _package_dir(package: str) -> Path:
    # find_spec does not run the package (e2ee_provisioning would import FastAPI)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ResourceMissing("package %s is not installed" % package)
    return Path(list(spec.submodule_search_locations)[0])


def folder(name: str) -> Path:
    """The data folder `name` (a key of FOLDERS): inside its package when installed from a wheel,
    else in the checkout (editable install). Raises ResourceMissing when neither has it."""
    package, inside = FOLDERS[name]
    packaged = _package_dir(package) / inside
    if packaged.is_dir():
        return packaged
    checkout = _CHECKOUT / name
    if checkout.is_dir():
        return checkout
    raise ResourceMissing("%s is missing: neither %s nor %s exists (reinstall e2ee-iot)" % (name, packaged, checkout))


def sdk_root() -> Path:
    """The folder holding the device package `e2ee` (firmware/ in a checkout, site-packages when
    installed): what `e2ee flash` compiles for a board."""
    return _package_dir("e2ee").parent
