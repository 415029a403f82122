/* nca_genomes.c - genome gossip and the census of the wired cell (nca_mesh.h, the frames
 * in firmware/MESH.md, "Genomes").  A board offers the newest genome it has to its
 * neighbours; one that runs an older genome pulls it chunk by chunk into its inactive
 * flash slot (store/nca_store.h), verifies it and activates it.  A census counts the
 * boards on each genome along a tree towards the host's board. */
#include <string.h>
#include "nca_mesh.h"
#include "nca_mesh_parts.h"
#include "nca_store.h"

#define OPPOSITE(f) ((uint8_t)(((f) + 2) & 3))

static const int8_t face_dx[NCA_FACES] = NCA_FACE_DX;
static const int8_t face_dy[NCA_FACES] = NCA_FACE_DY;

/* the genome being pulled from a neighbour */
static struct {
    uint8_t busy;
    uint8_t src, alt;             /* the port asked, and the last port that offered it */
    uint8_t misses;               /* requests unanswered in a row */
    uint32_t gen, hash;
    uint32_t req_at;              /* ask again at this tick */
} pull;

/* the census under way: the boards of this board's subtree, by genome */
typedef struct {
    uint32_t gen, hash;
    uint16_t boards;
} census_entry_t;

static struct {
    uint8_t seen;                 /* census number id has been passed on */
    uint8_t on;                   /* ... and this board's report is still due */
    uint8_t unacked;              /* ... it went, and the parent has not acknowledged it */
    uint8_t resends;              /* ... to send again at most this many times */
    uint32_t resend_at;
    uint8_t id, hx, hy;
    uint8_t parent;               /* grid face towards the host (NCA_MESH_UNKNOWN: the host port) */
    uint8_t expect, got;          /* children's faces (bit f), and those that reported */
    uint16_t boards;
    uint8_t n;
    census_entry_t e[NCA_MESH_CENSUS_ENTRIES];
    uint32_t deadline;
} census;

static uint32_t offer_at;                     /* the next OFFER out of every port ... */
static uint8_t burst;                         /* ... of a burst of this many more (else periodic) */
static uint32_t offered_at[NCA_FACES];        /* the last OFFER out of each port */
#define NOT_WAITING 0xFFFFu
static uint16_t waiting[NCA_FACES];           /* a chunk asked for on each port, not there yet */

static uint8_t due(uint32_t now, uint32_t at)
{
    return (uint8_t)((int32_t)(now - at) >= 0);
}

/* (gen, hash) is newer than the active genome: a higher generation wins, and of two
 * genomes of one generation (two hosts at once) the higher hash, so that the grid agrees */
static uint8_t newer(uint32_t gen, uint32_t hash)
{
    uint32_t g = nca_store_generation();
    if (nca_store_active() < 0)
        return 1;
    return (uint8_t)(gen > g || (gen == g && hash > nca_store_hash()));
}

/* Offer the newest genome the board has: the one it is pulling, if any (it passes on
 * the pieces it has while it pulls the rest: the genome travels through the grid as a
 * pipeline, not board after board), else its active one. */
static void send_offer(uint8_t q)
{
    if (pull.busy)
        memcpy(nca_mesh_frame + 2, nca_store_update_header(), NCA_HEADER_BYTES);
    else if (nca_store_active() >= 0)
        nca_store_active_header(nca_mesh_frame + 2);
    else
        return;
    nca_mesh_frame[0] = NCA_MESH_OFFER;
    nca_mesh_frame[1] = nca_mesh_face(q);
    nca_mesh_payload(q, NCA_MESH_OFFER_BYTES);
    offered_at[q] = nca_mesh_ticks();
}

/* Offer now out of every port, and again in a burst: an offer may be lost, and a dormant
 * neighbour sends nothing that would bring another soon. */
static void offer_all(void)
{
    uint8_t q;
    for (q = 0; q < NCA_FACES; q++)
        send_offer(q);
    burst = NCA_MESH_OFFER_BURST - 1;
    offer_at = nca_mesh_ticks() + NCA_MESH_OFFER_BURST_TICKS;
}

/* the neighbour behind port q runs another genome: tell it of ours, now and then */
void nca_genomes_offer_back(uint8_t q)
{
    if (!due(nca_mesh_ticks(), offered_at[q] + NCA_MESH_OFFER_BACK_TICKS))
        return;
    send_offer(q);
}

