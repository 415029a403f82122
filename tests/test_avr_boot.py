"""The AVR board firmware as the ATmega328P runs it, not only as simavr would let it:
every SPM instruction of the image lies in the boot section and the boot-section code
never branches into the application (static, over the built ELF); the link fails when
the application grows into the genome slots; and the simavr bridge holds programs to
the chip's rules (SPM outside the boot section ignored, the RWW section unreadable
while a page is erased or written, 4.5 ms per erase or write).  The emulated boards
that rely on these rules: tests/test_boards_emulated.py.  Skipped without avr-gcc and
simavr."""
from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from boards import flash as FL
from codegen import toolchain as T
from sim.paths import FIRMWARE

pytestmark = pytest.mark.skipif(bool(T.missing_tools("avr", run=True)), reason="needs avr-gcc and simavr")

BOOT_START, FLASH_END, SLOT0, SLOTS_END = 0x7E00, 0x8000, 0x2800, 0x6B00
SPM_OPCODES = (0x95E8, 0x95F8)     # spm, and spm Z+ (which the ATmega328P lacks; counted all the same)


@pytest.fixture(scope="module")
def elf() -> Path:
    return T.link_firmware("avr")


def layout() -> dict[str, int]:
    """flash_layout_avr.h's plain numeric #defines: the tests read the one place too."""
    text = (FIRMWARE / "ports" / "avr" / "flash_layout_avr.h").read_text()
    return {k: int(v, 0) for k, v in re.findall(r"#define (NCA_AVR_\w+) (0x[0-9A-Fa-f]+|\d+)\b", text)}


def flash_image(elf: Path, *sections: str) -> bytes:
    """What a programmer writes, from address 0 (gaps 0xFF as erased flash)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "image.bin"
        cmd = ["avr-objcopy", "-O", "binary", "--gap-fill", "0xFF"] + [a for s in sections for a in ("-j", s)]
        subprocess.run(cmd + [str(elf), str(out)], check=True)
        return out.read_bytes()


def spm_words(image: bytes, base: int = 0) -> list[int]:
    """Byte addresses of every aligned word that is an SPM opcode: code and data alike, so
    no instruction stream can hide one (a data word that happens to be one counts too)."""
    return [base + i for i in range(0, len(image) - 1, 2)
            if int.from_bytes(image[i:i + 2], "little") in SPM_OPCODES]


def test_spm_words_finds_every_spm():
    assert spm_words(b"\x00\x00\xe8\x95\x95\xe8\xf8\x95") == [2, 6]


def test_every_spm_is_in_the_boot_section(elf):
    """The application holds no SPM word at all; the boot section holds the routine's four
    (page fill, erase/write, the RWW re-enable after it, the RWW re-enable on request)."""
    assert layout()["NCA_AVR_BOOT_START"] == BOOT_START and layout()["NCA_AVR_SLOT0"] == SLOT0
    app = flash_image(elf, ".text", ".data")
    assert len(app) <= SLOT0 and spm_words(app) == []
    boot = flash_image(elf, ".bootloader")
    assert len(boot) <= FLASH_END - BOOT_START
    found = spm_words(boot, BOOT_START)
    assert len(found) == 4 and all(BOOT_START <= a < FLASH_END for a in found), [hex(a) for a in found]
    with_boot = flash_image(elf, ".text", ".data", ".bootloader")     # the ISP image, as one piece
    assert spm_words(with_boot) == found


def test_the_boot_section_never_branches_into_the_application(elf):
    """During an erase or write the RWW section (the application) cannot be read: the boot
    code's every jump, call and branch stays in the boot section, but the reset vector's."""
    dis = subprocess.run(["avr-objdump", "-d", "-j", ".bootloader", str(elf)], capture_output=True,
                         text=True, check=True).stdout
    rows = re.findall(r"^\s*([0-9a-f]+):\s+(?:[0-9a-f]{2} )+\s*(\w+)\s*([^;\n]*)(?:;\s*0x([0-9a-f]+))?", dis, re.MULTILINE)
    assert len(rows) > 60
    targets = {}
    for addr, mnem, _ops, target in rows:
        if mnem in ("jmp", "call", "rjmp", "rcall") or mnem.startswith("br"):
            assert target, (addr, mnem)
            targets[int(addr, 16)] = (mnem, int(target, 16))
    outside = {a: t for a, t in targets.items() if not BOOT_START <= t[1] < FLASH_END}
    assert outside == {BOOT_START: ("jmp", 0)}          # vector 0: a reset into the application
    assert all(m not in ("icall", "ijmp", "eicall", "eijmp") for _, m, _, _ in rows)


def test_slots_are_noload_sections_at_their_addresses(elf):
    heads = subprocess.run(["avr-objdump", "-h", str(elf)], capture_output=True, text=True, check=True).stdout
    slots = re.search(r"\.nca_slots\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+[0-9a-f]+\s+\S+\s*\n\s*(.*)", heads)
    assert slots and (int(slots.group(1), 16), int(slots.group(2), 16)) == (SLOTS_END - SLOT0, SLOT0)
    assert "LOAD" not in slots.group(3) and "CONTENTS" not in slots.group(3)
    boot = re.search(r"\.bootloader\s+([0-9a-f]+)\s+([0-9a-f]+)", heads)
    assert boot and int(boot.group(2), 16) == BOOT_START
    assert ".bootloader" in FL.elf_sections(str(elf))


def test_the_link_fails_when_the_application_grows_into_the_slots(elf, tmp_path):
    """link_avr.ld's ASSERT: an application 64 bytes too large does not link (and says why);
    the same build with a small test array links."""
    app = len(flash_image(elf, ".text", ".data"))

    def build(extra: int, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "-C", str(FIRMWARE), "TARGET=avr", "APP=link", f"BUILD={out}",
                               f"AVR_LINK_DEFS=-DNCA_TEST_APP_BYTES={extra}", f"{out}/nca_link_avr.elf"],
                              capture_output=True, text=True, check=False)

    ok = build(16, tmp_path / "fits")
    assert ok.returncode == 0, ok.stderr
    r = build(SLOT0 - app + 64, tmp_path / "too-big")
    assert r.returncode != 0
    assert "grows into the genome slots" in r.stderr, r.stderr[-2000:]


# ---------------------------------------------------------------- the bridge keeps the chip's rules
PROBE = """#include <avr/io.h>
#define IO(r) _SFR_IO_ADDR(r)
    .section .text
    .global _start
