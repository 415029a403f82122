/* Cortex-M0 (nRF51822, QEMU -M microbit) port of the UART test harness.
 * UART0 at 0x40002000 polled (RX sleeps with WFI); SysTick counts CPU clocks,
 * which under QEMU -icount are instructions x 1.024; 'Q' exits QEMU through
 * ARM semihosting (SYS_EXIT). */
#include <stdint.h>
#include "harness.h"
#include "nrf51.h"

static uint32_t t0;

void port_init(void)
{
    nrf51_uart_init();
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 5;                  /* processor clock, enabled, no interrupt */
}

uint8_t port_getc(void)
{
    return nrf51_uart_getc();
}

void port_putc(uint8_t c)
{
    nrf51_uart_putc(c);
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
