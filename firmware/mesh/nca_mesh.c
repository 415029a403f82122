/* nca_mesh.c - the wired cell (nca_mesh.h). */
#include <stddef.h>
#include <string.h>
#include "nca_frame.h"
#include "nca_mesh.h"
#include "nca_mesh_parts.h"
#include "nca_rom.h"

NCA_MESH_ASSERT(status_bytes, sizeof(nca_mesh_status_t) == NCA_MESH_STATUS_BYTES);
NCA_MESH_ASSERT(frame_fits, NCA_MESH_RX_BUFFER <= NCA_FRAME_MAX);
/* a relaying STATE frame's copies, and a CHUNK, fit a port's transmit ring (the port's,
 * 256 bytes on AVR) */
NCA_MESH_ASSERT(copies_fit, NCA_MESH_MAX_COPIES * NCA_FRAME_ENCODED(NCA_MESH_STATE_HEAD + 3 * NCA_CHANNELS) < 256);
NCA_MESH_ASSERT(chunk_fits, NCA_FRAME_ENCODED(NCA_MESH_MAX_PAYLOAD) < 256);
NCA_MESH_ASSERT(census_fits, NCA_MESH_CENSUS_HEAD + NCA_MESH_CENSUS_ENTRIES * NCA_MESH_CENSUS_ENTRY <= NCA_MESH_MAX_PAYLOAD);
/* where the emulator's replay taps read (nca_mesh_ids.h) */
NCA_MESH_ASSERT(wakes_at, offsetof(nca_mesh_status_t, wakes) == NCA_MESH_STATUS_WAKES_AT);
NCA_MESH_ASSERT(cell_state_at, offsetof(nca_cell_t, state) == NCA_MESH_CELL_STATE_AT);
NCA_MESH_ASSERT(cell_inbox_at, offsetof(nca_cell_t, inbox) == NCA_MESH_CELL_INBOX_AT);
#if NCA_HAS_RESID
NCA_MESH_ASSERT(cell_resid_at, offsetof(nca_cell_t, resid) == NCA_MESH_CELL_RESID_AT);
#endif

nca_mesh_status_t nca_mesh_status;
nca_cell_t nca_mesh_cell;

static const int8_t face_slot[NCA_FACES] = NCA_FACE_SLOTS;
static const int8_t relay_w_slot[NCA_FACES] = NCA_RELAY_W_SLOTS;
static const int8_t relay_e_slot[NCA_FACES] = NCA_RELAY_E_SLOTS;
static const int8_t face_dx[NCA_FACES] = NCA_FACE_DX;
static const int8_t face_dy[NCA_FACES] = NCA_FACE_DY;
static const uint16_t log2_table[65] NCA_ROM = NCA_MESH_LOG2_TABLE;
#define OPPOSITE(f) ((uint8_t)(((f) + 2) & 3))
#define SLOT_W 3
#define SLOT_E 4
static const uint8_t mirrored_rgb[3] = {255, 0, 255};   /* the LED of a board mounted mirrored */

/* One per port: the board's own N E S W (USART1 2 3 0), whichever way it is mounted. */
typedef struct {
    nca_frame_rx_t rx;
    uint8_t faces;                /* the grid face this port faces, as its neighbour's last
                                     frame implies (NCA_MESH_UNKNOWN: none yet) */
    uint16_t last_seq;
    uint8_t seen;                 /* a STATE frame arrived on this port since the run began */
    uint8_t asked;                /* PARAMS_REQ sent, no PARAMS yet ... */
    uint32_t asked_at;            /* ... at this tick (asked again a second later: it may be lost) */
} port_t;

/* the run's parameters (PARAMS) */
typedef struct {
    uint32_t seed, mean_ticks, jitter_ticks;
    uint8_t width, height, seed_x, seed_y, clock;
    uint8_t copies;               /* each STATE frame goes out this many times, back to back */
    uint32_t seed_hash;           /* the model whose formats seed_state is in */
    int8_t seed_state[NCA_CHANNELS];
    uint8_t seed_resid[NCA_MESH_RESID_BYTES];
} params_t;

