/* Cortex-M0 (nRF51822, QEMU -M microbit) port of the UART test harness.
 * UART0 at 0x40002000 polled (RX sleeps with WFI).  TIMER0 counts the cell call
 * (32 bits, prescaler 0: 16 MHz, captured into CC[0] and CC[1]): on a real nRF51
 * its ticks are CPU cycles; under QEMU -icount shift=6 (every instruction 64 ns of
 * virtual time) they are 1.024 per instruction, an exact instruction count
 * (codegen/toolchain.py M0_TICKS_PER_INSTRUCTION).  'Q' exits QEMU through ARM
 * semihosting (SYS_EXIT); on a board it is a breakpoint, which resets it. */
#include <stdint.h>
#include "harness.h"
#include "nrf51.h"

void port_init(void)
{
    nrf51_uart_init();
    TIMER_MODE(TIMER0) = 0;        /* timer */
    TIMER_BITMODE(TIMER0) = 3;     /* 32 bits */
    TIMER_PRESCALER(TIMER0) = 0;   /* 16 MHz */
    TIMER_CLEAR(TIMER0) = 1;
    TIMER_START(TIMER0) = 1;
}

/* The harness starts no watchdog, but one the link firmware started survives a soft
 * reset (a debugger's, or a fault's): then it keeps reloading it, polling instead of
 * sleeping.  Under QEMU (no watchdog) RUNSTATUS reads 0. */
uint8_t port_getc(void)
{
    while (!UART_RXDRDY) {
        if (WDT_RUNSTATUS & 1u)
            nrf51_wdt_kick();
        else
            __asm__ volatile("wfi");
    }
    return nrf51_uart_read();
}

void port_putc(uint8_t c)
{
    nrf51_uart_putc(c);
}

void port_mark_start(void)
{
    TIMER_CAPTURE(TIMER0, 0) = 1;
}

uint32_t port_mark_stop(void)
{
    TIMER_CAPTURE(TIMER0, 1) = 1;
    return TIMER_CC(TIMER0, 1) - TIMER_CC(TIMER0, 0);
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
