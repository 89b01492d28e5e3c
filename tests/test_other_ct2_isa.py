"""The ISA that `./mxw test` reruns the model-word tests under (scripts/other_ct2_isa.py)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "other_ct2_isa.py"


@pytest.fixture(scope="module")
def other_isa():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("other_ct2_isa", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.other_isa


def log(avx512: str, selected: str) -> str:
    return (
        "[info] CPU: AuthenticAMD (SSE4.1=true, AVX=true, AVX2=true, "
        f"AVX512={avx512})\n[info]  - Selected ISA: {selected}\n"
    )


def test_avx512_when_the_cpu_has_it_but_ctranslate2_chose_avx2(other_isa) -> None:
    assert other_isa(log("true", "AVX2")) == "AVX512"


def test_avx2_when_ctranslate2_chose_avx512(other_isa) -> None:
    assert other_isa(log("true", "AVX512")) == "AVX2"


def test_avx_on_a_cpu_without_avx512(other_isa) -> None:
    assert other_isa(log("false", "AVX2")) == "AVX"


def test_generic_after_avx_and_nothing_when_generic_is_all_there_is(other_isa) -> None:
    avx_only = "CPU: GenuineIntel (SSE4.1=true, AVX=true, AVX2=false, AVX512=false)\n"
    assert other_isa(avx_only + " - Selected ISA: AVX") == "GENERIC"
    no_avx = "CPU: GenuineIntel (SSE4.1=true, AVX=false, AVX2=false, AVX512=false)\n"
    assert other_isa(no_avx + " - Selected ISA: GENERIC") is None


def test_generic_on_arm_and_nothing_without_the_log_lines(other_isa) -> None:
    assert other_isa("[info] CPU: ARM (NEON=true)\n - Selected ISA: NEON") == "GENERIC"
    assert other_isa("") is None