static struct {
    port_t port[NCA_FACES];
    params_t p;
    uint8_t mount;                /* port q faces grid face (q + rot) & 3, or (rot - q) & 3
                                     mirrored: rot | NCA_MESH_MOUNT_MIRRORED */
    uint8_t oriented;             /* mount is known (from a neighbour, or set by the host) */
    uint8_t fixed;                /* ... set by the host: the grid's north is this board's */
    uint64_t key;                 /* the counter generator's (seed, WAKE, cell) prefix */
    uint64_t init_key;            /* ... and (seed, INIT, cell)'s */
    uint32_t wake_k;              /* the next wake's number */
    uint32_t next_wake;           /* its tick */
    uint16_t seq;                 /* the next STATE frame's */
    uint8_t scheduled;            /* next_wake is valid */
    uint8_t resends;              /* PARAMS still to send again (nothing acknowledges them) */
    uint32_t resend_at;           /* ... at this tick */
} m;

uint8_t nca_mesh_frame[NCA_MESH_MAX_PAYLOAD];
static uint8_t wire[NCA_FRAME_ENCODED(NCA_MESH_MAX_PAYLOAD)];

/* ------------------------------------------------------------ the counter generator (sim/rng.py) */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * NCA_RNG_M1;
    z = (z ^ (z >> 27)) * NCA_RNG_M2;
    return z ^ (z >> 31);
}

static uint64_t prefix(uint32_t seed, uint8_t stream, uint32_t cell)
{
    uint64_t h = mix64((uint64_t)seed + NCA_RNG_G);
    h = mix64((h ^ stream) + NCA_RNG_G);
    return mix64((h ^ cell) + NCA_RNG_G);
}

/* the top 32 bits of hash4(seed, stream, cell, k): a uniform in [0, 1) as u / 2^32 */
static uint32_t draw(uint64_t key, uint32_t k)
{
    return (uint32_t)(mix64((key ^ k) + NCA_RNG_G) >> 32);
}

/* -ln(q / 2^32) in Q16, q >= 1: log2 from the table, interpolated, times ln 2 */
static uint32_t neg_ln_q16(uint32_t q)
{
    uint8_t e = 31, idx;
    uint16_t frac, lo, hi;
    uint32_t f, a;
    while (!(q & 0x80000000ul)) {
        q <<= 1;
        e--;
    }
    idx = (uint8_t)((q >> 25) & 63);
    frac = (uint16_t)(q >> 9);
    lo = (uint16_t)NCA_RD16(&log2_table[idx]);
    hi = (uint16_t)NCA_RD16(&log2_table[idx + 1]);
    f = 2 * ((uint32_t)lo + (((uint32_t)(hi - lo) * frac) >> 16));   /* Q15 -> Q16 */
    a = ((uint32_t)(32 - e) << 16) - f;          /* -log2 x, Q16 */
    return ((a >> 5) * NCA_MESH_LN2_Q16) >> 11;
}

/* ticks before wake k: exponential with the mean, or the period with +-jitter (the
 * first wake of a periodic clock at a random phase) */
static uint32_t interval(uint32_t k)
{
    uint32_t u = draw(m.key, k);
    if (m.p.clock == NCA_MESH_CLOCK_PERIODIC) {
        if (k == 0)
            return (uint32_t)(((uint64_t)m.p.mean_ticks * draw(m.init_key, 0)) >> 32);
        return m.p.mean_ticks - m.p.jitter_ticks + (uint32_t)(((uint64_t)m.p.jitter_ticks * u) >> 31);
    }
    u = ~u;                                       /* 1 - u, as 2^32 - 1 - u */
    return (uint32_t)(((uint64_t)m.p.mean_ticks * neg_ln_q16(u ? u : 1)) >> 16);
}

/* ------------------------------------------------------------ orientation */
#define MIRRORED(mount) ((mount) & NCA_MESH_MOUNT_MIRRORED)

static uint8_t face_of(uint8_t mount, uint8_t q)
{
    return (uint8_t)((MIRRORED(mount) ? (mount - q) : (mount + q)) & 3);
}

uint8_t nca_mesh_port(uint8_t f)
{
    return (uint8_t)((MIRRORED(m.mount) ? (m.mount - f) : (f - m.mount)) & 3);
}

uint8_t nca_mesh_face(uint8_t q)
{
    return m.oriented ? face_of(m.mount, q) : NCA_MESH_UNKNOWN;
}

