/* link_fuzz.c - feed the cell link parser (link/nca_link.c, host port) random,
 * mutated and valid frames; built with -fsanitize=address,undefined so any
 * out-of-bounds access or undefined behaviour aborts the run.
 *
 *   make -C firmware TARGET=host APP=link BUILD=/tmp/nca-link && /tmp/nca-link/nca_link_fuzz 1000000 1
 *
 * Every input is one burst of bytes (a valid frame, a mutated one, several, or
 * noise); after each the replies must be well-formed frames (COBS, CRC, a reply
 * type) and fit the output buffer.  From time to time a complete valid flash
 * (random genome, shifts in range) is sent so STEP and CELL run the cell core
 * too, and the board is "power cycled" (nca_link_init).  Prints a summary line;
 * exit status 1 on a malformed reply. */
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

static size_t header(uint8_t *h)
{
    uint32_t c;
    memset(h, 0, NCA_HEADER_BYTES);
    h[0] = 'N'; h[1] = 'A'; h[2] = 'C'; h[3] = 'G';
    h[4] = NCA_IMAGE_VERSION;
    h[5] = NCA_FORMAT_VERSION;
    h[6] = (uint8_t)(rnd() % (NCA_GRAD_SHIFT_HI + 1));
    h[7] = (uint8_t)(rnd() % (NCA_HIDDEN_SHIFT_HI + 1));
    h[8] = (uint8_t)(rnd() % (NCA_BIAS_SHIFT_HI + 1));
    h[9] = (uint8_t)(NCA_ACC_SHIFT_LO + rnd() % (NCA_ACC_SHIFT_HI - NCA_ACC_SHIFT_LO + 1));
    h[10] = (uint8_t)(rnd() % 2 ? NCA_EF_BITS_ON : 0);   /* error feedback off or on */
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

/* a whole valid flash of a random genome: BEGIN, every chunk, VERIFY, ACTIVATE */
static int full_flash(uint8_t *seq)
{
    uint8_t buf[800], body[200];
    size_t i, n;
    uint32_t off, sess = rnd();
    for (i = 0; i < NCA_GENOME_BYTES; i++)
        genome[i] = (uint8_t)rnd();
    for (i = 0; i < 16; i++) { /* T of out_mt in 5..30, M in [2^14, 2^15): what a board accepts */
        genome[NCA_GROUPS * NCA_GROUP_BYTES + 32 + 2 * i] =          /* with error feedback too */
            (uint8_t)((genome[NCA_GROUPS * NCA_GROUP_BYTES + 32 + 2 * i] & 0xE0) | (5 + rnd() % 26));
        genome[NCA_GROUPS * NCA_GROUP_BYTES + 32 + 2 * i + 1] = (uint8_t)(NCA_OUT_MULT_HIGH_LO | (rnd() & 0x3F));
    }
    header(body);
    memcpy(body + 32, &sess, 4);
    body[36] = 0;
    n = frame(buf, NCA_MSG_FLASH_BEGIN, (*seq)++, body, 37);
    if (!feed(buf, n))
        return 0;
    for (off = 0; off < NCA_GENOME_BYTES; off += NCA_LINK_CHUNK) {
        size_t len = NCA_GENOME_BYTES - off < NCA_LINK_CHUNK ? NCA_GENOME_BYTES - off : NCA_LINK_CHUNK;
        memcpy(body, &off, 4);
        memcpy(body + 4, genome + off, len);
        n = frame(buf, NCA_MSG_FLASH_WRITE, (*seq)++, body, 4 + len);
        if (!feed(buf, n))
            return 0;
    }
    n = frame(buf, NCA_MSG_FLASH_VERIFY, (*seq)++, body, 0);
    n += frame(buf + n, NCA_MSG_FLASH_ACTIVATE, (*seq)++, body, 0);
    return feed(buf, n);
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
        if (k % 50000 == 0 && !full_flash(&seq)) {
            fprintf(stderr, "malformed reply during a valid flash at input %lu\n", k);
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
    printf("inputs %lu replies %lu ok %lu naks %lu steps %lu active_slot %d\n", n, replies, ok_replies,
           naks, steps_run, (int)nca_link_active_slot());
    return 0;
}