static void request_chunk(void)
{
    uint32_t next = nca_store_next();
    nca_mesh_frame[0] = NCA_MESH_CHUNK_REQ;
    nca_put32(nca_mesh_frame + 1, pull.gen);
    nca_put32(nca_mesh_frame + 5, pull.hash);
    nca_mesh_frame[9] = (uint8_t)next;
    nca_mesh_frame[10] = (uint8_t)(next >> 8);
    nca_mesh_payload(pull.src, NCA_MESH_CHUNK_REQ_BYTES);
    pull.req_at = nca_mesh_ticks() + NCA_MESH_CHUNK_TIMEOUT_TICKS;
}

static void show_genome(void)
{
    nca_mesh_status.generation = nca_store_generation();
    nca_mesh_status.model_hash = nca_store_hash();
}

/* Chunk `off` out of port q, from the active genome if that is the one being pulled from
 * here, else from the one this board is pulling if that chunk is written already;
 * 0 if it has not got it (yet). */
static uint8_t serve(uint8_t q, uint16_t off, uint32_t gen, uint32_t hash)
{
    uint8_t n = (uint8_t)(NCA_GENOME_BYTES - off < NCA_LINK_CHUNK ? NCA_GENOME_BYTES - off : NCA_LINK_CHUNK);
    uint8_t active = (uint8_t)(nca_store_active() >= 0 && gen == nca_store_generation() && hash == nca_store_hash());
    if (!active && !(pull.busy && gen == pull.gen && hash == pull.hash && off + n <= nca_store_next()))
        return 0;
    nca_mesh_frame[0] = NCA_MESH_CHUNK;
    nca_put32(nca_mesh_frame + 1, gen);
    nca_put32(nca_mesh_frame + 5, hash);
    nca_mesh_frame[9] = (uint8_t)off;
    nca_mesh_frame[10] = (uint8_t)(off >> 8);
    if (active)
        nca_store_read((uint16_t)(NCA_SLOT_GENOME_OFFSET + off), nca_mesh_frame + NCA_MESH_CHUNK_HEAD, n);
    else
        nca_store_read_update((uint16_t)(NCA_SLOT_GENOME_OFFSET + off), nca_mesh_frame + NCA_MESH_CHUNK_HEAD, n);
    nca_mesh_payload(q, (uint8_t)(NCA_MESH_CHUNK_HEAD + n));
    return 1;
}

/* A new genome is active: the cell starts again from nothing (nca_mesh.c), or keeps its
 * state if the genome's header says it may (a genome made to carry on the pattern); the
 * neighbours that run the old one are refused (the hash in their frames), and hear of
 * the new one at once. */
static void activated(void)
{
    uint8_t q, h[NCA_HEADER_BYTES];
    show_genome();
    nca_mesh_status.activations++;
    nca_mesh_status.genome_bytes = 0;
    nca_mesh_status.flags &= (uint8_t)~NCA_MESH_FLAG_FOREIGN;   /* frames of the old genome were */
    nca_store_active_header(h);
    if (h[H_FLAGS] & NCA_HEADER_KEEP_STATE)
        nca_mesh_genome_changed();
    offer_all();
    for (q = 0; q < NCA_FACES; q++)       /* every chunk is there now */
        if (waiting[q] != NOT_WAITING && serve(q, waiting[q], nca_store_generation(), nca_store_hash()))
            waiting[q] = NOT_WAITING;
}

/* an OFFER on port q */
static void on_offer(uint8_t q, const uint8_t *b)
{
    const uint8_t *h = b + 2;
    uint32_t gen, hash;
    uint8_t i, same = 1;
    /* b[1], the sender's face, is not a vote for the mount: offers go out at start-up,
     * before the grid's orientation has spread from the host's board, and a genome is
     * the same whichever way round a board is */
    if (!nca_store_header_ok(h) || nca_rd32(h + H_LEN) != NCA_GENOME_BYTES) {
        nca_mesh_status.corrupt++;
        return;
    }
    nca_mesh_neighbour_heard(q);
    gen = nca_rd32(h + H_GEN);
    hash = nca_rd32(h + H_HASH);
    if (!newer(gen, hash)) {
        if (gen != nca_store_generation() || hash != nca_store_hash())
            nca_genomes_offer_back(q);        /* the neighbour is behind */
        return;
    }
    if (pull.busy && gen == pull.gen && hash == pull.hash) {
        pull.alt = q;             /* another source of what it is pulling */
        return;
    }
    if (pull.busy && (gen < pull.gen || (gen == pull.gen && hash < pull.hash)))
        return;                   /* already pulling a newer one */
    if (nca_slot_writer() == NCA_WRITER_NONE)
        return;
    for (i = 0; i < NCA_HEADER_BYTES; i++)
        if (nca_store_update_header()[i] != h[i])
            same = 0;
    if (!(nca_store_open() && same))   /* else: resume where it stopped (it gave up, or lost the source) */
        nca_store_begin(h);
    pull.busy = 1;
    pull.src = pull.alt = q;
    pull.misses = 0;
    pull.gen = gen;
    pull.hash = hash;
    for (i = 0; i < NCA_FACES; i++)
        waiting[i] = NOT_WAITING;
    request_chunk();
    offer_all();                  /* the neighbours may pull from it at once */
}

