/* ATmega2560 (Arduino Mega 2560) port of the wired cell (mesh/nca_mesh.h), 16 MHz.
 *
 * Faces: N = USART1 (TX1 D18, RX1 D19), E = USART2 (D16, D17), S = USART3 (D14, D15),
 * W = USART0 (D1, D0: also the USB link, so the host plugs into a west-edge board),
 * all 115200 baud 8N1. Each face has its own receive ring filled by its RX interrupt
 * and its own transmit ring drained by its data-register-empty interrupt, so the four
 * links send at once while the cell computes.
 * Time: Timer5 free-running at clk/1024 (64 us ticks, NCA_MESH_TICK_US) with its
 * overflow counted in software; its compare unit A wakes the CPU for the next wake.
 * The CPU sleeps (idle: the USARTs and timers keep running) until a frame is complete
 * on some face (its 0x00 delimiter) or the wake timer matches: the interrupts of the
 * other bytes put it straight back to sleep. The watchdog (8 s) resets a board whose main loop stops; the
 * loop runs at least every 4.2 s (the timer's overflow).
 * LED: common-cathode RGB on D6, D7, D8 (PH3 OC4A red, PH4 OC4B green, PH5 OC4C
 * blue), Timer4 8-bit fast PWM at 976 Hz.
 * Replay taps: GPIOR0 takes NCA_MESH_MARK_WAKE_IN / _OUT around each update (a spare
 * register on the chip; the emulated grid copies the cell there). */
#include <stdint.h>
#include <string.h>
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/sleep.h>
#include <avr/wdt.h>
#include "nca_mesh.h"

#define RX_RING 256u                /* powers of two: the indices wrap with a mask; 256 holds the
                                       * 80 bytes a face receives during an update, and more */
#define TX_RING 256u                /* a STATE frame's copies, sent back to back */
#if RX_RING != 256u
#error "boot_2560.S's receive handlers index the rings with one byte: RX_RING must be 256"
#endif

/* the receive rings and the flag: global because the boot section's receive handlers
 * (boot_2560.S) fill them too while a flash page is erased or written */
volatile uint8_t nca_mesh_rx_ring[NCA_FACES][RX_RING];
volatile uint8_t nca_mesh_rx_head[NCA_FACES], nca_mesh_rx_tail[NCA_FACES];
static volatile uint8_t tx_ring[NCA_FACES][TX_RING];
static volatile uint8_t tx_head[NCA_FACES], tx_tail[NCA_FACES];
static volatile uint16_t ticks_high;
/* set by the interrupts that may need the loop: a frame's delimiter arrived, the wake
 * timer matched or overflowed; a byte inside a frame only wakes the CPU to sleep again */
volatile uint8_t nca_mesh_loop_needed;

static inline void rx_put(uint8_t f, uint8_t c)
{
    uint8_t h = nca_mesh_rx_head[f], n = (uint8_t)((h + 1) & (RX_RING - 1));
    if (n != nca_mesh_rx_tail[f]) {     /* a full ring drops the byte: the frame's CRC fails */
        nca_mesh_rx_ring[f][h] = c;
        nca_mesh_rx_head[f] = n;
    }
    if (c == 0)
        nca_mesh_loop_needed = 1;
}

/* the next byte for face f's data register, or -1: nothing left (disable the interrupt) */
static inline int16_t tx_take(uint8_t f)
{
    uint8_t t = tx_tail[f];
    if (t == tx_head[f])
        return -1;
    tx_tail[f] = (uint8_t)((t + 1) & (TX_RING - 1));
    return tx_ring[f][t];
}

