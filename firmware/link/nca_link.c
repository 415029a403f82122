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

nca_runtime_t nca_rt;

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
/* the genome and the slot layout: offsets are uint16_t, the header follows the genome */
NCA_STATIC_ASSERT(genome_type_is_the_format, sizeof(nca_genome_t) == NCA_GENOME_BYTES);
NCA_STATIC_ASSERT(header_after_genome, NCA_SLOT_HEADER_OFFSET >= NCA_SLOT_GENOME_OFFSET + NCA_GENOME_BYTES);
NCA_STATIC_ASSERT(header_in_slot, NCA_SLOT_HEADER_OFFSET + NCA_HEADER_BYTES <= NCA_SLOT_BYTES);
NCA_STATIC_ASSERT(slot_offsets_are_uint16, NCA_SLOT_BYTES <= 65535u);
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

static int8_t active = -1;
static uint32_t active_gen, active_hash;

/* The flash session.  verified, slot, next and header mean something only while
 * open: the BEGIN that opens a session sets them, so closing one is open = 0. */
static struct {
    uint8_t open, verified, slot;
    uint32_t session, next;
    uint8_t header[NCA_HEADER_BYTES];
} ses;

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

static uint32_t crc32_byte(uint32_t crc, uint8_t b)
{
    uint8_t i;
    crc ^= b;
    for (i = 0; i < 8; i++)
        crc = (crc & 1u) ? (crc >> 1) ^ 0xEDB88320uL : crc >> 1;
    return crc;
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint8_t in_range(uint8_t v, uint8_t lo, uint8_t hi)
{
    return (uint8_t)((int16_t)v >= (int16_t)lo && (int16_t)v <= (int16_t)hi);
}

/* header layout (boards/protocol.py HEADER_STRUCT) */
#define H_MAGIC 0
#define H_IVER 4
#define H_FVER 5
#define H_SHIFTS 6
#define H_EF 10
#define H_LEN 12
#define H_HASH 16
#define H_GCRC 20
#define H_GEN 24
#define H_HCRC 28
NCA_STATIC_ASSERT(header_layout, H_HCRC + 4 == NCA_HEADER_BYTES);

static uint32_t crc32_mem(const uint8_t *p, uint8_t n)
{
    uint32_t crc = 0xFFFFFFFFuL;
    while (n--)
        crc = crc32_byte(crc, *p++);
    return ~crc;
}

/* a header that an image may carry (the generation is not checked here) */
static uint8_t header_ok(const uint8_t *h)
{
    return (uint8_t)(rd32(h + H_MAGIC) == NCA_IMAGE_MAGIC && h[H_IVER] == NCA_IMAGE_VERSION
                     && h[H_FVER] == NCA_FORMAT_VERSION && rd32(h + H_LEN) == NCA_GENOME_BYTES
                     && in_range(h[H_SHIFTS], NCA_GRAD_SHIFT_LO, NCA_GRAD_SHIFT_HI)
                     && in_range(h[H_SHIFTS + 1], NCA_HIDDEN_SHIFT_LO, NCA_HIDDEN_SHIFT_HI)
                     && in_range(h[H_SHIFTS + 2], NCA_BIAS_SHIFT_LO, NCA_BIAS_SHIFT_HI)
                     && in_range(h[H_SHIFTS + 3], NCA_ACC_SHIFT_LO, NCA_ACC_SHIFT_HI)
                     && (h[H_EF] == 0 || h[H_EF] == NCA_EF_BITS_ON)
                     && crc32_mem(h, H_HCRC) == rd32(h + H_HCRC));
}

/* The slot's start.  Slot bytes are read the way the core reads the genome
 * (NCA_RDU8 from nca_slot_genome: LPM on AVR, a plain load elsewhere), so the
 * ports only say where a slot is.  No volatile is needed: flash only changes
 * inside the ports' out-of-line erase and write calls. */
static const uint8_t *slot_bytes(uint8_t slot)
{
    return (const uint8_t *)(const void *)nca_slot_genome(slot) - NCA_SLOT_GENOME_OFFSET;
}

static uint32_t slot_genome_crc(uint8_t slot)
{
    const uint8_t *g = slot_bytes(slot) + NCA_SLOT_GENOME_OFFSET;
    uint32_t crc = 0xFFFFFFFFuL;
    uint16_t i;
    for (i = 0; i < NCA_GENOME_BYTES; i++)
        crc = crc32_byte(crc, NCA_RDU8(g + i));
    return ~crc;
}

/* Whether the cell core can run the slot's genome, with the shifts of header h, without
 * overflowing anything on any input: a CRC only says the genome arrived as sent, not that
 * the quantiser made it.  The proof, step by step through core/nca_cell.c, for any genome
 * bytes, any int8 state and neighbour bytes, and any Q14 rotation the link passes on, in
 * 16-bit int (AVR; the bounds hold a fortiori for 32-bit int):
 *  - perception: |Gx|, |Gy| <= 4 * 255 = 1,020 (int16); rotated, |cos*Gx - sin*Gy| <= 2^15 *
 *    2,040 < 2^27 (int32), then >> 14: <= 4,081 (int16); + 2^(S-1), S <= 4 (header): int16.
 *  - first layer: each product int8 x int8 <= 2^14 (int16); 48 of them <= 786,432 < 2^23
 *    (__int24 on AVR); + 2^(K-1), K <= 22 (header): < 2^23.  b1 << B, B <= 7 (header): <= 2^14.
 *  - second layer: w * h, h in 0..255: <= 32,640 (int16); t = 4 of them <= 130,560 < 2^23.
 *  - the int16 accumulator acc_m = b2_m + sum over the 32 groups g of floor(t_gm / 2^R):
 *    |floor(t_gm / 2^R)| <= (255 * sum_u |W2[g][u][m]| >> R) + 1, so every partial sum (and
 *    each (int16_t) cast of a term) fits int16 when
 *        |b2_m| + sum_g ((255 * sum_u |W2[g][u][m]|) >> R) + 1) <= 32,767,
 *    the bound codegen/quantize.py proves for every genome it makes (_acc_bound); checked
 *    here per output with 16- and 32-bit unsigned arithmetic, each of the 2,048 W2 bytes
 *    read once: 36,700 cycles (2.3 ms at 16 MHz) on the ATmega328P, whatever R is.  This
 *    is the one bound the header's shift ranges do not already give.
 *  - output: T (low 5 bits of out_mt) in 1..30 (5..30 with error feedback: the core shifts
 *    by T - 1 - ef) and M in [2^14, 2^15): |acc * M| + 2^(T-1) < 2^30 + 2^29 (int32).
 *  - error feedback: dx clamped to +-4096, so 16 q + r + dx <= 6,159 (int16). */
static uint8_t abs8(const uint8_t *p)
{
    int8_t x = (int8_t)NCA_RDU8(p);
    return (uint8_t)(x < 0 ? -x : x);
}

static uint8_t genome_ok(uint8_t slot, const uint8_t *h)
{
    const uint8_t *g = slot_bytes(slot) + NCA_SLOT_GENOME_OFFSET;
    const uint8_t *b2 = g + NCA_GROUPS * NCA_GROUP_BYTES, *mt = b2 + 2 * NCA_CHANNELS;
    uint8_t ef = h[H_EF], r = (uint8_t)(h[H_SHIFTS + 3] - 1), m, j;
    uint16_t mask = (uint16_t)((1u << r) - 1u);
    for (m = 0; m < NCA_CHANNELS; m++) {
        uint16_t b = (uint16_t)(NCA_RDU8(b2 + 2 * m) | ((uint16_t)NCA_RDU8(b2 + 2 * m + 1) << 8));
        uint32_t sum = 0, rem = 0;
        const uint8_t *w = g + NCA_GROUP_W1 + 4 + 4 * m;                /* W2[g][.][m] of group 0 */
        if (!in_range((uint8_t)(NCA_RDU8(mt + 2 * m) & 31u), (uint8_t)(NCA_OUT_SHIFT_LO + ef), NCA_OUT_SHIFT_HI))
            return 0;
        if (!in_range(NCA_RDU8(mt + 2 * m + 1), NCA_OUT_MULT_HIGH_LO, NCA_OUT_MULT_HIGH_HI))
            return 0;
        for (j = 0; j < NCA_GROUPS; j++, w += NCA_GROUP_BYTES) {
            uint16_t s = (uint16_t)((uint16_t)abs8(w) + abs8(w + 1) + abs8(w + 2) + abs8(w + 3));   /* <= 512 */
            /* v = (255 s) >> 1 = 128 s - ceil(s / 2) <= 65,280: exact modulo 2^16 even where
             * 128 s (s = 512) wraps; (255 s) >> R = v >> (R - 1) */
            uint16_t v = (uint16_t)((uint16_t)(s << 7) - ((s + 1u) >> 1));
            sum += v;
            rem += v & mask;
        }
        /* sum_g (v_g >> r) = (sum_g v_g - sum_g (v_g mod 2^r)) >> r: one shift per output */
        sum = ((sum - rem) >> r) + NCA_GROUPS + (b & 0x8000u ? 0x10000uL - b : b);   /* + |b2_m| */
        if (sum > 32767u)
            return 0;
    }
    return 1;
}

static void slot_header(uint8_t slot, uint8_t *h)
{
    const uint8_t *f = slot_bytes(slot) + NCA_SLOT_HEADER_OFFSET;
    uint8_t i;
    for (i = 0; i < NCA_HEADER_BYTES; i++)
        h[i] = NCA_RDU8(f + i);
}

static uint8_t slot_valid(uint8_t slot, uint8_t *h)
{
    slot_header(slot, h);
    return (uint8_t)(header_ok(h) && rd32(h + H_GEN) != 0xFFFFFFFFuL && genome_ok(slot, h)
                     && slot_genome_crc(slot) == rd32(h + H_GCRC));
}

static void scan_slots(void)
{
    uint8_t h[NCA_HEADER_BYTES], s;
    active = -1;
    active_gen = 0;
    active_hash = 0;
    nca_rt.genome = 0;
    nca_rt.ef_bits = 0;
    for (s = 0; s < 2; s++) {
        if (slot_valid(s, h) && (active < 0 || rd32(h + H_GEN) > active_gen)) {
            active = (int8_t)s;
            active_gen = rd32(h + H_GEN);
            active_hash = rd32(h + H_HASH);
            nca_rt.grad_shift = h[H_SHIFTS];
            nca_rt.hidden_shift = h[H_SHIFTS + 1];
            nca_rt.bias_shift = h[H_SHIFTS + 2];
            nca_rt.acc_shift = h[H_SHIFTS + 3];
            nca_rt.ef_bits = h[H_EF];
            nca_rt.genome = nca_slot_genome(s);
        }
    }
    if (!nca_rt.ef_bits)    /* remainders that a genome without error feedback would count */
        for (s = 0; s < NCA_RESID_BYTES; s++)
            cell.resid[s] = 0;
}

int8_t nca_link_active_slot(void)
{
    return active;
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
    wr32(tx + tx_len, v);
    tx_len = (uint8_t)(tx_len + 4);
    return status;
}

static uint8_t cmd_hello(void)
{
    uint8_t *p = tx + tx_len;
    p[0] = NCA_LINK_PROTOCOL_VERSION;
    p[1] = NCA_LINK_FIRMWARE_VERSION;
    p[2] = NCA_LINK_BOARD;
    p[3] = NCA_FORMAT_VERSION;
    p[4] = (uint8_t)(NCA_LINK_MAX_PAYLOAD & 0xFF);
    p[5] = (uint8_t)(NCA_LINK_MAX_PAYLOAD >> 8);
    wr32(p + 6, NCA_GENOME_BYTES);
    p[10] = active < 0 ? 0xFF : (uint8_t)active;
    wr32(p + 11, active_hash);
    wr32(p + 15, active_gen);
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
    uint32_t session;
    if (n != NCA_HEADER_BYTES + 5)
        return NCA_ERR_LENGTH;
    if (!header_ok(b))
        return NCA_ERR_FORMAT;
    if (nca_slot_writer() == NCA_WRITER_NONE)
        return NCA_ERR_NO_WRITER;
    session = rd32(b + NCA_HEADER_BYTES);
    for (i = 0; i < NCA_HEADER_BYTES; i++)
        if (ses.header[i] != b[i])
            same = 0;
    if (ses.open && same && ses.session == session && (b[NCA_HEADER_BYTES + 4] & NCA_SESSION_RESUME))
        return reply_u32(NCA_OK, ses.next);     /* resume (or a duplicated BEGIN): keep what is written */
    ses.verified = 0;
    ses.slot = (uint8_t)(active == 0 ? 1 : 0);
    nca_slot_erase(ses.slot);
    for (i = 0; i < NCA_HEADER_BYTES; i++)
        ses.header[i] = b[i];
    ses.session = session;
    ses.next = 0;
    ses.open = 1;
    return reply_u32(NCA_OK, 0);
}

static uint8_t cmd_write(const uint8_t *b, uint8_t n)
{
    const uint8_t *f;
    uint32_t off, want;
    uint8_t len, i;
    if (!ses.open)
        return NCA_ERR_NO_SESSION;
    if (n < 5)
        return NCA_ERR_LENGTH;
    off = rd32(b);
    len = (uint8_t)(n - 4);
    if (off % NCA_LINK_CHUNK != 0 || off >= NCA_GENOME_BYTES)
        return reply_u32(NCA_ERR_ARG, ses.next);
    if (off > ses.next)
        return reply_u32(NCA_ERR_OFFSET, ses.next);
    want = NCA_GENOME_BYTES - off < NCA_LINK_CHUNK ? NCA_GENOME_BYTES - off : NCA_LINK_CHUNK;
    if (len != want)
        return reply_u32(NCA_ERR_LENGTH, ses.next);
    if (off < ses.next)                          /* already written: a duplicate */
        return reply_u32(NCA_OK, ses.next);
    nca_slot_write(ses.slot, (uint16_t)(NCA_SLOT_GENOME_OFFSET + off), b + 4, len);
    f = slot_bytes(ses.slot) + NCA_SLOT_GENOME_OFFSET + off;
    for (i = 0; i < len; i++)
        if (NCA_RDU8(f + i) != b[4 + i])
            return reply_u32(NCA_ERR_FLASH, ses.next);
    ses.next = off + len;
    return reply_u32(NCA_OK, ses.next);
}

static uint8_t cmd_verify(void)
{
    uint32_t crc;
    if (!ses.open)
        return NCA_ERR_NO_SESSION;
    if (ses.next != NCA_GENOME_BYTES)
        return reply_u32(NCA_ERR_INCOMPLETE, ses.next);
    crc = slot_genome_crc(ses.slot);
    if (crc != rd32(ses.header + H_GCRC))
        return reply_u32(NCA_ERR_VERIFY, crc);
    if (!genome_ok(ses.slot, ses.header))
        return reply_u32(NCA_ERR_FORMAT, crc);
    /* stays valid: only a complete genome verifies, and a WRITE of a chunk already
     * written is acknowledged without writing */
    ses.verified = 1;
    return reply_u32(NCA_OK, crc);
}

static uint8_t cmd_activate(void)
{
    uint8_t h[NCA_HEADER_BYTES], i;
    if (!ses.open)
        return NCA_ERR_NO_SESSION;
    if (!ses.verified)
        return NCA_ERR_NOT_VERIFIED;
    for (i = 0; i < NCA_HEADER_BYTES; i++)
        h[i] = ses.header[i];
    wr32(h + H_GEN, active < 0 ? 1 : active_gen + 1);
    wr32(h + H_HCRC, crc32_mem(h, H_HCRC));
    nca_slot_write(ses.slot, NCA_SLOT_HEADER_OFFSET, h, NCA_HEADER_BYTES);
    ses.open = 0;
    scan_slots();
    if (active != (int8_t)ses.slot)
        return NCA_ERR_FLASH;
    tx[tx_len++] = (uint8_t)active;
    wr32(tx + tx_len, active_hash);
    tx_len = (uint8_t)(tx_len + 4);
    return reply_u32(NCA_OK, active_gen);
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
    if (active < 0)
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
    ses.open = 0;
    have_last = 0;
    frame_reset();
    scan_slots();
}
