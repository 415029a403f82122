/* simavr_spm.h - the AVR's self-programming as the chip does it where simavr 1.6 is more
 * lenient, for the emulators (simavr_bridge.c: one ATmega328P; simavr_mesh.c: a grid
 * of ATmega2560s): the one place for these rules.  Header-only (static functions).
 *
 *   - SPM executes only from the boot section; elsewhere it is ignored and reported
 *     (each chip's first four: "spm outside the boot section at pc 0x...: ignored");
 *   - a page erase or write takes 4.5 ms of the chip's clock: SPMEN (and RWWSB for a
 *     page of the RWW section) stay set meanwhile; another SPM then is reported
 *     ("FAIL: spm at pc ... while the previous erase or write runs") and not executed;
 *   - until the RWW section is re-enabled (RWWSRE) the CPU must not execute there, an
 *     interrupt vectoring into it included ("FAIL: pc ... in the RWW section ...",
 *     once per erase or write);
 *   - a page write programs: a bit only goes from 1 to 0 (new = old & buffer), which
 *     simavr's plain copy does not;
 *   - the page is RAMPZ:Z's (simavr erases from Z as it is, unaligned);
 *   - IVSEL (MCUCR) moves the interrupt vectors to the start of the boot section,
 *     which simavr ignores: an interrupt entry is moved there (the first four reported
 *     where report_boot_irqs is set: "interrupt N taken in the boot section").
 * A FAIL sets `fail`; the emulator decides what follows.  Each chip counts its page
 * erases and writes (`ops`) and can be told to lose power at one of them (`cut_at`):
 * the operation completes, or with `cut_torn` only the first half of the page is
 * erased or written; `cut` is then set for the emulator to switch the chip off. */
#ifndef SIMAVR_SPM_H
#define SIMAVR_SPM_H

#include <elf.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "sim_avr.h"
#include "sim_cycle_timers.h"
#include "sim_io.h"
#include "avr_flash.h"

/* data-space addresses, the same on the ATmega328P and the ATmega2560 */
#define NCA_SPM_MCUCR 0x55
#define NCA_SPM_SPMCSR 0x57
#define NCA_SPM_IVSEL 0x02
#define NCA_SPM_SPMEN 0x01
#define NCA_SPM_PGERS 0x02
#define NCA_SPM_PGWRT 0x04
#define NCA_SPM_RWWSRE 0x10
#define NCA_SPM_RWWSB 0x40

typedef struct nca_spm {
    avr_t *avr;
    avr_flash_t *flash;                 /* simavr's flash module: its page buffer */
    int (*ioctl)(struct avr_io_t *io, uint32_t ctl, void *param);   /* and its own ioctl */
    uint32_t boot_lo, nrww_lo;          /* the boot section and the NRWW section start here */
    unsigned vectors;                   /* interrupt vectors (IVSEL moves them all) */
    const char *who;                    /* prefix of the reports ("" or "board 3: ") */
    int report_boot_irqs;
    int busy;                           /* an erase or write runs (SPMEN set) */
    int rww_busy;                       /* a page of the RWW section erased or written, not re-enabled */
    int rww_reported;
    int fail;
    unsigned long outside, boot_irqs;
    uint64_t ops;                       /* page erases and writes since start */
    uint64_t cut_at;                    /* lose power at this operation (ops' value; 0: never) */
    int cut_torn;
    int cut;                            /* the power was lost at an operation */
} nca_spm_t;

static avr_cycle_count_t nca_spm_done(avr_t *a, avr_cycle_count_t when, void *p)
{
    nca_spm_t *s = p;
    (void)when;
    a->data[NCA_SPM_SPMCSR] &= (uint8_t)~(NCA_SPM_SPMEN | NCA_SPM_PGERS | NCA_SPM_PGWRT);
    s->busy = 0;
    return 0;
}

/* Every SPM passes here (simavr's flash module's ioctl, wrapped) */
static int nca_spm_ioctl(struct avr_io_t *io, uint32_t ctl, void *param)
{
    avr_t *avr = io->avr;
    nca_spm_t *s = avr->custom.data;
    uint8_t cmd = avr->data[NCA_SPM_SPMCSR];
    uint32_t z = avr->data[R_ZL] | ((uint32_t)avr->data[R_ZH] << 8);
    uint32_t psize = s->flash->spm_pagesize, page, i;
    uint8_t old[1024], zl = avr->data[R_ZL];
    int r;
    if (ctl != AVR_IOCTL_FLASH_SPM)
        return s->ioctl(io, ctl, param);
    if (avr->rampz)
        z |= (uint32_t)avr->data[avr->rampz] << 16;
    page = z & ~(psize - 1);
    if (avr->pc < s->boot_lo) {
        if (s->outside++ < 4)
            fprintf(stderr, "%sspm outside the boot section at pc 0x%04x: ignored\n", s->who, avr->pc);
        return 0;                      /* SPMEN clears by itself 4 cycles after the SPMCSR write */
    }
    if (s->busy) {
        fprintf(stderr, "%sFAIL: spm at pc 0x%04x while the previous erase or write runs\n", s->who, avr->pc);
        s->fail = 1;
        return 0;
    }
    if (!(cmd & NCA_SPM_SPMEN) || !(cmd & (NCA_SPM_PGERS | NCA_SPM_PGWRT)) || psize > sizeof old
        || page + psize > avr->flashend + 1) {
        r = s->ioctl(io, ctl, param);
        if ((cmd & NCA_SPM_SPMEN) && (cmd & NCA_SPM_RWWSRE)) {
            s->rww_busy = 0;
            avr->data[NCA_SPM_SPMCSR] &= (uint8_t)~NCA_SPM_RWWSB;
        }
        return r;
    }
    /* a page erase or write: simavr's, from the page's start (it erases from Z as it
     * is), then the page as the chip leaves it */
    memcpy(old, avr->flash + page, psize);
    avr->data[R_ZL] = (uint8_t)(zl & ~(psize - 1));
    r = s->ioctl(io, ctl, param);
    avr->data[R_ZL] = zl;
    if (cmd & NCA_SPM_PGWRT)
        for (i = 0; i < psize; i++)
            avr->flash[page + i] &= old[i];
    s->ops++;
    if (s->cut_at && s->ops == s->cut_at) {
        /* the power goes at this operation: torn, the second half of the page is as it
         * was; nothing after it runs (the emulator switches the chip off), so no busy
         * time, and the page buffer goes with the power (nca_spm_reset) */
        if (s->cut_torn)
            memcpy(avr->flash + page + psize / 2, old + psize / 2, psize / 2);
        s->cut_at = 0;
        s->cut = 1;
        return r;
    }
    s->busy = 1;
    avr->data[NCA_SPM_SPMCSR] = (uint8_t)(cmd | (z < s->nrww_lo ? NCA_SPM_RWWSB : 0));
    if (z < s->nrww_lo) {
        s->rww_busy = 1;
        s->rww_reported = 0;
    }
    avr_cycle_timer_register(avr, avr->frequency / 1000 * 45 / 10, nca_spm_done, s);   /* 4.5 ms */
    return r;
}

