"""Write firmware/package.json, the manifest `mpremote mip install` reads: every firmware file,
by a URL relative to the manifest. Run after adding or removing a firmware file (a test checks)."""
import json
from pathlib import Path

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"


def manifest():
    files = sorted(str(p.relative_to(FIRMWARE)) for p in FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)
    version = {}
    exec((FIRMWARE / "s2l" / "__init__.py").read_text(), version)
    return {"urls": [[f, f] for f in files], "version": version["VERSION"]}


if __name__ == "__main__":
    (FIRMWARE / "package.json").write_text(json.dumps(manifest(), indent=2) + "\n")
