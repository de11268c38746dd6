"""A layer that makes an image runnable as a KServe modelcar.

KServe starts the modelcar sidecar with ``sh -c "ln -sf /proc/$$/root/models /mnt/models && sleep
infinity"``: the image needs ``sh``, ``ln`` and ``sleep``. A static busybox (Debian's
``busybox-static`` ships one at /bin/busybox) plus its applet links is all of that, in ~2 MB.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from oci.errors import BuildError
from oci.tarlayer import Entry, dirs_for

# Used when the busybox cannot run here (another architecture): enough for the sidecar command.
_MINIMAL_APPLETS = ("bin/sh", "bin/ln", "bin/sleep", "bin/ls", "bin/cat", "bin/test", "usr/bin/test")

# ELF e_machine → OCI architecture.
_ELF_ARCH = {0x3E: "amd64", 0xB7: "arm64", 0x03: "386", 0x28: "arm", 0x15: "ppc64le", 0x16: "s390x", 0xF3: "riscv64"}


def busybox_entries(path: str | Path) -> tuple[list[Entry], str]:
    """Tar entries for ``bin/busybox`` and its applet links, and the binary's architecture."""
    binary = Path(path)
    try:
        head = binary.read_bytes()[:20] if binary.stat().st_size < (64 << 20) else b""
        size = binary.stat().st_size
    except OSError as exc:
        raise BuildError(f"--busybox {binary}: cannot read it ({exc.strerror}); install busybox-static") from exc
    if head[:4] != b"\x7fELF":
        raise BuildError(f"--busybox {binary}: not an ELF executable; point it at a static busybox")
    arch = _ELF_ARCH.get(int.from_bytes(head[18:20], "little" if head[5] == 1 else "big"), "amd64")
    applets = sorted(set(_applets(binary)) - {"bin/busybox"})
    if "bin/sh" not in applets:
        raise BuildError(f"--busybox {binary}: it has no sh applet; a modelcar needs sh, ln and sleep")
    files = [Entry("bin/busybox", "file", 0o755, source=binary, size=size)]
    links = [Entry(a, "symlink", linkname="/bin/busybox") for a in applets]
    return dirs_for(["bin/busybox", *applets]) + sorted(files + links, key=lambda e: e.arcname), arch


def _applets(binary: Path) -> list[str]:
    try:
        out = subprocess.run([str(binary), "--list-full"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return list(_MINIMAL_APPLETS)
    names = [line.strip().lstrip("/") for line in out.stdout.splitlines() if line.strip()]
    # Applet names come from the binary; refuse anything that could leave the image root.
    return [n for n in names if ".." not in n.split("/")] or list(_MINIMAL_APPLETS)
