/* nca_link.c - see nca_link.h and firmware/PROTOCOL.md.
 *
 * Slots: each slot holds the genome at NCA_SLOT_GENOME_OFFSET and its 32-byte
 * header (the commit record) at NCA_SLOT_HEADER_OFFSET.  A flash erases the
 * inactive slot, writes the genome in order, verifies its CRC32 and only then
 * writes the header with generation = active + 1.  At start-up the valid slot
 * (header CRC, magic, format, genome CRC32, shifts in range, and no overflow
 * possible in the cell: genome_ok) with the highest generation is active, so an interrupted or corrupt flash leaves the previous
 * genome running. */
#include "nca_link.h"
#include "nca_cell.h"
#include "nca_store.h"

/* reply payload sizes: type, seq and status, then the data (PROTOCOL.md), then the CRC */
#define REPLY_HEAD 3
#define REPLY_CRC 2
#define HELLO_DATA 25                           /* boards/protocol.py HELLO_BYTES */
#define STEP_DATA (1 + NCA_LINK_STATE_BYTES)    /* STEP, CELL: result, own state */
#define ACTIVATE_DATA 9                         /* slot u8, model hash u32, generation u32 */
#define TX_BUFFER 32

/* every reply fits the reply buffer, which send_cobs sends as COBS blocks of at most 254
 * bytes and whose length is a uint8_t */
NCA_STATIC_ASSERT(tx_holds_hello, TX_BUFFER >= REPLY_HEAD + HELLO_DATA + REPLY_CRC);
NCA_STATIC_ASSERT(tx_holds_step, TX_BUFFER >= REPLY_HEAD + STEP_DATA + REPLY_CRC);
NCA_STATIC_ASSERT(tx_holds_activate, TX_BUFFER >= REPLY_HEAD + ACTIVATE_DATA + REPLY_CRC);
NCA_STATIC_ASSERT(tx_holds_state, TX_BUFFER >= REPLY_HEAD + NCA_LINK_STATE_BYTES + REPLY_CRC);
NCA_STATIC_ASSERT(tx_holds_u32, TX_BUFFER >= REPLY_HEAD + 4 + REPLY_CRC);
NCA_STATIC_ASSERT(tx_is_one_cobs_block, TX_BUFFER <= 254);
/* the receive buffer holds the largest request with its CRC, and rx_len (uint8_t) indexes it */
NCA_STATIC_ASSERT(rx_holds_max_payload, NCA_LINK_RX_BUFFER >= NCA_LINK_MAX_PAYLOAD + 2);
NCA_STATIC_ASSERT(rx_len_is_uint8, NCA_LINK_RX_BUFFER <= 255);
NCA_STATIC_ASSERT(max_payload_holds_cell,
                  NCA_LINK_MAX_PAYLOAD >= 2 + NCA_LINK_STATE_BYTES + 8 * 16 + NCA_LINK_STEP_BODY);
NCA_STATIC_ASSERT(max_payload_holds_write, NCA_LINK_MAX_PAYLOAD >= 2 + 4 + NCA_LINK_CHUNK);
NCA_STATIC_ASSERT(max_payload_holds_begin, NCA_LINK_MAX_PAYLOAD >= 2 + NCA_HEADER_BYTES + 5);
NCA_STATIC_ASSERT(state_is_channels_and_remainders,
                  NCA_LINK_STATE_BYTES == NCA_CHANNELS + NCA_RESID_BYTES && NCA_RESID_BYTES == NCA_CHANNELS / 2);

static nca_cell_t cell;
static uint8_t rx[NCA_LINK_RX_BUFFER];
static uint8_t rx_len;
static uint8_t cobs_left;        /* bytes left in the current COBS block */
static uint8_t cobs_code;        /* the block's code byte; 0 before the first */
static uint8_t rx_err;           /* NCA_ERR_FRAME_* once the frame is unreadable */
static uint8_t tx[TX_BUFFER];    /* the last reply payload (with its CRC) */
static uint8_t tx_len;
static uint8_t last_type, last_seq, have_last;
static uint16_t last_crc;

/* the flash session on top of the store's update: its id, for a resuming BEGIN */
static uint32_t session;

/* ------------------------------------------------------------ helpers */
static uint16_t crc16_byte(uint16_t crc, uint8_t b)
{
    uint8_t i;
    crc ^= (uint16_t)((uint16_t)b << 8);
    for (i = 0; i < 8; i++)
        crc = (uint16_t)((crc & 0x8000u) ? (uint16_t)(crc << 1) ^ 0x1021u : (uint16_t)(crc << 1));
    return crc;
}

