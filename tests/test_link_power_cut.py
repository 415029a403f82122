"""Power cut at every flash operation of a genome update (the host build's slot writer
works one page erase or one page/word program at a time, as the ATmega328P and the nRF51
do; link_host.c): after each cut, torn or whole, and a restart, the board runs a valid
genome - the previous one, or the new one once its header (the commit record) is whole -
never none and never a corrupt one, by HELLO (slot, model hash) and by a CELL step equal
to the golden model of that genome. Also an update cut, restarted from the host, cut
again and then completed. The states checked are counted (`checked_states`)."""
from __future__ import annotations

import ctypes
import dataclasses
import shutil

import numpy as np
import pytest
from test_firmware_host import adversarial_cells, golden_update

import boards.client
import boards.errors
import boards.transport
from boards import protocol as L
from codegen.quantize import QModel, quantized
from sim.fixture import blob_model

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                                reason="needs gcc and make")

# erase page and write unit: the ATmega328P programs 128-byte pages, the nRF51 32-bit words
GEOMETRIES = {"avr": (128, 128), "nrf51": (1024, 4)}


@pytest.fixture(scope="module")
def genomes() -> tuple[QModel, QModel, QModel]:
    """(old, previous, new): three genomes (the blob's, with other output biases)."""
    q = quantized(blob_model())
    return tuple(dataclasses.replace(q, b2=(q.b2 + d).astype(np.int16)) for d in (-4, 0, 4))  # type: ignore


class Rig:
    """A host board whose slots hold `old` (generation 1) and `prev` (generation 2, active),
    restored from a snapshot before every cut update to `new`."""

    def __init__(self, geometry: tuple[int, int], genomes: tuple[QModel, QModel, QModel]):
        self.old, self.prev, self.new = genomes
        self.host = boards.transport.HostLink()
        self.host.geometry(*geometry)
        for q in (self.old, self.prev):
            boards.client.Board(self.host).flash(L.image_of(q))
        self.snapshot = [bytes(self.host.flash(s)) for s in (0, 1)]
        xs, nbs = adversarial_cells(40, seed=7)
        self.cell = (xs[3], nbs[3])
        self.want = {q.model_hash: golden_update(q, xs[3:4], nbs[3:4]) for q in genomes}
        self.image = L.image_of(self.new)
        self.restore()
        n0 = self.host.ops
        boards.client.Board(self.host).flash(self.image)
        self.ops = self.host.ops - n0                 # flash operations of one whole update
        self.checked_states = 0

    def restore(self) -> None:
        for s in (0, 1):
            ctypes.memmove(ctypes.addressof(self.host.flash(s)), self.snapshot[s], L.SLOT_BYTES)
        self.host.power_cycle()

    def cut_update(self, k: int, torn: bool) -> QModel:
        """Update to `new`, the power cut at its k-th flash operation (torn: half done) ->
        the genome the board must run after it: `new` if the header (the commit record, the
        update's last operation) reached the flash whole, else the one it ran before."""
        before = boards.client.Board(self.host).hello()
        self.host.cut_after(k, torn)
        with pytest.raises(boards.errors.LinkError):
            boards.client.Board(self.host, retries=0).flash(self.image)
        assert not self.host.powered
        slot = self.host.flash(1 - before.active_slot)
        header = bytes(slot[L.SLOT_HEADER_OFFSET:L.SLOT_HEADER_OFFSET + L.HEADER_BYTES])
        whole = header == self.image.header(generation=before.generation + 1)
        if not (k == self.ops and torn):                  # a torn header may happen to be whole
            assert whole == (k == self.ops), (k, torn)
        return self.new if whole else next(q for q in (self.old, self.prev, self.new)
                                           if q.model_hash == before.model_hash)

    def check(self, expect: QModel) -> None:
        """Power on: the board runs `expect`, whole."""
        self.host.power_cycle()
        b = boards.client.Board(self.host)
        h = b.hello()
        assert h.active_slot is not None and h.model_hash == expect.model_hash
        code, state = b.cell(*self.cell)
        gc, go = self.want[expect.model_hash]
        assert code == gc[0] and np.array_equal(state, go[0])
        self.checked_states += 1


def cut_everywhere(rig: Rig, ks: list[int]) -> None:
    """For each k: cut at operation k (torn, then whole), restart, check; then, from a torn
    cut at k, an update restarted from the host and cut at another operation, then completed."""
    n = rig.ops
    for k in ks:
        for torn in (True, False):
            rig.restore()
            rig.check(rig.cut_update(k, torn))
        rig.restore()
        rig.check(rig.cut_update(k, torn=True))
        rig.check(rig.cut_update((k * 7919) % n + 1, torn=bool(k % 2)))
        boards.client.Board(rig.host).flash(rig.image)        # the same update, to its end
        rig.check(rig.new)


def test_power_cut_at_every_flash_operation_avr_pages(genomes):
    rig = Rig(GEOMETRIES["avr"], genomes)
    assert rig.ops == 67 + 66 + 1                 # 67 page erases, 66 genome pages, the header page
    cut_everywhere(rig, list(range(1, rig.ops + 1)))
    assert rig.checked_states == 5 * rig.ops
    print(f"avr pages: {rig.ops} flash operations per update, {rig.checked_states} states checked")


def test_power_cut_at_sampled_flash_operations_nrf51_words(genomes):
    """Every erase and header operation and every 37th word write (the slow test: all)."""
    rig = Rig(GEOMETRIES["nrf51"], genomes)
    assert rig.ops == 9 + L.F.GENOME_BYTES // 4 + L.HEADER_BYTES // 4
    ks = sorted(set(range(1, 10)) | set(range(10, rig.ops, 37)) | set(range(rig.ops - 8, rig.ops + 1)))
    cut_everywhere(rig, ks)
    assert rig.checked_states == 5 * len(ks)
    print(f"nrf51 words, sampled: {rig.ops} flash operations per update, {rig.checked_states} states checked")


@pytest.mark.slow
def test_power_cut_at_every_flash_operation_nrf51_words(genomes):
    rig = Rig(GEOMETRIES["nrf51"], genomes)
    cut_everywhere(rig, list(range(1, rig.ops + 1)))
    assert rig.checked_states == 5 * rig.ops
    print(f"nrf51 words: {rig.ops} flash operations per update, {rig.checked_states} states checked")
