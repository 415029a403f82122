/* Cortex-M0 (nRF51822: BBC micro:bit v1, QEMU -M microbit) board firmware with the
 * cell link (APP=link).
 *
 * One main loop, interrupts masked throughout (startup.c): it reloads the watchdog
 * (NRF51_WDT_SECONDS), moves the LED matrix on to its next row when TIMER1 says so,
 * feeds a received byte to the link, and otherwise sleeps (WFI wakes on the UART and
 * on TIMER1, whose interrupts are enabled in the NVIC for that alone).
 *
 * Genome slots: the NOLOAD sections nca_slot_a/nca_slot_b of nrf51.ld (0x10000 and
 * 0x14000, 9 pages of 1 KiB each), erased and programmed through the NVMC, which
 * QEMU emulates.  Every NVMC wait is bounded: an operation that times out stops,
 * the link's read-back then differs and the host gets ERR_FLASH.
 *
 * The LED matrix shows the cell's alpha as the number of lit LEDs:
 * n = round(25 * alpha_q / 128) for alpha_q > 0 (0 for a dead cell, 25 for alpha 1),
 * lit in reading order (top row left to right, then the next row).  The 5x5 LEDs are
 * wired as 3 rows (P0.13-P0.15, high = on) x 9 columns (P0.04-P0.12, low = on); one
 * row is driven every 2 ms (TIMER1), with one write of the GPIO OUT register (its
 * other pins, the UART's TXD among them, kept). */
#include <stdint.h>
#include "nca_link.h"
#include "nca_cell.h"
#include "nrf51.h"

#define PAGE 1024u

extern const uint8_t nca_slot_a[], nca_slot_b[];   /* nrf51.ld */

static uint32_t slot_base(uint8_t slot)
{
    return (uint32_t)(uintptr_t)(slot ? nca_slot_b : nca_slot_a);
}

void nca_link_putc(uint8_t c)
{
    nrf51_uart_putc(c);
}

/* 1 when the NVMC is ready, 0 when it did not get ready within NRF51_NVMC_WAIT */
static uint8_t nvmc_wait(void)
{
    uint32_t n = NRF51_NVMC_WAIT;
    while (!NVMC_READY)
        if (!--n)
            return 0;
    return 1;
}

void nca_slot_erase(uint8_t slot)
{
    uint32_t a;
    NVMC_CONFIG = 2;               /* erase enable */
    if (nvmc_wait())
        for (a = 0; a < NCA_SLOT_BYTES; a += PAGE) {
            nrf51_wdt_kick();
            NVMC_ERASEPAGE = slot_base(slot) + a;
            if (!nvmc_wait())
                break;
        }
    NVMC_CONFIG = 0;
    (void)nvmc_wait();
}

void nca_slot_write(uint8_t slot, uint16_t off, const uint8_t *src, uint8_t n)
{
    uint32_t start = slot_base(slot) + off, a = start, end = a + n;
    NVMC_CONFIG = 1;               /* write enable */
    if (nvmc_wait())
        while (a < end) {
            uint32_t wa = a & ~3u, w = *(volatile const uint32_t *)wa;
            uint8_t k;
            for (k = 0; k < 4; k++) {
                uint32_t b = wa + k;
                if (b >= a && b < end)
                    w = (w & ~(0xFFu << (8 * k))) | ((uint32_t)src[b - start] << (8 * k));
            }
            *(volatile uint32_t *)wa = w;
            if (!nvmc_wait())
                break;
            a = wa + 4;
        }
    NVMC_CONFIG = 0;
    (void)nvmc_wait();
}

const nca_genome_t *nca_slot_genome(uint8_t slot)
{
    return (const nca_genome_t *)slot_base(slot);
}

/* ------------------------------------------------------------ the LED matrix */
/* LED k of the reading order (x = k % 5, y = k / 5): row << 4 | column of the matrix
 * (the micro:bit v1 schematic) */
static const uint8_t led_wire[25] = {
    0x00, 0x13, 0x01, 0x14, 0x02,
    0x23, 0x24, 0x25, 0x26, 0x27,
    0x11, 0x08, 0x12, 0x28, 0x10,
    0x07, 0x06, 0x05, 0x04, 0x03,
    0x22, 0x16, 0x20, 0x15, 0x21,
};
#define MATRIX_PINS (0xFFFu << 4)   /* P0.04-P0.15 */
static uint16_t lit[3];            /* per row: bit c = column c on */
static int16_t shown = 0x100;      /* the alpha lit[] shows (none yet) */
static uint8_t row;

static void display_init(void)
{
    GPIO_OUT = (GPIO_OUT & ~MATRIX_PINS) | (0x1FFu << 4);   /* columns high, rows low: dark */
    GPIO_DIRSET = MATRIX_PINS;
    TIMER_MODE(TIMER1) = 0;
    TIMER_BITMODE(TIMER1) = 0;     /* 16 bits */
    TIMER_PRESCALER(TIMER1) = 4;   /* 1 MHz */
    TIMER_CC(TIMER1, 0) = 2000;    /* a row every 2 ms: the whole matrix at 167 Hz */
    TIMER_SHORTS(TIMER1) = 1;      /* COMPARE0 clears the counter */
    TIMER_INTENSET(TIMER1) = 1u << 16;
    NVIC_ISER = 1u << TIMER1_IRQ;  /* wakes WFI; PRIMASK keeps the handler from running */
    TIMER_START(TIMER1) = 1;
}

static void display_alpha(int8_t a)
{
    uint8_t k, n = a > 0 ? (uint8_t)((25 * a + 64) >> 7) : 0;
    lit[0] = lit[1] = lit[2] = 0;
    for (k = 0; k < n; k++)
        lit[led_wire[k] >> 4] |= (uint16_t)(1u << (led_wire[k] & 15u));
}

static void display_tick(void)
{
    int8_t a;
    if (!TIMER_COMPARE(TIMER1, 0))
        return;
    TIMER_COMPARE(TIMER1, 0) = 0;
    (void)TIMER_COMPARE(TIMER1, 0);   /* the event is clear before the NVIC's pending bit is */
    NVIC_ICPR = 1u << TIMER1_IRQ;
    a = nca_link_state()[NCA_ALPHA];
    if (a != shown) {
        shown = a;
        display_alpha(a);
    }
    row = (uint8_t)(row == 2 ? 0 : row + 1);
    GPIO_OUT = (GPIO_OUT & ~MATRIX_PINS) | (1u << (13 + row)) | ((~(uint32_t)lit[row] & 0x1FFu) << 4);
}

uint8_t nca_slot_writer(void)
{
    return NCA_WRITER_NATIVE;      /* the NVMC: the firmware writes its own flash */
}

void nca_link_led(const uint8_t *rgb)
{
    (void)rgb;                     /* no LED driven on this board yet */
}

int main(void)
{
    nrf51_wdt_start();
    nrf51_uart_init();
    display_init();
    nca_link_init();
    for (;;) {
        nrf51_wdt_kick();
        display_tick();
        if (UART_RXDRDY)
            nca_link_rx(nrf51_uart_read());
        else
            __asm__ volatile("wfi");
    }
    return 0;
}