static uint16_t crc16(const uint8_t *p, uint8_t n)
{
    uint16_t crc = 0xFFFFu;
    while (n--)
        crc = crc16_byte(crc, *p++);
    return crc;
}

int8_t nca_link_active_slot(void)
{
    return nca_store_active();
}

/* remainders that a genome without error feedback would count */
static void drop_resid(void)
{
    uint8_t s;
    if (!nca_rt.ef_bits)
        for (s = 0; s < NCA_RESID_BYTES; s++)
            cell.resid[s] = 0;
}

const int8_t *nca_link_state(void)
{
    return cell.state;
}

/* ------------------------------------------------------------ output */
static void send_cobs(const uint8_t *p, uint8_t n)
{
    uint8_t i = 0;
    while (i <= n) {   /* one block per zero (the CRC'd payload never exceeds 254 bytes) */
        uint8_t j = i;
        while (j < n && p[j] != 0)
            j++;
        nca_link_putc((uint8_t)(j - i + 1));
        while (i < j)
            nca_link_putc(p[i++]);
        i++;   /* skip the zero (or step past the end) */
    }
    nca_link_putc(0);
}

static void finish_reply(void)
{
    uint16_t crc = crc16(tx, tx_len);
    tx[tx_len++] = (uint8_t)crc;
    tx[tx_len++] = (uint8_t)(crc >> 8);
    send_cobs(tx, tx_len);
}

static void send_nak(uint8_t code)
{
    uint8_t p[5];
    uint16_t crc;
    p[0] = NCA_MSG_NAK;
    p[1] = 0;
    p[2] = code;
    crc = crc16(p, 3);
    p[3] = (uint8_t)crc;
    p[4] = (uint8_t)(crc >> 8);
    send_cobs(p, 5);
}

/* ------------------------------------------------------------ commands */
static uint8_t reply_u32(uint8_t status, uint32_t v)
{
    nca_wr32(tx + tx_len, v);
    tx_len = (uint8_t)(tx_len + 4);
    return status;
}

static uint8_t cmd_hello(void)
{
    uint8_t *p = tx + tx_len;
    int8_t active = nca_store_active();
    p[0] = NCA_LINK_PROTOCOL_VERSION;
    p[1] = NCA_LINK_FIRMWARE_VERSION;
    p[2] = NCA_LINK_BOARD;
    p[3] = NCA_FORMAT_VERSION;
    p[4] = (uint8_t)(NCA_LINK_MAX_PAYLOAD & 0xFF);
    p[5] = (uint8_t)(NCA_LINK_MAX_PAYLOAD >> 8);
    nca_wr32(p + 6, NCA_GENOME_BYTES);
    p[10] = active < 0 ? 0xFF : (uint8_t)active;
    nca_wr32(p + 11, nca_store_hash());
    nca_wr32(p + 15, nca_store_generation());
    p[19] = active < 0 ? 0 : nca_rt.grad_shift;
    p[20] = active < 0 ? 0 : nca_rt.hidden_shift;
    p[21] = active < 0 ? 0 : nca_rt.bias_shift;
    p[22] = active < 0 ? 0 : nca_rt.acc_shift;
    p[23] = active < 0 ? 0 : nca_rt.ef_bits;
    p[24] = nca_slot_writer();
    tx_len = (uint8_t)(tx_len + HELLO_DATA);
    return NCA_OK;
}

static uint8_t cmd_begin(const uint8_t *b, uint8_t n)
{
    uint8_t i, same = 1;
    uint32_t id;
    const uint8_t *h = nca_store_update_header();
    if (n != NCA_HEADER_BYTES + 5)
        return NCA_ERR_LENGTH;
    if (!nca_store_header_ok(b))
        return NCA_ERR_FORMAT;
    if (nca_slot_writer() == NCA_WRITER_NONE)
        return NCA_ERR_NO_WRITER;
    id = nca_rd32(b + NCA_HEADER_BYTES);
    for (i = 0; i < NCA_HEADER_BYTES; i++)
        if (h[i] != b[i])
            same = 0;
    if (nca_store_open() && same && session == id && (b[NCA_HEADER_BYTES + 4] & NCA_SESSION_RESUME))
        return reply_u32(NCA_OK, nca_store_next());   /* resume (or a duplicated BEGIN): keep what is written */
    nca_store_begin(b);
    session = id;
    return reply_u32(NCA_OK, 0);
}

