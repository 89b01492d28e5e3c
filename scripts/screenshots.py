"""Refresh docs/screenshots/*.png: run the browser walk (tests/browser/test_web.py) against a
fresh local stack with MXW_SCREENSHOTS set, so the pictures show exactly what the tests
checked. Needs Debian's chromium (apt-get install chromium).

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MXW_SCREENSHOTS": str(out),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command.append("tests/browser/test_web.py")
    result = subprocess.run(command, cwd=ROOT, env=env, check=False)
    if result.returncode == 0:
        for png in sorted(out.glob("*.png")):
            print(f"{png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}")
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
