/* Cortex-M0 (nRF51822, QEMU -M microbit) port of the UART test harness.
 * UART0 at 0x40002000 polled (RX sleeps with WFI); SysTick counts CPU clocks,
 * which under QEMU -icount are instructions x 1.024; 'Q' exits QEMU through
 * ARM semihosting (SYS_EXIT). */
#include <stdint.h>
#include "harness.h"

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

static uint32_t t0;

void port_init(void)
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
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 5;                  /* processor clock, enabled, no interrupt */
}

uint8_t port_getc(void)
{
    uint8_t c;
    while (!UART_RXDRDY)
        __asm__ volatile("wfi");
    UART_RXDRDY = 0;               /* clear before reading: QEMU re-raises it while its FIFO holds data */
    NVIC_ICPR = 1u << 2;
    c = (uint8_t)UART_RXD;
    return c;
}

void port_putc(uint8_t c)
{
    UART_TXDRDY = 0;
    UART_TXD = c;
    while (!UART_TXDRDY) {
    }
}

void port_mark_start(void)
{
    t0 = SYST_CVR;
}

uint32_t port_mark_stop(void)
{
    uint32_t t1 = SYST_CVR;
    return (t0 - t1) & 0xFFFFFFu;  /* SysTick counts down */
}

void port_exit(void)
{
    /* semihosting SYS_EXIT (0x18) with ADP_Stopped_ApplicationExit */
    register uint32_t r0 __asm__("r0") = 0x18;
    register uint32_t r1 __asm__("r1") = 0x20026;
    __asm__ volatile("bkpt 0xab" : : "r"(r0), "r"(r1) : "memory");
    for (;;) {
    }
}

int main(void)
{
    harness_run();
    return 0;
}
