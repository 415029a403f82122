/* nca_host.c - the cell core as a shared library for ctypes (sim's "firmware"
 * backend and the tests): batches of independent cells, and one swarm cell
 * straight from the simulator's float32 arrays (one call per wake-up). */
#include <math.h>
#include "nca_cell.h"
#include "nca_model.h"

#define CELL_BYTES (NCA_CHANNELS)
#define INBOX_BYTES (NCA_NEIGHBOURS * NCA_CHANNELS)

static void load(nca_cell_t *cell, const int8_t *state, const int8_t *inbox)
{
    int i;
    for (i = 0; i < CELL_BYTES; i++)
        cell->state[i] = state[i];
    for (i = 0; i < INBOX_BYTES; i++)
        cell->inbox[i] = inbox[i];
}

uint32_t nca_host_model_hash(void)
{
    return NCA_MODEL_HASH;
}

uint32_t nca_host_cell_bytes(void)
{
    return (uint32_t)sizeof(nca_cell_t);
}

/* update n cells: states (n x 16) in place, inboxes (n x 128), codes (n) */
void nca_host_update_batch(int32_t n, int8_t *states, const int8_t *inboxes,
                           const nca_rotation_t *rot, uint8_t *codes)
{
    nca_cell_t cell;
    int32_t k;
    int i;
    for (k = 0; k < n; k++) {
        load(&cell, states + CELL_BYTES * k, inboxes + INBOX_BYTES * k);
        codes[k] = nca_cell_update(&cell, rot);
        for (i = 0; i < CELL_BYTES; i++)
            states[CELL_BYTES * k + i] = cell.state[i];
    }
}

/* x + dx of n cells (no alive rule) into outs (n x 16) */
void nca_host_tentative_batch(int32_t n, const int8_t *states, const int8_t *inboxes,
                              const nca_rotation_t *rot, int8_t *outs)
{
    nca_cell_t cell;
    int32_t k;
    int i;
    for (k = 0; k < n; k++) {
        load(&cell, states + CELL_BYTES * k, inboxes + INBOX_BYTES * k);
        nca_cell_tentative(&cell, rot);
        for (i = 0; i < CELL_BYTES; i++)
            outs[CELL_BYTES * k + i] = cell.state[i];
    }
}

/* the model's state formats (codegen/formats.py): channel c's value is q / 2^frac[c] */
static const unsigned char state_frac[CELL_BYTES] = NCA_STATE_FRACS;

/* steps per unit of state channel i */
static float steps(int i)
{
    return (float)(1 << state_frac[i % CELL_BYTES]);
}

static int8_t q(float v, int i)
{
    long r = lrintf(v * steps(i));   /* round half to even */
    return (int8_t)(r > 127 ? 127 : (r < -128 ? -128 : r));
}

static void gather(nca_cell_t *cell, int32_t c, const float *state, const float *inbox)
{
    int i;
    for (i = 0; i < CELL_BYTES; i++)
        cell->state[i] = q(state[CELL_BYTES * c + i], i);
    for (i = 0; i < INBOX_BYTES; i++)
        cell->inbox[i] = q(inbox[INBOX_BYTES * c + i], i);
}

/* One wake-up of swarm cell c on float32 arrays state (N x 16) and inbox (N x 8 x 16). */
int32_t nca_host_wakeup_f32(int32_t c, float *state, const float *inbox, const nca_rotation_t *rot)
{
    nca_cell_t cell;
    uint8_t r;
    int i;
    gather(&cell, c, state, inbox);
    r = nca_cell_update(&cell, rot);
    if (r != NCA_DORMANT)
        for (i = 0; i < CELL_BYTES; i++)
            state[CELL_BYTES * c + i] = (float)cell.state[i] / steps(i);
    return r;
}

/* out[c] = state[c] + dx of swarm cell c (lockstep phase A) */
void nca_host_tentative_f32(int32_t c, const float *state, const float *inbox,
                            const nca_rotation_t *rot, float *out)
{
    nca_cell_t cell;
    int i;
    gather(&cell, c, state, inbox);
    nca_cell_tentative(&cell, rot);
    for (i = 0; i < CELL_BYTES; i++)
        out[CELL_BYTES * c + i] = (float)cell.state[i] / steps(i);
}