/* one face's USART: registers and interrupt handlers */
#define FACE_USART(F, U)                                                            \
    ISR(USART##U##_RX_vect) { rx_put(F, UDR##U); }                                  \
    ISR(USART##U##_UDRE_vect)                                                       \
    {                                                                               \
        int16_t c = tx_take(F);                                                     \
        if (c < 0)                                                                  \
            UCSR##U##B &= (uint8_t)~_BV(UDRIE##U);                                  \
        else                                                                        \
            UDR##U = (uint8_t)c;                                                    \
    }                                                                               \
    static void usart##U##_init(void)                                               \
    {                                                                               \
        UCSR##U##A = _BV(U2X##U);                                                   \
        UBRR##U = 16;                  /* 115200 baud at 16 MHz with U2X */          \
        UCSR##U##B = (uint8_t)(_BV(RXEN##U) | _BV(TXEN##U) | _BV(RXCIE##U));       \
        UCSR##U##C = 3 << UCSZ##U##0;  /* 8N1 */                                     \
    }

FACE_USART(NCA_FACE_N, 1)
FACE_USART(NCA_FACE_E, 2)
FACE_USART(NCA_FACE_S, 3)
FACE_USART(NCA_FACE_W, 0)

static void tx_start(uint8_t f)
{
    switch (f) {
    case NCA_FACE_N: UCSR1B |= _BV(UDRIE1); break;
    case NCA_FACE_E: UCSR2B |= _BV(UDRIE2); break;
    case NCA_FACE_S: UCSR3B |= _BV(UDRIE3); break;
    default: UCSR0B |= _BV(UDRIE0); break;
    }
}

uint8_t nca_mesh_send(uint8_t face, const uint8_t *bytes, uint8_t n)
{
    uint8_t s = SREG, head, room, i;
    cli();
    head = tx_head[face];
    room = (uint8_t)((tx_tail[face] - head - 1) & (TX_RING - 1));
    SREG = s;
    if (n > room)
        return 0;
    for (i = 0; i < n; i++) {
        tx_ring[face][head] = bytes[i];
        head = (uint8_t)((head + 1) & (TX_RING - 1));
    }
    tx_head[face] = head;               /* one byte store: the interrupt sees all or nothing */
    tx_start(face);
    return 1;
}

/* ------------------------------------------------------------ time */
ISR(TIMER5_OVF_vect)
{
    ticks_high++;
    nca_mesh_loop_needed = 1;
}

ISR(TIMER5_COMPA_vect)
{
    nca_mesh_loop_needed = 1;
}

uint32_t nca_mesh_ticks(void)
{
    uint8_t s = SREG;
    uint16_t lo, hi;
    cli();
    lo = TCNT5;
    hi = ticks_high;
    if ((TIFR5 & _BV(TOV5)) && lo < 0x8000u)   /* it overflowed since the interrupts went off */
        hi++;
    SREG = s;
    return ((uint32_t)hi << 16) | lo;
}

static void timer_init(void)
{
    TCCR5A = 0;
    TCCR5B = _BV(CS52) | _BV(CS50);     /* normal mode, clk/1024 */
    TIMSK5 = _BV(TOIE5) | _BV(OCIE5A);
}

/* ------------------------------------------------------------ the LED */
static void led_init(void)
{
    DDRH |= _BV(PH3) | _BV(PH4) | _BV(PH5);
    TCCR4A = _BV(WGM40);                          /* fast PWM 8-bit (WGM 5) */
    TCCR4B = _BV(WGM42) | _BV(CS41) | _BV(CS40);  /* clk/64: 976 Hz */
}

/* duty (v + 1) / 256 with the pin on the timer; 0 takes it off the timer (low) */
void nca_mesh_led(const uint8_t *rgb)
{
    OCR4AL = rgb[0];
    OCR4BL = rgb[1];
    OCR4CL = rgb[2];
    TCCR4A = (uint8_t)(_BV(WGM40) | (rgb[0] ? _BV(COM4A1) : 0) | (rgb[1] ? _BV(COM4B1) : 0)
                       | (rgb[2] ? _BV(COM4C1) : 0));
}

void nca_mesh_mark(uint8_t mark)
{
    GPIOR0 = mark;
}

/* ------------------------------------------------------------ the loop */
int main(void)
{
    uint8_t f;
    MCUSR = 0;                          /* a watchdog reset leaves WDRF set, which keeps the watchdog on */
    wdt_enable(WDTO_8S);
    usart0_init();
    usart1_init();
    usart2_init();
    usart3_init();
    timer_init();
    led_init();
    set_sleep_mode(SLEEP_MODE_IDLE);
    nca_mesh_init();
    sei();
    for (;;) {
        uint32_t next;
        uint8_t due;
        wdt_reset();
        nca_mesh_loop_needed = 0;
        for (f = 0; f < NCA_FACES; f++) {
            while (nca_mesh_rx_tail[f] != nca_mesh_rx_head[f]) {
                uint8_t t = nca_mesh_rx_tail[f], c = nca_mesh_rx_ring[f][t];
                nca_mesh_rx_tail[f] = (uint8_t)((t + 1) & (RX_RING - 1));
                nca_mesh_rx(f, c);
            }
        }
        nca_mesh_poll();
        cli();
        due = nca_mesh_next_wake(&next);
        if (due) {
            OCR5A = (uint16_t)next;
            TIFR5 = _BV(OCF5A);
            due = (int32_t)(nca_mesh_ticks() - next) >= 0;
        }
        while (!due && !nca_mesh_loop_needed) { /* the bytes of a frame in flight: back to sleep at once */
            sleep_enable();
            sei();                      /* the instruction after sei runs first: no lost wake-up */
            sleep_cpu();
            sleep_disable();
            cli();
        }
        sei();
    }
    return 0;
}
