/* nca_link.h - the cell link on the board side: frame parser, command dispatch
 * and the two genome slots (A/B).  Protocol: firmware/PROTOCOL.md; ids, codes
 * and limits: the generated nca_link_ids.h (boards/protocol.py).
 *
 * Portable C99, no malloc: one receive buffer of NCA_LINK_RX_BUFFER bytes, one
 * reply buffer, one cell.  The port feeds every received byte to nca_link_rx()
 * and provides the hooks below (UART output and flash access to the slots). */
#ifndef NCA_LINK_H
#define NCA_LINK_H

#include <stdint.h>
#include "nca_model.h"

/* A compile-time check (C99 has no _Static_assert): a false cond makes an array of
 * size -1, which every compiler refuses, naming the typedef. */
#define NCA_STATIC_ASSERT(name, cond) typedef char nca_static_assert_##name[(cond) ? 1 : -1]

/* ---- provided by the port */
void nca_link_putc(uint8_t c);                      /* send one byte */
void nca_slot_erase(uint8_t slot);                  /* slot 0/1: every byte 0xFF */
/* program n bytes at offset off of the slot (erased bytes only; a port may
 * program with NOR semantics, new = old & data) */
void nca_slot_write(uint8_t slot, uint16_t off, const uint8_t *src, uint8_t n);
/* where the slot's genome is, as the core reads it (NCA_RDU8: program memory on AVR);
 * the link reads every slot byte, the header too, relative to it */
const nca_genome_t *nca_slot_genome(uint8_t slot);
/* how the port writes its slots (NCA_WRITER_*, HELLO); NCA_WRITER_NONE refuses FLASH_BEGIN */
uint8_t nca_slot_writer(void);
/* show the cell's colour (r, g, b 0..255: nca_cell_rgb), after every STEP/CELL and at init */
void nca_link_led(const uint8_t *rgb);

/* ---- the link */
void nca_link_init(void);          /* reset the parser and the cell, pick the active slot */
void nca_link_rx(uint8_t byte);    /* one received byte; a complete frame is answered at once */
int8_t nca_link_active_slot(void); /* 0, 1, or -1 when no valid genome is in flash */
const int8_t *nca_link_state(void); /* the cell's own int8 state (NCA_CHANNELS), for a port's LED */

#endif
