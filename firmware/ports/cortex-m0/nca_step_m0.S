/* nca_step_m0.S - nca_cell_update, nca_cell_tentative
 * and nca_cell_rgb in ARMv6-M Thumb for the Cortex-M0, replacing the portable C
 * where NCA_STEP_ASM is defined.  Bit-exact with the C and codegen/golden.py;
 * written by hand for the budgets: about 4.7 cycles per multiply-accumulate,
 * 48,985 cycles per update (49,194 with error feedback), 24 bytes of stack,
 * 552 bytes of code (584 with error feedback).
 *
 * step (= nca_cell_tentative): r0 = cell, r1 = rot (or 0) -> cell->state updated, r0 = cell
 * cell layout: state[16] @0, grad[32] @16, acc[16] int16 @48, inbox[128] @80,
 * and with error feedback (NCA_EF_BITS = 4) resid[8] @208: channel c's 4 more bits,
 * the high nibble of byte c/2 for odd c.
 * The genome must be 4-byte aligned (nca_model.c declares it so).
 *
 * Dense part, per group of 4 hidden units (32 groups), genome stream in r1:
 *   layer 1: r3 = i - 48 indexes p = cell[0..47] from r0 = cell + 48; the four
 *            sums live in r2, r7, r12, lr, starting at 2^(K-1) (the rounding below);
 *            one word of 4 weights per input.
 *   hidden:  h = clamp(((a + 2^(K-1)) >> K) + (b1 << B), 0, 255) into r2, r7, r3, r12.
 *   layer 2: per output m, t = sum of 4 products, acc[m] += t >> R (floor: the
 *            quantiser moved the mean rounding into b2); r4 walks acc[], lr = its end.
 * Update, per output m from 15 down: x = sat8(x + dx), or with error feedback the
 * same at 16 times the resolution on v = 16 x + r (nca_cell.c, step 4).
 */
#include "nca_model.h"

#if NCA_EF_BITS && NCA_EF_BITS != 4
#error "error feedback keeps 4 bits (a nibble) per channel"
#endif

#define CELL_GRAD 16
#define CELL_ACC 48
#define CELL_INBOX 80
#define CELL_RESID 208
#define OUT_BIAS (NCA_GROUPS * NCA_GROUP_BYTES)
#define HK ((1 << NCA_HIDDEN_SHIFT) >> 1)
#define HS ((1 << NCA_GRAD_SHIFT) >> 1)

    .syntax unified
    .cpu cortex-m0
    .thumb

/* r: value -> sat8(r); t: scratch */
.macro SAT8 r, t
    movs \t, \r
    adds \t, #128
    lsrs \t, \t, #8
    beq 9f
    asrs \t, \r, #31
    movs \r, #127
    eors \r, \t
9:
.endm

/* r: value -> clamp(r, 0, 255): in range after one compare (the usual case) */
.macro CLAMP255 r
    cmp \r, #255
    bls 9f
    asrs \r, \r, #31
    mvns \r, \r
    lsrs \r, \r, #24          /* 255 above, 0 below */
9:
.endm

/* gradient sum r -> sat8((r + HS) >> S) */
.macro GRADQ r, t
#if NCA_GRAD_SHIFT > 0
    adds \r, #HS
    asrs \r, \r, #NCA_GRAD_SHIFT
#endif
    SAT8 \r, \t
.endm

/* one input of layer 1: 4 multiply-accumulates */
.macro MAC4
    ldrsb r4, [r0, r3]
    ldm r1!, {r5}
    sxtb r6, r5
    muls r6, r4, r6
    adds r2, r6
    lsls r6, r5, #16
    asrs r6, r6, #24
    muls r6, r4, r6
    adds r7, r6
    lsls r6, r5, #8
    asrs r6, r6, #24
    muls r6, r4, r6
    add r12, r6
    asrs r5, r5, #24
    muls r5, r4, r5
    add lr, r5
    adds r3, #1
.endm

/* hidden requantisation of r (the sum started at 2^(K-1), the rounding), bias byte t
 * given by the extraction */
