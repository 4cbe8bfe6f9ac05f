"""Screening a PACS over DICOMweb vs the same files from a folder, side by side in one run: images per second and
peak memory, without and with `--store_results`.

    python benchmarks/pacs_screening.py --data_dir ../shared/data/chest_xray_224 --model outputs/best [--instances 500]

Makes `--instances` 12-bit CR DICOMs (PA view) from the shared X-rays, writes them to a folder and stores them in a
local Orthanc (Debian's, with its DICOMweb plugin, on a free loopback port), then runs `python -m trainer.predict`
on the folder, over DICOMweb, and over DICOMweb storing a Structured Report per instance, each in a new process
(one process, eager PyTorch, no DataLoader workers: the same work in each), and prints the throughput and each
process's peak resident memory.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from dicomweb_client.api import DICOMwebClient
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.app_inputs import write_dicom  # noqa: E402
from tests.pacs_server import Orthanc  # noqa: E402

# the command in a new Python that prints its own peak memory when it ends
MEASURED = ("import resource, runpy, sys\nsys.argv = ['trainer.predict'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('trainer.predict', run_name='__main__')\nfinally:\n"
            "    print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")


def make_instances(data_dir: Path, folder: Path, count: int) -> list[Path]:
    sources = sorted((data_dir / "test").glob("*/*.jpeg"))[:count]
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for number, source in enumerate(sources):
        grey = np.asarray(Image.open(source).convert("L")).astype(np.uint16) * 16  # 12-bit
        files.append(write_dicom(folder / f"{number:04d}.dcm", grey, bits_stored=12, ViewPosition="PA", Modality="CR",
                                 StudyInstanceUID=f"1.2.826.0.1.3680043.8.498.7.{number // 10}",
                                 SeriesInstanceUID=f"1.2.826.0.1.3680043.8.498.8.{number // 10}",
                                 PatientID=f"P{number // 10}", StudyDate="20261201"))
    return files


def run(arguments: list[str], output: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one `trainer.predict` process."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", MEASURED, *arguments, "--output", str(output), "--num_workers", "0",
                             "--eager"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    peak = int(result.stdout.split("peak_rss_kb")[-1].split()[0]) / 1024
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "chest_xray_224")
    parser.add_argument("--model", required=True)
    parser.add_argument("--instances", type=int, default=500)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pacs-benchmark-"))
    files = make_instances(args.data_dir, work / "files", args.instances)
    orthanc = Orthanc(work / "orthanc").start()
    try:
        client = DICOMwebClient(orthanc.url)
        for start in range(0, len(files), 50):
            client.store_instances([pydicom.dcmread(path) for path in files[start:start + 50]])
        ways = {"folder": [str(work / "files")],
                "DICOMweb": ["--dicomweb", orthanc.url, "--modality", "CR"],
                "DICOMweb + --store_results": ["--dicomweb", orthanc.url, "--modality", "CR", "--store_results"]}
        measured = {}
        for way, arguments in ways.items():
            seconds, peak = run([*arguments, "--model", args.model], work / f"{way.split()[0]}-{len(measured)}.csv")
            measured[way] = {"seconds": seconds, "images_per_second": len(files) / seconds, "peak_rss_mb": peak}
    finally:
        orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(measured, indent=1))
    baseline = measured["folder"]["images_per_second"]
    print(f"\n{'source':<28}{'images/s':>10}{'vs folder':>11}{'peak RSS MB':>13}")
    for way, numbers in measured.items():
        print(f"{way:<28}{numbers['images_per_second']:>10.1f}{numbers['images_per_second'] / baseline:>10.2f}x"
              f"{numbers['peak_rss_mb']:>13.0f}")


if __name__ == "__main__":
    main()