_start:
    ldi r30, 0x00                 /* Z = 0x2800, the first page of slot A */
    ldi r31, 0x28
    clr r0
    clr r1
    ldi r16, 1
    out IO(GPIOR0), r16           /* cycle mark */
    {call}
    ldi r16, 2
    out IO(GPIOR0), r16
    ldi r16, 0xF1
    out IO(GPIOR1), r16           /* the bridge saves the flash */
    cli
    ldi r16, 1
    out IO(SMCR), r16
    sleep
    .section .bootloader, "ax", @progbits
boot_write:
    ldi r16, 0x01                 /* fill word 0 with r1:r0 = 0 */
    out IO(SPMCSR), r16
    spm
    ldi r16, 0x05                 /* write the page */
    out IO(SPMCSR), r16
    spm
    {wait}
    ret
"""
WAIT = """1:  in r16, IO(SPMCSR)
    sbrc r16, 0
    rjmp 1b
    ldi r16, 0x11                 /* the RWW section readable again */
    out IO(SPMCSR), r16
    spm
2:  in r16, IO(SPMCSR)
    sbrc r16, 0
    rjmp 2b"""
APP_SPM = """ldi r16, 0x01
    out IO(SPMCSR), r16
    spm
    ldi r16, 0x05
    out IO(SPMCSR), r16
    spm"""


def run_probe(elf: Path, tmp_path: Path, call: str, wait: str) -> tuple[subprocess.CompletedProcess, bytes]:
    src = tmp_path / "probe.S"
    src.write_text(PROBE.replace("{call}", call).replace("{wait}", wait))
    prog = tmp_path / "probe.elf"
    subprocess.run(["avr-gcc", "-mmcu=atmega328p", "-nostartfiles", "-nostdlib",
                    "-Wl,--section-start=.bootloader=0x7E00", str(src), "-o", str(prog)], check=True)
    flash = tmp_path / "flash.bin"
    r = subprocess.run([str(elf.parent / "simavr_bridge"), "--flash", str(flash), str(prog)], input=b"",
                       capture_output=True, timeout=60, check=False)
    return r, flash.read_bytes() if flash.exists() else b""


def page(flash: bytes) -> bytes:
    """Slot A's first page in the bridge's flash file (which starts at the first page above
    the program: the probe is under 128 bytes)."""
    return flash[SLOT0 - 128:SLOT0]


def test_bridge_ignores_spm_outside_the_boot_section(elf, tmp_path):
    r, flash = run_probe(elf, tmp_path, APP_SPM, "")
    assert r.returncode == 0, r.stderr
    assert b"spm outside the boot section at pc 0x" in r.stderr
    assert page(flash) == b"\xff" * 128               # nothing written, as on the chip


def test_bridge_writes_from_the_boot_section_in_4_5_ms(elf, tmp_path):
    r, flash = run_probe(elf, tmp_path, "call boot_write", WAIT)
    assert r.returncode == 0 and b"FAIL" not in r.stderr and b"spm outside" not in r.stderr, r.stderr
    assert page(flash)[:2] == b"\x00\x00"           # the word filled (simavr leaves the others 0x00FF)
    cycles = int(re.search(rb"cycles (\d+)", r.stderr).group(1))
    assert 72_000 <= cycles < 73_000                  # 4.5 ms at 16 MHz


def test_bridge_stops_a_program_that_runs_in_the_rww_section_while_it_is_written(elf, tmp_path):
    r, _ = run_probe(elf, tmp_path, "call boot_write", "")       # returns into the application at once
    assert r.returncode == 4
    assert b"FAIL: pc 0x" in r.stderr and b"RWW section" in r.stderr
