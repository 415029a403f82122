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

#include "nca_store.h"   /* NCA_STATIC_ASSERT, the slot hooks the port provides */

/* ---- provided by the port (and nca_store.h's slot hooks) */
void nca_link_putc(uint8_t c);                      /* send one byte */
/* show the cell's colour (r, g, b 0..255: nca_cell_rgb), after every STEP/CELL and at init */
void nca_link_led(const uint8_t *rgb);

/* ---- the link */
void nca_link_init(void);          /* reset the parser and the cell, pick the active slot */
void nca_link_rx(uint8_t byte);    /* one received byte; a complete frame is answered at once */
int8_t nca_link_active_slot(void); /* 0, 1, or -1 when no valid genome is in flash */
const int8_t *nca_link_state(void); /* the cell's own int8 state (NCA_CHANNELS), for a port's LED */

#endif