static uint8_t cmd_write(const uint8_t *b, uint8_t n)
{
    uint8_t r;
    if (!nca_store_open())
        return NCA_ERR_NO_SESSION;
    if (n < 5)
        return NCA_ERR_LENGTH;
    r = nca_store_write(nca_rd32(b), b + 4, (uint8_t)(n - 4));
    return reply_u32(r, nca_store_next());
}

static uint8_t cmd_verify(void)
{
    uint32_t crc;
    uint8_t r;
    if (!nca_store_open())
        return NCA_ERR_NO_SESSION;
    r = nca_store_verify(&crc);
    return reply_u32(r, crc);
}

static uint8_t cmd_activate(void)
{
    uint8_t r;
    if (!nca_store_open())
        return NCA_ERR_NO_SESSION;
    r = nca_store_commit(nca_store_active() < 0 ? 1 : nca_store_generation() + 1);
    if (r == NCA_ERR_NOT_VERIFIED)
        return r;
    drop_resid();
    if (r != NCA_OK)
        return NCA_ERR_FLASH;
    tx[tx_len++] = (uint8_t)nca_store_active();
    nca_wr32(tx + tx_len, nca_store_hash());
    tx_len = (uint8_t)(tx_len + 4);
    return reply_u32(NCA_OK, nca_store_generation());
}

static void copy_in(int8_t *dst, const uint8_t *src, uint8_t n)
{
    while (n--)
        *dst++ = (int8_t)*src++;
}

/* a cell's own state (NCA_LINK_STATE_BYTES: the int8 channels, then the packed
 * remainders), which must be zero unless the genome has error feedback */
static uint8_t state_in(const uint8_t *src)
{
    uint8_t i;
    if (!nca_rt.ef_bits)
        for (i = 0; i < NCA_RESID_BYTES; i++)
            if (src[NCA_CHANNELS + i])
                return NCA_ERR_ARG;
    copy_in(cell.state, src, NCA_CHANNELS);
    for (i = 0; i < NCA_RESID_BYTES; i++)
        cell.resid[i] = src[NCA_CHANNELS + i];
    return NCA_OK;
}

static void state_out(void)
{
    uint8_t i;
    for (i = 0; i < NCA_CHANNELS; i++)
        tx[tx_len++] = (uint8_t)cell.state[i];
    for (i = 0; i < NCA_RESID_BYTES; i++)
        tx[tx_len++] = cell.resid[i];
}

/* STEP, and CELL with cell_in (its state and neighbour states): the body is
 * checked before anything is copied, so a refused CELL leaves the cell as it was */
static uint8_t cmd_step(const uint8_t *b, const uint8_t *cell_in)
{
    nca_rotation_t rot;
    uint8_t op = b[0], fire = b[1], r = 3, rgb[3];
    if (op > 1 || fire > 1 || b[2] > 1)
        return NCA_ERR_ARG;
    if (nca_store_active() < 0)
        return NCA_ERR_NO_GENOME;
    if (cell_in) {
        if (state_in(cell_in) != NCA_OK)
            return NCA_ERR_ARG;
        copy_in(cell.inbox, cell_in + NCA_LINK_STATE_BYTES, NCA_NEIGHBOURS * NCA_CHANNELS);
    }
    rot.cos_q14 = (int16_t)(uint16_t)(b[3] | ((uint16_t)b[4] << 8));
    rot.sin_q14 = (int16_t)(uint16_t)(b[5] | ((uint16_t)b[6] << 8));
    if (fire) {
        if (op == 0) {
            r = nca_cell_update(&cell, b[2] ? &rot : 0);
        } else {
            nca_cell_tentative(&cell, b[2] ? &rot : 0);
            r = NCA_UPDATED;
        }
    }
    tx[tx_len++] = r;
    state_out();
    nca_cell_rgb(cell.state, rgb);
    nca_link_led(rgb);
    return NCA_OK;
}

