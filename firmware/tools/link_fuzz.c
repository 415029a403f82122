/* link_fuzz.c - feed the cell link parser (link/nca_link.c, host port) random,
 * mutated and valid frames; built with -fsanitize=address,undefined so any
 * out-of-bounds access or undefined behaviour aborts the run.
 *
 *   make -C firmware TARGET=host APP=link BUILD=/tmp/nca-link && /tmp/nca-link/nca_link_fuzz 1000000 1
 *   arguments: the number of inputs (default 100000) and a seed (default 0)
 *
 * Every input is one burst of bytes (a valid frame, a mutated one, several, or
 * noise); after each the replies must be well-formed frames (COBS, CRC, a reply
 * type) and fit the output buffer.  Every 100th input is a whole flash of a
 * CRC-valid random genome (random shifts, output multipliers and shifts, weights
 * and output biases of random magnitude): the board must accept exactly the
 * genomes whose int16 accumulator bound (codegen/quantize.py's) and output shift
 * and multiplier ranges hold, and for every accepted one the exact worst case of
 * every accumulator, computed here in 64-bit arithmetic, must fit int16 (AVR's int
 * is 16 bits, so an overflow there is undefined behaviour the host's 32-bit int
 * would hide).  Half of these genomes make the worst case of one output reachable
 * (the hidden units driven to 0 or 255 by the own state's channel 0), and a CELL
 * step on those inputs must give the state that worst-case accumulator gives.
 * STEP and CELL thus run the core on accepted genomes, and the board is "power
 * cycled" (nca_link_init) from time to time.  Prints a summary line; exit status 1
 * on a malformed reply or a wrong verdict. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "nca_link.h"

size_t nca_host_link_io(const uint8_t *in, size_t n, uint8_t *o, size_t cap);
void nca_host_link_wipe(void);
void nca_host_link_boot(void);
size_t nca_host_link_dropped(void);

static uint64_t rs = 88172645463325252ull;
static uint32_t rnd(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (uint32_t)(rs >> 11);
}

static uint16_t crc16(const uint8_t *p, size_t n)
{
    uint16_t c = 0xFFFF;
    size_t i;
    int k;
    for (i = 0; i < n; i++) {
        c ^= (uint16_t)(p[i] << 8);
        for (k = 0; k < 8; k++)
            c = (uint16_t)((c & 0x8000) ? (c << 1) ^ 0x1021 : c << 1);
    }
    return c;
}

static uint32_t crc32(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    size_t i;
    int k;
    for (i = 0; i < n; i++) {
        c ^= p[i];
        for (k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
    }
    return ~c;
}

/* COBS-encode type|seq|body|crc16 into dst (+ delimiter); returns the length */
static size_t frame(uint8_t *dst, uint8_t type, uint8_t seq, const uint8_t *body, size_t n)
{
    uint8_t p[600];
    size_t len = 0, i = 0, o = 0;
    uint16_t c;
    p[len++] = type;
    p[len++] = seq;
    memcpy(p + len, body, n);
    len += n;
    c = crc16(p, len);
    p[len++] = (uint8_t)c;
    p[len++] = (uint8_t)(c >> 8);
    while (i <= len) {
        size_t j = i;
        while (j < len && p[j] != 0 && j - i < 254)
            j++;
        dst[o++] = (uint8_t)(j - i + 1);
        memcpy(dst + o, p + i, j - i);
        o += j - i;
        i = (j - i == 254 && j < len && p[j] != 0) ? j : j + 1;
    }
    dst[o++] = 0;
    return o;
}

static unsigned long replies, naks, ok_replies, steps_run;
static uint8_t last_status, last_body[32], last_len;   /* the last reply's status and data */

