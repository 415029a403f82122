/* nrf51.h - the nRF51822 (BBC micro:bit v1) registers and helpers both Cortex-M0
 * builds use: the test harness (main.c) and the board firmware with the cell link
 * (link_main.c).  No vendor SDK.  QEMU -M microbit emulates the UART, NVMC, TIMERs
 * and GPIO; its CLOCK block is a stub that reads 1 (so HFCLKSTARTED is set at once)
 * and the watchdog is an unimplemented device (writes ignored, reads 0), so the same
 * code runs on silicon and in the emulator.
 *
 * Interrupts stay masked (PRIMASK, set by the first instruction of Reset_Handler)
 * for the whole run: the UART and display-timer interrupts are enabled in the NVIC
 * only so that WFI wakes on them; no handler ever runs. */
#ifndef NCA_NRF51_H
#define NCA_NRF51_H
#include <stdint.h>

#define REG(a) (*(volatile uint32_t *)(a))

/* CLOCK */
#define CLOCK 0x40000000u
#define CLOCK_TASKS_HFCLKSTART REG(CLOCK + 0x000)
#define CLOCK_EVENTS_HFCLKSTARTED REG(CLOCK + 0x100)
#define CLOCK_XTALFREQ REG(CLOCK + 0x550)
/* UART0 */
#define UART 0x40002000u
#define UART_IRQ 2
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
/* TIMER0 (32-bit capable) and TIMER1 (16-bit) */
#define TIMER0 0x40008000u
#define TIMER1 0x40009000u
#define TIMER1_IRQ 9
#define TIMER_START(t) REG((t) + 0x000)
#define TIMER_CLEAR(t) REG((t) + 0x00C)
#define TIMER_CAPTURE(t, n) REG((t) + 0x040 + 4 * (n))
#define TIMER_COMPARE(t, n) REG((t) + 0x140 + 4 * (n))
#define TIMER_SHORTS(t) REG((t) + 0x200)
#define TIMER_INTENSET(t) REG((t) + 0x304)
#define TIMER_MODE(t) REG((t) + 0x504)
#define TIMER_BITMODE(t) REG((t) + 0x508)
#define TIMER_PRESCALER(t) REG((t) + 0x510)
#define TIMER_CC(t, n) REG((t) + 0x540 + 4 * (n))
/* WDT */
#define WDT 0x40010000u
#define WDT_TASKS_START REG(WDT + 0x000)
#define WDT_RUNSTATUS REG(WDT + 0x400)
#define WDT_CRV REG(WDT + 0x504)
#define WDT_RREN REG(WDT + 0x508)
#define WDT_CONFIG REG(WDT + 0x50C)
#define WDT_RR0 REG(WDT + 0x600)
#define WDT_RELOAD 0x6E524635u
/* NVMC.  NRF51_NVMC_READY_ADDR may be set (-D, a test build) to a word that never
 * reads 1, to check that every flash operation gives up and the link reports it. */
#define NVMC 0x4001E000u
#ifndef NRF51_NVMC_READY_ADDR
#define NRF51_NVMC_READY_ADDR (NVMC + 0x400)
#endif
#define NVMC_READY REG(NRF51_NVMC_READY_ADDR)
#define NVMC_CONFIG REG(NVMC + 0x504)
#define NVMC_ERASEPAGE REG(NVMC + 0x508)
/* GPIO (P0) */
#define GPIO_OUT REG(0x50000504u)
#define GPIO_OUTSET REG(0x50000508u)
#define GPIO_DIRSET REG(0x50000518u)
#define GPIO_PIN_CNF(n) REG(0x50000700u + 4 * (n))
#define UART_TX_PIN 24             /* the micro:bit's USB serial (through its interface chip) */
#define UART_RX_PIN 25
/* Cortex-M0 system control */
#define NVIC_ISER REG(0xE000E100u)
#define NVIC_ICER REG(0xE000E180u)
#define NVIC_ICPR REG(0xE000E280u)
#define SCB_AIRCR REG(0xE000ED0Cu)

