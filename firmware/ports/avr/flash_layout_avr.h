/* flash_layout_avr.h - the ATmega328P's flash as the board firmware with the cell
 * link (APP=link) uses it: the one place for these addresses.  link_main.c, the
 * boot-section routine boot_avr.S and the linker script link_avr.ld (which the
 * Makefile runs through the C preprocessor) include it, so it holds plain
 * #defines only.  All addresses are byte addresses.
 *
 *   0x0000 .. 0x27FF   the application (.text + .data); the link fails if it grows further
 *   0x2800 .. 0x6AFF   genome slots A and B (NCA_SLOT_BYTES each, NOLOAD: no image writes them)
 *   0x6B00 .. 0x7DFF   free
 *   0x7E00 .. 0x7FFF   the boot section (BOOTSZ = 256 words): the firmware's own SPM routine
 *                      (the ISP image) or a boot loader such as Optiboot
 *
 * Only code in the boot section may execute SPM (the chip ignores it elsewhere).
 * The boot section is also part of the NRWW section (0x7000 ..), which keeps running
 * while a page of the RWW section (everything below 0x7000) is erased or written. */
#ifndef NCA_FLASH_LAYOUT_AVR_H
#define NCA_FLASH_LAYOUT_AVR_H

#include "nca_link_ids.h"   /* NCA_SLOT_BYTES */

#define NCA_AVR_PAGE 128                                    /* SPM_PAGESIZE */
#define NCA_AVR_FLASH_END 0x7FFF
#define NCA_AVR_SLOT0 0x2800
#define NCA_AVR_SLOT1 (NCA_AVR_SLOT0 + NCA_SLOT_BYTES)       /* 0x4980 */
#define NCA_AVR_SLOTS_END (NCA_AVR_SLOT1 + NCA_SLOT_BYTES)   /* 0x6B00 */
#define NCA_AVR_NRWW_START 0x7000
#define NCA_AVR_BOOT_START 0x7E00
#define NCA_AVR_BOOT_BYTES 512

/* The firmware's own boot-section routine (boot_avr.S): after the 26 interrupt
 * vectors (used while IVSEL moves them into the boot section) a signature, a
 * version and the entry, at fixed offsets so that the application finds it. */
#define NCA_AVR_BOOT_VECTORS 26
#define NCA_AVR_BOOT_MAGIC_AT (NCA_AVR_BOOT_START + 4 * NCA_AVR_BOOT_VECTORS)   /* 0x7E68 */
#define NCA_AVR_BOOT_MAGIC 0x4241434EUL                     /* "NCAB" little-endian */
#define NCA_AVR_BOOT_MAGIC_LO 0x434E
#define NCA_AVR_BOOT_MAGIC_HI 0x4241
#define NCA_AVR_BOOT_VERSION 1
#define NCA_AVR_BOOT_ENTRY (NCA_AVR_BOOT_MAGIC_AT + 6)      /* 0x7E6E: rjmp to the routine */

/* Optiboot >= 8 (as MiniCore 2.x ships it for the ATmega328P): a 512-byte boot
 * section at the same place, `rjmp do_spm` in its second word, and its version
 * (major << 8 | minor) in the last word of flash. */
#define NCA_AVR_OPTIBOOT_SPM (NCA_AVR_BOOT_START + 2)
#define NCA_AVR_OPTIBOOT_VERSION_AT (NCA_AVR_FLASH_END - 1)
#define NCA_AVR_OPTIBOOT_MIN_MAJOR 8

/* SPMCSR commands (the routine and Optiboot's do_spm take them as `command`) */
#define NCA_AVR_SPM_FILL 0x01      /* SPMEN */
#define NCA_AVR_SPM_ERASE 0x03     /* PGERS | SPMEN */
#define NCA_AVR_SPM_WRITE 0x05     /* PGWRT | SPMEN */
#define NCA_AVR_SPM_RWW 0x11       /* RWWSRE | SPMEN */

#endif