/* every reply in out[0..n) must be a COBS frame with a good CRC and a reply type */
static int check_replies(const uint8_t *out, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t d[64];
        size_t dl = 0;
        while (i < n && out[i] != 0) {
            uint8_t code = out[i++], k;
            for (k = 1; k < code; k++) {
                if (i >= n || out[i] == 0 || dl >= sizeof d)
                    return 0;
                d[dl++] = out[i++];
            }
            if (code != 0xFF && i < n && out[i] != 0) {
                if (dl >= sizeof d)
                    return 0;
                d[dl++] = 0;
            }
        }
        if (i >= n)
            return 0;           /* no delimiter */
        i++;
        if (dl < 5 || crc16(d, dl - 2) != (uint16_t)(d[dl - 2] | (d[dl - 1] << 8)))
            return 0;
        if (!(d[0] & NCA_REPLY_BIT))
            return 0;
        replies++;
        last_status = d[2];
        last_len = (uint8_t)(dl - 5 < sizeof last_body ? dl - 5 : sizeof last_body);
        memcpy(last_body, d + 3, last_len);
        if (d[0] == NCA_MSG_NAK)
            naks++;
        else if (d[2] == NCA_OK) {
            ok_replies++;
            if ((d[0] & 0x7F) == NCA_MSG_STEP || (d[0] & 0x7F) == NCA_MSG_CELL)
                steps_run++;
        }
    }
    return 1;
}

static uint8_t outbuf[1 << 16];

static int feed(const uint8_t *in, size_t n)
{
    size_t got = nca_host_link_io(in, n, outbuf, sizeof outbuf);
    return check_replies(outbuf, got);
}

static uint8_t genome[NCA_GENOME_BYTES];
static uint8_t shifts[4], ef_bits;

static size_t header(uint8_t *h)
{
    uint32_t c;
    memset(h, 0, NCA_HEADER_BYTES);
    h[0] = 'N'; h[1] = 'A'; h[2] = 'C'; h[3] = 'G';
    h[4] = NCA_IMAGE_VERSION;
    h[5] = NCA_FORMAT_VERSION;
    memcpy(h + 6, shifts, 4);
    h[10] = ef_bits;
    h[11] = 0xFF;
    h[12] = (uint8_t)(NCA_GENOME_BYTES & 0xFF);
    h[13] = (uint8_t)(NCA_GENOME_BYTES >> 8);
    c = rnd();
    memcpy(h + 16, &c, 4);
    c = crc32(genome, NCA_GENOME_BYTES);
    h[20] = (uint8_t)c; h[21] = (uint8_t)(c >> 8); h[22] = (uint8_t)(c >> 16); h[23] = (uint8_t)(c >> 24);
    memset(h + 24, 0xFF, 4);
    c = crc32(h, 28);
    h[28] = (uint8_t)c; h[29] = (uint8_t)(c >> 8); h[30] = (uint8_t)(c >> 16); h[31] = (uint8_t)(c >> 24);
    return NCA_HEADER_BYTES;
}

static void random_shifts(void)
{
    shifts[0] = (uint8_t)(rnd() % (NCA_GRAD_SHIFT_HI + 1));
    shifts[1] = (uint8_t)(rnd() % (NCA_HIDDEN_SHIFT_HI + 1));
    shifts[2] = (uint8_t)(rnd() % (NCA_BIAS_SHIFT_HI + 1));
    shifts[3] = (uint8_t)(NCA_ACC_SHIFT_LO + rnd() % (NCA_ACC_SHIFT_HI - NCA_ACC_SHIFT_LO + 1));
    ef_bits = (uint8_t)(rnd() % 2 ? NCA_EF_BITS_ON : 0);   /* error feedback off or on */
}

/* the genome's parts (codegen/formats.py layout) */
#define W1(g, i, u) (genome[(g) * NCA_GROUP_BYTES + 4 * (i) + (u)])
#define W2(g, m, u) (genome[(g) * NCA_GROUP_BYTES + NCA_GROUP_W1 + 4 + 4 * (m) + (u)])
#define B2_AT (NCA_GROUPS * NCA_GROUP_BYTES)
#define MT_AT (B2_AT + 32)