/* the chip's page buffer and the busy state as after a power-on or reset */
static inline void nca_spm_reset(nca_spm_t *s)
{
    avr_cycle_timer_cancel(s->avr, nca_spm_done, s);
    s->busy = s->rww_busy = 0;
    memset(s->flash->tmppage, 0xFF, s->flash->spm_pagesize);
    memset(s->flash->tmppage_used, 0, s->flash->spm_pagesize / 2);
}

/* Wrap the chip's flash module; boot_bytes: the boot section (the top of flash),
 * nrww_bytes: the NRWW section.  0 when done, -1 when the chip has no flash module. */
static inline int nca_spm_attach(nca_spm_t *s, avr_t *avr, uint32_t boot_bytes, uint32_t nrww_bytes, unsigned vectors,
                          const char *who)
{
    struct avr_io_t *io;
    memset(s, 0, sizeof *s);
    s->avr = avr;
    s->boot_lo = avr->flashend + 1 - boot_bytes;
    s->nrww_lo = avr->flashend + 1 - nrww_bytes;
    s->vectors = vectors;
    s->who = who;
    for (io = avr->io_port; io; io = io->next)
        if (io->kind && !strcmp(io->kind, "flash")) {
            s->flash = (avr_flash_t *)io;
            s->ioctl = io->ioctl;
            io->ioctl = nca_spm_ioctl;
        }
    avr->custom.data = s;              /* unused by simavr without custom.init */
    return s->flash ? 0 : -1;
}

/* after every instruction (and interrupt entry); 0, or -1 on a FAIL */
static inline int nca_spm_step(nca_spm_t *s)
{
    avr_t *avr = s->avr;
    if ((avr->data[NCA_SPM_MCUCR] & NCA_SPM_IVSEL) && avr->pc && avr->pc < s->vectors * avr->vector_size
        && avr->pc % avr->vector_size == 0) {
        if (s->report_boot_irqs && s->boot_irqs < 4)
            fprintf(stderr, "%sinterrupt %u taken in the boot section\n", s->who, avr->pc / avr->vector_size);
        s->boot_irqs++;
        avr->pc += s->boot_lo;         /* simavr 1.6 ignores IVSEL: an interrupt entry moved */
    }
    if (s->rww_busy && avr->pc < s->nrww_lo) {
        if (!s->rww_reported)
            fprintf(stderr, "%sFAIL: pc 0x%04x in the RWW section while a page erase or write keeps it "
                    "unreadable\n", s->who, avr->pc);
        s->rww_reported = 1;
        s->fail = 1;
        return -1;
    }
    return 0;
}

/* The file bytes of an ELF's loadable segments whose (load) address is in [lo, hi):
 * what a programmer writes there (simavr 1.6 loads .text and .data only).  0 when
 * done, else -1. */
static inline int nca_spm_load_segments(avr_t *avr, const char *path, uint32_t lo, uint32_t hi)
{
    Elf32_Ehdr eh;
    Elf32_Phdr ph;
    int i, ok = -1;
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    if (fread(&eh, sizeof eh, 1, f) != 1 || memcmp(eh.e_ident, ELFMAG, SELFMAG) || eh.e_ident[EI_CLASS] != ELFCLASS32)
        goto out;
    for (i = 0; i < eh.e_phnum; i++) {
        if (fseek(f, (long)(eh.e_phoff + (uint32_t)i * eh.e_phentsize), SEEK_SET) || fread(&ph, sizeof ph, 1, f) != 1)
            goto out;
        if (ph.p_type != PT_LOAD || !ph.p_filesz || ph.p_paddr < lo || ph.p_paddr + ph.p_filesz > hi)
            continue;
        if (fseek(f, (long)ph.p_offset, SEEK_SET) || fread(avr->flash + ph.p_paddr, 1, ph.p_filesz, f) != ph.p_filesz)
            goto out;
    }
    ok = 0;
out:
    fclose(f);
    return ok;
}

#endif
