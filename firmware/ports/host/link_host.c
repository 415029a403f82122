/* Host port of the cell link (APP=link): the two genome slots in RAM with NOR
 * flash semantics (erase sets 0xFF, programming can only clear bits), replies
 * collected in a caller's buffer.  Built as libnca_link.so for ctypes (the
 * protocol tests, fault injection without an emulator) and into the
 * sanitizer-instrumented fuzz driver (firmware/tools/link_fuzz.c). */
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

void nca_link_putc(uint8_t c)
{
    if (out && out_len < out_cap)
        out[out_len++] = c;
    else
        out_dropped++;
}

void nca_slot_erase(uint8_t slot)
{
    memset(FLASH(slot), 0xFF, NCA_SLOT_BYTES);
    erases++;
}

void nca_slot_write(uint8_t slot, uint16_t off, const uint8_t *src, uint8_t n)
{
    uint8_t i;
    for (i = 0; i < n; i++)
        if ((uint32_t)off + i < NCA_SLOT_BYTES)
            FLASH(slot)[off + i] &= src[i];
    writes++;
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
void nca_host_link_wipe(void)          /* a factory-new board: both slots erased */
{
    memset(flash_words, 0xFF, sizeof flash_words);
}

void nca_host_link_boot(void)          /* power on: RAM state lost, flash kept */
{
    nca_link_init();
}

/* feed n bytes, collect at most cap reply bytes; returns how many were written */
size_t nca_host_link_io(const uint8_t *in, size_t n, uint8_t *o, size_t cap)
{
    size_t i;
    out = o;
    out_len = 0;
    out_cap = cap;
    for (i = 0; i < n; i++)
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
