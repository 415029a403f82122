/* nca_frame.h - the framing every link of the cell boards uses:
 * COBS(payload || crc16_le) || 0x00, CRC-16/CCITT-FALSE (boards/protocol.py).
 * A receiver keeps one nca_frame_rx_t per port, so each UART has its own parser
 * and a garbled byte on one link never spoils a frame on another. */
#ifndef NCA_FRAME_H
#define NCA_FRAME_H
#include <stdint.h>

#define NCA_FRAME_MAX 142         /* decoded bytes (payload + CRC) a parser holds: a CHUNK */

typedef struct {
    uint8_t buf[NCA_FRAME_MAX];
    uint8_t len;                  /* decoded bytes so far */
    uint8_t left;                 /* bytes left in the current COBS block (0: a code byte is next) */
    uint8_t code;                 /* the current block's code (0: none yet) */
    uint8_t bad;                  /* the frame overflowed or broke the COBS rules */
} nca_frame_rx_t;

/* nca_frame_rx results */
#define NCA_FRAME_MORE 0          /* inside a frame */
#define NCA_FRAME_OK 1            /* a frame ended: its payload is buf[0 .. len) */
#define NCA_FRAME_BAD 2           /* a frame ended unreadable (COBS, length or CRC) */

uint16_t nca_crc16(const uint8_t *p, uint8_t n, uint16_t crc);
void nca_frame_rx_reset(nca_frame_rx_t *rx);
/* one received byte; on NCA_FRAME_OK, rx->len is the payload's length (CRC removed) */
uint8_t nca_frame_rx(nca_frame_rx_t *rx, uint8_t byte);
/* payload (n <= NCA_FRAME_MAX - 2 bytes) -> out: COBS(payload || crc) || 0; returns its length */
uint8_t nca_frame_encode(const uint8_t *payload, uint8_t n, uint8_t *out);
/* the most bytes nca_frame_encode writes for n payload bytes */
#define NCA_FRAME_ENCODED(n) ((n) + 2 + 2 + 1)

#endif
