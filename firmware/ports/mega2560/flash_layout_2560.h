/* flash_layout_2560.h - the ATmega2560's flash as the wired-cell firmware (APP=mesh)
 * uses it: the one place for these addresses.  slots_2560.c, the boot-section routine
 * boot_2560.S and the linker script mesh_2560.ld (which the Makefile runs through the
 * C preprocessor) include it, so it holds plain #defines only.  Byte addresses.
 *
 *   0x00000 .. 0x07FFF   the application (.text + .data); the link fails if it grows further
 *   0x08000 .. 0x0A1FF   genome slot 0 (the factory image carries the first genome here)
 *   0x0A200 .. 0x0C3FF   genome slot 1 (NOLOAD: no image writes it)
 *   0x0C400 .. 0x3DFFF   free
 *   0x3E000 .. 0x3FFFF   the boot section: the firmware's own SPM routine (ISP image)
 *
 * The slots stay below 64 KiB: the cell core reads the genome with LPM (16-bit Z).
 * The boot section is where the Arduino Mega 2560's factory fuses put it (BOOTSZ =
 * 4096 words, BOOTRST programmed), so no fuse changes; it is also the whole NRWW
 * section, which keeps running while a page below it is erased or written. */
#ifndef NCA_FLASH_LAYOUT_2560_H
#define NCA_FLASH_LAYOUT_2560_H

#include "nca_link_ids.h"   /* NCA_SLOT_BYTES */

#define NCA_2560_PAGE 256                                   /* SPM_PAGESIZE */
#define NCA_2560_FLASH_END 0x3FFFF
#define NCA_2560_SLOT0 0x8000
/* NCA_SLOT_BYTES (33.5 pages) rounded up to whole pages: a page erase must not reach
 * into the other slot */
#define NCA_2560_SLOT_STRIDE 0x2200
#define NCA_2560_SLOT_PAGES 34
#define NCA_2560_SLOT1 (NCA_2560_SLOT0 + NCA_2560_SLOT_STRIDE)          /* 0xA200 */
#define NCA_2560_SLOTS_END (NCA_2560_SLOT1 + NCA_2560_SLOT_STRIDE)      /* 0xC400 */
#define NCA_2560_NRWW_START 0x3E000
#define NCA_2560_BOOT_START 0x3E000
#define NCA_2560_BOOT_BYTES 8192

#if NCA_2560_SLOT_STRIDE < NCA_SLOT_BYTES || NCA_2560_SLOT_STRIDE % NCA_2560_PAGE != 0 \
    || NCA_2560_SLOT_STRIDE != NCA_2560_SLOT_PAGES * NCA_2560_PAGE
#error "NCA_2560_SLOT_STRIDE must be whole pages holding NCA_SLOT_BYTES"
#endif
#if NCA_2560_SLOTS_END > 0x10000 || NCA_2560_SLOT0 % NCA_2560_PAGE != 0
#error "the genome slots must be page-aligned and below 64 KiB (LPM)"
#endif

/* The firmware's own boot-section routine (boot_2560.S): after the 57 interrupt
 * vectors of 4 bytes (used while IVSEL moves them into the boot section) a signature,
 * a version and the entry, at fixed offsets so that the application finds them. */
#define NCA_2560_BOOT_VECTORS 57
#define NCA_2560_BOOT_MAGIC_AT (NCA_2560_BOOT_START + 4 * NCA_2560_BOOT_VECTORS)   /* 0x3E0E4 */
#define NCA_2560_BOOT_MAGIC 0x4241434EUL                    /* "NCAB" little-endian */
#define NCA_2560_BOOT_MAGIC_LO 0x434E
#define NCA_2560_BOOT_MAGIC_HI 0x4241
#define NCA_2560_BOOT_VERSION 1
#define NCA_2560_BOOT_ENTRY (NCA_2560_BOOT_MAGIC_AT + 6)    /* 0x3E0EA: rjmp to the routine */

/* SPMCSR commands (the routine takes them as `command`) */
#define NCA_2560_SPM_FILL 0x01      /* SPMEN */
#define NCA_2560_SPM_ERASE 0x03     /* PGERS | SPMEN */
#define NCA_2560_SPM_WRITE 0x05     /* PGWRT | SPMEN */
#define NCA_2560_SPM_RWW 0x11       /* RWWSRE | SPMEN */

#endif
