"""What the Space installs: its own requirements-space.txt against the whole project's requirements.txt.

Side by side in one run: both sets are downloaded once into one wheel folder (so the network is not timed),
then each is installed into a fresh virtual environment from those wheels only. Prints, per set, the
packages installed, the wheels' bytes (what a Space build downloads), the installed size and the install time.

    python benchmarks/space_install.py
"""

import json
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SETS = {"Space (requirements-space.txt)": REPO_ROOT / "requirements-space.txt",
        "whole project (requirements.txt)": REPO_ROOT / "requirements.txt"}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def install(requirements: Path, wheels: Path, folder: Path) -> dict:
    venv.create(folder, with_pip=True)
    pip = [str(folder / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    report = folder / "report.json"
    subprocess.run([*pip, "install", "--dry-run", "--quiet", "--no-index", "--find-links", str(wheels),
                    "--report", str(report), "-r", str(requirements)], check=True)
    names = [item["download_info"]["url"].rsplit("/", 1)[-1] for item in json.loads(report.read_text())["install"]]
    started = time.perf_counter()
    subprocess.run([*pip, "install", "--quiet", "--no-index", "--find-links", str(wheels), "-r", str(requirements)],
                   check=True)
    seconds = time.perf_counter() - started
    site_packages = next((folder / "lib").glob("python*/site-packages"))
    return {"packages": len(names), "wheel_bytes": sum((wheels / name).stat().st_size for name in names
                                                       if (wheels / name).is_file()),
            "installed_bytes": folder_bytes(site_packages), "seconds": seconds}


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        wheels = Path(scratch) / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "-d",
                        str(wheels), "-r", str(SETS["whole project (requirements.txt)"])], check=True)
        results = {name: install(path, wheels, Path(scratch) / f"venv{i}") for i, (name, path) in enumerate(SETS.items())}
    space, whole = results.values()
    print(f"{'requirements':<34}{'packages':>9}{'wheels MB':>11}{'installed MB':>14}{'install s':>11}")
    for name, result in results.items():
        print(f"{name:<34}{result['packages']:>9}{result['wheel_bytes'] / 1e6:>11.0f}"
              f"{result['installed_bytes'] / 1e6:>14.0f}{result['seconds']:>11.1f}")
    print(f"Space / whole: {space['packages'] / whole['packages']:.2f} of the packages, "
          f"{space['wheel_bytes'] / whole['wheel_bytes']:.2f} of the wheel bytes, "
          f"{space['installed_bytes'] / whole['installed_bytes']:.2f} of the installed size, "
          f"{space['seconds'] / whole['seconds']:.2f} of the install time")


if __name__ == "__main__":
    main()
