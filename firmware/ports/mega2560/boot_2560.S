/* boot_2560.S - the wired-cell firmware's own SPM routine, in the ATmega2560's boot
 * section (section .bootloader at NCA_2560_BOOT_START, mesh_2560.ld).  The chip
 * executes SPM only from the boot section, so every genome write goes through here
 * (slots_2560.c calls it).  The ATmega328P's counterpart: ports/avr/boot_avr.S.
 *
 *   uint8_t nca_boot_spm(uint16_t addr, uint8_t command, uint16_t data)
 *                        r25:r24        r22              r21:r20
 *
 * command: NCA_2560_SPM_FILL (data into the page buffer at addr), _ERASE or _WRITE
 * (the page at addr), _RWW (read the RWW section again).  Anything else, and any addr
 * outside the genome slots [NCA_2560_SLOT0, NCA_2560_SLOTS_END), is refused: it
 * returns 1 and executes no SPM, so no caller can reach the application or the boot
 * section through it.  Returns 0 when done.  addr is 16-bit (the slots are below
 * 64 KiB), and SPM takes its address from RAMPZ:Z, so RAMPZ is cleared for the SPM
 * and restored before returning (the caller's ELPM code may rely on it).
 *
 * Interrupts: an erase or a write takes about 4.5 ms, during which the RWW section
 * (everything below 0x3E000: the application, its vectors and handlers) cannot be
 * read, while this code, in the NRWW section, runs on.  So the routine moves the
 * interrupt vectors into the boot section (IVSEL), where the four USART receive
 * vectors have handlers that put the byte into the application's receive rings as
 * mesh_main.c's rx_put does (nca_mesh_rx_ring / _head / _tail, nca_mesh_loop_needed),
 * and waits with interrupts as the caller had them: bytes that arrive meanwhile are
 * received as at any other time.  Interrupts are off only for the few cycles of each
 * timed sequence.  Every other vector restarts the application, so the caller masks
 * its other interrupt sources for the duration (slots_2560.c).  Nothing here calls or
 * jumps into the application but the reset vector.  A `jmp` reaches all 256 KiB, so
 * the vectors need no EIND. */
#include <avr/io.h>
#include "flash_layout_2560.h"
#include "nca_mesh_ids.h"

#define IO(r) _SFR_IO_ADDR(r)

    .section .bootloader, "ax", @progbits

    /* the vector table while IVSEL is set; vector 0 is also where a reset lands when
     * BOOTRST is programmed (the Mega's factory fuses): the application's own reset */
    .global nca_boot_vectors
nca_boot_vectors:
    .set vec, 0
    .rept NCA_2560_BOOT_VECTORS
    .if vec == 0
    jmp 0
    .elseif vec == USART0_RX_vect_num
    jmp boot_usart0_rx
    .elseif vec == USART1_RX_vect_num
    jmp boot_usart1_rx
    .elseif vec == USART2_RX_vect_num
    jmp boot_usart2_rx
    .elseif vec == USART3_RX_vect_num
    jmp boot_usart3_rx
    .else
    jmp nca_boot_vectors
    .endif
    .set vec, vec + 1
    .endr

    /* at NCA_2560_BOOT_MAGIC_AT: the signature the application looks for, the version */
    .word NCA_2560_BOOT_MAGIC_LO, NCA_2560_BOOT_MAGIC_HI
    .word NCA_2560_BOOT_VERSION
    /* at NCA_2560_BOOT_ENTRY */
    .global nca_boot_spm
nca_boot_spm:
    rjmp boot_spm

/* The USART receive interrupts while the vectors are in the boot section: the byte in
 * r24 and the face in r25 (nca_mesh_ids.h; mesh_main.c's FACE_USART pairing) for
 * boot_rx_put. */
.macro RX_STUB usart, face
    push r24
    lds r24, \usart
    push r25
    ldi r25, \face
    rjmp boot_rx_put
.endm
boot_usart1_rx: RX_STUB UDR1, NCA_FACE_N
boot_usart2_rx: RX_STUB UDR2, NCA_FACE_E
boot_usart3_rx: RX_STUB UDR3, NCA_FACE_S
boot_usart0_rx: RX_STUB UDR0, NCA_FACE_W

/* rx_put(f = r25, c = r24): into ring f unless it is full (the byte is dropped), and
 * the loop flag on a frame's delimiter.  The rings are 256 bytes (mesh_main.c checks):
 * a one-byte index wraps by itself and ring f starts f * 256 bytes in. */
