"""Build llama.cpp's own llama-server from the llama-cpp-python sdist's vendored source (the
same llama.cpp the provider runs), once, into .bench-venvs/llama-server/.

Only the server target is built (no tests, examples or other tools). The result is the path
of the binary, or the reason it could not be built (the benchmark then skips that row).

Run: .venv/bin/python -m bench.llama_server_build
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench-venvs" / "llama-server"


def _binary(build: Path) -> Path:
    return build / "bin" / "llama-server"


def _sdist(version: str) -> Path:
    found = sorted(CACHE.glob(f"llama_cpp_python-{version}.tar.gz"))
    if found:
        return found[0]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                    ":all:", "-d", str(CACHE),
                    f"llama-cpp-python=={version}"], check=True, capture_output=True)
    found = sorted(CACHE.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not found:
        raise RuntimeError(f"pip download left no sdist of llama-cpp-python {version}")
    return found[0]


def build(jobs: int = 2) -> Path:
    """Return the llama-server binary built from the installed llama-cpp-python's vendored
    llama.cpp; raise with the reason when it cannot be built."""
    version = metadata.version("llama-cpp-python")
    src = CACHE / f"llama_cpp_python-{version}"
    out = CACHE / f"build-{version}"
    if _binary(out).exists():
        return _binary(out)
    if shutil.which("cmake") is None:
        raise RuntimeError("cmake is not installed")
    CACHE.mkdir(parents=True, exist_ok=True)
    if not src.exists():
        with tarfile.open(_sdist(version)) as tar:
            tar.extractall(CACHE, filter="data")
    vendored = src / "vendor" / "llama.cpp"
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF",
             "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_CURL=OFF",
             "-DBUILD_SHARED_LIBS=OFF"]
    env = dict(os.environ)
    subprocess.run(["cmake", "-S", str(vendored), "-B", str(out), *flags], check=True,
                   capture_output=True, env=env)
    subprocess.run(["cmake", "--build", str(out), "--target", "llama-server", "-j",
                    str(jobs)], check=True, capture_output=True, env=env)
    if not _binary(out).exists():
        raise RuntimeError(f"the build finished without {_binary(out)}")
    return _binary(out)


def main() -> int:
    try:
        print(build())
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        tail = detail.decode(errors="replace").strip().splitlines()[-3:] if detail else []
        print(f"llama-server could not be built: {exc} {' '.join(tail)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