static int16_t b2_of(int m)
{
    return (int16_t)(uint16_t)(genome[B2_AT + 2 * m] | (genome[B2_AT + 2 * m + 1] << 8));
}

/* A random genome (shifts in the header's ranges; mostly, not always, valid output
 * shifts and multipliers; weights and biases of random magnitude); with reach >= 0,
 * the worst case of output `reach` is reachable: W1 zero but for input 0 (the own
 * state's channel 0), +127 where W2[.][reach] > 0 and -127 elsewhere, b1 zero and a
 * hidden shift of 0, so an own channel 0 of 127 (-128) puts 255 into every hidden unit
 * whose weight is positive (not positive) and 0 into the others. */
static void random_genome(int reach)
{
    size_t i;
    int g, m, u, cap = 1 + (int)(rnd() % 128), bias_bits = (int)(rnd() % 16);
    if (rnd() % 2)
        cap = 1 + (int)(rnd() % 8);
    for (i = 0; i < NCA_GENOME_BYTES; i++)
        genome[i] = (uint8_t)rnd();
    random_shifts();
    for (g = 0; g < NCA_GROUPS; g++)
        for (m = 0; m < 16; m++)
            for (u = 0; u < 4; u++) {
                int v = (int)(rnd() % (uint32_t)(2 * cap + 1)) - cap;
                W2(g, m, u) = (uint8_t)(int8_t)(v > 127 ? 127 : v);
            }
    for (m = 0; m < 16; m++) {
        int32_t b = (int32_t)(rnd() % (2u << bias_bits)) - (1 << bias_bits);
        uint8_t t = (uint8_t)(1 + ef_bits + rnd() % (30 - ef_bits));
        uint8_t mh = (uint8_t)(NCA_OUT_MULT_HIGH_LO | (rnd() & 0x3F));
        if (b > 32767)
            b = 32767;
        genome[B2_AT + 2 * m] = (uint8_t)b;
        genome[B2_AT + 2 * m + 1] = (uint8_t)((uint32_t)b >> 8);
        genome[MT_AT + 2 * m] = (uint8_t)((genome[MT_AT + 2 * m] & 0xE0) | t);
        genome[MT_AT + 2 * m + 1] = mh;
    }
    if (rnd() % 4 == 0) {          /* one output's bound at 32,767 or 32,768: the edge */
        int32_t sum = 0, b;
        m = (int)(rnd() % 16);
        for (g = 0; g < NCA_GROUPS; g++) {
            int32_t a = 0;
            for (u = 0; u < 4; u++)
                a += abs((int8_t)W2(g, m, u));
            sum += ((a * 255) >> shifts[3]) + 1;
        }
        b = 32767 - sum + (int32_t)(rnd() % 2);
        if (b >= 0 && b <= 32767) {
            b = rnd() % 2 ? b : -b;
            genome[B2_AT + 2 * m] = (uint8_t)b;
            genome[B2_AT + 2 * m + 1] = (uint8_t)((uint32_t)b >> 8);
        }
    }
    if (rnd() % 8 == 0) {          /* one output shift or multiplier anywhere in its byte's range */
        m = (int)(rnd() % 16);
        if (rnd() % 2)
            genome[MT_AT + 2 * m] = (uint8_t)((genome[MT_AT + 2 * m] & 0xE0) | (rnd() % 32));
        else
            genome[MT_AT + 2 * m + 1] = (uint8_t)rnd();
    }
    if (reach >= 0) {
        shifts[1] = 0;
        for (g = 0; g < NCA_GROUPS; g++) {
            for (i = 0; i < NCA_PERCEPTION; i++)
                for (u = 0; u < 4; u++)
                    W1(g, i, u) = i ? 0 : (uint8_t)((int8_t)W2(g, reach, u) > 0 ? 127 : -127);
            for (u = 0; u < 4; u++)
                genome[g * NCA_GROUP_BYTES + NCA_GROUP_W1 + u] = 0;
        }
    }
}

