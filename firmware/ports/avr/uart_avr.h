/* uart_avr.h - USART0 of the ATmega328P as both AVR builds use it (the test
 * harness, main.c, and the board firmware with the cell link, link_main.c):
 * 115200 baud 8N1 at 16 MHz.  The host side of either build expects exactly
 * this line setting, so it is written once. */
#ifndef NCA_UART_AVR_H
#define NCA_UART_AVR_H
#include <stdint.h>
#include <avr/io.h>

/* ucsr0b_extra: more UCSR0B bits, e.g. _BV(RXCIE0) for a receive interrupt */
static inline void uart_avr_init(uint8_t ucsr0b_extra)
{
    UCSR0A = _BV(U2X0);
    UBRR0 = 16;                                /* 115200 baud at 16 MHz with U2X */
    UCSR0B = (uint8_t)(_BV(RXEN0) | _BV(TXEN0) | ucsr0b_extra);
    UCSR0C = 3 << UCSZ00;                      /* 8N1 */
}

static inline void uart_avr_putc(uint8_t c)
{
    while (!(UCSR0A & _BV(UDRE0))) {
    }
    UDR0 = c;
}
#endif
