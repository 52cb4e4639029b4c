"""The firmware installs with `mpremote mip install`: its package.json lists every firmware file."""
import json
from pathlib import Path

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"


def test_package_json_lists_every_firmware_file_with_relative_urls():
    package = json.loads((FIRMWARE / "package.json").read_text())
    files = sorted(str(p.relative_to(FIRMWARE)) for p in FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)
    assert sorted(dest for dest, _ in package["urls"]) == files
    assert all(dest == url for dest, url in package["urls"])  # relative to package.json
    assert package["version"] == __import__("s2l").VERSION
