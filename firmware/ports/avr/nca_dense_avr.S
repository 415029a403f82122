/* nca_dense_avr.S - the dense part of the cell update (nca_cell.c's nca_dense():
 * both layers, streamed 4 hidden units at a time) in AVR assembly, used where
 * NCA_DENSE_ASM is defined.  Bit-exact with the C and codegen/golden.py.
 *
 * void nca_dense(nca_cell_t *cell)      cell in r25:r24
 * reads p = cell[0..47] (state, then gradients), writes acc[16] int16 at cell + 48.
 *
 * Layer 1: every product p*w (int8 x int8, MULS) is added to a 24-bit sum as the
 * unsigned value p*w + 32768 (flip the sign bit of the high byte), which needs no
 * sign extension: the sums start at -48*32768 = 0xE80000 to cancel it.
 * Layer 2: t = sum of w*h over the 4 units (MULSU, same trick, 4*32768 removed
 * after), acc[m] += t >> R.  Both layers are unrolled (flash is not the AVR's
 * constraint; cycles are): 9.5 cycles per first-layer multiply-accumulate.
 * Registers: Z = genome (LPM Z+); Y = cell in layer 1 (p at Y+i), cell + 48 in
 * layer 2 (acc at Y+2m); r4 = 0, r5 = 0x80; sums u0..u3 in r18-r20, r21-r23,
 * r24-r26, r27:r2:r3; hidden values in r16, r18, r19, r20 (MULSU needs r16-r23).
 */
#include "nca_model.h"

/* The shifts the unrolled code is built for, and where the genome is: the compiled-in
 * table, or (a genome in a flash slot, NCA_KERNEL_* given by the build's nca_kernel.h)
 * the active slot that nca_rt.genome points to; nca_cell.c calls this only when the
 * active genome's shifts are these. */
#if defined(NCA_KERNEL_ACC_SHIFT)
#define K_HIDDEN NCA_KERNEL_HIDDEN_SHIFT
#define K_BIAS NCA_KERNEL_BIAS_SHIFT
#define K_ACC NCA_KERNEL_ACC_SHIFT
#define GENOME_IN_SLOT 1
#else
#define K_HIDDEN NCA_HIDDEN_SHIFT
#define K_BIAS NCA_BIAS_SHIFT
#define K_ACC NCA_ACC_SHIFT
#define GENOME_IN_SLOT 0
#endif

#define OUT_BIAS (NCA_GROUPS * NCA_GROUP_BYTES)
#define ZERO r4
#define K80 r5

/* a2:a1:a0 += p (r16) * next weight */
.macro MAC a0, a1, a2
    lpm r17, Z+
    muls r16, r17
    add \a0, r0
    eor r1, K80
    adc \a1, r1
    adc \a2, ZERO
.endm

/* h = clamp(((a + 2^(K-1)) >> K) + (b1 << B), 0, 255), b1 the next genome byte;
 * a in a2:a1:a0 (any registers), h into a register >= r16; scratch r0, r1, r17 */
.macro HIDDEN h, a0, a1, a2
#if K_HIDDEN > 0
    .rept K_HIDDEN - 1
    asr \a2
    ror \a1
    ror \a0
    .endr
    sec                         /* + 1, then the last shift: round half up */
    adc \a0, ZERO
    adc \a1, ZERO
    adc \a2, ZERO
    asr \a2
    ror \a1
    ror \a0
#endif
    lpm r17, Z+                 /* b1 (int8) */
    mov r0, r17
    clr r1
    sbrc r17, 7
    com r1                      /* r1:r0 = b1 sign-extended */
    .rept K_BIAS
    lsl r0
    rol r1
    .endr
    mov r17, r1
    lsl r17                     /* sign of the bias into carry ... */
    sbc r17, r17                /* ... r17 = 0 or 0xFF: its third byte */
    add \a0, r0
    adc \a1, r1
    adc \a2, r17
    mov \h, \a0
    tst \a2
    brmi 1f                     /* negative: 0 */
    or \a2, \a1
    breq 2f                     /* 0 .. 255 */
    ldi \h, 255
    rjmp 2f
1:
    clr \h
2:
.endm

