/* nrf51.h - the nRF51822 registers and the polled UART0 both Cortex-M0 builds use
 * (the test harness, main.c, and the board firmware with the cell link, link_main.c).
 * QEMU -M microbit emulates them; the UART's RXDRDY interrupt only wakes WFI. */
#ifndef NCA_NRF51_H
#define NCA_NRF51_H
#include <stdint.h>

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
#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)
#define NVMC 0x4001E000u
#define NVMC_READY REG(NVMC + 0x400)
#define NVMC_CONFIG REG(NVMC + 0x504)
#define NVMC_ERASEPAGE REG(NVMC + 0x508)

static inline void nrf51_uart_init(void)
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

static inline uint8_t nrf51_uart_getc(void)
{
    while (!UART_RXDRDY)
        __asm__ volatile("wfi");
    UART_RXDRDY = 0;               /* clear before reading: QEMU re-raises it while its FIFO holds data */
    NVIC_ICPR = 1u << 2;
    return (uint8_t)UART_RXD;
}

static inline void nrf51_uart_putc(uint8_t c)
{
    UART_TXDRDY = 0;
    UART_TXD = c;
    while (!UART_TXDRDY) {
    }
}
#endif
