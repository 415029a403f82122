/* boot_avr.S - the board firmware's own SPM routine, in the ATmega328P's boot section
 * (section .bootloader at NCA_AVR_BOOT_START, link_avr.ld).  The chip executes SPM
 * only from the boot section, so every genome write goes through here (or through
 * Optiboot's do_spm, which has the same calling convention: link_main.c picks).
 *
 *   uint8_t spm(uint16_t addr, uint8_t command, uint16_t data)    r25:r24, r22, r21:r20
 *
 * command: NCA_AVR_SPM_FILL (data into the page buffer at addr), _ERASE or _WRITE
 * (the page at addr), _RWW (read the RWW section again).  Anything else, and any
 * addr outside the genome slots [NCA_AVR_SLOT0, NCA_AVR_SLOTS_END), is refused: it
 * returns 1 and executes no SPM, so no caller can reach the application or the boot
 * section through it.  Returns 0 when done.
 *
 * Interrupts: an erase or a write takes about 4 ms, during which the RWW section
 * (the application, its interrupt vectors and handlers) cannot be read, while this
 * code, in the NRWW section, runs on.  So the routine moves the interrupt vectors
 * into the boot section (IVSEL), where the USART receive vector has its own handler
 * that fills the application's receive ring (nca_rx_ring / nca_rx_head / nca_rx_tail),
 * and waits with interrupts as the caller had them: enabled, a byte that arrives
 * during an erase is received as at any other time.  Interrupts are off only for the
 * few cycles of each timed sequence.  Every other vector restarts the application.
 * Nothing here calls or jumps into the application (the RWW section) but the reset
 * vector, a test checks that.  The fuses for a board that runs this (BOOTSZ, BOOTRST,
 * lock bits): firmware/README.md. */
#include <avr/io.h>
#include "flash_layout_avr.h"

#define IO(r) _SFR_IO_ADDR(r)

    .section .bootloader, "ax", @progbits

    /* the vector table while IVSEL is set; vector 0 is also where a reset lands when
     * BOOTRST is programmed: jump to the application's own reset vector */
    .global nca_boot_vectors
nca_boot_vectors:
    jmp 0
    .rept USART_RX_vect_num - 1
    jmp nca_boot_vectors
    .endr
    jmp boot_usart_rx
    .rept NCA_AVR_BOOT_VECTORS - USART_RX_vect_num - 1
    jmp nca_boot_vectors
    .endr

    /* at NCA_AVR_BOOT_MAGIC_AT: the signature the application looks for, the version */
    .word NCA_AVR_BOOT_MAGIC_LO, NCA_AVR_BOOT_MAGIC_HI
    .word NCA_AVR_BOOT_VERSION
    /* at NCA_AVR_BOOT_ENTRY */
    .global nca_boot_spm
nca_boot_spm:
    rjmp boot_spm

/* The USART receive interrupt while the vectors are in the boot section: the same as
 * link_main.c's handler (a byte into the ring unless the ring is full). */
boot_usart_rx:
    push r24
    in r24, IO(SREG)
    push r24
    push r25
    push r30
    push r31
    lds r24, UDR0
    lds r30, nca_rx_head
    mov r25, r30
    inc r25
    lds r31, nca_rx_tail
    cp r25, r31
    breq 1f                              /* full: the byte is dropped */
    ldi r31, 0
    subi r30, lo8(-(nca_rx_ring))
    sbci r31, hi8(-(nca_rx_ring))
    st Z, r24
    sts nca_rx_head, r25
1:  pop r31
    pop r30
    pop r25
    pop r24
    out IO(SREG), r24
    pop r24
    reti

boot_spm:
    movw r30, r24                        /* Z = addr */
    cpi r22, NCA_AVR_SPM_RWW
    breq rww
    cpi r22, NCA_AVR_SPM_FILL
    breq 1f
    cpi r22, NCA_AVR_SPM_ERASE
    breq 1f
    cpi r22, NCA_AVR_SPM_WRITE
    brne refuse
1:  ldi r18, hi8(NCA_AVR_SLOT0)          /* addr in [NCA_AVR_SLOT0, NCA_AVR_SLOTS_END) */
    cpi r30, lo8(NCA_AVR_SLOT0)
    cpc r31, r18
    brlo refuse
    ldi r18, hi8(NCA_AVR_SLOTS_END)
    cpi r30, lo8(NCA_AVR_SLOTS_END)
    cpc r31, r18
    brsh refuse
    in r19, IO(SREG)                     /* the caller's interrupt flag */
    cpi r22, NCA_AVR_SPM_FILL
    brne long_op
    movw r0, r20                         /* page buffer fill: done in a few cycles */
    cli
    out IO(SPMCSR), r22
    spm
    out IO(SREG), r19
    clr r1
    rjmp done

long_op:                                 /* erase or write a page: about 4 ms */
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
    out IO(SREG), r19                    /* interrupts as the caller had them: on */
2:  in r18, IO(SPMCSR)
    sbrc r18, SPMEN
    rjmp 2b
    cli
    ldi r18, NCA_AVR_SPM_RWW             /* the RWW section readable again */
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
    rjmp done

rww:
    in r19, IO(SREG)
    cli
    out IO(SPMCSR), r22
    spm
4:  in r18, IO(SPMCSR)
    sbrc r18, SPMEN
    rjmp 4b
    out IO(SREG), r19
done:
    ldi r24, 0
    ret
refuse:
    ldi r24, 1
    ret