static uint8_t dispatch(uint8_t type, const uint8_t *b, uint8_t n)
{
    switch (type) {
    case NCA_MSG_HELLO:
        return n ? NCA_ERR_LENGTH : cmd_hello();
    case NCA_MSG_FLASH_BEGIN:
        return cmd_begin(b, n);
    case NCA_MSG_FLASH_WRITE:
        return cmd_write(b, n);
    case NCA_MSG_FLASH_VERIFY:
        return n ? NCA_ERR_LENGTH : cmd_verify();
    case NCA_MSG_FLASH_ACTIVATE:
        return n ? NCA_ERR_LENGTH : cmd_activate();
    case NCA_MSG_STATE_GET:
        if (n)
            return NCA_ERR_LENGTH;
        state_out();
        return NCA_OK;
    case NCA_MSG_STATE_SET:
        if (n != NCA_LINK_STATE_BYTES)
            return NCA_ERR_LENGTH;
        return state_in(b);
    case NCA_MSG_NEIGHBOURS_SET:
        if (n != NCA_NEIGHBOURS * NCA_CHANNELS)
            return NCA_ERR_LENGTH;
        copy_in(cell.inbox, b, NCA_NEIGHBOURS * NCA_CHANNELS);
        return NCA_OK;
    case NCA_MSG_STEP:
        return n != NCA_LINK_STEP_BODY ? NCA_ERR_LENGTH : cmd_step(b, 0);
    case NCA_MSG_CELL:
        if (n != NCA_LINK_STATE_BYTES + NCA_NEIGHBOURS * NCA_CHANNELS + NCA_LINK_STEP_BODY)
            return NCA_ERR_LENGTH;
        return cmd_step(b + NCA_LINK_STATE_BYTES + NCA_NEIGHBOURS * NCA_CHANNELS, b);
    case NCA_MSG_RGB:
        if (n)
            return NCA_ERR_LENGTH;
        nca_cell_rgb(cell.state, tx + tx_len);
        tx_len = (uint8_t)(tx_len + 3);
        return NCA_OK;
    case NCA_MSG_RESET:
        if (n)
            return NCA_ERR_LENGTH;
        nca_link_init();
        return NCA_OK;
    default:
        return NCA_ERR_UNKNOWN;
    }
}

static void end_frame(void)
{
    uint8_t type, seq, status;
    uint16_t crc = 0;
    if (cobs_code == 0 && !rx_err) {        /* an empty frame (a lone delimiter): no reply */
        have_last = 0;                      /* a host opening a session sends one: a request */
        return;                             /* equal to the last one is then a new one */
    }
    if (!rx_err && cobs_left)
        rx_err = NCA_ERR_FRAME_COBS;
    if (!rx_err && rx_len < 4)
        rx_err = NCA_ERR_FRAME_SHORT;
    if (!rx_err) {
        crc = (uint16_t)(rx[rx_len - 2] | ((uint16_t)rx[rx_len - 1] << 8));
        if (crc16(rx, (uint8_t)(rx_len - 2)) != crc)
            rx_err = NCA_ERR_FRAME_CRC;
    }
    if (rx_err) {
        send_nak(rx_err);
        return;
    }
    type = rx[0];
    seq = rx[1];
    if (have_last && type == last_type && seq == last_seq && crc == last_crc) {
        send_cobs(tx, tx_len);               /* a repeated request: the same reply, not run twice */
        return;
    }
    tx_len = 0;
    tx[tx_len++] = (uint8_t)(type | NCA_REPLY_BIT);
    tx[tx_len++] = seq;
    tx[tx_len++] = 0;
    status = dispatch(type, rx + 2, (uint8_t)(rx_len - 4));
    tx[2] = status;
    finish_reply();
    have_last = type != NCA_MSG_RESET;
    last_type = type;
    last_seq = seq;
    last_crc = crc;
}

static void frame_reset(void)
{
    rx_len = 0;
    cobs_left = 0;
    cobs_code = 0;
    rx_err = 0;
}

void nca_link_rx(uint8_t b)
{
    if (b == 0) {
        end_frame();
        frame_reset();
        return;
    }
    if (rx_err)
        return;
    if (cobs_left == 0) {                    /* a code byte */
        if (cobs_code != 0 && cobs_code != 0xFF) {
            if (rx_len >= NCA_LINK_RX_BUFFER) {
                rx_err = NCA_ERR_FRAME_LONG;
                return;
            }
            rx[rx_len++] = 0;
        }
        cobs_code = b;
        cobs_left = (uint8_t)(b - 1);
        return;
    }
    if (rx_len >= NCA_LINK_RX_BUFFER) {
        rx_err = NCA_ERR_FRAME_LONG;
        return;
    }
    rx[rx_len++] = b;
    cobs_left--;
}

void nca_link_init(void)
{
    uint16_t i;
    uint8_t *p = (uint8_t *)&cell, rgb[3];
    for (i = 0; i < sizeof cell; i++)
        p[i] = 0;
    nca_cell_rgb(cell.state, rgb);
    nca_link_led(rgb);
    nca_store_close();
    have_last = 0;
    frame_reset();
    nca_store_scan();
    drop_resid();
}