/* Bounds of the busy waits, in passes of their loops (about 8 cycles each at 16 MHz):
 * the crystal starts in under 1 ms (about 20 ms allowed); an NVMC page erase takes at
 * most 22.3 ms and a word write 46 us, and the CPU stalls on flash fetches meanwhile,
 * so READY is normally 1 at the first look (about 0.2 s allowed); one byte leaves
 * the UART in 87 us at 115200 baud (about 50 ms allowed). */
#define NRF51_HFXO_WAIT 40000u
#define NRF51_NVMC_WAIT 400000u
#define NRF51_TX_WAIT 100000u
#define NRF51_WDT_SECONDS 2u

/* reset the whole chip (NVIC_SystemReset): what every fault and stray interrupt does */
static inline void nrf51_system_reset(void)
{
    __asm__ volatile("dsb" ::: "memory");
    SCB_AIRCR = 0x05FA0004u;       /* VECTKEY | SYSRESETREQ */
    __asm__ volatile("dsb" ::: "memory");
    for (;;) {
    }
}

/* the 16 MHz crystal (HFXO) for an accurate baud rate; after the bounded wait the
 * chip runs on (the RC oscillator, +-2 %) if it has not started */
static inline void nrf51_hfxo_start(void)
{
    uint32_t n = NRF51_HFXO_WAIT;
    CLOCK_XTALFREQ = 0xFFu;        /* 16 MHz crystal (the micro:bit's) */
    CLOCK_EVENTS_HFCLKSTARTED = 0;
    CLOCK_TASKS_HFCLKSTART = 1;
    while (!CLOCK_EVENTS_HFCLKSTARTED && --n) {
    }
}

/* Start the watchdog (NRF51_WDT_SECONDS, reload register RR[0]) unless it already
 * runs: it survives a soft reset, and its settings cannot change while it runs. */
static inline void nrf51_wdt_start(void)
{
    if (!(WDT_RUNSTATUS & 1u)) {
        WDT_CONFIG = 1u;           /* keep counting while the CPU sleeps, pause under a debugger */
        WDT_CRV = NRF51_WDT_SECONDS * 32768u - 1u;
        WDT_RREN = 1u;
        WDT_TASKS_START = 1;
    }
    WDT_RR0 = WDT_RELOAD;
}

static inline void nrf51_wdt_kick(void)
{
    WDT_RR0 = WDT_RELOAD;
}

static inline void nrf51_uart_init(void)
{
    GPIO_OUTSET = 1u << UART_TX_PIN;        /* TXD an output, idle high; RXD an input with its */
    GPIO_DIRSET = 1u << UART_TX_PIN;        /* buffer connected (the reset state disconnects it) */
    GPIO_PIN_CNF(UART_RX_PIN) = 0;
    UART_PSELTXD = UART_TX_PIN;
    UART_PSELRXD = UART_RX_PIN;
    UART_BAUDRATE = 0x01D7E000u;   /* 115200 (QEMU ignores it) */
    UART_ENABLE = 4;
    UART_STARTTX = 1;
    UART_STARTRX = 1;
    UART_INTENSET = 1u << 2;       /* RXDRDY raises IRQ 2: WFI wakes on it (PRIMASK keeps it from running) */
    NVIC_ISER = 1u << UART_IRQ;
}

static inline uint8_t nrf51_uart_read(void)
{
    UART_RXDRDY = 0;               /* clear before reading: QEMU re-raises it while its FIFO holds data */
    NVIC_ICPR = 1u << UART_IRQ;
    return (uint8_t)UART_RXD;
}

/* a byte that cannot leave in NRF51_TX_WAIT is dropped (the host times out and resends) */
static inline void nrf51_uart_putc(uint8_t c)
{
    uint32_t n = NRF51_TX_WAIT;
    UART_TXDRDY = 0;
    UART_TXD = c;
    while (!UART_TXDRDY && --n) {
    }
}
#endif
