/* nca_cell.h - the fixed-point cell core of a Growing Neural Cellular Automaton.
 *
 * One cell = one nca_cell_t: its own state (16 x int8), the last state received
 * from each of its 8 neighbours (slot order NW N NE W E SW S SE, as
 * sim.model.NEIGHBOUR_OFFSETS) and the scratch the update needs, so that the
 * whole RAM of a cell is sizeof(nca_cell_t) plus the stack of one call.
 * A state channel is int8: RGBA Q0.7 (value = q / 128, range -1 .. 0.992), each
 * of the 12 hidden channels Q3.4, Q2.5 or Q1.6 as the model's quantiser chose
 * (the scales are folded into the weights: the core does not read them).
 * A model with error feedback (NCA_EF_BITS = 4) keeps 4 more bits of each own
 * channel in resid (two per byte): the own value is state * 16 + its nibble;
 * the int8 state is still all that the network and the neighbours see.
 *
 * Portable C99: no malloc, no floats, explicit int32_t (AVR's int is 16 bits).
 * The arithmetic is specified in codegen/formats.py and reproduced bit for bit
 * by the golden model (codegen/golden.py); the model's tables and constants come
 * from the generated nca_model.h / nca_model.c, or in the link firmware from
 * link/nca_model.h (the genome in a flash slot): the include path picks which.
 */
#ifndef NCA_CELL_H
#define NCA_CELL_H

#include <stdint.h>
#include "nca_model.h"   /* NCA_EF_BITS */

/* the own state's error-feedback nibbles: the board firmware with the cell link
 * (which learns the format at run time) always has them */
#ifndef NCA_HAS_RESID
#define NCA_HAS_RESID NCA_EF_BITS
#endif

#define NCA_CHANNELS 16
#define NCA_NEIGHBOURS 8
#define NCA_ALPHA 3

/* nca_cell_update results (sim.cell_backends DORMANT / ZEROED / UPDATED) */
#define NCA_DORMANT 0
#define NCA_ZEROED 1
#define NCA_UPDATED 2

typedef struct {
    int8_t state[NCA_CHANNELS];                  /* own state */
    int8_t grad[2 * NCA_CHANNELS];               /* scratch: x and y gradients (perception = state..grad) */
    int16_t acc[NCA_CHANNELS];                   /* scratch: output accumulators */
    int8_t inbox[NCA_NEIGHBOURS * NCA_CHANNELS]; /* last state received from neighbour slot s at [16 s] */
#if NCA_HAS_RESID
    uint8_t resid[NCA_CHANNELS / 2];             /* error feedback: channel c's low 4 bits in byte c/2,
                                                    the high nibble for odd c */
#endif
} nca_cell_t;

/* Perception rotation: cos and sin of the angle in Q14 (16384 = 1.0). */
typedef struct {
    int16_t cos_q14;
    int16_t sin_q14;
} nca_rotation_t;

/* One asynchronous wake-up on what the cell knows; rot may be NULL (no rotation).
 * Returns NCA_DORMANT (nothing to do), NCA_ZEROED or NCA_UPDATED. */
uint8_t nca_cell_update(nca_cell_t *cell, const nca_rotation_t *rot);

/* Lockstep phase A: state += dx (saturating), no alive rule. */
void nca_cell_tentative(nca_cell_t *cell, const nca_rotation_t *rot);

/* LED colour: RGB channels clamped to 0..1 and scaled to 0..255. */
void nca_cell_rgb(const int8_t *state, uint8_t *rgb);

#endif