/* a frame on port q disagrees with the mount (e.g. N wired to W) */
static uint8_t disagrees(uint8_t q)
{
    uint8_t g = m.port[q].faces;
    return (uint8_t)(m.oriented && g != NCA_MESH_UNKNOWN && g != face_of(m.mount, q));
}

/* ------------------------------------------------------------ sending */
void nca_mesh_payload(uint8_t q, uint8_t n)
{
    uint8_t len = nca_frame_encode(nca_mesh_frame, n, wire);
    if (nca_mesh_send(q, wire, len))
        nca_mesh_status.sent++;
}

/* to every grid face (the port that faces it), in the run's number of copies: on a
 * line that corrupts bytes a long frame fails its CRC often, and one of the copies
 * gets through (the receiver keeps the first good one) */
static void send_state(void)
{
    uint8_t f, c, len;
    for (f = 0; f < NCA_FACES; f++) {
        uint8_t relay = (uint8_t)(f == NCA_FACE_N || f == NCA_FACE_S), n = NCA_MESH_STATE_HEAD;
        nca_mesh_frame[0] = NCA_MESH_STATE;
        nca_put32(nca_mesh_frame + 1, nca_store_hash());
        nca_mesh_frame[5] = (uint8_t)m.seq;
        nca_mesh_frame[6] = (uint8_t)(m.seq >> 8);
        nca_mesh_frame[7] = f;
        nca_mesh_frame[8] = nca_mesh_status.x;
        nca_mesh_frame[9] = nca_mesh_status.y;
        nca_mesh_frame[10] = nca_mesh_status.run;
        nca_mesh_frame[11] = relay;
        memcpy(nca_mesh_frame + n, nca_mesh_cell.state, NCA_CHANNELS);
        n += NCA_CHANNELS;
        if (relay) {
            memcpy(nca_mesh_frame + n, nca_mesh_cell.inbox + NCA_CHANNELS * SLOT_W, NCA_CHANNELS);
            memcpy(nca_mesh_frame + n + NCA_CHANNELS, nca_mesh_cell.inbox + NCA_CHANNELS * SLOT_E, NCA_CHANNELS);
            n += 2 * NCA_CHANNELS;
        }
        len = nca_frame_encode(nca_mesh_frame, n, wire);
        for (c = 0; c < m.p.copies; c++)
            if (nca_mesh_send(nca_mesh_port(f), wire, len))
                nca_mesh_status.sent++;
    }
    m.seq++;
}

static void send_params(uint8_t q)
{
    uint8_t *b = nca_mesh_frame;
    b[0] = NCA_MESH_PARAMS;
    b[1] = nca_mesh_face(q);
    b[2] = nca_mesh_status.x;
    b[3] = nca_mesh_status.y;
    b[4] = nca_mesh_status.run;
    nca_put32(b + 5, m.p.seed);
    b[9] = m.p.width;
    b[10] = m.p.height;
    b[11] = m.p.seed_x;
    b[12] = m.p.seed_y;
    b[13] = m.p.clock;
    nca_put32(b + 14, m.p.mean_ticks);
    nca_put32(b + 18, m.p.jitter_ticks);
    memcpy(b + 22, m.p.seed_state, NCA_CHANNELS);
    memcpy(b + 38, m.p.seed_resid, NCA_MESH_RESID_BYTES);
    b[46] = m.p.copies;
    nca_put32(b + 47, m.p.seed_hash);
    nca_mesh_payload(q, NCA_MESH_PARAMS_BYTES);
}

/* ------------------------------------------------------------ the run */
#define FLAGS nca_mesh_status.flags
#define HAS(flag) (FLAGS & NCA_MESH_FLAG_##flag)

static void show(void)
{
    uint8_t rgb[3];
    memcpy(nca_mesh_status.state, nca_mesh_cell.state, NCA_CHANNELS);
#if NCA_HAS_RESID
    memcpy(nca_mesh_status.resid, nca_mesh_cell.resid, NCA_MESH_RESID_BYTES);
#endif
    if (HAS(MIRRORED)) {
        nca_mesh_led(mirrored_rgb);
        return;
    }
    nca_cell_rgb(nca_mesh_cell.state, rgb);
    nca_mesh_led(rgb);
}

