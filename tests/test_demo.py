"""The README's first command: `modeldepot demo` runs the whole path on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from storage import verify


def test_demo_downloads_verifies_and_transfers_nothing_the_second_time(tmp_path):
    run = subprocess.run([Path(sys.executable).parent / "modeldepot", "demo", "--dir", tmp_path],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    sent = [line for line in run.stdout.splitlines() if "the server sent" in line]
    assert sent[0].strip() == "the server sent 64.0 MiB of body bytes"
    assert sent[1].strip() == "the server sent 0 B of body bytes"
    assert "complete and unchanged; nothing to transfer" in run.stderr
    assert verify(tmp_path / "models") == []
    assert (tmp_path / "models" / "tokenizer" / "tokenizer.json").is_file()