/* the verdict the board must give: the quantiser's bound (quantize._acc_bound) and the ranges */
static int acceptable(void)
{
    int g, m, u;
    for (m = 0; m < 16; m++) {
        uint16_t mt = (uint16_t)(genome[MT_AT + 2 * m] | (genome[MT_AT + 2 * m + 1] << 8));
        int64_t bound = b2_of(m) < 0 ? -(int64_t)b2_of(m) : b2_of(m);
        if ((mt & 31) < NCA_OUT_SHIFT_LO + ef_bits || (mt & 31) > NCA_OUT_SHIFT_HI)
            return 0;
        if ((mt >> 8) < NCA_OUT_MULT_HIGH_LO || (mt >> 8) > NCA_OUT_MULT_HIGH_HI)
            return 0;
        for (g = 0; g < NCA_GROUPS; g++) {
            int64_t s = 0;
            for (u = 0; u < 4; u++)
                s += abs((int8_t)W2(g, m, u));
            bound += ((s * 255) >> shifts[3]) + 1;
        }
        if (bound > 32767)
            return 0;
    }
    return 1;
}

/* the exact extremes of output m's accumulator over all hidden values (0..255), at
 * every partial sum: the int16 the core keeps it in must hold them */
static void worst_case(int m, int64_t *lo, int64_t *hi)
{
    int g, u;
    int64_t a = b2_of(m), b = b2_of(m);
    *lo = *hi = a;
    for (g = 0; g < NCA_GROUPS; g++) {
        int64_t p = 0, n = 0;
        for (u = 0; u < 4; u++) {
            int8_t w = (int8_t)W2(g, m, u);
            if (w > 0)
                p += w;
            else
                n += w;
        }
        a += (p * 255) >> shifts[3];           /* floor, as the core's >> */
        b += (n * 255) >> shifts[3];
        if (a > *hi)
            *hi = a;
        if (b < *lo)
            *lo = b;
    }
}

/* the own channel m after a tentative step with accumulator acc and own state x (no remainder) */
static int8_t expect_state(int m, int64_t acc, int8_t x)
{
    uint16_t mt = (uint16_t)(genome[MT_AT + 2 * m] | (genome[MT_AT + 2 * m + 1] << 8));
    int64_t mm = mt & 0xFFE0, t = mt & 31;
    if (ef_bits) {
        int64_t d = (acc * mm + ((int64_t)1 << (t - 5))) >> (t - 4), v;
        d = d > 4095 ? 4095 : (d < -4096 ? -4096 : d);
        v = x * 16 + d;
        v = v > 2047 ? 2047 : (v < -2048 ? -2048 : v);
        return (int8_t)(v >> 4);
    } else {
        int64_t v = x + ((acc * mm + ((int64_t)1 << (t - 1))) >> t);
        return (int8_t)(v > 127 ? 127 : (v < -128 ? -128 : v));
    }
}

static unsigned long genomes, accepted, reached;

/* a whole flash of a random genome: BEGIN, every chunk, VERIFY (whose verdict is checked),
 * ACTIVATE, and on a genome whose worst case is reachable CELL at that worst case */