/* a CHUNK_REQ on port q: answered now, or when the chunk arrives if it is one of the
 * genome this board is pulling (a neighbour that pulls it from here keeps pace) */
static void on_chunk_req(uint8_t q, const uint8_t *b)
{
    uint16_t off = (uint16_t)(b[9] | ((uint16_t)b[10] << 8));
    uint32_t gen = nca_get32(b + 1), hash = nca_get32(b + 5);
    if (off % NCA_LINK_CHUNK != 0 || off >= NCA_GENOME_BYTES) {
        nca_mesh_refuse();
        return;
    }
    if (!serve(q, off, gen, hash) && pull.busy && gen == pull.gen && hash == pull.hash)
        waiting[q] = off;
}

/* a CHUNK: written if it is the next piece of the genome being pulled; the last one
 * is verified (CRC32, and that the cell can run it) and activated */
static void on_chunk(const uint8_t *b, uint8_t n)
{
    uint16_t off = (uint16_t)(b[9] | ((uint16_t)b[10] << 8));
    uint32_t crc;
    uint8_t q;
    if (!pull.busy || nca_get32(b + 1) != pull.gen || nca_get32(b + 5) != pull.hash || off != nca_store_next())
        return;                   /* late, a duplicate, or another genome's */
    if (nca_store_write(off, b + NCA_MESH_CHUNK_HEAD, (uint8_t)(n - NCA_MESH_CHUNK_HEAD)) != NCA_OK) {
        nca_mesh_status.corrupt++;
        return;
    }
    pull.misses = 0;
    nca_mesh_status.genome_bytes = (uint16_t)nca_store_next();
    for (q = 0; q < NCA_FACES; q++)       /* the neighbours that asked for it */
        if (waiting[q] == off && serve(q, off, pull.gen, pull.hash))
            waiting[q] = NOT_WAITING;
    if (nca_store_next() < NCA_GENOME_BYTES) {
        request_chunk();
        return;
    }
    pull.busy = 0;
    if (nca_store_verify(&crc) != NCA_OK || nca_store_commit(pull.gen) != NCA_OK) {
        nca_store_close();        /* a bad genome: never activated; the next offer starts again */
        nca_mesh_status.corrupt++;
        show_genome();
        return;
    }
    activated();
}

/* ------------------------------------------------------------ census */
static int8_t towards(uint8_t from, uint8_t to)
{
    return (int8_t)(to > from ? 1 : to < from ? -1 : 0);
}

/* the grid face towards the host's board (the boards' tree: along the row to the host's
 * column, then along the column) from (x, y); NCA_MESH_UNKNOWN at the host's board */
static uint8_t parent_face(uint8_t x, uint8_t y)
{
    int8_t dx = towards(x, census.hx), dy = towards(y, census.hy);
    if (dx)
        return dx > 0 ? NCA_FACE_E : NCA_FACE_W;
    if (dy)
        return dy > 0 ? NCA_FACE_S : NCA_FACE_N;
    return NCA_MESH_UNKNOWN;
}

static uint8_t span(uint8_t from, uint8_t to_edge_of, int8_t dir)
{
    return (uint8_t)(dir > 0 ? to_edge_of - 1 - from : from);
}

/* hops from board (x, y) of a width x height grid to the farthest board of its subtree */
static uint16_t depth(uint8_t x, uint8_t y, uint8_t width, uint8_t height)
{
    uint8_t row = (uint8_t)(census.hx > width - 1 - census.hx ? census.hx : width - 1 - census.hx);
    if (x != census.hx)
        return span(x, width, (int8_t)-towards(x, census.hx));
    if (y != census.hy)
        return (uint16_t)(span(y, height, (int8_t)-towards(y, census.hy)) + row);
    return (uint16_t)((census.hy > height - 1 - census.hy ? census.hy : height - 1 - census.hy) + row);
}

