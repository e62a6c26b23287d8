"""Build the detector image with podman, on a machine where no registry serves base images.

The base image is a ``python:3.11-slim`` stand-in made from Debian bookworm's own packages with
debootstrap, cached as a tarball under ``deploy/image/cache/`` and imported into podman once.
pip inside the build reads the host's pip configuration (config files, certificate bundle,
local wheel directories and indexes), mounted read-only at the same paths, so the build installs
what ``make setup`` installs on the host.

    python3 deploy/image/build.py                      # tags detector:<version from pyproject.toml>
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu python3 deploy/image/build.py

``PYTHON_IMAGE`` set in the environment skips the stand-in and builds on that image instead;
``DEBIAN_MIRROR`` replaces deb.debian.org for debootstrap.
The podman flags this machine needs are in :data:`PODMAN` and :data:`CONTAINER_FLAGS`; the
container test imports them from here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(__file__).resolve().parent / "cache"
SUITE = "bookworm"
BASE_IMAGE = f"localhost/python:3.11-slim-{SUITE}"
BASE_TARBALL = CACHE / f"python3.11-{SUITE}-minbase.tar"
BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
EXPECTED_PYTHON = "3.11"

# runc and cgroupfs: podman's defaults (crun, systemd) are not available on these machines.
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"]
# Ulimits no higher than the host's, and the host's network (no CNI bridge needed).
CONTAINER_FLAGS = ["--ulimit", "nofile=1024:4096", "--ulimit", "nproc=1024:4096", "--network", "host"]


def version() -> str:
    """The project version from pyproject.toml: the image's tag."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def image_name() -> str:
    """``$IMAGE`` or ``detector:<version>``: what ``make image`` builds and the Deployment runs."""
    return os.environ.get("IMAGE") or f"detector:{version()}"


def podman(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``podman`` with this machine's global flags."""
    return subprocess.run([*PODMAN, *args], check=check, text=True, capture_output=capture)


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def ensure_base_image() -> str:
    """Import the cached stand-in base image, making the tarball first if it is not cached."""
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    if not BASE_TARBALL.is_file():
        make_base_tarball(BASE_TARBALL)
    podman(
        "import",
        "--change",
        "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        "ENV=LANG=C.UTF-8",
        "--change",
        'CMD=["python3"]',
        "--message",
        f"debootstrap --variant=minbase --include={BASE_PACKAGES} {SUITE}",
        str(BASE_TARBALL),
        BASE_IMAGE,
    )
    return BASE_IMAGE


def make_base_tarball(target: Path) -> None:
    """debootstrap a minimal bookworm with Python, link ``python`` to ``python3``, tar it."""
    for tool in ("debootstrap", "tar"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} not found\nhelp: apt-get install debootstrap (make image-tools does it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="detector-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        print(f"image: debootstrap {SUITE} into {rootfs} (a few minutes, once)", flush=True)
        mirror = os.environ.get("DEBIAN_MIRROR") or DEFAULT_MIRROR
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(rootfs), mirror],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        found = subprocess.run(
            ["chroot", str(rootfs), "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            check=True,
            text=True,
            capture_output=True,
        ).stdout.strip()
        if found != EXPECTED_PYTHON:
            sys.exit(f"error: {SUITE}'s python3 is {found}, the image needs {EXPECTED_PYTHON}")
        (rootfs / "usr/bin/python").symlink_to("python3")
        for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftovers).glob("*"):
                if path.is_file():
                    path.unlink()
        partial = target.with_suffix(".tar.partial")
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.replace(target)


def pip_mounts(python: str) -> list[str]:
    """``-v`` flags mounting the host's pip configuration and every local path it names, read-only.

    Paths come from ``pip config debug``: the config files that exist and each value that is an
    absolute path (certificate bundle, constraints, find-links) or a ``file://`` index URL, whose
    parent is mounted because a local index's pages link to files beside it.
    """
    report = subprocess.run([python, "-m", "pip", "config", "debug"], check=True, text=True, capture_output=True).stdout
    paths: set[Path] = set()
    for line in report.splitlines():
        config_file = re.match(r"^\s+(/\S+), exists: True$", line)
        if config_file:
            paths.add(Path(config_file.group(1)))
            continue
        setting = re.match(r"^\s+[\w.-]+[:=]\s*'?(.*?)'?$", line)
        for word in setting.group(1).split() if setting else []:
            if word.startswith("file:///"):
                paths.add(Path(word.removeprefix("file://")).parent)
            elif word.startswith("/"):
                paths.add(Path(word))
    mounts: list[str] = []
    for path in sorted(p for p in paths if p.exists()):
        mounts += ["-v", f"{path}:{path}:ro"]
    return mounts


def build(tag: str, python_image: str, torch_index_url: str, python: str) -> None:
    podman(
        "build",
        "--format",
        "docker",
        "--pull=never",
        "--layers",
        *CONTAINER_FLAGS,
        *pip_mounts(python),
        "--build-arg",
        f"PYTHON_IMAGE={python_image}",
        "--build-arg",
        f"TORCH_INDEX_URL={torch_index_url}",
        "--tag",
        tag,
        "--file",
        str(ROOT / "Dockerfile"),
        str(ROOT),
    )


def main() -> int:
    tag = image_name()
    if shutil.which("podman") is None:
        print("error: podman not found\nhelp: apt-get install podman runc (make image-tools does it)", file=sys.stderr)
        return 2
    # Empty: torch comes from pip's own configuration (here: the local CPU wheel).
    torch_index_url = os.environ.get("TORCH_INDEX_URL", "")
    try:
        python_image = os.environ.get("PYTHON_IMAGE") or ensure_base_image()
        build(tag, python_image, torch_index_url, os.environ.get("PYTHON", sys.executable))
    except subprocess.CalledProcessError as error:
        print(
            f"error: `{' '.join(map(str, error.cmd))[:160]}` exited with {error.returncode} (output above)",
            file=sys.stderr,
        )
        return 1
    print(f"image: built {tag} on {python_image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
