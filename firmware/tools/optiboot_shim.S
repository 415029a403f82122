/* optiboot_shim.S - for the tests only: what Optiboot >= 8 shows an application on
 * the ATmega328P, without the boot loader itself.  Linked at the boot section
 * (0x7E00): `rjmp do_spm` in the second word, do_spm with Optiboot's calling
 * convention and behaviour (r25:r24 address, r22 the SPMCSR command, r21:r20 the
 * data; it does not disable interrupts, waits for the SPM to finish and, after an
 * erase or a write with data 0, re-enables the RWW section), and the version word
 * 8.0 in the last word of flash.  The simavr bridge loads it in place of the
 * firmware's own boot section (--boot FILE), so that the tests run the Optiboot
 * path of ports/avr/link_main.c. */
#include <avr/io.h>

#define IO(r) _SFR_IO_ADDR(r)

    .section .text
    .global optiboot_shim
optiboot_shim:
    rjmp 1f                 /* Optiboot: into the boot loader */
    rjmp do_spm
1:  jmp 0                   /* no boot loader here: straight to the application */

do_spm:
    movw r30, r24
    movw r0, r20
    out IO(SPMCSR), r22
    spm
    clr r1
2:  in r18, IO(SPMCSR)
    sbrc r18, SPMEN
    rjmp 2b
    andi r22, _BV(PGWRT) | _BV(PGERS)
    breq 3f
    or r20, r21
    brne 3f
    ldi r18, _BV(RWWSRE) | _BV(SPMEN)
    out IO(SPMCSR), r18
    spm
3:  ret

    .section .version, "a", @progbits
    .word 0x0800            /* major 8, minor 0 */