/* t (r21:r25:r24) = w*h + 32768 for the first unit, then += w*h + 32768 */
.macro PROD h, first
    lpm r17, Z+
    mulsu r17, \h
.if \first
    movw r24, r0
    eor r25, K80
    clr r21
.else
    add r24, r0
    eor r1, K80
    adc r25, r1
    adc r21, ZERO
.endif
.endm

    .section .text.nca_dense, "ax", @progbits
    .global nca_dense
    .type nca_dense, @function
nca_dense:
    push r2
    push r3
    push r4
    push r5
    push r16
    push r17
    push r28
    push r29
    clr ZERO
    ldi r16, 0x80
    mov K80, r16
    movw r28, r24
    adiw r28, 48                /* acc = out_bias */
#if GENOME_IN_SLOT
    lds r30, nca_rt             /* nca_rt.genome, the struct's first field */
    lds r31, nca_rt + 1
    subi r30, lo8(-(OUT_BIAS))
    sbci r31, hi8(-(OUT_BIAS))
#else
    ldi r30, lo8(nca_genome + OUT_BIAS)
    ldi r31, hi8(nca_genome + OUT_BIAS)
#endif
    .set M, 0
    .rept 32
    lpm r0, Z+
    std Y + M, r0
    .set M, M + 1
    .endr
    sbiw r28, 48                /* Y = cell: p */
#if GENOME_IN_SLOT
    lds r30, nca_rt
    lds r31, nca_rt + 1
#else
    ldi r30, lo8(nca_genome)
    ldi r31, hi8(nca_genome)
#endif
group:
    ldi r16, 0xE8               /* the sums start at -48 * 32768 */
    clr r18
    clr r19
    mov r20, r16
    clr r21
    clr r22
    mov r23, r16
    clr r24
    clr r25
    mov r26, r16
    clr r27
    clr r2
    mov r3, r16
    .set I, 0
    .rept NCA_PERCEPTION
    ldd r16, Y + I
    MAC r18, r19, r20
    MAC r21, r22, r23
    MAC r24, r25, r26
    MAC r27, r2, r3
    .set I, I + 1
    .endr
    HIDDEN r16, r18, r19, r20
    HIDDEN r18, r21, r22, r23
    HIDDEN r19, r24, r25, r26
    HIDDEN r20, r27, r2, r3
    adiw r28, 48                /* Y = acc */
    .set M, 0
    .rept 16
    PROD r16, 1
    PROD r18, 0
    PROD r19, 0
    PROD r20, 0
    subi r21, 2                 /* remove 4 * 32768 */
#if K_ACC >= 5 && K_ACC <= 8
    .rept 8 - K_ACC              /* t >> R as the upper bytes of t << (8-R) (|t| < 2^17) */
    lsl r24
    rol r25
    rol r21
    .endr
    ldd r22, Y + 2 * M
    ldd r23, Y + 2 * M + 1
    add r22, r25
    adc r23, r21
#else
    .rept K_ACC
    asr r21
    ror r25
    ror r24
    .endr
    ldd r22, Y + 2 * M
    ldd r23, Y + 2 * M + 1
    add r22, r24
    adc r23, r25
#endif
    std Y + 2 * M, r22
    std Y + 2 * M + 1, r23
    .set M, M + 1
    .endr
    sbiw r28, 48                /* Y = p */
#if GENOME_IN_SLOT
    lds r16, nca_rt             /* r16, r17 are free here: the end, genome + OUT_BIAS */
    lds r17, nca_rt + 1
    subi r16, lo8(-(OUT_BIAS))
    sbci r17, hi8(-(OUT_BIAS))
    cp r30, r16
    cpc r31, r17
#else
    cpi r30, lo8(nca_genome + OUT_BIAS)
    ldi r17, hi8(nca_genome + OUT_BIAS)
    cpc r31, r17
#endif
    breq 3f
    jmp group                   /* the unrolled body can exceed rjmp's +-4 KB (NCA_ACC_SHIFT < 5 or > 8) */
3:
    clr r1
    pop r29
    pop r28
    pop r17
    pop r16
    pop r5
    pop r4
    pop r3
    pop r2
    ret
    .size nca_dense, . - nca_dense
