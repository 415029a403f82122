/* ATmega328P (Arduino Uno) port of the UART test harness, 16 MHz, 115200 baud.
 * Cycle marks: writing 1 then 2 to GPIOR0 lets the simavr bridge
 * (firmware/tools/simavr_bridge.c) print the exact cycle count between them;
 * 'Q' stops the CPU (cli + sleep), which ends the simulation. */
#include <stdint.h>
#include <avr/io.h>
#include <avr/interrupt.h>
#include <avr/sleep.h>
#include "harness.h"
#include "uart_avr.h"

void port_init(void)
{
    uart_avr_init(0);
}

uint8_t port_getc(void)
{
    while (!(UCSR0A & _BV(RXC0))) {
    }
    return UDR0;
}

void port_putc(uint8_t c)
{
    uart_avr_putc(c);
}

void port_mark_start(void)
{
    GPIOR0 = 1;
}

uint32_t port_mark_stop(void)
{
    GPIOR0 = 2;
    return 0;                                  /* the bridge reports the cycles */
}

void port_exit(void)
{
    while (!(UCSR0A & _BV(TXC0))) {            /* let the last byte leave */
    }
    cli();
    sleep_enable();
    sleep_cpu();
}

int main(void)
{
    harness_run();
    return 0;
}
