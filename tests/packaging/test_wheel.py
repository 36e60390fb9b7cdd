"""The wheel installs one import name, ``splitvault``, beside a project with its own ``app``.

Built from a copy of the working tree, installed without dependencies into a fresh venv that borrows
the dev venv's third-party packages through a plain path entry (so the editable ``splitvault`` of
the dev venv stays invisible), and imported from a user project that has ``app/`` and ``domain/``
packages of its own.
"""

from __future__ import annotations

import email
import json
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER_STACK = ("starlette", "uvicorn", "multipart", "python_multipart", "jwt", "moto", "rich")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the working tree (so the dev install's build/ is untouched)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in ("domain", "adapters", "app"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("splitvault-*.whl")
    return built


def test_the_wheel_holds_one_top_level_name(wheel: Path) -> None:
    """Every file in the wheel is under splitvault/ or its dist-info: no app, domain or adapters."""
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/", 1)[0] for name in archive.namelist()}
    assert tops == {"splitvault", wheel.name.split("-py3")[0] + ".dist-info"}


def test_a_plain_install_requires_no_server_stack(wheel: Path) -> None:
    """The requirements outside extras are the client's; the server and demo stacks are extras."""
    with zipfile.ZipFile(wheel) as archive:
        (meta,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        message = email.message_from_bytes(archive.read(meta))
    plain = [r for r in message.get_all("Requires-Dist") or [] if "extra ==" not in r]
    names = {
        r.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()
        for r in plain
    }
    assert {"attrs", "returns", "httpx", "boto3", "cryptography", "pyyaml"} <= names
    assert not names & {"starlette", "uvicorn", "python-multipart", "pyjwt", "moto", "rich"}
    extras = set(message.get_all("Provides-Extra") or [])
    assert {"server", "demo", "dev"} <= extras


USER_SCRIPT = """
import importlib.abc, json, sys

class NoServerStack(importlib.abc.MetaPathFinder):
    # a plain install has none of these: importing one is a bug in the client's imports
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in %(stack)r:
            raise ImportError(f"{name} is not part of a plain install")
        return None

sys.meta_path.insert(0, NoServerStack())
import app, domain
import splitvault, splitvault.api_client, splitvault.cdn_manager, splitvault.binary_split
from splitvault import ApiClient, ApiCredentials, CDNCredentials, CDNManager
print(json.dumps({
    "app": app.WHO, "domain": domain.WHO,
    "splitvault": splitvault.__file__,
    "api_client": splitvault.api_client.ApiClient is ApiClient,
    "cdn": splitvault.cdn_manager.CDNManager is CDNManager,
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("app", "domain", "adapters")),
}))
"""


def test_it_imports_beside_a_project_with_its_own_app_and_domain(
    wheel: Path, tmp_path: Path
) -> None:
    """The user's app/ and domain/ stay theirs; splitvault comes from the fresh venv."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    fresh_site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    install = ["install", "-q", "--no-deps", "--no-index", "--target", str(fresh_site)]
    subprocess.run(
        [sys.executable, "-m", "pip", *install, str(wheel)], check=True, capture_output=True
    )
    # Third-party packages from the dev venv, as a plain path entry: its .pth files (the editable
    # splitvault among them) are not processed from there.
    (fresh_site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    project = tmp_path / "project"
    for package in ("app", "domain"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(f"WHO = 'user {package}'\n")
    (project / "main.py").write_text(USER_SCRIPT % {"stack": SERVER_STACK})
    done = subprocess.run(
        [str(python), "main.py"], cwd=project, check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["app"] == "user app" and seen["domain"] == "user domain"
    assert seen["splitvault"].startswith(str(fresh_site))
    assert seen["api_client"] and seen["cdn"]
    assert seen["modules"] == ["app", "domain"]
