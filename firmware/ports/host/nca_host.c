/* nca_host.c - the cell core as a shared library for ctypes (sim's "firmware"
 * backend and the tests): batches of independent cells, and one swarm cell
 * straight from the simulator's float32 arrays (one call per wake-up).
 * A cell's own state crosses this interface whole: in units of 2^-NCA_EF_BITS
 * state steps (int16; the int8 state itself without error feedback). */
#include <math.h>
#include "nca_cell.h"
#include "nca_model.h"

#define CELL_BYTES (NCA_CHANNELS)
#define INBOX_BYTES (NCA_NEIGHBOURS * NCA_CHANNELS)

/* own value v (2^-NCA_EF_BITS steps) -> state and nibble */
static void put_own(nca_cell_t *cell, int i, int16_t v)
{
    cell->state[i] = (int8_t)(v >> NCA_EF_BITS);
#if NCA_HAS_RESID
    if (i % 2 == 0)
        cell->resid[i / 2] = (uint8_t)(v & 15);
    else
        cell->resid[i / 2] = (uint8_t)(cell->resid[i / 2] | ((v & 15) << 4));
#endif
}

static int16_t get_own(const nca_cell_t *cell, int i)
{
#if NCA_HAS_RESID
    return (int16_t)(cell->state[i] * 16 + ((cell->resid[i / 2] >> (4 * (i % 2))) & 15));
#else
    return cell->state[i];
#endif
}

static void load(nca_cell_t *cell, const int16_t *state, const int8_t *inbox)
{
    int i;
    for (i = 0; i < CELL_BYTES; i++)
        put_own(cell, i, state[i]);
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

/* update n cells: own states (n x 16) in place, inboxes (n x 128), codes (n) */
void nca_host_update_batch(int32_t n, int16_t *states, const int8_t *inboxes,
                           const nca_rotation_t *rot, uint8_t *codes)
{
    nca_cell_t cell;
    int32_t k;
    int i;
    for (k = 0; k < n; k++) {
        load(&cell, states + CELL_BYTES * k, inboxes + INBOX_BYTES * k);
        codes[k] = nca_cell_update(&cell, rot);
        for (i = 0; i < CELL_BYTES; i++)
            states[CELL_BYTES * k + i] = get_own(&cell, i);
    }
}

/* x + dx of n cells (no alive rule) into outs (n x 16) */
void nca_host_tentative_batch(int32_t n, const int16_t *states, const int8_t *inboxes,
                              const nca_rotation_t *rot, int16_t *outs)
{
    nca_cell_t cell;
    int32_t k;
    int i;
    for (k = 0; k < n; k++) {
        load(&cell, states + CELL_BYTES * k, inboxes + INBOX_BYTES * k);
        nca_cell_tentative(&cell, rot);
        for (i = 0; i < CELL_BYTES; i++)
            outs[CELL_BYTES * k + i] = get_own(&cell, i);
    }
}

/* the model's state formats (codegen/formats.py): channel c's value is q / 2^frac[c] */
static const unsigned char state_frac[CELL_BYTES] = NCA_STATE_FRACS;

/* own-state units per unit of state channel i */
static float steps(int i)
{
    return (float)(1L << (state_frac[i % CELL_BYTES] + NCA_EF_BITS));
}

static int16_t q(float v, int i)
{
    const long hi = (128L << NCA_EF_BITS) - 1, lo = -hi - 1;
    long r = lrintf(v * steps(i));   /* round half to even */
    return (int16_t)(r > hi ? hi : (r < lo ? lo : r));
}

/* a neighbour's message is its whole state; a cell sees its int8 part */
static void gather(nca_cell_t *cell, int32_t c, const float *state, const float *inbox)
{
    int i;
    for (i = 0; i < CELL_BYTES; i++)
        put_own(cell, i, q(state[CELL_BYTES * c + i], i));
    for (i = 0; i < INBOX_BYTES; i++)
        cell->inbox[i] = (int8_t)(q(inbox[INBOX_BYTES * c + i], i) >> NCA_EF_BITS);
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
            state[CELL_BYTES * c + i] = (float)get_own(&cell, i) / steps(i);
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
        out[CELL_BYTES * c + i] = (float)get_own(&cell, i) / steps(i);
}
