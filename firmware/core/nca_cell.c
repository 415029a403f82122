/* nca_cell.c - the fixed-point cell core (nca_cell.h).  The arithmetic, step by
 * step (codegen/formats.py is the specification, codegen/golden.py its model):
 *
 *  1. alive before: own alpha or a known neighbour alpha > NCA_ALIVE_Q.
 *  2. perception p[16k+c]: p[c] = x[c] (the state itself); Gx, Gy = integer Sobel
 *     sums over the 8 neighbour slots (taps 1 2 1; the /8 belongs to the format);
 *     with a rotation G' = (cos*Gx - sin*Gy + 2^13) >> 14, (sin*Gx + cos*Gy + 2^13) >> 14;
 *     p[16+c], p[32+c] = sat8((G + 2^(S-1)) >> S), S = NCA_GRAD_SHIFT.
 *  3. dense (nca_dense), hidden units streamed 4 at a time from the genome:
 *     a_j = sum_i W1[i][j] p[i]                          exact, |a_j| < 2^23
 *     h_j = clamp(((a_j + 2^(K-1)) >> K) + (b1_j << B), 0, 255)   ReLU + requantisation
 *     t_m = sum of W2[j][m] h_j over the 4 units           exact, |t_m| < 2^17
 *     acc_m += t_m >> R   (floor)                          int16; the quantiser proves no overflow
 *  4. dx_m = (acc_m * M_m + 2^(T_m-1)) >> T_m  (TFLite multiplier/shift, Q15, single rounding;
 *     the genome packs T_m into the 5 low bits of M_m, which the quantiser leaves zero)
 *     x_m = sat8(x_m + dx_m)
 *     With error feedback (E = NCA_EF_BITS = 4) the same at 16 times the resolution:
 *     v = x_m * 16 + r_m, v = clamp(v + ((acc_m * M_m + 2^(T_m-5)) >> (T_m-4)), -2048, 2047),
 *     x_m = v >> 4, r_m = v & 15 (r_m the m-th nibble of resid; the m-th is in
 *     resid[m/2], the high nibble for odd m).
 *  5. alive after: new own alpha or a known neighbour alpha > NCA_ALIVE_Q; else all zero.
 * Signed right shifts are arithmetic: GCC documents this on every target.
 */
#include "nca_cell.h"
#include "nca_model.h"

/* The genome the core reads: the compiled-in table, or (board firmware with the
 * cell link) the active flash slot, which nca_model.h then names NCA_GENOME. */
#ifndef NCA_GENOME
#define NCA_GENOME nca_genome
#endif

#if defined(__AVR__)
__extension__ typedef __int24 nca_acc_t;   /* the format bounds these sums below 2^23 */
#else
typedef int32_t nca_acc_t;
#endif

#if !defined(NCA_STEP_ASM)   /* else the port's assembly provides update, tentative and rgb */

static int8_t sat8(int16_t v)
{
    return (int8_t)(v > 127 ? 127 : (v < -128 ? -128 : v));
}

static int8_t grad_q(int16_t g)
{
    return sat8((int16_t)((g + ((1 << NCA_GRAD_SHIFT) >> 1)) >> NCA_GRAD_SHIFT));
}


#if defined(NCA_DENSE_ASM)
/* the port's assembly does the dense part: for a genome in flash (NCA_EF_RUNTIME), an
 * assembly built for the shifts NCA_KERNEL_*_SHIFT (nca_kernel.h, those of the genome
 * the board was built with), and the portable C for a genome with other shifts */
