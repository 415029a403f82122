/* nca_mesh.h - a cell of a swarm wired to its neighbours, with no host in the loop.
 *
 * The board is wired to its 4 orthogonal neighbours, one UART per face (N E S W).
 * It wakes on its own timer, runs the cell core on what it last received from each
 * neighbour, and pushes its int8 state out of every face (unacknowledged, latest
 * wins); frames sent north and south also carry its latest W and E states, which
 * gives the receiver its diagonals. It learns its grid coordinates and its mount
 * (which way round it is: every frame names the grid face it left by) from its
 * neighbours, and the run's parameters reach it through the grid. Its genome is in
 * one of two flash slots (store/nca_store.h): a newer one offered by a neighbour is
 * pulled chunk by chunk into the other slot, verified and activated (genome gossip),
 * and a census counts the boards on each genome.
 * Frames and ids: nca_mesh_ids.h (generated from boards/mesh_protocol.py);
 * firmware/MESH.md tells the whole protocol.
 *
 * Portable C99, no malloc, no floats. The port feeds received bytes to
 * nca_mesh_rx(), calls nca_mesh_poll() whenever it is awake, sleeps until
 * nca_mesh_next_wake() or the next byte, and provides the hooks below. */
#ifndef NCA_MESH_H
#define NCA_MESH_H

#include <stdint.h>
#include "nca_cell.h"
#include "nca_mesh_ids.h"
#include "nca_store.h"

/* A compile-time check: a false cond makes an array of size -1. */
#define NCA_MESH_ASSERT(name, cond) typedef char nca_mesh_assert_##name[(cond) ? 1 : -1]

/* What a board knows of itself: in RAM (the emulated grid's camera reads it) and the
 * STATUS reply, byte for byte (boards/mesh_protocol.py STATUS_STRUCT). */
typedef struct {
    int8_t state[NCA_CHANNELS];
    uint8_t resid[NCA_MESH_RESID_BYTES];   /* the error-feedback remainders (zero without) */
    uint8_t x, y, run, flags;              /* NCA_MESH_FLAG_* */
    uint32_t wakes, updates, sent, received, corrupt, refused, lost;
    uint16_t miswired, foreign;
    uint32_t generation, model_hash;       /* the active genome's (0, 0: none) */
    uint16_t genome_bytes;                 /* of a genome being pulled (0: none) */
    uint16_t activations;                  /* genomes pulled and activated since power-on */
} nca_mesh_status_t;

extern nca_mesh_status_t nca_mesh_status;
extern nca_cell_t nca_mesh_cell;

/* ---- provided by the port */
uint32_t nca_mesh_ticks(void);                                 /* a free-running NCA_MESH_TICK_US timer */
/* queue one encoded frame out of port q (the board's own N E S W, NCA_FACE_*); 0 if it
 * does not fit (the frame is dropped: latest wins, the next wake sends a newer one) */
uint8_t nca_mesh_send(uint8_t q, const uint8_t *bytes, uint8_t n);
void nca_mesh_led(const uint8_t *rgb);                         /* the cell's colour, after each wake */
void nca_mesh_mark(uint8_t mark);                              /* NCA_MESH_MARK_*: the replay's taps */

/* ---- the cell */
void nca_mesh_init(void);
void nca_mesh_rx(uint8_t q, uint8_t byte);      /* a byte that arrived on port q */
void nca_mesh_poll(void);              /* runs the wake when it is due */
/* 1 and the tick of the next wake, or 0 while no wake is scheduled (stopped, asleep) */
uint8_t nca_mesh_next_wake(uint32_t *tick);

#endif