static uint8_t zero(const int8_t *v, uint8_t n)
{
    uint8_t c;
    for (c = 0; c < n; c++)
        if (v[c])
            return 0;
    return 1;
}

static uint8_t all_zero(void)
{
    return zero(nca_mesh_cell.state, NCA_CHANNELS);
}

/* schedule wake k from `from`, when the board runs and knows where it is */
static void schedule(uint32_t from)
{
    if (!HAS(RUNNING) || !HAS(COORDS) || nca_store_active() < 0)
        return;
    m.next_wake = from + interval(m.wake_k);
    m.scheduled = 1;
    FLAGS &= (uint8_t)~NCA_MESH_FLAG_ASLEEP;
}

/* the cell's place is known: key its draws, and take the seed if it is the seed board */
static void place(void)
{
    uint32_t cell = (uint32_t)nca_mesh_status.y * m.p.width + nca_mesh_status.x;
    m.key = prefix(m.p.seed, NCA_RNG_WAKE, cell);
    m.init_key = prefix(m.p.seed, NCA_RNG_INIT, cell);
    if (nca_mesh_status.x == m.p.seed_x && nca_mesh_status.y == m.p.seed_y && m.p.seed_hash == nca_store_hash()) {
        memcpy(nca_mesh_cell.state, m.p.seed_state, NCA_CHANNELS);
#if NCA_HAS_RESID
        memcpy(nca_mesh_cell.resid, m.p.seed_resid, NCA_MESH_RESID_BYTES);
#endif
        show();
        send_state();             /* the boot-time exchange: the neighbours know the seed */
    }
    if (all_zero())
        FLAGS |= NCA_MESH_FLAG_ASLEEP;   /* until a neighbour's state arrives */
    else
        schedule(nca_mesh_ticks());
}

static void set_coords(uint8_t x, uint8_t y)
{
    if (HAS(COORDS) && x == nca_mesh_status.x && y == nca_mesh_status.y)
        return;
    nca_mesh_status.x = x;
    nca_mesh_status.y = y;
    FLAGS |= NCA_MESH_FLAG_COORDS;
    if (HAS(RUNNING))
        place();
}

/* learn the place from a neighbour's: it is behind grid face f */
static void learn_coords(uint8_t f, uint8_t sx, uint8_t sy)
{
    if (HAS(COORDS) || f == NCA_MESH_UNKNOWN || sx == NCA_MESH_UNKNOWN || sy == NCA_MESH_UNKNOWN)
        return;
    set_coords((uint8_t)(sx - face_dx[f]), (uint8_t)(sy - face_dy[f]));
}

static uint8_t votes(uint8_t mount)
{
    uint8_t q, n = 0;
    for (q = 0; q < NCA_FACES; q++)
        n = (uint8_t)(n + (m.port[q].faces == face_of(mount, q)));
    return n;
}

/* The mount that the most neighbours agree on (a tie keeps the one the board has, else
 * the unmirrored one): every neighbour's frame says which grid face it came out of, so
 * the port it arrived on faces the opposite one. A port that disagrees is miswired; a
 * mount that only a mirror image explains (the ports' order reversed) is reported, and
 * the board takes no part in the pattern: it stays an empty cell that still relays. */
static void orient(void)
{
    uint8_t h, best = m.mount, most = m.oriented ? votes(m.mount) : 0;
    for (h = 0; h < 8; h++) {
        uint8_t mount = (uint8_t)((h & 3) | (h & 4 ? NCA_MESH_MOUNT_MIRRORED : 0)), n = votes(mount);
        if (n > most) {
            best = mount;
            most = n;
        }
    }
    if (!most || (m.oriented && best == m.mount))
        return;
    if (m.oriented) {             /* what it learned through the old mount is wrong */
        memset(nca_mesh_cell.inbox, 0, sizeof nca_mesh_cell.inbox);
        FLAGS &= (uint8_t)~NCA_MESH_FLAG_COORDS;
        nca_mesh_status.x = nca_mesh_status.y = NCA_MESH_UNKNOWN;
        m.scheduled = 0;
    }
    m.mount = best;
    m.oriented = 1;
    FLAGS = (uint8_t)((FLAGS & ~(NCA_MESH_FLAG_MIRRORED | NCA_MESH_FLAG_ROT_MASK)) |
                      ((best & 3) << NCA_MESH_FLAG_ROT_SHIFT) | (MIRRORED(best) ? NCA_MESH_FLAG_MIRRORED : 0));
    if (HAS(MIRRORED)) {
        memset(nca_mesh_cell.state, 0, NCA_CHANNELS);
#if NCA_HAS_RESID
        memset(nca_mesh_cell.resid, 0, NCA_MESH_RESID_BYTES);
#endif
        show();
    }
}

