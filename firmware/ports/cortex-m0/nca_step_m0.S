/* nca_step_m0.S - nca_cell_update, nca_cell_tentative
 * and nca_cell_rgb in ARMv6-M Thumb for the Cortex-M0, replacing the portable C
 * where NCA_STEP_ASM is defined.  Bit-exact with the C and codegen/golden.py;
 * written by hand for the budgets: about 4.7 cycles per multiply-accumulate,
 * 24 bytes of stack, under 450 bytes of code.
 *
 * step (internal): r0 = cell, r1 = rot (or 0) -> cell->state updated, r0 = cell
 * cell layout: state[16] @0, grad[32] @16, acc[16] int16 @48, inbox[128] @80.
 * The genome must be 4-byte aligned (nca_model.c declares it so).
 *
 * Dense part, per group of 4 hidden units (32 groups), genome stream in r1:
 *   layer 1: r3 = i - 48 indexes p = cell[0..47] from r0 = cell + 48; the four
 *            sums live in r2, r7, r12, lr; one word of 4 weights per input.
 *   hidden:  h = clamp(((a + 2^(K-1)) >> K) + (b1 << B), 0, 255) into r2, r7, r3, r12.
 *   layer 2: per output m, t = sum of 4 products, acc[m] += t >> R (floor: the
 *            quantiser moved the mean rounding into b2); r4 walks acc[], lr = its end.
 */
#include "nca_model.h"

#define CELL_GRAD 16
#define CELL_ACC 48
#define CELL_INBOX 80
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

/* r: value -> clamp(r, 0, 255); t: scratch */
.macro CLAMP255 r, t
    asrs \t, \r, #31
    bics \r, \t
    cmp \r, #255
    bls 9f
    movs \r, #255
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

/* hidden requantisation of r (scratch t), bias byte from r5 given by the extraction */
.macro HIDDEN r, t
#if NCA_HIDDEN_SHIFT > 0
    adds \r, r6
    asrs \r, \r, #NCA_HIDDEN_SHIFT
#endif
#if NCA_BIAS_SHIFT > 0
    lsls \t, \t, #NCA_BIAS_SHIFT
#endif
    adds \r, \t
    CLAMP255 \r, \t
.endm

    .section .text.nca_core, "ax", %progbits
    .align 2

/* r2 = 1 if cell r0 is alive (own alpha or a known neighbour alpha > NCA_ALIVE_Q), else 0;
 * clobbers r3, r5 */
alive:
    ldrb r3, [r0, #NCA_ALPHA_CHANNEL]
    sxtb r3, r3
    movs r2, #1
    cmp r3, #NCA_ALIVE_Q
    bgt 2f
    movs r3, r0
    adds r3, #(CELL_INBOX + NCA_ALPHA_CHANNEL - 16)
    movs r2, #128               /* slot s at r3 + 16 (s + 1) */
1:
    ldrsb r5, [r3, r2]
    cmp r5, #NCA_ALIVE_Q
    bgt 2f
    subs r2, #16
    bne 1b
2:
    bx lr

/* uint8_t nca_cell_update(nca_cell_t *cell, const nca_rotation_t *rot) */
    .global nca_cell_update
    .thumb_func
    .type nca_cell_update, %function
nca_cell_update:
    push {r4-r7, lr}
    bl alive
    movs r4, #0                 /* NCA_DORMANT unless the state was not zero */
    cmp r2, #0
    beq 3f
    bl step
    bl alive
    movs r4, #2                 /* NCA_UPDATED */
    cmp r2, #0
    bne 5f
3:
    movs r3, #15
    movs r6, #0
    movs r7, #0
4:
    ldrb r5, [r0, r3]
    orrs r6, r5
    strb r7, [r0, r3]
    subs r3, #1
    bpl 4b
    cmp r4, #0
    bne 5f
    movs r4, r6
    beq 5f
    movs r4, #1                 /* NCA_ZEROED */
5:
    movs r0, r4
    pop {r4-r7, pc}
    .size nca_cell_update, . - nca_cell_update

/* void nca_cell_tentative(nca_cell_t *cell, const nca_rotation_t *rot) */
    .global nca_cell_tentative
    .thumb_func
    .type nca_cell_tentative, %function
nca_cell_tentative:
    push {r4-r7, lr}
    bl step
    pop {r4-r7, pc}
    .size nca_cell_tentative, . - nca_cell_tentative

/* void nca_cell_rgb(const int8_t *state, uint8_t *rgb): clamp(q, 0, 1.0) * 255, rounded */
    .global nca_cell_rgb
    .thumb_func
    .type nca_cell_rgb, %function
nca_cell_rgb:
    push {r4, lr}
    movs r2, #0
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
    adds r2, #1
    cmp r2, #3
    bne 1b
    pop {r4, pc}
    .size nca_cell_rgb, . - nca_cell_rgb

    .thumb_func
step:
    push {lr}

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
    movs r3, r0
    adds r3, #(CELL_INBOX + 16)
    cmp r2, r3
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
    movs r2, #0
    movs r7, #0
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
#if NCA_HIDDEN_SHIFT > 0
    ldr r6, =HK
#endif
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

    /* ---------------- x[m] = sat8(x[m] + (acc[m] * M[m] + 2^(T-1)) >> T) */
    adds r1, #32                /* &out_mt[0]: M (Q15, 5 low bits zero) | T */
    movs r7, r0
    subs r7, #CELL_ACC          /* &state[0] */
    movs r6, #0
7:
    ldrh r2, [r0, #0]
    sxth r2, r2
    ldrh r3, [r1, #0]
    lsls r4, r3, #27
    lsrs r4, r4, #27            /* T */
    subs r3, r4                 /* M */
    muls r2, r3, r2
    subs r4, #1
    asrs r2, r4
    adds r2, #1
    asrs r2, r2, #1             /* (acc*M + 2^(T-1)) >> T, as ((acc*M >> (T-1)) + 1) >> 1 */
    ldrsb r3, [r7, r6]
    adds r2, r3
    SAT8 r2, r3
    strb r2, [r7, r6]
    adds r0, #2
    adds r1, #2
    adds r6, #1
    cmp r6, #16
    bne 7b
    movs r0, r7
    pop {pc}
    .ltorg