boot_rx_put:
    push r23
    push r30
    in r30, IO(SREG)
    push r30
    push r31
    ldi r30, lo8(nca_mesh_rx_tail)       /* r23 = tail[f] */
    ldi r31, hi8(nca_mesh_rx_tail)
    add r30, r25
    brcc 1f
    inc r31
1:  ld r23, Z
    ldi r30, lo8(nca_mesh_rx_head)       /* Z = &head[f] */
    ldi r31, hi8(nca_mesh_rx_head)
    add r30, r25
    brcc 2f
    inc r31
2:  ld r30, Z                            /* h */
    inc r30                              /* n = h + 1 */
    cp r30, r23
    breq 4f                              /* n == tail: full */
    mov r23, r30                         /* keep n */
    dec r30                              /* Z = &ring[f][h] = ring + (f << 8 | h) */
    mov r31, r25
    subi r30, lo8(-(nca_mesh_rx_ring))
    sbci r31, hi8(-(nca_mesh_rx_ring))
    st Z, r24
    ldi r30, lo8(nca_mesh_rx_head)       /* head[f] = n, after the byte is in */
    ldi r31, hi8(nca_mesh_rx_head)
    add r30, r25
    brcc 3f
    inc r31
3:  st Z, r23
4:  tst r24
    brne 5f
    ldi r30, 1                           /* a delimiter: the loop has a frame to parse */
    sts nca_mesh_loop_needed, r30
5:  pop r31
    pop r30
    out IO(SREG), r30
    pop r30
    pop r23
    pop r25
    pop r24
    reti

boot_spm:
    movw r30, r24                        /* Z = addr */
    cpi r22, NCA_2560_SPM_RWW
    breq rww
    cpi r22, NCA_2560_SPM_FILL
    breq 1f
    cpi r22, NCA_2560_SPM_ERASE
    breq 1f
    cpi r22, NCA_2560_SPM_WRITE
    brne refuse
1:  ldi r18, hi8(NCA_2560_SLOT0)         /* addr in [NCA_2560_SLOT0, NCA_2560_SLOTS_END) */
    cpi r30, lo8(NCA_2560_SLOT0)
    cpc r31, r18
    brlo refuse
    ldi r18, hi8(NCA_2560_SLOTS_END)
    cpi r30, lo8(NCA_2560_SLOTS_END)
    cpc r31, r18
    brsh refuse
    in r26, IO(RAMPZ)                    /* the caller's RAMPZ; 0 for the SPM: addr < 64 KiB */
    out IO(RAMPZ), r1
    in r19, IO(SREG)                     /* the caller's interrupt flag */
    cpi r22, NCA_2560_SPM_FILL
    brne long_op
    movw r0, r20                         /* page buffer fill: done in a few cycles */
    cli
    out IO(SPMCSR), r22
    spm
    out IO(SREG), r19
    clr r1
    rjmp restore

long_op:                                 /* erase or write a page: about 4.5 ms */
    cli
    in r18, IO(MCUCR)
    ori r18, _BV(IVCE)
    mov r23, r18
    andi r23, ~_BV(IVCE) & 0xFF
    ori r23, _BV(IVSEL)
    out IO(MCUCR), r18                   /* IVCE, then IVSEL within 4 cycles */
    out IO(MCUCR), r23
    out IO(SPMCSR), r22
    spm
    out IO(SREG), r19                    /* interrupts as the caller had them */
2:  in r18, IO(SPMCSR)
    sbrc r18, SPMEN
    rjmp 2b
    cli
    ldi r18, NCA_2560_SPM_RWW            /* the RWW section readable again */
    out IO(SPMCSR), r18
    spm
3:  in r18, IO(SPMCSR)
    sbrc r18, SPMEN
    rjmp 3b
    in r18, IO(MCUCR)                    /* the vectors back to the application */
    ori r18, _BV(IVCE)
    mov r23, r18
    andi r23, ~(_BV(IVCE) | _BV(IVSEL)) & 0xFF
    out IO(MCUCR), r18
    out IO(MCUCR), r23
    out IO(SREG), r19
restore:
    out IO(RAMPZ), r26
    rjmp done

rww:
    in r26, IO(RAMPZ)
    out IO(RAMPZ), r1
    in r19, IO(SREG)
    cli
    out IO(SPMCSR), r22
    spm
4:  in r18, IO(SPMCSR)
    sbrc r18, SPMEN
    rjmp 4b
    out IO(SREG), r19
    out IO(RAMPZ), r26
done:
    ldi r24, 0
    ret
refuse:
    ldi r24, 1
    ret