/* a frame on port q came out of the sender's grid face sf */
static void observe(uint8_t q, uint8_t sf)
{
    uint8_t g;
    if (sf >= NCA_FACES)
        return;
    m.port[q].faces = OPPOSITE(sf);
    if (!m.fixed)
        orient();
    FLAGS &= (uint8_t)~NCA_MESH_FLAG_MISWIRED;   /* the flag says what the wires are now */
    for (g = 0; g < NCA_FACES; g++)
        if (disagrees(g))
            FLAGS |= NCA_MESH_FLAG_MISWIRED;
}

static void wake(void)
{
    uint8_t r;
    if (HAS(MIRRORED)) {          /* an empty cell: it only relays, while a neighbour lives */
        if (zero(nca_mesh_cell.inbox, sizeof nca_mesh_cell.inbox)) {
            m.scheduled = 0;
            FLAGS |= NCA_MESH_FLAG_ASLEEP;
            return;
        }
        send_state();
        m.wake_k++;
        m.next_wake += interval(m.wake_k);
        return;
    }
    nca_mesh_status.wakes++;
    nca_mesh_mark(NCA_MESH_MARK_WAKE_IN);
    r = nca_cell_update(&nca_mesh_cell, NULL);
    nca_mesh_mark(NCA_MESH_MARK_WAKE_OUT);
    m.wake_k++;
    if (r == NCA_DORMANT) {       /* dead, and every neighbour it knows is dead: sleep */
        m.scheduled = 0;
        FLAGS |= NCA_MESH_FLAG_ASLEEP;
        return;
    }
    if (r == NCA_UPDATED)
        nca_mesh_status.updates++;
    show();
    send_state();
    m.next_wake += interval(m.wake_k);
}

/* The run's parameters spread by flooding, and a flood on lossy wires can die out where
 * every copy is lost: a board sends them out of every face again a few times. */
static void resend_params(void)
{
    uint8_t g;
    for (g = 0; g < NCA_FACES; g++)
        send_params(g);
    m.resends--;
    m.resend_at += NCA_MESH_PARAMS_RESEND_TICKS;
}

/* A new genome is active: the cell starts again from nothing, and the seed board takes
 * the run's seed if the seed is this genome's. */
void nca_mesh_genome_changed(void)
{
    memset(&nca_mesh_cell, 0, sizeof nca_mesh_cell);
    m.scheduled = 0;
    show();
    if (HAS(RUNNING) && HAS(COORDS) && !HAS(MIRRORED))
        place();
}

/* A neighbour spoke on port q (a STATE, or an OFFER, which every board sends soon after
 * start-up and then now and then): a board that does not run yet (it was just powered
 * on) asks it for the run, once. So a board that rebooted rejoins even where the pattern
 * is dead and no states flow. */
void nca_mesh_neighbour_heard(uint8_t q)
{
    uint32_t now = nca_mesh_ticks();
    if (HAS(RUNNING) || (m.port[q].asked && (int32_t)(now - m.port[q].asked_at) < (int32_t)NCA_MESH_OFFER_BACK_TICKS))
        return;
    m.port[q].asked = 1;
    m.port[q].asked_at = now;
    nca_mesh_frame[0] = NCA_MESH_PARAMS_REQ;
    nca_mesh_payload(q, 1);
}

/* the census's view of the run: the grid's size, and whether the board knows its place */
uint8_t nca_mesh_grid(uint8_t *width, uint8_t *height)
{
    *width = m.p.width;
    *height = m.p.height;
    return (uint8_t)(HAS(COORDS) && HAS(RUNNING) && m.oriented);
}

/* ------------------------------------------------------------ receiving */
void nca_mesh_refuse(void)
{
    nca_mesh_status.refused++;
}

