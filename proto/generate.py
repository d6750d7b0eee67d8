"""Generate the checked-in gRPC stubs in protocol/pb from the .proto sources under proto/.

The one way stubs are made: pinned generator versions, run from the repository root,
    python proto/generate.py [--out DIR]
``--out`` writes elsewhere (tests/test_stubs.py regenerates into a temp dir and compares).
The .proto paths mirror the package the stubs land in, so generated imports work untouched.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PINNED = {"grpcio-tools": "1.85.1", "mypy-protobuf": "5.1.0"}
SOURCES = ("protocol/pb/linkage.proto",)


def _plugin(name: str) -> str:
    # The plugins are installed as console scripts beside the interpreter running us.
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found; install mypy-protobuf=={PINNED['mypy-protobuf']}")
    return found


def generate(out: Path) -> list[Path]:
    """Write the stubs under ``out`` (mirroring the package path); return the files written."""
    for package, version in PINNED.items():
        installed = importlib.metadata.version(package)
        if installed != version:
            raise SystemExit(
                f"{package} {installed} is installed; the stubs are pinned to {version}"
            )
    from grpc_tools import protoc  # imported late so the version check speaks first

    include = Path(protoc.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    for source in SOURCES:
        arguments = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            source,
        ]
        if protoc.main(arguments) != 0:
            raise SystemExit(f"protoc failed on {source}")
    written = sorted(p for p in (out / "protocol" / "pb").iterdir() if p.suffix in (".py", ".pyi"))
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write protocol/pb under")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
