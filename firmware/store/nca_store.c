/* nca_store.c - see nca_store.h. */
#include "nca_store.h"
#include "nca_cell.h"   /* NCA_CHANNELS */

nca_runtime_t nca_rt;

NCA_STATIC_ASSERT(genome_type_is_the_format, sizeof(nca_genome_t) == NCA_GENOME_BYTES);
NCA_STATIC_ASSERT(header_after_genome, NCA_SLOT_HEADER_OFFSET >= NCA_SLOT_GENOME_OFFSET + NCA_GENOME_BYTES);
NCA_STATIC_ASSERT(header_in_slot, NCA_SLOT_HEADER_OFFSET + NCA_HEADER_BYTES <= NCA_SLOT_BYTES);
NCA_STATIC_ASSERT(slot_offsets_are_uint16, NCA_SLOT_BYTES <= 65535u);

static int8_t active = -1;
static uint32_t active_gen, active_hash;

/* The update being written.  verified and next mean something only while open. */
static struct {
    uint8_t open, verified, slot;
    uint32_t next;
    uint8_t header[NCA_HEADER_BYTES];
} ses;

static uint32_t crc32_byte(uint32_t crc, uint8_t b)
{
    uint8_t i;
    crc ^= b;
    for (i = 0; i < 8; i++)
        crc = (crc & 1u) ? (crc >> 1) ^ 0xEDB88320uL : crc >> 1;
    return crc;
}

uint32_t nca_rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

void nca_wr32(uint8_t *p, uint32_t v)
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

NCA_STATIC_ASSERT(header_layout, H_HCRC + 4 == NCA_HEADER_BYTES);

uint32_t nca_crc32(const uint8_t *p, uint8_t n)
{
    uint32_t crc = 0xFFFFFFFFuL;
    while (n--)
        crc = crc32_byte(crc, *p++);
    return ~crc;
}

/* a header that an image may carry (the generation is not checked here) */
uint8_t nca_store_header_ok(const uint8_t *h)
{
    return (uint8_t)(nca_rd32(h + H_MAGIC) == NCA_IMAGE_MAGIC && h[H_IVER] == NCA_IMAGE_VERSION
                     && h[H_FVER] == NCA_FORMAT_VERSION && nca_rd32(h + H_LEN) == NCA_GENOME_BYTES
                     && in_range(h[H_SHIFTS], NCA_GRAD_SHIFT_LO, NCA_GRAD_SHIFT_HI)
                     && in_range(h[H_SHIFTS + 1], NCA_HIDDEN_SHIFT_LO, NCA_HIDDEN_SHIFT_HI)
                     && in_range(h[H_SHIFTS + 2], NCA_BIAS_SHIFT_LO, NCA_BIAS_SHIFT_HI)
                     && in_range(h[H_SHIFTS + 3], NCA_ACC_SHIFT_LO, NCA_ACC_SHIFT_HI)
                     && (h[H_EF] == 0 || h[H_EF] == NCA_EF_BITS_ON)
                     && nca_crc32(h, H_HCRC) == nca_rd32(h + H_HCRC));
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
    return (uint8_t)(nca_store_header_ok(h) && nca_rd32(h + H_GEN) != 0xFFFFFFFFuL && genome_ok(slot, h)
                     && slot_genome_crc(slot) == nca_rd32(h + H_GCRC));
}

void nca_store_scan(void)
{
    uint8_t h[NCA_HEADER_BYTES], s;
    active = -1;
    active_gen = 0;
    active_hash = 0;
    nca_rt.genome = 0;
    nca_rt.ef_bits = 0;
    for (s = 0; s < 2; s++) {
        uint32_t gen, hash;
        if (!slot_valid(s, h))
            continue;
        gen = nca_rd32(h + H_GEN);
        hash = nca_rd32(h + H_HASH);
        /* the higher generation; of two of one generation (two pushes at once) the higher
         * hash, as the wired cells' gossip decides which genome is newer */
        if (active < 0 || gen > active_gen || (gen == active_gen && hash > active_hash)) {
            active = (int8_t)s;
            active_gen = gen;
            active_hash = hash;
            nca_rt.grad_shift = h[H_SHIFTS];
            nca_rt.hidden_shift = h[H_SHIFTS + 1];
            nca_rt.bias_shift = h[H_SHIFTS + 2];
            nca_rt.acc_shift = h[H_SHIFTS + 3];
            nca_rt.ef_bits = h[H_EF];
            nca_rt.genome = nca_slot_genome(s);
        }
    }
}