void nca_dense(nca_cell_t *cell);
#endif
#if !defined(NCA_DENSE_ASM) || defined(NCA_KERNEL_ACC_SHIFT)
static void nca_dense_c(nca_cell_t *cell)
{
    const int8_t *p = (const int8_t *)cell;   /* state[16] then grad[32]: the 48 inputs */
    const int8_t *g = &NCA_GENOME.groups[0][0];
    uint8_t j, i, u, m;

    for (m = 0; m < NCA_CHANNELS; m++)
        cell->acc[m] = NCA_RD16(&NCA_GENOME.out_bias[m]);
    for (j = 0; j < NCA_GROUPS; j++) {
        nca_acc_t a[4] = {0, 0, 0, 0};
        int16_t h[4];
        for (i = 0; i < NCA_PERCEPTION; i++) {
            int16_t v = p[i];
            a[0] += (int16_t)(NCA_RD8(g) * v);
            a[1] += (int16_t)(NCA_RD8(g + 1) * v);
            a[2] += (int16_t)(NCA_RD8(g + 2) * v);
            a[3] += (int16_t)(NCA_RD8(g + 3) * v);
            g += 4;
        }
        for (u = 0; u < 4; u++) {
            nca_acc_t v = ((a[u] + (((nca_acc_t)1 << NCA_HIDDEN_SHIFT) >> 1)) >> NCA_HIDDEN_SHIFT)
                          + (int16_t)(NCA_RD8(g + u) * (1 << NCA_BIAS_SHIFT));
            h[u] = (int16_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
        }
        g += 4;
        for (m = 0; m < NCA_CHANNELS; m++) {
            nca_acc_t t = (nca_acc_t)(int16_t)(NCA_RD8(g) * h[0]) + (int16_t)(NCA_RD8(g + 1) * h[1])
                        + (int16_t)(NCA_RD8(g + 2) * h[2]) + (int16_t)(NCA_RD8(g + 3) * h[3]);
            cell->acc[m] += (int16_t)(t >> NCA_ACC_SHIFT);
            g += 4;
        }
    }
}
#endif

/* Separate (not inlined) steps: the deepest stack is then the largest one of
 * them, not their sum, which matters within a 256-byte RAM budget. */
#if defined(__GNUC__)
#define NCA_NOINLINE __attribute__((noinline))
#else
#define NCA_NOINLINE
#endif

static NCA_NOINLINE void perceive(nca_cell_t *cell, const nca_rotation_t *rot)
{
    uint8_t c;
    for (c = 0; c < NCA_CHANNELS; c++) {
        /* the Sobel sums over the slots NW N NE W E SW S SE (taps 1 2 1), as differences */
        const int8_t *q = cell->inbox + c;
        int16_t d = (int16_t)(q[7 * NCA_CHANNELS] - q[0]);                      /* SE - NW */
        int16_t e = (int16_t)(q[2 * NCA_CHANNELS] - q[5 * NCA_CHANNELS]);       /* NE - SW */
        int16_t gx = (int16_t)(d + e + 2 * (q[4 * NCA_CHANNELS] - q[3 * NCA_CHANNELS]));   /* E - W */
        int16_t gy = (int16_t)(d - e + 2 * (q[6 * NCA_CHANNELS] - q[1 * NCA_CHANNELS]));   /* S - N */
#ifndef NCA_NO_ROTATION
        if (rot) {
            int16_t cs = rot->cos_q14, sn = rot->sin_q14;
            int16_t rx = (int16_t)(((int32_t)cs * gx - (int32_t)sn * gy + ((int32_t)1 << 13)) >> 14);
            gy = (int16_t)(((int32_t)sn * gx + (int32_t)cs * gy + ((int32_t)1 << 13)) >> 14);
            gx = rx;
        }
#else
        (void)rot;
#endif
        cell->grad[c] = grad_q(gx);
        cell->grad[NCA_CHANNELS + c] = grad_q(gy);
    }
}

#if !defined(NCA_EF_RUNTIME)   /* the link's boards read it from the genome's header */
#if NCA_EF_BITS != 0 && NCA_EF_BITS != 4
#error "error feedback keeps 4 bits (a nibble) per channel"
#endif
#endif

static NCA_NOINLINE void apply(nca_cell_t *cell)
{
    uint8_t c;
    for (c = 0; c < NCA_CHANNELS; c++) {
        uint16_t mt = (uint16_t)NCA_RD16(&NCA_GENOME.out_mt[c]);
        uint8_t t = (uint8_t)(mt & 31u);
#if NCA_HAS_RESID
        if (NCA_EF_BITS) {
            /* dx at 16 times the resolution, clamped to +-4096 (the sum below saturates
             * the same), left in acc[c] for feedback() */
            int32_t v = ((int32_t)cell->acc[c] * (int32_t)(mt & 0xFFE0u) + ((int32_t)1 << (t - 5))) >> (t - 4);
            cell->acc[c] = (int16_t)(v > 4095 ? 4095 : (v < -4096 ? -4096 : v));
            continue;
        }
#endif
        {
            int32_t v = ((int32_t)cell->acc[c] * (int32_t)(mt & 0xFFE0u) + ((int32_t)1 << (t - 1))) >> t;
            v += cell->state[c];
            cell->state[c] = (int8_t)(v > 127 ? 127 : (v < -128 ? -128 : v));
        }
    }
}

#if NCA_HAS_RESID
/* error feedback: v = clamp(state * 16 + nibble + dx, -2048, 2047), in 16-bit arithmetic
 * (a step of its own, so that its registers do not add to apply's stack frame on AVR) */
static NCA_NOINLINE void feedback(nca_cell_t *cell)
{
    uint8_t c;
    for (c = 0; c < NCA_CHANNELS; c++) {
        uint8_t *r = &cell->resid[c >> 1];
        int16_t v = (int16_t)(cell->state[c] * 16 + ((c & 1u) ? (*r >> 4) : (*r & 15)) + cell->acc[c]);
        v = (int16_t)(v > 2047 ? 2047 : (v < -2048 ? -2048 : v));
        cell->state[c] = (int8_t)(v >> 4);
        if (c & 1u)
            *r = (uint8_t)((*r & 15) | ((v & 15) << 4));
        else
            *r = (uint8_t)((*r & 0xF0) | (v & 15));
    }
}
#endif

static uint8_t alive(const nca_cell_t *cell)
{
    const int8_t *a = cell->inbox + NCA_ALPHA;
    uint8_t s;
    for (s = 0; s < NCA_NEIGHBOURS; s++, a += NCA_CHANNELS)
        if (*a > NCA_ALIVE_Q)
            return 2;
    return cell->state[NCA_ALPHA] > NCA_ALIVE_Q;
}

void nca_cell_tentative(nca_cell_t *cell, const nca_rotation_t *rot)
{
    perceive(cell, rot);
#if defined(NCA_DENSE_ASM) && defined(NCA_KERNEL_ACC_SHIFT)
    if (NCA_HIDDEN_SHIFT == NCA_KERNEL_HIDDEN_SHIFT && NCA_BIAS_SHIFT == NCA_KERNEL_BIAS_SHIFT
        && NCA_ACC_SHIFT == NCA_KERNEL_ACC_SHIFT)
        nca_dense(cell);
    else
        nca_dense_c(cell);
#elif defined(NCA_DENSE_ASM)
    nca_dense(cell);
#else
    nca_dense_c(cell);
#endif
    apply(cell);
#if NCA_HAS_RESID
    if (NCA_EF_BITS)
        feedback(cell);
#endif
}

uint8_t nca_cell_update(nca_cell_t *cell, const nca_rotation_t *rot)
{
    uint8_t c, r = NCA_DORMANT;
    if (alive(cell)) {
        nca_cell_tentative(cell, rot);
        if (alive(cell))
            return NCA_UPDATED;
        r = NCA_UPDATED;
    }
    for (c = 0; c < NCA_CHANNELS; c++) {
        if (cell->state[c] && r == NCA_DORMANT)
            r = NCA_ZEROED;
        cell->state[c] = 0;
    }
#if NCA_HAS_RESID
    for (c = 0; c < NCA_CHANNELS / 2; c++) {
        if (cell->resid[c] && r == NCA_DORMANT)
            r = NCA_ZEROED;
        cell->resid[c] = 0;
    }
#endif
    return r;
}

void nca_cell_rgb(const int8_t *state, uint8_t *rgb)
{
    uint8_t c;
    for (c = 0; c < 3; c++) {
        int16_t v = state[c] < 0 ? 0 : state[c];
#if NCA_RGBA_FRAC < 7   /* at Q0.7 an int8 never exceeds 1.0 (127/128) */
        if (v > (1 << NCA_RGBA_FRAC))
            v = 1 << NCA_RGBA_FRAC;
#endif
        rgb[c] = (uint8_t)((v * 255 + (1 << (NCA_RGBA_FRAC - 1))) >> NCA_RGBA_FRAC);
    }
}
#endif /* !NCA_STEP_ASM */
