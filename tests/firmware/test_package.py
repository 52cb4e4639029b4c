"""The firmware installs with `mpremote mip install`: its package.json lists every firmware file."""
import json
import runpy
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "mip_package.py"


def test_package_json_is_up_to_date_with_the_firmware_files():
    tool = runpy.run_path(str(TOOL))
    written = json.loads((tool["FIRMWARE"] / "package.json").read_text())
    assert written == tool["manifest"](), "run: python tools/mip_package.py"
    assert ["main.py", "main.py"] in written["urls"] and ["s2l/tuner.py", "s2l/tuner.py"] in written["urls"]
    assert written["version"] == __import__("s2l").VERSION
