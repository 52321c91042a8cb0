"""What the client's distribution ships: its type hints' marker (PEP 561) and no dependency beyond
kafka-python (crc32c only as the `fast` extra). Built from a copy of sdk/, as a user's pip would."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path

SDK = Path(__file__).parent.parent / "sdk"


def test_the_wheel_ships_the_type_hints_marker_and_depends_on_kafka_python_only(tmp_path):
    source = tmp_path / "sdk"
    shutil.copytree(SDK, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = (tmp_path / "dist").glob("kern_telemetry_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = HeaderParser().parsestr(archive.read(next(n for n in names if n.endswith("/METADATA"))).decode())
    assert "kern_telemetry_client/py.typed" in names
    assert sorted(metadata.get_all("Requires-Dist")) == ['crc32c>=2.4; extra == "fast"', "kafka-python<4,>=3.0"]
