/* harness.c - see harness.h */
#include "harness.h"
#include "nca_cell.h"
#include "nca_model.h"

#define NCA_HARNESS_VERSION 2   /* 2: the error-feedback nibbles after the state */

static nca_cell_t cell;

static void read_bytes(int8_t *dst, uint8_t n)
{
    while (n--)
        *dst++ = (int8_t)port_getc();
}

static void write_bytes(const int8_t *src, uint8_t n)
{
    while (n--)
        port_putc((uint8_t)*src++);
}

static void write_u32(uint32_t v)
{
    uint8_t i;
    for (i = 0; i < 4; i++) {
        port_putc((uint8_t)(v & 0xFF));
        v >>= 8;
    }
}

static uint16_t read_u16(void)
{
    uint16_t lo = port_getc();
    return (uint16_t)(lo | ((uint16_t)port_getc() << 8));
}

void harness_run(void)
{
    port_init();
    for (;;) {
        uint8_t cmd = port_getc();
        if (cmd == 'U' || cmd == 'T') {
            nca_rotation_t rot;
            uint8_t has_rot = port_getc(), r = 0;
            uint32_t ticks;
            rot.cos_q14 = (int16_t)read_u16();
            rot.sin_q14 = (int16_t)read_u16();
            read_bytes(cell.state, NCA_CHANNELS);
#if NCA_HAS_RESID
            read_bytes((int8_t *)cell.resid, NCA_CHANNELS / 2);
#endif
            read_bytes(cell.inbox, NCA_NEIGHBOURS * NCA_CHANNELS);
            port_mark_start();
            if (cmd == 'U')
                r = nca_cell_update(&cell, has_rot ? &rot : 0);
            else
                nca_cell_tentative(&cell, has_rot ? &rot : 0);
            ticks = port_mark_stop();
            if (cmd == 'U')
                port_putc(r);
            write_bytes(cell.state, NCA_CHANNELS);
#if NCA_HAS_RESID
            write_bytes((const int8_t *)cell.resid, NCA_CHANNELS / 2);
#endif
            write_u32(ticks);
        } else if (cmd == 'C') {
            uint8_t rgb[3];
            read_bytes(cell.state, NCA_CHANNELS);
            nca_cell_rgb(cell.state, rgb);
            write_bytes((const int8_t *)rgb, 3);
        } else if (cmd == 'I') {
            port_putc('N');
            port_putc('C');
            port_putc('A');
            port_putc(NCA_HARNESS_VERSION);
            write_u32(NCA_MODEL_HASH);
        } else if (cmd == 'Q') {
            port_exit();
        }
    }
}