static int full_flash(uint8_t *seq)
{
    uint8_t buf[800], body[200];
    size_t n;
    uint32_t off, sess = rnd();
    int reach = rnd() % 2 ? (int)(rnd() % 16) : -1, ok, m;
    random_genome(reach);
    header(body);
    memcpy(body + 32, &sess, 4);
    body[36] = 0;
    buf[0] = 0;                                /* ends any partial frame a random input left */
    n = 1 + frame(buf + 1, NCA_MSG_FLASH_BEGIN, (*seq)++, body, 37);
    if (!feed(buf, n) || last_status != NCA_OK)
        return 0;
    for (off = 0; off < NCA_GENOME_BYTES; off += NCA_LINK_CHUNK) {
        size_t len = NCA_GENOME_BYTES - off < NCA_LINK_CHUNK ? NCA_GENOME_BYTES - off : NCA_LINK_CHUNK;
        memcpy(body, &off, 4);
        memcpy(body + 4, genome + off, len);
        n = frame(buf, NCA_MSG_FLASH_WRITE, (*seq)++, body, 4 + len);
        if (!feed(buf, n) || last_status != NCA_OK)
            return 0;
    }
    n = frame(buf, NCA_MSG_FLASH_VERIFY, (*seq)++, body, 0);
    if (!feed(buf, n))
        return 0;
    genomes++;
    ok = acceptable();
    if (last_status != (ok ? NCA_OK : NCA_ERR_FORMAT)) {
        fprintf(stderr, "VERIFY answered %u to a genome the bound %s\n", last_status, ok ? "accepts" : "refuses");
        return 0;
    }
    if (!ok)
        return 1;
    accepted++;
    for (m = 0; m < 16; m++) {
        int64_t lo, hi;
        worst_case(m, &lo, &hi);
        if (lo < -32768 || hi > 32767) {
            fprintf(stderr, "accepted a genome whose accumulator %d reaches %lld..%lld\n", m, (long long)lo,
                    (long long)hi);
            return 0;
        }
    }
    n = frame(buf, NCA_MSG_FLASH_ACTIVATE, (*seq)++, body, 0);
    if (!feed(buf, n) || last_status != NCA_OK)
        return 0;
    if (reach >= 0) {
        int8_t x0;
        for (x0 = -128; ; x0 = 127) {
            int64_t lo, hi;
            memset(body, 0, NCA_LINK_STATE_BYTES + 128 + 7);
            body[0] = (uint8_t)x0;
            body[NCA_LINK_STATE_BYTES + 128] = 1;         /* tentative: no alive rule */
            body[NCA_LINK_STATE_BYTES + 128 + 1] = 1;     /* fire */
            n = frame(buf, NCA_MSG_CELL, (*seq)++, body, NCA_LINK_STATE_BYTES + 128 + 7);
            if (!feed(buf, n) || last_status != NCA_OK || last_len < 1 + 16)
                return 0;
            worst_case(reach, &lo, &hi);
            if ((int8_t)last_body[1 + reach] != expect_state(reach, x0 > 0 ? hi : lo, reach ? 0 : x0)) {
                fprintf(stderr, "CELL at the worst case of output %d: %d, expected %d\n", reach,
                        (int8_t)last_body[1 + reach], expect_state(reach, x0 > 0 ? hi : lo, reach ? 0 : x0));
                return 0;
            }
            if (x0 == 127)
                break;
        }
        reached++;
    }
    return 1;
}

/* a random but plausible request */
static size_t random_request(uint8_t *dst, uint8_t *seq)
{
    static const uint8_t lens[] = {0, 37, 132, 0, 0, 0, NCA_LINK_STATE_BYTES, 128, 7, 0, 0,
                                   NCA_LINK_STATE_BYTES + 128 + 7};
    uint8_t body[300];
    uint8_t type = (uint8_t)(rnd() % 16);
    size_t n, i;
    uint32_t off;
    if (type >= 1 && type <= 12 && rnd() % 4)
        n = lens[type - 1];
    else
        n = rnd() % 200;
    for (i = 0; i < n; i++)
        body[i] = (uint8_t)rnd();
    if (type == NCA_MSG_FLASH_BEGIN && n >= 37 && rnd() % 2) {
        random_shifts();
        header(body);
    } else if (type == NCA_MSG_FLASH_WRITE && n >= 4) {
        off = (rnd() % 70) * NCA_LINK_CHUNK + (rnd() % 8 ? 0 : rnd() % 256);
        memcpy(body, &off, 4);
    } else if ((type == NCA_MSG_STEP || type == NCA_MSG_CELL) && n >= 7 && rnd() % 4) {
        uint8_t *s = body + n - 7;
        s[0] = (uint8_t)(rnd() % 2);
        s[1] = (uint8_t)(rnd() % 2);
        s[2] = (uint8_t)(rnd() % 2);
        if (type == NCA_MSG_CELL && n >= NCA_LINK_STATE_BYTES && rnd() % 2)   /* remainders a genome */
            memset(body + NCA_LINK_STATE_BYTES - NCA_RESID_BYTES, 0, NCA_RESID_BYTES);   /* without them takes */
    }
    if (rnd() % 16 == 0)
        type = (uint8_t)rnd();
    return frame(dst, type, (*seq)++, body, n);
}

