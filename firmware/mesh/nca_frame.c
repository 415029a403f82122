/* nca_frame.c - COBS framing with CRC-16/CCITT-FALSE (nca_frame.h). */
#include "nca_frame.h"
#include "nca_mesh_ids.h"
#include "nca_rom.h"

/* CRC-16/CCITT-FALSE with a 512-byte table in program memory: every byte of every
 * frame passes through it twice (sender and receiver), and the table is about four
 * times faster on the AVR than the shift formula. */
static const uint16_t crc_table[256] NCA_ROM = NCA_CRC16_TABLE;

uint16_t nca_crc16(const uint8_t *p, uint8_t n, uint16_t crc)
{
    while (n--)
        crc = (uint16_t)((crc << 8) ^ (uint16_t)NCA_RD16(&crc_table[(uint8_t)(crc >> 8) ^ *p++]));
    return crc;
}

void nca_frame_rx_reset(nca_frame_rx_t *rx)
{
    rx->len = 0;
    rx->left = 0;
    rx->code = 0;
    rx->bad = 0;
}

static void put(nca_frame_rx_t *rx, uint8_t b)
{
    if (rx->len >= NCA_FRAME_MAX)
        rx->bad = 1;
    else
        rx->buf[rx->len++] = b;
}

uint8_t nca_frame_rx(nca_frame_rx_t *rx, uint8_t byte)
{
    uint8_t r;
    if (byte == 0) {                       /* the delimiter: a frame ends */
        uint16_t crc;
        if (rx->code == 0) {               /* nothing since the last delimiter */
            nca_frame_rx_reset(rx);
            return NCA_FRAME_MORE;
        }
        r = NCA_FRAME_BAD;
        if (!rx->bad && rx->left == 0 && rx->len >= 3) {
            crc = (uint16_t)(rx->buf[rx->len - 2] | ((uint16_t)rx->buf[rx->len - 1] << 8));
            if (nca_crc16(rx->buf, (uint8_t)(rx->len - 2), 0xFFFF) == crc) {
                r = NCA_FRAME_OK;
                rx->len = (uint8_t)(rx->len - 2);
            }
        }
        rx->left = 0;
        rx->code = 0;
        rx->bad = 0;
        if (r != NCA_FRAME_OK)
            rx->len = 0;
        return r;
    }
    if (rx->code == 0 || rx->left == 0) {
        if (rx->code == 0)                 /* a new frame */
            rx->len = 0;
        else if (rx->code != 0xFF)         /* the zero that ended the previous block */
            put(rx, 0);
        rx->code = byte;
        rx->left = (uint8_t)(byte - 1);
    } else {
        put(rx, byte);
        rx->left--;
    }
    return NCA_FRAME_MORE;
}

uint8_t nca_frame_encode(const uint8_t *payload, uint8_t n, uint8_t *out)
{
    uint8_t crc_bytes[2], i, code_at = 0, len = 1, code = 1;
    uint16_t crc = nca_crc16(payload, n, 0xFFFF);
    crc_bytes[0] = (uint8_t)crc;
    crc_bytes[1] = (uint8_t)(crc >> 8);
    for (i = 0; i < (uint8_t)(n + 2); i++) {
        uint8_t b = i < n ? payload[i] : crc_bytes[i - n];
        if (b == 0) {
            out[code_at] = code;
            code_at = len++;
            code = 1;
        } else {
            out[len++] = b;
            if (++code == 0xFF) {          /* never reached: frames are under 254 bytes */
                out[code_at] = code;
                code_at = len++;
                code = 1;
            }
        }
    }
    out[code_at] = code;
    out[len++] = 0;
    return len;
}
