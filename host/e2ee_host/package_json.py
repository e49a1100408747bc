"""package.json, the mip package of the device SDK (micropython-lib's format: "urls" maps each
device path to a file of this repository, relative to package.json; "deps"; "version"), so that
`mpremote mip install github:OWNER/REPO` (or a local checkout's package.json, or its http URL)
installs the SDK into a board's lib/ (docs/boards.md, "Installing with mip").

The package holds the sources of exactly the modules `e2ee flash` compiles for a board
(`e2ee_host.micropython.compile_sdk`); no dependency: the SDK brings its own MQTT client, and
umqtt.simple, which `Link` can take instead, is `mpremote mip install umqtt.simple`.

    python -m e2ee_host.package_json            # rewrites package.json
    python -m e2ee_host.package_json --check    # exit 1 when package.json is out of date
"""
from __future__ import annotations

import json
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from e2ee_host import micropython as e2ee_micropython

__all__ = ["PACKAGE_JSON", "board_modules", "package"]

ROOT = e2ee_micropython.FIRMWARE.parent
PACKAGE_JSON = ROOT / "package.json"


def board_modules(arch: str = "xtensawin") -> list[str]:
    """Device paths (e2ee/...py) of the modules a board's flash image holds."""
    with tempfile.TemporaryDirectory() as out:
        written = e2ee_micropython.compile_sdk(Path(out), arch)
        return sorted(p.relative_to(out).with_suffix(".py").as_posix() for p in written)


def package() -> dict[str, Any]:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    firmware = e2ee_micropython.FIRMWARE.relative_to(ROOT).as_posix()
    return {"urls": [[path, "%s/%s" % (firmware, path)] for path in board_modules()],
            "deps": [], "version": version}


def render() -> str:
    """package.json's text: one [device path, file] pair a line, as micropython-lib writes them."""
    pkg = package()
    urls = ",\n".join("    " + json.dumps(pair) for pair in pkg["urls"])
    return '{\n  "urls": [\n%s\n  ],\n  "deps": %s,\n  "version": %s\n}\n' % (
        urls, json.dumps(pkg["deps"]), json.dumps(pkg["version"]))


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if PACKAGE_JSON.read_text() != text:
            print("package.json is out of date: run scripts/package-json", file=sys.stderr)
            return 1
        return 0
    PACKAGE_JSON.write_text(text)
    print("wrote %s (%d files)" % (PACKAGE_JSON.relative_to(ROOT), len(json.loads(text)["urls"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
