"""Fill docker/wheels/ with every wheel the image installs, so `docker build` needs no index.

    python3 docker/wheelhouse.py cpu     # CPU torch (the default image)
    python3 docker/wheelhouse.py cuda    # PyPI's CUDA torch; its CUDA runtime comes as nvidia-* wheels

Wheels are for the image's interpreter (Debian bookworm's python3, 3.11.2) and architecture, not the
host's. pip evaluates environment markers against the interpreter running it even with
--python-version, so a dependency that only the image's Python needs (redis needs async-timeout
below 3.11.3) would be missed; after pip's download, the closure is completed here by evaluating
every wheel's requirements against the image's environment.

Environment: IMAGE_PYTHON (3.11.2), ARCH (this machine's), TORCH_INDEX (an extra index for torch,
e.g. https://download.pytorch.org/whl/cpu where no CPU torch wheel lies on local disk).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:  # a bare interpreter: pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docker" / "wheels"
IMAGE_PYTHON = os.environ.get("IMAGE_PYTHON", "3.11.2")
ARCH = os.environ.get("ARCH", platform.machine())
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# Markers are evaluated for the image: CPython on Linux.
TARGET = {
    "python_full_version": IMAGE_PYTHON,
    "python_version": ".".join(IMAGE_PYTHON.split(".")[:2]),
    "implementation_name": "cpython",
    "implementation_version": IMAGE_PYTHON,
    "platform_python_implementation": "CPython",
    "platform_machine": ARCH,
    "platform_system": "Linux",
    "sys_platform": "linux",
    "os_name": "posix",
    "extra": "",
}


def pip_download(requirements: list[str], *, isolated: bool, no_deps: bool = False) -> None:
    cmd = [sys.executable, "-m", "pip"]
    if isolated:  # ignore local pip configuration that may point at a CPU-only torch on disk
        cmd += ["--isolated"] + (["--cert", os.environ["PIP_CERT"]] if "PIP_CERT" in os.environ else [])
    cmd += ["download", "--dest", str(OUT), "--only-binary=:all:"]
    cmd += ["--python-version", TARGET["python_version"]]
    for tag in (f"manylinux_2_28_{ARCH}", f"manylinux_2_17_{ARCH}", f"manylinux2014_{ARCH}"):
        cmd += ["--platform", tag]
    if os.environ.get("TORCH_INDEX"):
        cmd += ["--extra-index-url", os.environ["TORCH_INDEX"]]
    cmd += ["--no-deps"] if no_deps else []
    subprocess.run(cmd + requirements, check=True)


def wheels() -> dict[str, list]:
    """Canonical project name -> versions of the wheels in OUT."""
    found: dict[str, list] = {}
    for path in OUT.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(path.name)
        found.setdefault(name, []).append(version)
    return found


def missing_for_image() -> list[str]:
    """Requirements of the wheels in OUT that apply to the image but no wheel there satisfies."""
    have = wheels()
    missing = []
    for path in OUT.glob("*.whl"):
        with zipfile.ZipFile(path) as wheel:
            meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
            lines = wheel.read(meta).decode().splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(TARGET):
                continue
            versions = have.get(canonicalize_name(req.name), [])
            if not any(req.specifier.contains(v, prereleases=True) for v in versions):
                missing.append(f"{req.name}{req.specifier}")
    return sorted(set(missing))


def main(argv: list[str]) -> int:
    variant = argv[0] if argv else "cpu"
    if variant not in ("cpu", "cuda"):
        print(__doc__, file=sys.stderr)
        return 2
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    # The image installs exactly the project's runtime dependencies: pyproject.toml is the one list.
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (OUT / "requirements.txt").write_text("\n".join(deps) + "\n")
    # setuptools and wheel build the project itself inside the image (pip's isolated build).
    pip_download([*deps, "setuptools>=68", "wheel"], isolated=variant == "cuda")
    for _ in range(10):  # each round may add wheels with requirements of their own
        missing = missing_for_image()
        if not missing:
            break
        pip_download(missing, isolated=variant == "cuda", no_deps=True)
    else:
        raise SystemExit(f"wheelhouse: requirements still missing for the image: {missing}")
    cuda = any(name.startswith("nvidia-") for name in wheels())
    if variant == "cpu" and cuda:  # a CUDA torch pulls GBs of nvidia-* wheels into a CPU image
        raise SystemExit(f"wheelhouse cpu: got a CUDA torch; set TORCH_INDEX={CPU_TORCH_INDEX}")
    if variant == "cuda" and not cuda:
        raise SystemExit("wheelhouse cuda: torch is not a CUDA build")
    size = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{OUT}: {len(list(OUT.glob('*.whl')))} wheels, {size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
