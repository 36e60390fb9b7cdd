"""The bench's measuring child stays lean: its start-up is billed to every row it measures."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_measuring_child_does_not_import_the_parents_machinery() -> None:
    """Importing the child module pulls in neither the parent's statistics, subprocess and
    temp-file machinery nor any S3 or HTTP client: a seal row pays for the seal alone."""
    probe = (
        "import json, sys\n"
        "import splitvault.app.tools.bench_child\n"
        "heavy = ['statistics', 'subprocess', 'tempfile', 'shutil', 'botocore', 'boto3', 'httpx',"
        " 'splitvault.app.tools.bench']\n"
        "print(json.dumps([name for name in heavy if name in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []
