"""Build llama.cpp's own llama-server from the llama-cpp-python sdist's vendored source (the
same llama.cpp the provider runs) for the instruction sets the installed library was compiled
for, once, into .bench-venvs/llama-server/.

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


# llama_print_system_info's names and the cmake options that turn them on
FEATURES = {"AVX": "GGML_AVX", "AVX2": "GGML_AVX2", "F16C": "GGML_F16C", "FMA": "GGML_FMA",
            "BMI2": "GGML_BMI2", "AVX_VNNI": "GGML_AVX_VNNI", "AVX512": "GGML_AVX512",
            "AVX512_VBMI": "GGML_AVX512_VBMI", "AVX512_VNNI": "GGML_AVX512_VNNI",
            "AVX512_BF16": "GGML_AVX512_BF16", "AMX_INT8": "GGML_AMX_INT8",
            "AMX_BF16": "GGML_AMX_BF16", "LLAMAFILE": "GGML_LLAMAFILE",
            "OPENMP": "GGML_OPENMP"}


def same_cpu_flags() -> list[str]:
    """The cmake options that give the server the CPU kernels of the installed
    llama-cpp-python: the instruction sets its library was compiled for, not -march=native
    (a native build on a CPU with AVX-512 would time other kernels than the provider's)."""
    import llama_cpp
    info = llama_cpp.llama_print_system_info().decode()
    on = {k.strip() for k, _, v in (p.partition("=") for p in info.split("|"))
          if v.strip() == "1"}
    return ["-DGGML_NATIVE=OFF"] + [f"-D{opt}={'ON' if name in on else 'OFF'}"
                                    for name, opt in FEATURES.items()]


def build(jobs: int = 2) -> Path:
    """Return the llama-server binary built from the installed llama-cpp-python's vendored
    llama.cpp, for the same instruction sets; raise with the reason when it cannot be
    built."""
    version = metadata.version("llama-cpp-python")
    src = CACHE / f"llama_cpp_python-{version}"
    cpu = same_cpu_flags()
    tag = "-".join(f.split("_", 1)[1].split("=")[0].lower() for f in cpu[1:]
                   if f.endswith("=ON"))
    out = CACHE / f"build-{version}-{tag}"
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
             "-DBUILD_SHARED_LIBS=OFF", *cpu]
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