int main(int argc, char **argv)
{
    unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000, k;
    uint8_t seq = 0;
    static uint8_t in[4096];
    if (argc > 2)
        rs ^= strtoull(argv[2], NULL, 10) * 0x9E3779B97F4A7C15ull;
    nca_host_link_wipe();
    nca_host_link_boot();
    for (k = 0; k < n; k++) {
        size_t len = 0, m, i;
        uint32_t kind = rnd() % 100;
        if (k % 100 == 0 && !full_flash(&seq)) {
            fprintf(stderr, "wrong or malformed reply during a whole flash at input %lu\n", k);
            return 1;
        }
        if (kind < 40) {                      /* one valid request */
            len = random_request(in, &seq);
        } else if (kind < 80) {               /* one mutated request */
            len = random_request(in, &seq);
            m = 1 + rnd() % 4;
            while (m--) {
                uint32_t op = rnd() % 5;
                size_t at = rnd() % len;
                if (op == 0)
                    in[at] ^= (uint8_t)(1u << (rnd() % 8));
                else if (op == 1)
                    in[at] = (uint8_t)rnd();
                else if (op == 2 && len > 1)
                    len = at + 1;             /* truncate */
                else if (op == 3 && len + 1 < sizeof in) {
                    memmove(in + at + 1, in + at, len - at);
                    in[at] = (uint8_t)rnd();
                    len++;
                } else if (op == 4 && len > 1) {
                    memmove(in + at, in + at + 1, len - at - 1);
                    len--;
                }
            }
        } else if (kind < 90) {               /* several requests back to back, or a duplicate */
            len = random_request(in, &seq);
            m = rnd() % 3;
            if (rnd() % 2 && 2 * len < sizeof in) {
                memcpy(in + len, in, len);
                len *= 2;
            }
            while (m-- && len + 700 < sizeof in)
                len += random_request(in + len, &seq);
        } else if (kind < 98) {               /* noise, zeros sprinkled */
            len = 1 + rnd() % 400;
            for (i = 0; i < len; i++)
                in[i] = rnd() % 8 ? (uint8_t)rnd() : 0;
        } else {                              /* a long run without a delimiter, then one */
            len = 300 + rnd() % 2000;
            for (i = 0; i < len; i++)
                in[i] = (uint8_t)(1 + rnd() % 255);
            in[len++] = 0;
        }
        if (!feed(in, len)) {
            fprintf(stderr, "malformed reply at input %lu\n", k);
            return 1;
        }
        if (rnd() % 20000 == 0)
            nca_host_link_boot();
    }
    if (nca_host_link_dropped()) {
        fprintf(stderr, "reply bytes dropped: %lu\n", (unsigned long)nca_host_link_dropped());
        return 1;
    }
    printf("inputs %lu replies %lu ok %lu naks %lu steps %lu active_slot %d genomes %lu accepted %lu "
           "worst_cases %lu\n", n, replies, ok_replies, naks, steps_run, (int)nca_link_active_slot(), genomes,
           accepted, reached);
    return 0;
}
