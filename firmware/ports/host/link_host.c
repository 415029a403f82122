/* Host port of the cell link (APP=link): the two genome slots in RAM with NOR
 * flash semantics (erase sets 0xFF, programming can only clear bits), replies
 * collected in a caller's buffer.  Built as libnca_link.so for ctypes (the
 * protocol tests, fault injection without an emulator) and into the
 * sanitizer-instrumented fuzz driver (firmware/tools/link_fuzz.c).
 *
 * The slot writer works as real flash does, one operation at a time: an erase
 * unit (a page) erased, or a write unit programmed (a 128-byte page on the
 * ATmega328P, a 32-bit word on the nRF51; nca_host_link_geometry picks the sizes).
 * nca_host_link_cut_after(n, torn) cuts the power at the n-th operation from then
 * on: that one is the last to reach the flash, torn (half done, as an interrupted
 * erase or program leaves a page) or whole, and the board is off (no flash
 * operation, no reply, no byte read) until nca_host_link_boot powers it on again. */
#include <stddef.h>
#include <string.h>
#include "nca_link.h"

static uint32_t flash_words[2][(NCA_SLOT_BYTES + 3) / 4];
#define FLASH(s) ((uint8_t *)flash_words[(s) & 1])

static uint8_t *out;
static size_t out_len, out_cap, out_dropped;
static uint32_t erases, writes;
static uint8_t writer = NCA_WRITER_NATIVE;   /* the tests set NCA_WRITER_NONE: a board that cannot write */
static uint8_t led[3];

/* flash operations and the power cut */
static uint16_t erase_unit = 128, write_unit = 128;
static uint32_t ops, cut_at;      /* cut_at: the operation the power dies in (0: none) */
static uint8_t torn, off;

void nca_link_putc(uint8_t c)
{
    if (off)
        return;                   /* a board without power sends nothing */
    if (out && out_len < out_cap)
        out[out_len++] = c;
    else
        out_dropped++;
}

/* whether the next flash operation happens, and how: 0 not (no power), 1 whole, 2 torn */
static uint8_t next_op(void)
{
    if (off)
        return 0;
    ops++;
    if (cut_at && ops == cut_at) {
        off = 1;
        return (uint8_t)(torn ? 2 : 1);
    }
    return 1;
}

void nca_slot_erase(uint8_t slot)
{
    uint32_t a, i, end;
    erases++;
    for (a = 0; a < NCA_SLOT_BYTES; a += erase_unit) {
        uint8_t how = next_op();
        if (!how)
            return;
        end = a + erase_unit < NCA_SLOT_BYTES ? a + erase_unit : NCA_SLOT_BYTES;
        for (i = a; i < end; i++)   /* torn: the first half erased, the rest half its bits */
            FLASH(slot)[i] = (uint8_t)(how == 1 || i < a + erase_unit / 2 ? 0xFF : FLASH(slot)[i] | 0x55);
    }
}

void nca_slot_write(uint8_t slot, uint16_t at, const uint8_t *src, uint8_t n)
{
    uint32_t a = at, end = (uint32_t)at + n;
    writes++;
    while (a < end) {
        uint32_t unit = a - a % write_unit, stop = unit + write_unit < end ? unit + write_unit : end;
        uint8_t how = next_op();
        if (!how)
            return;
        uint32_t half = a + (stop - a) / 2;
        for (; a < stop; a++)       /* torn: the first half of its bytes programmed, the rest half their bits */
            if (a < NCA_SLOT_BYTES)
                FLASH(slot)[a] &= (uint8_t)(how == 1 || a < half ? src[a - at] : src[a - at] | 0xAA);
    }
}

const nca_genome_t *nca_slot_genome(uint8_t slot)
{
    return (const nca_genome_t *)(const void *)FLASH(slot);
}

uint8_t nca_slot_writer(void)
{
    return writer;
}

void nca_link_led(const uint8_t *rgb)
{
    memcpy(led, rgb, sizeof led);
}

/* ---- the ctypes API */
void nca_host_link_wipe(void)          /* a factory-new board: both slots erased, no cut pending */
{
    memset(flash_words, 0xFF, sizeof flash_words);
    erase_unit = write_unit = 128;
    cut_at = 0;
    off = 0;
}

void nca_host_link_boot(void)          /* power on: RAM state lost, flash kept */
{
    off = 0;
    cut_at = 0;
    nca_link_init();
}

/* flash geometry: erase and write unit in bytes (powers of two; 0 keeps the current one) */
void nca_host_link_geometry(uint16_t erase_bytes, uint16_t write_bytes)
{
    if (erase_bytes)
        erase_unit = erase_bytes;
    if (write_bytes)
        write_unit = write_bytes;
}

/* cut the power at the n-th flash operation from now (0: no cut), torn or whole */
void nca_host_link_cut_after(uint32_t n, int tear)
{
    cut_at = n ? ops + n : 0;
    torn = (uint8_t)(tear != 0);
}

uint32_t nca_host_link_ops(void)       /* flash operations so far */
{
    return ops;
}

int nca_host_link_powered(void)
{
    return !off;
}

/* feed n bytes, collect at most cap reply bytes; returns how many were written */
size_t nca_host_link_io(const uint8_t *in, size_t n, uint8_t *o, size_t cap)
{
    size_t i;
    out = o;
    out_len = 0;
    out_cap = cap;
    for (i = 0; i < n && !off; i++)
        nca_link_rx(in[i]);
    out = NULL;
    return out_len;
}

uint8_t *nca_host_link_flash(uint8_t slot)
{
    return FLASH(slot);
}

int nca_host_link_active(void)
{
    return nca_link_active_slot();
}

uint32_t nca_host_link_counts(uint32_t *erase_count)
{
    *erase_count = erases;
    return writes;
}

size_t nca_host_link_dropped(void)
{
    return out_dropped;
}

void nca_host_link_set_writer(uint8_t w)
{
    writer = w;
}

const uint8_t *nca_host_link_led(void)    /* the colour the last step showed */
{
    return led;
}
