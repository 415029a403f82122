/* ATmega328P (Arduino Uno) board firmware with the cell link (APP=link),
 * 16 MHz, 115200 baud.  Received bytes go into a ring buffer from the RX
 * interrupt; the CPU sleeps (idle mode) while the buffer is empty.
 *
 * Genome slots: flash at 0x2800 and 0x4980 (67 pages of 128 B each), erased
 * and programmed with SPM (<avr/boot.h>).  simavr executes SPM from anywhere;
 * a real ATmega328P executes it only from the boot section (NRWW), so on a
 * real Uno these writes must go through the boot loader's SPM entry point
 * (optiboot's do_spm) or the functions below must be placed in the boot
 * section.  After each erase or page write the firmware writes GPIOR1, which
 * lets the simavr bridge save the flash to a file (--flash); on hardware it is
 * a spare register. */
#include <stdint.h>
#include <avr/boot.h>
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/pgmspace.h>
#include <avr/sleep.h>
#include "nca_link.h"
#include "uart_avr.h"

#define SLOT_BASE(s) ((s) ? 0x4980u : 0x2800u)

static volatile uint8_t ring[256];
static volatile uint8_t head, tail;

ISR(USART_RX_vect)
{
    uint8_t c = UDR0, h = (uint8_t)(head + 1);
    if (h != tail) {
        ring[head] = c;
        head = h;
    }
}

static uint8_t uart_getc(void)
{
    uint8_t c;
    for (;;) {
        cli();
        if (head != tail)
            break;
        sleep_enable();
        sei();                 /* the instruction after sei runs first: no lost wake-up */
        sleep_cpu();
        sleep_disable();
    }
    c = ring[tail];
    tail = (uint8_t)(tail + 1);
    sei();
    return c;
}

void nca_link_putc(uint8_t c)
{
    uart_avr_putc(c);
}

static void flash_changed(void)
{
    GPIOR1 = 0xF1;
}

void nca_slot_erase(uint8_t slot)
{
    uint16_t a;
    uint8_t s = SREG;
    cli();
    for (a = 0; a < NCA_SLOT_BYTES; a += SPM_PAGESIZE) {
        boot_page_erase(SLOT_BASE(slot) + a);
        boot_spm_busy_wait();
    }
    boot_rww_enable();
    SREG = s;
    flash_changed();
}

void nca_slot_write(uint8_t slot, uint16_t off, const uint8_t *src, uint8_t n)
{
    uint16_t a = SLOT_BASE(slot) + off, end = (uint16_t)(a + n);
    uint8_t s = SREG;
    while (a < end) {
        uint16_t page = (uint16_t)(a & ~(uint16_t)(SPM_PAGESIZE - 1)), i;
        cli();
        for (i = 0; i < SPM_PAGESIZE; i += 2) {
            uint16_t b = (uint16_t)(page + i);
            uint8_t lo = (b >= a && b < end) ? src[b - (SLOT_BASE(slot) + off)] : pgm_read_byte(b);
            uint8_t hi = (b + 1 >= a && b + 1 < end) ? src[b + 1 - (SLOT_BASE(slot) + off)] : pgm_read_byte(b + 1);
            boot_page_fill(b, (uint16_t)(lo | ((uint16_t)hi << 8)));
        }
        boot_page_write(page);
        boot_spm_busy_wait();
        boot_rww_enable();
        SREG = s;
        a = (uint16_t)(page + SPM_PAGESIZE);
    }
    flash_changed();
}

const nca_genome_t *nca_slot_genome(uint8_t slot)
{
    return (const nca_genome_t *)(uintptr_t)SLOT_BASE(slot);
}

int main(void)
{
    uart_avr_init(_BV(RXCIE0));
    set_sleep_mode(SLEEP_MODE_IDLE);
    nca_link_init();
    sei();
    for (;;)
        nca_link_rx(uart_getc());
    return 0;
}