static void miswired(void)
{
    nca_mesh_status.miswired++;
    FLAGS |= NCA_MESH_FLAG_MISWIRED;
    nca_mesh_refuse();
}

static uint8_t due(uint32_t now, uint32_t at)
{
    return (uint8_t)((int32_t)(now - at) >= 0);
}

void nca_mesh_poll(void)
{
    uint32_t now = nca_mesh_ticks();
    if (m.resends && due(now, m.resend_at))
        resend_params();
    if (m.scheduled && due(now, m.next_wake))
        wake();
    nca_genomes_poll(now);
}

static void earliest(uint32_t *tick, uint32_t at)
{
    if ((int32_t)(at - *tick) < 0)
        *tick = at;
}

uint8_t nca_mesh_next_wake(uint32_t *tick)
{
    nca_genomes_next(tick);       /* always something: the periodic offer */
    if (m.scheduled)
        earliest(tick, m.next_wake);
    if (m.resends)
        earliest(tick, m.resend_at);
    return 1;
}


/* a STATE frame on port q */
static void on_state(uint8_t q, const uint8_t *b, uint8_t n)
{
    port_t *p = &m.port[q];
    uint16_t seq = (uint16_t)(b[5] | ((uint16_t)b[6] << 8));
    uint8_t relay = b[11], f;
    if (n != NCA_MESH_STATE_HEAD + NCA_CHANNELS * (relay ? 3 : 1)) {
        nca_mesh_status.corrupt++;
        return;
    }
    if (nca_get32(b + 1) != nca_store_hash()) {       /* another model: its states mean something else */
        nca_mesh_status.foreign++;
        FLAGS |= NCA_MESH_FLAG_FOREIGN;
        nca_mesh_refuse();
        nca_genomes_offer_back(q);
        return;
    }
    observe(q, b[7]);
    f = nca_mesh_face(q);
    if (f == NCA_MESH_UNKNOWN || disagrees(q) || (relay && f != NCA_FACE_N && f != NCA_FACE_S)) {
        miswired();
        return;
    }
    if (p->seen && seq == p->last_seq)
        return;                   /* a copy of the frame it has */
    if (p->seen && seq != 0 && (int16_t)(seq - p->last_seq) <= 0) {   /* stale (seq 0: it rebooted) */
        nca_mesh_refuse();
        return;
    }
    if (p->seen && seq != 0)
        nca_mesh_status.lost += (uint16_t)(seq - p->last_seq - 1);
    p->last_seq = seq;
    p->seen = 1;
    nca_mesh_status.received++;
    memcpy(nca_mesh_cell.inbox + NCA_CHANNELS * face_slot[f], b + NCA_MESH_STATE_HEAD, NCA_CHANNELS);
    if (relay) {
        memcpy(nca_mesh_cell.inbox + NCA_CHANNELS * relay_w_slot[f], b + NCA_MESH_STATE_HEAD + NCA_CHANNELS,
               NCA_CHANNELS);
        memcpy(nca_mesh_cell.inbox + NCA_CHANNELS * relay_e_slot[f], b + NCA_MESH_STATE_HEAD + 2 * NCA_CHANNELS,
               NCA_CHANNELS);
    }
    learn_coords(f, b[8], b[9]);
    if (!HAS(RUNNING)) {          /* e.g. just powered on */
        nca_mesh_neighbour_heard(q);
        return;
    }
    if (HAS(ASLEEP))
        schedule(nca_mesh_ticks());
}