static void census_add(uint32_t gen, uint32_t hash, uint16_t boards)
{
    uint8_t i;
    census.boards = (uint16_t)(census.boards + boards);
    for (i = 0; i < census.n; i++)
        if (census.e[i].gen == gen && census.e[i].hash == hash) {
            census.e[i].boards = (uint16_t)(census.e[i].boards + boards);
            return;
        }
    if (census.n < NCA_MESH_CENSUS_ENTRIES) {   /* more genomes than entries: counted in boards only */
        census.e[census.n].gen = gen;
        census.e[census.n].hash = hash;
        census.e[census.n].boards = boards;
        census.n++;
    }
}

static void send_report(void)
{
    /* the host's board reports to the host: its USART0, port W whichever way it faces */
    uint8_t i, n = NCA_MESH_CENSUS_HEAD, q = census.parent == NCA_MESH_UNKNOWN ? NCA_FACE_W : nca_mesh_port(census.parent);
    nca_mesh_frame[0] = NCA_MESH_CENSUS;
    nca_mesh_frame[1] = census.id;
    nca_mesh_frame[2] = (uint8_t)census.boards;
    nca_mesh_frame[3] = (uint8_t)(census.boards >> 8);
    for (i = 0; i < census.n; i++, n = (uint8_t)(n + NCA_MESH_CENSUS_ENTRY)) {
        nca_put32(nca_mesh_frame + n, census.e[i].gen);
        nca_put32(nca_mesh_frame + n + 4, census.e[i].hash);
        nca_mesh_frame[n + 8] = (uint8_t)census.e[i].boards;
        nca_mesh_frame[n + 9] = (uint8_t)(census.e[i].boards >> 8);
    }
    nca_mesh_payload(q, n);
    census.resend_at = nca_mesh_ticks() + NCA_MESH_CENSUS_RESEND_TICKS;
}

/* the subtree's count to the parent, again until it acknowledges it */
static void census_report(void)
{
    census.on = 0;
    census.unacked = 1;
    census.resends = NCA_MESH_CENSUS_RESENDS;
    send_report();
}

/* a CENSUS_REQ (copied into nca_mesh_frame, which then passes it on) on port q */
static void on_census_req(uint8_t q, const uint8_t *b)
{
    uint8_t f, x = nca_mesh_status.x, y = nca_mesh_status.y, width, height, placed;
    if (census.seen && census.id == b[1])
        return;                   /* the flood came back */
    census.seen = 1;
    census.unacked = 0;
    census.id = b[1];
    census.hx = b[2];
    census.hy = b[3];
    for (f = 0; f < NCA_FACES; f++)   /* pass it on */
        if (f != q)
            nca_mesh_payload(f, NCA_MESH_CENSUS_REQ_BYTES);
    census.on = 0;
    placed = nca_mesh_grid(&width, &height);
    if (!placed || census.hx >= width || census.hy >= height)
        return;                   /* it cannot place itself in the tree: missing from the count */
    census.parent = parent_face(x, y);
    census.expect = census.got = 0;
    for (f = 0; f < NCA_FACES; f++) {
        int16_t cx = (int16_t)(x + face_dx[f]), cy = (int16_t)(y + face_dy[f]);
        if (cx >= 0 && cy >= 0 && cx < width && cy < height && parent_face((uint8_t)cx, (uint8_t)cy) == OPPOSITE(f))
            census.expect |= (uint8_t)(1u << f);
    }
    census.n = 0;
    census.boards = 0;
    census_add(nca_store_generation(), nca_store_hash(), 1);
    census.deadline = nca_mesh_ticks() + (uint32_t)NCA_MESH_CENSUS_WAIT_TICKS * (depth(x, y, width, height) + 1u);
    census.on = 1;
    if (!census.expect)
        census_report();
}

