/* harness.h - the UART test harness shared by the board ports (not part of the cell core).
 *
 * Requests (host -> board), answered in order:
 *   'U' rot(1) cos(2) sin(2) state(16) inbox(128)  -> result(1) state(16) ticks(4)
 *   'T' rot(1) cos(2) sin(2) state(16) inbox(128)  -> state(16) ticks(4)   (no alive rule)
 *   'C' state(16)                                  -> rgb(3)
 *   'I'                                            -> "NCA" version(1) model hash(4)
 *   'Q'                                            -> the board stops (the emulator exits)
 * With error feedback (NCA_HAS_RESID) every state(16) is followed by its 8 bytes of
 * nibbles (nca_cell_t.resid), in requests and answers.
 * Multi-byte values are little-endian; rot = 0 means no rotation (NULL).  ticks
 * is the port's timer over the cell call (0 where the emulator measures instead).
 */
#ifndef NCA_HARNESS_H
#define NCA_HARNESS_H
#include <stdint.h>

void port_init(void);
uint8_t port_getc(void);
void port_putc(uint8_t c);
void port_mark_start(void);
uint32_t port_mark_stop(void);   /* ticks since port_mark_start */
void port_exit(void);

void harness_run(void);
#endif
