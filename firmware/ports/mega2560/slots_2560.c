/* slots_2560.c - the ATmega2560's genome slots (store/nca_store.h's port hooks) for
 * the wired cell: slot 0 at NCA_2560_SLOT0, slot 1 at NCA_2560_SLOT1, 34 pages of
 * 256 B each (flash_layout_2560.h).  The chip executes SPM only from its boot
 * section, so every erase, page-buffer fill and write goes through the firmware's own
 * routine there (boot_2560.S, in the ISP image).  A board flashed through the Mega's
 * stock boot loader has that loader in the boot section instead: nca_slot_writer()
 * then says NCA_WRITER_NONE and nothing here calls into the boot section. */
#include <stdint.h>
#include <avr/io.h>
#include <avr/pgmspace.h>
#include "nca_store.h"
#include "flash_layout_2560.h"

/* boot_2560.S; a direct `call` reaches the boot section (22-bit), no EIND needed */
uint8_t nca_boot_spm(uint16_t addr, uint8_t command, uint16_t data);

#define SLOT_BASE(slot) ((uint16_t)((slot) ? NCA_2560_SLOT1 : NCA_2560_SLOT0))

uint8_t nca_slot_writer(void)
{
    /* the boot section is above 64 KiB: ELPM */
    return pgm_read_dword_far(NCA_2560_BOOT_MAGIC_AT) == NCA_2560_BOOT_MAGIC
                   && pgm_read_word_far(NCA_2560_BOOT_MAGIC_AT + 4) == NCA_2560_BOOT_VERSION
               ? NCA_WRITER_BOOT
               : NCA_WRITER_NONE;
}

/* A page erase or write (about 4.5 ms).  The boot routine's vector table handles only
 * the four USART receivers; any other interrupt would restart the application.  So the
 * other sources mesh_main.c enables (the transmitters' UDRIE, Timer5's overflow and
 * compare) are masked meanwhile: their flags stay pending (UDRE is a level, TOV5 and
 * OCF5A are latched), so they are served, late, once the masks are back. */
static void spm_long(uint16_t page, uint8_t command)
{
    uint8_t s = SREG, t5, u0, u1, u2, u3;
    __asm__ __volatile__("cli" ::: "memory");
    t5 = TIMSK5;
    u0 = UCSR0B;
    u1 = UCSR1B;
    u2 = UCSR2B;
    u3 = UCSR3B;
    TIMSK5 = 0;
    UCSR0B = (uint8_t)(u0 & ~_BV(UDRIE0));
    UCSR1B = (uint8_t)(u1 & ~_BV(UDRIE1));
    UCSR2B = (uint8_t)(u2 & ~_BV(UDRIE2));
    UCSR3B = (uint8_t)(u3 & ~_BV(UDRIE3));
    SREG = s;
    nca_boot_spm(page, command, 0);
    __asm__ __volatile__("cli" ::: "memory");
    TIMSK5 = t5;
    UCSR0B = u0;
    UCSR1B = u1;
    UCSR2B = u2;
    UCSR3B = u3;
    SREG = s;
}

void nca_slot_erase(uint8_t slot)
{
    uint16_t base = SLOT_BASE(slot);
    uint8_t p;
    if (nca_slot_writer() == NCA_WRITER_NONE)
        return;
    for (p = 0; p < NCA_2560_SLOT_PAGES; p++)
        spm_long((uint16_t)(base + (uint16_t)p * NCA_2560_PAGE), NCA_2560_SPM_ERASE);
}

/* Each page the bytes touch is filled with the new bytes inside [off, off + n) and the
 * page's current flash bytes elsewhere, then written without an erase: programming
 * only clears bits, so a byte rewritten with its own value stays as it is, and the new
 * bytes land on erased ones (0xFF), which take them exactly.  An erase would lose the
 * page's bytes written before (the chunks share pages) and open a window in which a
 * power cut tears them. */
void nca_slot_write(uint8_t slot, uint16_t off, const uint8_t *src, uint8_t n)
{
    uint16_t a, end, page;
    if (n == 0 || off >= NCA_2560_SLOT_STRIDE || n > NCA_2560_SLOT_STRIDE - off
        || nca_slot_writer() == NCA_WRITER_NONE)
        return;
    a = (uint16_t)(SLOT_BASE(slot) + off);
    end = (uint16_t)(a + n);
    for (page = (uint16_t)(a & ~(uint16_t)(NCA_2560_PAGE - 1)); page < end; page = (uint16_t)(page + NCA_2560_PAGE)) {
        uint16_t b;
        for (b = page; b != (uint16_t)(page + NCA_2560_PAGE); b = (uint16_t)(b + 2)) {
            uint8_t lo = (b >= a && b < end) ? src[b - a] : pgm_read_byte(b);
            uint8_t hi = (b + 1u >= a && b + 1u < end) ? src[b + 1u - a] : pgm_read_byte(b + 1u);
            nca_boot_spm(b, NCA_2560_SPM_FILL, (uint16_t)(lo | ((uint16_t)hi << 8)));
        }
        spm_long(page, NCA_2560_SPM_WRITE);
    }
}

const nca_genome_t *nca_slot_genome(uint8_t slot)
{
    /* a data pointer holding the flash address: the core reads it with LPM (NCA_RDU8) */
    return (const nca_genome_t *)(uintptr_t)SLOT_BASE(slot);
}