/* a PARAMS frame on port q (the host's: the sender's face unknown) */
static void on_params(uint8_t q, const uint8_t *b)
{
    uint8_t g;
    observe(q, b[1]);
    if (disagrees(q)) {
        miswired();
        return;
    }
    if (!HAS(COORDS))
        learn_coords(nca_mesh_face(q), b[2], b[3]);
    if (HAS(RUNNING) && b[4] == nca_mesh_status.run)
        return;                   /* the flood came back: already running it */
    nca_mesh_status.run = b[4];
    m.p.seed = nca_get32(b + 5);
    m.p.width = b[9];
    m.p.height = b[10];
    m.p.seed_x = b[11];
    m.p.seed_y = b[12];
    m.p.clock = b[13];
    m.p.mean_ticks = nca_get32(b + 14);
    m.p.jitter_ticks = nca_get32(b + 18);
    memcpy(m.p.seed_state, b + 22, NCA_CHANNELS);
    memcpy(m.p.seed_resid, b + 38, NCA_MESH_RESID_BYTES);
    m.p.copies = b[46] < 1 ? 1 : b[46] > NCA_MESH_MAX_COPIES ? NCA_MESH_MAX_COPIES : b[46];
    m.p.seed_hash = nca_get32(b + 47);
    memset(&nca_mesh_cell, 0, sizeof nca_mesh_cell);
    for (g = 0; g < NCA_FACES; g++) {
        m.port[g].seen = 0;
        m.port[g].asked = 0;
    }
    m.wake_k = 0;
    m.scheduled = 0;
    FLAGS |= NCA_MESH_FLAG_RUNNING;
    show();
    if (HAS(COORDS))
        place();
    for (g = 0; g < NCA_FACES; g++)   /* pass it on */
        if (g != q)
            send_params(g);
    m.resends = NCA_MESH_PARAMS_RESENDS;
    m.resend_at = nca_mesh_ticks() + NCA_MESH_PARAMS_RESEND_TICKS;
}

static void on_frame(uint8_t q, const uint8_t *b, uint8_t n)
{
    switch (b[0]) {
    case NCA_MESH_STATE:
        if (n >= NCA_MESH_STATE_HEAD)
            on_state(q, b, n);
        else
            nca_mesh_status.corrupt++;
        return;
    case NCA_MESH_PARAMS:
        if (n == NCA_MESH_PARAMS_BYTES)
            on_params(q, b);
        else
            nca_mesh_status.corrupt++;
        return;
    case NCA_MESH_STOP:
        if (n == 2 && HAS(RUNNING) && b[1] == nca_mesh_status.run) {
            uint8_t g;
            FLAGS &= (uint8_t)~NCA_MESH_FLAG_RUNNING;
            m.scheduled = 0;
            m.resends = 0;
            for (g = 0; g < NCA_FACES; g++) {   /* pass it on */
                nca_mesh_frame[0] = NCA_MESH_STOP;
                nca_mesh_frame[1] = nca_mesh_status.run;
                if (g != q)
                    nca_mesh_payload(g, 2);
            }
        }
        return;
    case NCA_MESH_PARAMS_REQ:
        if (HAS(RUNNING))
            send_params(q);
        return;
    case NCA_MESH_SET_COORD:      /* the host's board: its north is the grid's */
        if (n == 3) {
            m.mount = 0;
            m.oriented = m.fixed = 1;
            FLAGS &= (uint8_t)~(NCA_MESH_FLAG_MIRRORED | NCA_MESH_FLAG_ROT_MASK);
            set_coords(b[1], b[2]);
        }
        return;
    case NCA_MESH_STATUS_GET:
        nca_mesh_frame[0] = NCA_MESH_STATUS;
        memcpy(nca_mesh_frame + 1, &nca_mesh_status, NCA_MESH_STATUS_BYTES);
        nca_mesh_payload(q, 1 + NCA_MESH_STATUS_BYTES);
        return;
    default:
        if (!nca_genomes_rx(q, b, n))
            nca_mesh_refuse();
    }
}

void nca_mesh_rx(uint8_t q, uint8_t byte)
{
    nca_frame_rx_t *rx = &m.port[q].rx;
    uint8_t r = nca_frame_rx(rx, byte);
    if (r == NCA_FRAME_OK)
        on_frame(q, rx->buf, rx->len);
    else if (r == NCA_FRAME_BAD)
        nca_mesh_status.corrupt++;
}

void nca_mesh_init(void)
{
    uint8_t f;
    memset(&m, 0, sizeof m);
    memset(&nca_mesh_cell, 0, sizeof nca_mesh_cell);
    memset(&nca_mesh_status, 0, sizeof nca_mesh_status);
    nca_genomes_init();
    nca_mesh_status.x = NCA_MESH_UNKNOWN;
    nca_mesh_status.y = NCA_MESH_UNKNOWN;
    for (f = 0; f < NCA_FACES; f++) {
        nca_frame_rx_reset(&m.port[f].rx);
        m.port[f].faces = NCA_MESH_UNKNOWN;
    }
    show();
}