.macro HIDDEN r, t
#if NCA_HIDDEN_SHIFT > 0
    asrs \r, \r, #NCA_HIDDEN_SHIFT
#endif
#if NCA_BIAS_SHIFT > 0
    lsls \t, \t, #NCA_BIAS_SHIFT
#endif
    adds \r, \t
    CLAMP255 \r
.endm

    .section .text.nca_core, "ax", %progbits
    .align 2

/* carry set if cell r0 is alive (own alpha or a known neighbour alpha > NCA_ALIVE_Q), else
 * clear (cmp against Q >= 0: taken bgt leaves carry set); clobbers r2, r3 only, so that
 * nca_cell_update needs no registers of its own and r1 (rot) survives */
alive:
    ldrb r2, [r0, #NCA_ALPHA_CHANNEL]
    sxtb r2, r2
    cmp r2, #NCA_ALIVE_Q
    bgt 2f
    movs r3, #(CELL_INBOX + 7 * 16 + NCA_ALPHA_CHANNEL)    /* slot 7 down to slot 0 */
1:
    ldrsb r2, [r0, r3]
    cmp r2, #NCA_ALIVE_Q
    bgt 2f
    subs r3, #16
    cmp r3, #CELL_INBOX
    bhs 1b                      /* leaves carry clear, r3 = CELL_INBOX + alpha - 16 */
2:
    bx lr

/* uint8_t nca_cell_update(nca_cell_t *cell, const nca_rotation_t *rot) */
    .global nca_cell_update
    .thumb_func
    .type nca_cell_update, %function
nca_cell_update:
    push {lr}
    bl alive
    bcs 1f
    movs r1, #0                 /* dormant: ZEROED if what it clears was not all zero */
3:  /* clear the own state (and remainders), r1 |= every byte cleared */
#if NCA_EF_BITS
    movs r3, #(CELL_RESID + 7)  /* resid[7..0], then state[15..0] */
#else
    movs r3, #15
#endif
4:
    ldrb r2, [r0, r3]
    orrs r1, r2
    movs r2, #0
    strb r2, [r0, r3]
#if NCA_EF_BITS
    cmp r3, #CELL_RESID
    bne 5f
    movs r3, #16
5:
#endif
    subs r3, #1
    bpl 4b
    adds r1, #255
    lsrs r0, r1, #8             /* r1 = 0: DORMANT, 1..255: ZEROED, 257..511: UPDATED */
    pop {pc}
1:
    bl step
    bl alive
    bcc 6f
    movs r0, #2                 /* NCA_UPDATED */
    pop {pc}
6:  /* dead after the step: UPDATED whatever is cleared, from a mark in 257..511 (no byte
     * ORed in takes it out): alive's r3 = CELL_INBOX + alpha - 16, times 4 */
    lsls r1, r3, #2
    b 3b
    .size nca_cell_update, . - nca_cell_update
#if (CELL_INBOX + NCA_ALPHA_CHANNEL - 16) * 4 < 257 || (CELL_INBOX + NCA_ALPHA_CHANNEL - 16) * 4 > 511
#error "the UPDATED mark of nca_cell_update is out of range"
#endif

/* void nca_cell_rgb(const int8_t *state, uint8_t *rgb): clamp(q, 0, 1.0) * 255, rounded */
    .global nca_cell_rgb
    .thumb_func
    .type nca_cell_rgb, %function
nca_cell_rgb:
    push {r4, lr}
    movs r2, #2
1:
    ldrsb r3, [r0, r2]
    asrs r4, r3, #31
    bics r3, r4
#if NCA_RGBA_FRAC < 7   /* at Q0.7 an int8 never exceeds 1.0 */
    cmp r3, #(1 << NCA_RGBA_FRAC)
    bls 2f
    movs r3, #(1 << NCA_RGBA_FRAC)
2:
#endif
    lsls r4, r3, #8
    subs r4, r3
    adds r4, #(1 << (NCA_RGBA_FRAC - 1))
    lsrs r4, r4, #NCA_RGBA_FRAC
    strb r4, [r1, r2]
    subs r2, #1
    bpl 1b
    pop {r4, pc}
    .size nca_cell_rgb, . - nca_cell_rgb

/* void nca_cell_tentative(nca_cell_t *cell, const nca_rotation_t *rot): the step itself,
 * which nca_cell_update calls too (and which returns r0 = cell) */
    .global nca_cell_tentative
    .thumb_func
    .type nca_cell_tentative, %function
nca_cell_tentative:
step:
    push {r4-r7, lr}

    /* ---------------- perception: channel c, r2 = &inbox[c] */
    movs r2, r0
    adds r2, #CELL_INBOX
1:
    movs r3, #112
    ldrsb r4, [r2, r3]          /* v7 SE */
    movs r3, #0
    ldrsb r5, [r2, r3]          /* v0 NW */
    subs r4, r5                 /* v7 - v0 */
    movs r3, #32
    ldrsb r5, [r2, r3]          /* v2 NE */
    movs r3, #80
    ldrsb r6, [r2, r3]          /* v5 SW */
    subs r5, r6                 /* v2 - v5 */
    movs r3, #64
    ldrsb r7, [r2, r3]          /* v4 E */
    movs r3, #48
    ldrsb r6, [r2, r3]          /* v3 W */
    subs r7, r6                 /* v4 - v3 */
    movs r3, #96
    ldrsb r6, [r2, r3]          /* v6 S */
    movs r3, #16
    ldrsb r3, [r2, r3]          /* v1 N */
    subs r6, r3                 /* v6 - v1 */
    lsls r7, r7, #1
    adds r7, r4
    adds r7, r5                 /* Gx = (v7-v0) + (v2-v5) + 2(v4-v3) */
    lsls r6, r6, #1
    adds r6, r4
    subs r6, r5                 /* Gy = (v7-v0) - (v2-v5) + 2(v6-v1) */
    cmp r1, #0
    beq 2f
    ldrh r3, [r1, #0]
    sxth r3, r3                 /* cos */
    ldrh r4, [r1, #2]
    sxth r4, r4                 /* sin */
    movs r5, r6
    muls r5, r4, r5             /* s Gy */
    muls r4, r7, r4             /* s Gx */
    muls r7, r3, r7             /* c Gx */
    muls r6, r3, r6             /* c Gy */
    subs r7, r5
    adds r6, r4
    movs r3, #1
    lsls r3, r3, #(NCA_ROT_FRAC - 1)
    adds r7, r3
    asrs r7, r7, #NCA_ROT_FRAC
    adds r6, r3
    asrs r6, r6, #NCA_ROT_FRAC
2:
    GRADQ r7, r3
    GRADQ r6, r3
    movs r3, r2
    subs r3, #(CELL_INBOX - CELL_GRAD)
    strb r7, [r3, #0]
    strb r6, [r3, #16]
    adds r2, #1
    subs r3, r2, r0             /* CELL_INBOX + c + 1 */
    cmp r3, #(CELL_INBOX + 16)
    bne 1b

    /* ---------------- acc[m] = out_bias[m] */
    ldr r1, =nca_genome
    ldr r2, =(nca_genome + OUT_BIAS)
    adds r0, #CELL_ACC          /* r0 = cell + 48: p base and acc[] */
    movs r3, #30
3:
    ldrh r4, [r2, r3]
    strh r4, [r0, r3]
    subs r3, #2
    bpl 3b

    /* ---------------- 32 groups of 4 hidden units */
4:
    movs r3, #48
    negs r3, r3
#if HK > 255
    movs r2, #1
    lsls r2, r2, #(NCA_HIDDEN_SHIFT - 1)
#else
    movs r2, #HK                /* the sums start at the rounding of their requantisation */
#endif
    movs r7, r2
    mov r12, r2
    mov lr, r2
5:
    MAC4
    MAC4
    bne 5b
    mov r3, r12                 /* a2 */
    mov r12, r0                 /* cell + 48 (p base, acc[]) */
    mov r4, lr                  /* a3 */
    ldm r1!, {r5}               /* the 4 first-layer biases */
    sxtb r0, r5
    HIDDEN r2, r0
    lsls r0, r5, #16
    asrs r0, r0, #24
    HIDDEN r7, r0
    lsls r0, r5, #8
    asrs r0, r0, #24
    HIDDEN r3, r0
    asrs r0, r5, #24
    HIDDEN r4, r0
    mov r0, r12
    mov r12, r4                 /* h3 waits in r12 */
    movs r4, r0                 /* acc pointer */
    adds r0, #32
    mov lr, r0                  /* its end */
6:
    ldm r1!, {r5}
    sxtb r6, r5
    muls r6, r2, r6
    lsls r0, r5, #16
    asrs r0, r0, #24
    muls r0, r7, r0
    adds r6, r0
    lsls r0, r5, #8
    asrs r0, r0, #24
    muls r0, r3, r0
    adds r6, r0
    asrs r5, r5, #24
    mov r0, r12
    muls r5, r0, r5
    adds r6, r5
    asrs r6, r6, #NCA_ACC_SHIFT /* floor: the quantiser moved the mean of the rounding into b2 */
    ldrh r5, [r4, #0]
    adds r5, r6
    strh r5, [r4, #0]
    adds r4, #2
    cmp r4, lr
    bne 6b
    subs r4, #32
    movs r0, r4                 /* back to cell + 48 */
    ldr r2, =(nca_genome + OUT_BIAS)
    cmp r1, r2
    bne 4b

    /* ---------------- per output m (15 down to 0): dx = (acc*M + 2^(T-1)) >> T, computed as
     * ((acc*M >> (T-1)) + 1) >> 1; M (Q15, 5 low bits zero) | T in out_mt[m] */
    adds r1, #32                /* &out_mt[0] */
    movs r7, r0
    subs r7, #CELL_ACC          /* the cell */
    movs r6, #15
7:
    lsls r4, r6, #1
    ldrh r3, [r1, r4]
    ldrsh r2, [r0, r4]          /* acc[m] */
    lsls r4, r3, #27
    lsrs r4, r4, #27            /* T */
    subs r3, r4                 /* M */
    muls r2, r3, r2
#if NCA_EF_BITS
    /* error feedback: dx at 16 times the resolution (shift T - 4), v = clamp(16 x + r + dx,
     * -2048, 2047), x = v >> 4, r = v & 15.  b = resid[m/2] is read and written at each m,
     * turned by a nibble: odd m comes first, finds its r on top and writes b << 4 | r,
     * which puts the even m's r on top, and the even m's write completes the byte. */
    subs r4, #5
    asrs r2, r4
    adds r2, #1
    asrs r2, r2, #1             /* dx */
    lsrs r5, r6, #1
    adds r5, #CELL_RESID        /* resid[m/2] */
    ldrb r4, [r7, r5]           /* b, r on top */
    lsrs r3, r4, #4
    adds r2, r3
    ldrsb r3, [r7, r6]
    lsls r3, r3, #4
    adds r2, r3                 /* v */
    asrs r3, r2, #11
    adds r3, #1
    lsrs r3, r3, #1
    beq 9f                      /* v >> 11 is 0 or -1: within 12 bits */
    asrs r3, r2, #31
    mvns r2, r3
    lsrs r2, r2, #21            /* 2047 if positive */
    lsls r3, r3, #11            /* -2048 if negative */
    orrs r2, r3
9:
    asrs r3, r2, #4
    strb r3, [r7, r6]           /* x */
    subs r4, r3
    lsls r4, r4, #4
    adds r4, r2                 /* (b - x) * 16 + v = b << 4 | r in the low byte */
    strb r4, [r7, r5]
#else
    subs r4, #1
    asrs r2, r4
    adds r2, #1
    asrs r2, r2, #1             /* dx */
    ldrsb r3, [r7, r6]
    adds r2, r3
    SAT8 r2, r3
    strb r2, [r7, r6]
#endif
    subs r6, #1
    bpl 7b
    movs r0, r7
    pop {r4-r7, pc}
    .size nca_cell_tentative, . - nca_cell_tentative
    .ltorg
