/* ATmega328P (Arduino Uno) board firmware with the cell link (APP=link),
 * 16 MHz, 115200 baud.  Received bytes go into a ring buffer from the RX
 * interrupt; the CPU sleeps (idle mode) while the buffer is empty.
 *
 * Genome slots: flash at NCA_AVR_SLOT0 and NCA_AVR_SLOT1 (flash_layout_avr.h; 67
 * pages of 128 B each).  The chip executes SPM only from its boot section, so
 * the pages are erased and written through a routine there, found at start-up:
 *   - the firmware's own (boot_avr.S, in the ISP image): interrupts stay enabled
 *     while a page is erased or written;
 *   - Optiboot >= 8's do_spm (same calling convention): interrupts off for each
 *     erase or write (about 4.5 ms), since Optiboot waits for it with the
 *     interrupt vectors in the application, which cannot be read meanwhile;
 *   - neither (e.g. the Uno's stock boot loader): FLASH_BEGIN is refused
 *     (ERR_NO_WRITER) and HELLO says so.
 * After each erase or page write the firmware writes GPIOR1, which lets the
 * simavr bridge save the flash to a file (--flash); on hardware it is a spare
 * register.
 *
 * LED: an RGB LED (common cathode, each colour through its resistor) on D9, D10
 * and D11 (PB1 = OC1A red, PB2 = OC1B green, PB3 = OC2A blue), 8-bit fast PWM at
 * 976 Hz (Timer1 and Timer2, clk/64) showing the cell's colour (nca_cell_rgb) after
 * every step: OCR = the colour, duty (OCR + 1) / 256, and a colour of 0 takes the
 * pin off the timer (low).  Fast rather than phase-correct PWM because simavr 1.6
 * models only the former.  The Mega has PWM on D9, D10 and D11 too (other timers). */
#include <stdint.h>
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/pgmspace.h>
#include <avr/sleep.h>
#include "flash_layout_avr.h"
#include "nca_link.h"
#include "uart_avr.h"

#define SLOT_BASE(s) ((s) ? (uint16_t)NCA_AVR_SLOT1 : (uint16_t)NCA_AVR_SLOT0)

/* the receive ring: also filled by boot_avr.S's handler while a page is erased or written */
volatile uint8_t nca_rx_ring[256];
volatile uint8_t nca_rx_head, nca_rx_tail;

ISR(USART_RX_vect)
{
    uint8_t c = UDR0, h = (uint8_t)(nca_rx_head + 1);
    if (h != nca_rx_tail) {
        nca_rx_ring[nca_rx_head] = c;
        nca_rx_head = h;
    }
}

static uint8_t uart_getc(void)
{
    uint8_t c;
    for (;;) {
        cli();
        if (nca_rx_head != nca_rx_tail)
            break;
        sleep_enable();
        sei();                 /* the instruction after sei runs first: no lost wake-up */
        sleep_cpu();
        sleep_disable();
    }
    c = nca_rx_ring[nca_rx_tail];
    nca_rx_tail = (uint8_t)(nca_rx_tail + 1);
    sei();
    return c;
}

void nca_link_putc(uint8_t c)
{
    uart_avr_putc(c);
}

/* ------------------------------------------------------------ the LED */
static void led_init(void)
{
    DDRB |= _BV(PB1) | _BV(PB2) | _BV(PB3);            /* outputs, low while a channel is off */
    TCCR1A = _BV(WGM10);                               /* fast PWM 8-bit (WGM 5) */
    TCCR1B = _BV(WGM12) | _BV(CS11) | _BV(CS10);       /* clk/64: 976 Hz */
    TCCR2A = _BV(WGM21) | _BV(WGM20);                  /* fast PWM (WGM 3) */
    TCCR2B = _BV(CS22);                                /* clk/64 */
}

/* duty (v + 1) / 256 with the pin on the timer; 0: the pin off the timer (low), as
 * Arduino's analogWrite does (the timer would still give a 1/256 pulse) */
void nca_link_led(const uint8_t *rgb)
{
    OCR1AL = rgb[0];
    OCR1BL = rgb[1];
    OCR2A = rgb[2];
    TCCR1A = (uint8_t)(_BV(WGM10) | (rgb[0] ? _BV(COM1A1) : 0) | (rgb[1] ? _BV(COM1B1) : 0));
    TCCR2A = (uint8_t)(_BV(WGM21) | _BV(WGM20) | (rgb[2] ? _BV(COM2A1) : 0));
}

/* ------------------------------------------------------------ the slots */
typedef void (*spm_fn)(uint16_t addr, uint8_t command, uint16_t data);
static spm_fn spm;
static uint8_t writer = NCA_WRITER_NONE;

