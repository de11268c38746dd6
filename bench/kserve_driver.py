"""KServe's own storage initializer, called the way its container does: ``kserve_driver.py SRC DEST``.

Runs under bench/.venv-kserve (kserve-storage==0.21.0 from PyPI), never under the project venv.
S3_MAX_FILE_CONCURRENCY and the other S3_* knobs are read by kserve_storage at import, so any
tuning must be in the environment before this script starts (bench/run.py passes the defaults).
"""

from __future__ import annotations

import sys


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: kserve_driver.py SRC_URI DEST_PATH", file=sys.stderr)
        return 2
    from kserve_storage import Storage, configure_logging

    configure_logging()
    Storage.download_files([sys.argv[1]], [sys.argv[2]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
