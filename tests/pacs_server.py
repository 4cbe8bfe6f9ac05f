"""A real PACS for tests: Debian's Orthanc with its DICOMweb plugin, on a free loopback port, storing in a temporary
folder (never a fixed port, never the system service). `.ci/run` installs it (`apt-get install orthanc
orthanc-dicomweb`); where it is not installed, the tests that need it are skipped, saying so."""

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import free_port

ORTHANC = shutil.which("Orthanc") or (shutil.which("Orthanc", path="/usr/sbin"))
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    """`Orthanc` started with a configuration of its own in `folder`; `url` is its DICOMweb root. With `users`
    ({name: password}) it asks for HTTP Basic credentials, as a deployed PACS does."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None):
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {"Name": "PNEUMONIA-TESTS", "StorageDirectory": str(folder / "storage"),
                  "IndexDirectory": str(folder / "storage"), "HttpPort": self.port, "DicomServerEnabled": False,
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
                  "HttpCompressionEnabled": False,
                  "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def start(self) -> "Orthanc":
        log = open(self.folder / "orthanc.log", "a")
        self.process = subprocess.Popen([ORTHANC, str(self.folder / "orthanc.json")], stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/system", timeout=2)
                return self
            except urllib.error.HTTPError:  # it answers (asking for credentials)
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Orthanc did not start:\n{(self.folder / 'orthanc.log').read_text()[-3000:]}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
