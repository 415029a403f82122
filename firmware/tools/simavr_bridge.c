/* simavr_bridge.c - run an AVR ELF under libsimavr with UART0 on stdin/stdout.
 *
 * Bytes from stdin are fed to the UART only while it signals XON (receiver
 * enabled and FIFO not full); every byte the firmware sends goes to stdout.
 * Writes to GPIOR0 mark cycle windows: 1 starts, 2 stops and prints
 * "cycles N" on stderr (exact AVR cycles).  The run ends when the firmware
 * sleeps with interrupts off (cpu_Done), crashes, or, after stdin closed,
 * stays quiet for 100 ms of simulated time.  Exit status 0 on a clean stop.
 * Build: gcc -O2 -I/usr/include/simavr -I/usr/include/simavr/parts simavr_bridge.c \
 *            -lsimavrparts -lsimavr -lpthread -lutil -o simavr_bridge
 * Usage: simavr_bridge [-m mcu] [-f hz] firmware.elf
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "sim_avr.h"
#include "sim_elf.h"
#include "sim_io.h"
#include "avr_uart.h"

static avr_t *avr;
static avr_cycle_count_t mark0, last_tx;
static int xon = 0;

static void gpior0_write(avr_t *a, avr_io_addr_t addr, uint8_t v, void *p)
{
    (void)p;
    a->data[addr] = v;
    if (v == 1)
        mark0 = a->cycle;
    else if (v == 2)
        fprintf(stderr, "cycles %llu\n", (unsigned long long)(a->cycle - mark0));
}

static void tx_hook(struct avr_irq_t *irq, uint32_t v, void *p)
{
    uint8_t c = (uint8_t)v;
    (void)irq;
    (void)p;
    last_tx = avr->cycle;
    if (write(1, &c, 1) != 1)
        exit(3);
}

static void xon_hook(struct avr_irq_t *i, uint32_t v, void *p) { (void)i; (void)v; (void)p; xon = 1; }
static void xoff_hook(struct avr_irq_t *i, uint32_t v, void *p) { (void)i; (void)v; (void)p; xon = 0; }

static void log_stderr(avr_t *a, const int level, const char *fmt, va_list ap)
{
    (void)a;
    if (level <= LOG_WARNING)
        vfprintf(stderr, fmt, ap);
}

int main(int argc, char **argv)
{
    const char *mcu = "atmega328p", *fw = NULL;
    uint32_t freq = 16000000, flags = 0;
    elf_firmware_t f;
    avr_irq_t *rx;
    uint8_t buf[4096];
    size_t len = 0, pos = 0;
    int eof = 0, st = cpu_Running, i;
    unsigned long it = 0;

    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc)
            mcu = argv[++i];
        else if (!strcmp(argv[i], "-f") && i + 1 < argc)
            freq = (uint32_t)strtoul(argv[++i], NULL, 10);
        else
            fw = argv[i];
    }
    if (!fw) {
        fprintf(stderr, "usage: %s [-m mcu] [-f hz] firmware.elf\n", argv[0]);
        return 2;
    }
    avr_global_logger_set(log_stderr);
    memset(&f, 0, sizeof f);
    if (elf_read_firmware(fw, &f)) {
        fprintf(stderr, "cannot read %s\n", fw);
        return 2;
    }
    avr = avr_make_mcu_by_name(mcu);
    if (!avr) {
        fprintf(stderr, "unknown mcu %s\n", mcu);
        return 2;
    }
    avr_init(avr);
    f.frequency = freq;
    avr->frequency = freq;
    avr_load_firmware(avr, &f);
    avr_register_io_write(avr, 0x3E /* GPIOR0 */, gpior0_write, NULL);
    avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
    flags &= ~AVR_UART_FLAG_STDIO;
    avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT), tx_hook, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON), xon_hook, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF), xoff_hook, NULL);
    rx = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    for (;;) {
        st = avr_run(avr);
        if (st == cpu_Done || st == cpu_Crashed)
            break;
        if (++it & 255)
            continue;
        if (pos == len && !eof) {
            ssize_t n = read(0, buf, sizeof buf);
            if (n > 0) {
                len = (size_t)n;
                pos = 0;
            } else if (n == 0) {
                eof = 1;
            }
        }
        while (xon && pos < len)
            avr_raise_irq(rx, buf[pos++]);
        if (eof && pos == len && avr->cycle - last_tx > freq / 10)
            break;
    }
    return st == cpu_Crashed ? 1 : 0;
}