/* a child's report (the payload in b, n bytes) on port q */
static void on_census(uint8_t q, const uint8_t *b, uint8_t n)
{
    uint8_t f = nca_mesh_face(q), i;
    if (!census.seen || b[1] != census.id)
        return;                   /* another census's */
    nca_mesh_frame[0] = NCA_MESH_CENSUS_ACK;   /* the child may stop sending it, counted or not */
    nca_mesh_frame[1] = census.id;
    nca_mesh_payload(q, 2);
    if (!census.on || f == NCA_MESH_UNKNOWN || !(census.expect & (1u << f)) || (census.got & (1u << f)))
        return;                   /* late (reported without it), or a copy */
    census.got |= (uint8_t)(1u << f);
    for (i = NCA_MESH_CENSUS_HEAD; i + NCA_MESH_CENSUS_ENTRY <= n; i = (uint8_t)(i + NCA_MESH_CENSUS_ENTRY))
        census_add(nca_get32(b + i), nca_get32(b + i + 4), (uint16_t)(b[i + 8] | ((uint16_t)b[i + 9] << 8)));
    /* boards not in an entry (more genomes than entries) */
    {
        uint16_t listed = 0, all = (uint16_t)(b[2] | ((uint16_t)b[3] << 8));
        for (i = NCA_MESH_CENSUS_HEAD; i + NCA_MESH_CENSUS_ENTRY <= n; i = (uint8_t)(i + NCA_MESH_CENSUS_ENTRY))
            listed = (uint16_t)(listed + (b[i + 8] | ((uint16_t)b[i + 9] << 8)));
        census.boards = (uint16_t)(census.boards + (all - listed));
    }
    if (census.got == census.expect)
        census_report();
}

void nca_genomes_poll(uint32_t now)
{
    uint8_t q;
    if (pull.busy && due(now, pull.req_at)) {
        if (++pull.misses >= NCA_MESH_CHUNK_GIVE_UP) {
            pull.busy = 0;        /* the store keeps what it has: the next offer resumes */
        } else {
            pull.src = pull.alt;
            request_chunk();
        }
    }
    if (due(now, offer_at)) {
        for (q = 0; q < NCA_FACES; q++)
            send_offer(q);
        offer_at = now + (burst ? NCA_MESH_OFFER_BURST_TICKS : NCA_MESH_OFFER_TICKS);
        if (burst)
            burst--;
    }
    if (census.on && due(now, census.deadline))
        census_report();          /* a child did not report in time: without it */
    if (census.unacked && due(now, census.resend_at)) {
        if (census.resends) {
            census.resends--;
            send_report();
        } else {
            census.unacked = 0;   /* the parent is gone: it counted without this subtree */
        }
    }
}

void nca_genomes_next(uint32_t *tick)
{
    *tick = offer_at;
    if (pull.busy && (int32_t)(pull.req_at - *tick) < 0)
        *tick = pull.req_at;
    if (census.on && (int32_t)(census.deadline - *tick) < 0)
        *tick = census.deadline;
    if (census.unacked && (int32_t)(census.resend_at - *tick) < 0)
        *tick = census.resend_at;
}

uint8_t nca_genomes_rx(uint8_t q, const uint8_t *b, uint8_t n)
{
    uint8_t ok;
    switch (b[0]) {
    case NCA_MESH_OFFER:
        if ((ok = (uint8_t)(n == NCA_MESH_OFFER_BYTES)) != 0)
            on_offer(q, b);
        break;
    case NCA_MESH_CHUNK_REQ:
        if ((ok = (uint8_t)(n == NCA_MESH_CHUNK_REQ_BYTES)) != 0)
            on_chunk_req(q, b);
        break;
    case NCA_MESH_CHUNK:
        if ((ok = (uint8_t)(n > NCA_MESH_CHUNK_HEAD)) != 0)
            on_chunk(b, n);
        break;
    case NCA_MESH_CENSUS_REQ:
        if ((ok = (uint8_t)(n == NCA_MESH_CENSUS_REQ_BYTES)) != 0) {
            memcpy(nca_mesh_frame, b, n);
            on_census_req(q, nca_mesh_frame);
        }
        break;
    case NCA_MESH_CENSUS:
        if ((ok = (uint8_t)(n >= NCA_MESH_CENSUS_HEAD)) != 0)
            on_census(q, b, n);
        break;
    case NCA_MESH_CENSUS_ACK:
        if ((ok = (uint8_t)(n == 2)) != 0 && census.unacked && b[1] == census.id)
            census.unacked = 0;
        break;
    default:
        return 0;
    }
    if (!ok)
        nca_mesh_status.corrupt++;
    return 1;
}

void nca_genomes_init(void)
{
    memset(&pull, 0, sizeof pull);
    memset(&census, 0, sizeof census);
    memset(offered_at, 0, sizeof offered_at);
    memset(waiting, 0xFF, sizeof waiting);
    burst = 0;
    nca_store_scan();
    show_genome();
    /* the first offer soon after start-up: a neighbour with a newer genome answers with
     * its own, so a board that rebooted (or missed a spread) catches up at once */
    offer_at = nca_mesh_ticks() + NCA_MESH_CHUNK_TIMEOUT_TICKS;
}
