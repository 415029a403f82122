/* Cortex-M0 (nRF51822, QEMU -M microbit) board firmware with the cell link
 * (APP=link): UART0 polled, sleeping with WFI while no byte is pending; the two
 * genome slots in flash at 0x10000 and 0x14000 (9 pages of 1 KiB each),
 * erased and programmed through the NVMC, which QEMU emulates. */
#include <stdint.h>
#include "nca_link.h"

#define REG(a) (*(volatile uint32_t *)(a))
#define UART 0x40002000u
#define UART_STARTRX REG(UART + 0x000)
#define UART_STARTTX REG(UART + 0x008)
#define UART_RXDRDY REG(UART + 0x108)
#define UART_TXDRDY REG(UART + 0x11C)
#define UART_INTENSET REG(UART + 0x304)
#define UART_ENABLE REG(UART + 0x500)
#define UART_PSELTXD REG(UART + 0x50C)
#define UART_PSELRXD REG(UART + 0x514)
#define UART_RXD REG(UART + 0x518)
#define UART_TXD REG(UART + 0x51C)
#define UART_BAUDRATE REG(UART + 0x524)
#define NVIC_ISER REG(0xE000E100u)
#define NVIC_ICPR REG(0xE000E280u)
#define NVMC 0x4001E000u
#define NVMC_READY REG(NVMC + 0x400)
#define NVMC_CONFIG REG(NVMC + 0x504)
#define NVMC_ERASEPAGE REG(NVMC + 0x508)

#define PAGE 1024u
#define SLOT_BASE(s) ((s) ? 0x14000u : 0x10000u)

static void uart_init(void)
{
    UART_PSELTXD = 24;
    UART_PSELRXD = 25;
    UART_BAUDRATE = 0x01D7E000u;   /* 115200 (QEMU ignores it) */
    UART_ENABLE = 4;
    UART_STARTTX = 1;
    UART_STARTRX = 1;
    UART_INTENSET = 1u << 2;       /* RXDRDY raises IRQ 2: WFI wakes on it */
    NVIC_ISER = 1u << 2;
    __asm__ volatile("cpsid i");   /* no handler: the IRQ only ends WFI */
}

static uint8_t uart_getc(void)
{
    while (!UART_RXDRDY)
        __asm__ volatile("wfi");
    UART_RXDRDY = 0;               /* clear before reading: QEMU re-raises it while its FIFO holds data */
    NVIC_ICPR = 1u << 2;
    return (uint8_t)UART_RXD;
}

void nca_link_putc(uint8_t c)
{
    UART_TXDRDY = 0;
    UART_TXD = c;
    while (!UART_TXDRDY) {
    }
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

uint8_t nca_slot_read(uint8_t slot, uint16_t off)
{
    return *(volatile const uint8_t *)(SLOT_BASE(slot) + off);
}

const nca_genome_t *nca_slot_genome(uint8_t slot)
{
    return (const nca_genome_t *)SLOT_BASE(slot);
}

int main(void)
{
    uart_init();
    nca_link_init();
    for (;;)
        nca_link_rx(uart_getc());
    return 0;
}