/* Which boot-section routine is there: the own one's signature, or Optiboot's
 * version word (>= 8) and the `rjmp do_spm` in its second word (a `ret` there is
 * a build without it).  This reads the boot section with LPM, which the lock bits
 * must allow (BLB1 mode 1 or 2, firmware/README.md). */
static void writer_detect(void)
{
    uint8_t major = (uint8_t)(pgm_read_word(NCA_AVR_OPTIBOOT_VERSION_AT) >> 8);
    if (pgm_read_dword(NCA_AVR_BOOT_MAGIC_AT) == NCA_AVR_BOOT_MAGIC) {
        writer = NCA_WRITER_BOOT;
        spm = (spm_fn)(NCA_AVR_BOOT_ENTRY / 2);              /* a function pointer is a word address */
    } else if (major >= NCA_AVR_OPTIBOOT_MIN_MAJOR && major != 0xFF
               && (pgm_read_word(NCA_AVR_OPTIBOOT_SPM) & 0xF000u) == 0xC000u) {
        writer = NCA_WRITER_OPTIBOOT;
        spm = (spm_fn)(NCA_AVR_OPTIBOOT_SPM / 2);
    } else {
        writer = NCA_WRITER_NONE;
    }
}

uint8_t nca_slot_writer(void)
{
    return writer;
}

/* One SPM command through the routine, for a page of the slots only (the own
 * routine checks that again).  Optiboot's do_spm is called with interrupts off: it
 * neither disables them around its timed SPMCSR write nor moves the vectors. */
static void spm_call(uint16_t addr, uint8_t command, uint16_t data)
{
    uint8_t s;
    if (writer == NCA_WRITER_NONE || addr < NCA_AVR_SLOT0 || addr >= NCA_AVR_SLOTS_END)
        return;
    if (writer == NCA_WRITER_BOOT) {
        spm(addr, command, data);
        return;
    }
    s = SREG;
    cli();
    spm(addr, command, data);
    SREG = s;
}

static void flash_changed(void)
{
    GPIOR1 = 0xF1;
}

/* interrupts stay enabled between (and, with the own routine, during) the 67 page erases */
void nca_slot_erase(uint8_t slot)
{
    uint16_t a;
    for (a = 0; a < NCA_SLOT_BYTES; a += NCA_AVR_PAGE)
        spm_call((uint16_t)(SLOT_BASE(slot) + a), NCA_AVR_SPM_ERASE, 0);
    flash_changed();
}

void nca_slot_write(uint8_t slot, uint16_t off, const uint8_t *src, uint8_t n)
{
    uint16_t a = SLOT_BASE(slot) + off, end = (uint16_t)(a + n);
    while (a < end) {
        uint16_t page = (uint16_t)(a & ~(uint16_t)(NCA_AVR_PAGE - 1)), i;
        for (i = 0; i < NCA_AVR_PAGE; i += 2) {
            uint16_t b = (uint16_t)(page + i);
            uint8_t lo = (b >= a && b < end) ? src[b - (SLOT_BASE(slot) + off)] : pgm_read_byte(b);
            uint8_t hi = (b + 1 >= a && b + 1 < end) ? src[b + 1 - (SLOT_BASE(slot) + off)] : pgm_read_byte(b + 1);
            spm_call(b, NCA_AVR_SPM_FILL, (uint16_t)(lo | ((uint16_t)hi << 8)));
        }
        spm_call(page, NCA_AVR_SPM_WRITE, 0);   /* data 0: Optiboot's do_spm then re-enables the RWW section */
        a = (uint16_t)(page + NCA_AVR_PAGE);
    }
    flash_changed();
}

const nca_genome_t *nca_slot_genome(uint8_t slot)
{
    return (const nca_genome_t *)(uintptr_t)SLOT_BASE(slot);
}

#ifdef NCA_TEST_APP_BYTES
/* test only (tests/test_boards_emulated.py): an application this much larger must not link */
const uint8_t nca_test_bulk[NCA_TEST_APP_BYTES] PROGMEM = {1};
#endif

int main(void)
{
    MCUCR = _BV(IVCE);        /* the interrupt vectors in the application (a jump to 0 keeps IVSEL) */
    MCUCR = 0;
    uart_avr_init(_BV(RXCIE0));
    set_sleep_mode(SLEEP_MODE_IDLE);
    led_init();
    writer_detect();
    sei();                    /* before the slot scan: it takes about 80 ms */
    nca_link_init();
#ifdef NCA_TEST_APP_BYTES
    if (pgm_read_byte(&nca_test_bulk[NCA_TEST_APP_BYTES - 1]))
        nca_link_putc(0);
#endif
    for (;;)
        nca_link_rx(uart_getc());
    return 0;
}