int8_t nca_store_active(void)
{
    return active;
}

uint32_t nca_store_generation(void)
{
    return active_gen;
}

uint32_t nca_store_hash(void)
{
    return active_hash;
}

void nca_store_active_header(uint8_t *h)
{
    slot_header((uint8_t)active, h);
}

void nca_store_read(uint16_t off, uint8_t *dst, uint8_t n)
{
    const uint8_t *f = slot_bytes((uint8_t)active) + off;
    uint8_t i;
    for (i = 0; i < n; i++)
        dst[i] = NCA_RDU8(f + i);
}

void nca_store_read_update(uint16_t off, uint8_t *dst, uint8_t n)
{
    const uint8_t *f = slot_bytes(ses.slot) + off;
    uint8_t i;
    for (i = 0; i < n; i++)
        dst[i] = NCA_RDU8(f + i);
}

uint8_t nca_store_open(void)
{
    return ses.open;
}

const uint8_t *nca_store_update_header(void)
{
    return ses.header;
}

uint32_t nca_store_next(void)
{
    return ses.next;
}

void nca_store_close(void)
{
    ses.open = 0;
}

void nca_store_begin(const uint8_t *header)
{
    uint8_t i;
    ses.verified = 0;
    ses.slot = (uint8_t)(active == 0 ? 1 : 0);
    nca_slot_erase(ses.slot);
    for (i = 0; i < NCA_HEADER_BYTES; i++)
        ses.header[i] = header[i];
    ses.next = 0;
    ses.open = 1;
}

uint8_t nca_store_write(uint32_t off, const uint8_t *src, uint8_t len)
{
    const uint8_t *f;
    uint32_t want;
    uint8_t i;
    if (!ses.open)
        return NCA_ERR_NO_SESSION;
    if (off % NCA_LINK_CHUNK != 0 || off >= NCA_GENOME_BYTES)
        return NCA_ERR_ARG;
    if (off > ses.next)
        return NCA_ERR_OFFSET;
    want = NCA_GENOME_BYTES - off < NCA_LINK_CHUNK ? NCA_GENOME_BYTES - off : NCA_LINK_CHUNK;
    if (len != want)
        return NCA_ERR_LENGTH;
    if (off < ses.next)                          /* already written: a duplicate */
        return NCA_OK;
    nca_slot_write(ses.slot, (uint16_t)(NCA_SLOT_GENOME_OFFSET + off), src, len);
    f = slot_bytes(ses.slot) + NCA_SLOT_GENOME_OFFSET + off;
    for (i = 0; i < len; i++)
        if (NCA_RDU8(f + i) != src[i])
            return NCA_ERR_FLASH;
    ses.next = off + len;
    return NCA_OK;
}

uint8_t nca_store_verify(uint32_t *crc)
{
    if (!ses.open)
        return NCA_ERR_NO_SESSION;
    *crc = ses.next;
    if (ses.next != NCA_GENOME_BYTES)
        return NCA_ERR_INCOMPLETE;
    *crc = slot_genome_crc(ses.slot);
    if (*crc != nca_rd32(ses.header + H_GCRC))
        return NCA_ERR_VERIFY;
    if (!genome_ok(ses.slot, ses.header))
        return NCA_ERR_FORMAT;
    /* stays valid: only a complete genome verifies, and a write of a chunk already
     * written is acknowledged without writing */
    ses.verified = 1;
    return NCA_OK;
}

uint8_t nca_store_commit(uint32_t generation)
{
    uint8_t h[NCA_HEADER_BYTES], i;
    if (!ses.open)
        return NCA_ERR_NO_SESSION;
    if (!ses.verified)
        return NCA_ERR_NOT_VERIFIED;
    for (i = 0; i < NCA_HEADER_BYTES; i++)
        h[i] = ses.header[i];
    nca_wr32(h + H_GEN, generation);
    nca_wr32(h + H_HCRC, nca_crc32(h, H_HCRC));
    nca_slot_write(ses.slot, NCA_SLOT_HEADER_OFFSET, h, NCA_HEADER_BYTES);
    ses.open = 0;
    nca_store_scan();
    return active == (int8_t)ses.slot ? NCA_OK : NCA_ERR_FLASH;
}
