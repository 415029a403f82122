/* Cortex-M0 (nRF51822, QEMU -M microbit) board firmware with the cell link
 * (APP=link): UART0 polled, sleeping with WFI while no byte is pending; the two
 * genome slots in flash at 0x10000 and 0x14000 (9 pages of 1 KiB each),
 * erased and programmed through the NVMC, which QEMU emulates. */
#include <stdint.h>
#include "nca_link.h"
#include "nrf51.h"

#define PAGE 1024u
#define SLOT_BASE(s) ((s) ? 0x14000u : 0x10000u)

void nca_link_putc(uint8_t c)
{
    nrf51_uart_putc(c);
}

static void nvmc_wait(void)
{
    while (!NVMC_READY) {
    }
}

void nca_slot_erase(uint8_t slot)
{
    uint32_t a;
    NVMC_CONFIG = 2;               /* erase enable */
    nvmc_wait();
    for (a = 0; a < NCA_SLOT_BYTES; a += PAGE) {
        NVMC_ERASEPAGE = SLOT_BASE(slot) + a;
        nvmc_wait();
    }
    NVMC_CONFIG = 0;
    nvmc_wait();
}

void nca_slot_write(uint8_t slot, uint16_t off, const uint8_t *src, uint8_t n)
{
    uint32_t a = SLOT_BASE(slot) + off, end = a + n;
    NVMC_CONFIG = 1;               /* write enable */
    nvmc_wait();
    while (a < end) {
        uint32_t wa = a & ~3u, w = *(volatile const uint32_t *)wa;
        uint8_t k;
        for (k = 0; k < 4; k++) {
            uint32_t b = wa + k;
            if (b >= a && b < end)
                w = (w & ~(0xFFu << (8 * k))) | ((uint32_t)src[b - (SLOT_BASE(slot) + off)] << (8 * k));
        }
        *(volatile uint32_t *)wa = w;
        nvmc_wait();
        a = wa + 4;
    }
    NVMC_CONFIG = 0;
    nvmc_wait();
}

const nca_genome_t *nca_slot_genome(uint8_t slot)
{
    return (const nca_genome_t *)SLOT_BASE(slot);
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
    nrf51_uart_init();
    nca_link_init();
    for (;;)
        nca_link_rx(nrf51_uart_getc());
    return 0;
}
