/* simavr_bridge.c - run an AVR ELF under libsimavr with UART0 on stdin/stdout.
 *
 * Bytes from stdin are fed to the UART only while it signals XON (receiver
 * enabled and FIFO not full); every byte the firmware sends goes to stdout.
 * Writes to GPIOR0 mark cycle windows: 1 starts, 2 stops and prints
 * "cycles N" on stderr (exact AVR cycles).  The run ends when the firmware
 * sleeps with interrupts off (cpu_Done), crashes, or, after stdin closed,
 * stays quiet for 100 ms of simulated time.  Exit status 0 on a clean stop.
 *
 * Board modes (the cell link firmware, APP=link), where the run goes on until killed:
 *   --tcp PORT   UART0 on a TCP server at 127.0.0.1:PORT (pyserial socket://); a
 *                client may disconnect and a new one connect (the board keeps running)
 *   --pty        UART0 on a pseudo-terminal (libsimavrparts' uart_pty); its name is
 *                printed on stderr ("pty /dev/pts/N") for pyserial
 *   --flash FILE the flash above the program (the genome slots) is loaded from FILE at
 *                start and saved to it (atomically) whenever the firmware writes GPIOR1
 *                after an erase or page write: a killed and restarted board keeps its genomes
 * While the AVR sleeps the bridge waits for input (poll), so an idle board costs no CPU.
 * Build: gcc -O2 -I/usr/include/simavr -I/usr/include/simavr/parts simavr_bridge.c \
 *            -lsimavrparts -lsimavr -lpthread -lutil -o simavr_bridge
 * Usage: simavr_bridge [-m mcu] [-f hz] [--tcp PORT | --pty] [--flash FILE] firmware.elf
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "sim_avr.h"
#include "sim_elf.h"
#include "sim_io.h"
#include <sys/socket.h>
#include "avr_uart.h"
#include "uart_pty.h"

static avr_t *avr;
static avr_cycle_count_t mark0, last_tx;
static int xon = 0;
static int out_fd = 1;                 /* where UART output goes (-1: nowhere) */
static int in_fd = 0;                  /* where UART input comes from (--tcp: the client, or -1) */
static const char *flash_file;
static uint32_t flash_lo;              /* first flash byte above the program */

static void save_flash(void)
{
    char tmp[4096];
    FILE *f;
    if (!flash_file)
        return;
    snprintf(tmp, sizeof tmp, "%s.tmp", flash_file);
    f = fopen(tmp, "wb");
    if (!f)
        return;
    if (fwrite(avr->flash + flash_lo, 1, avr->flashend + 1 - flash_lo, f) == avr->flashend + 1 - flash_lo
        && fflush(f) == 0) {
        fclose(f);
        rename(tmp, flash_file);
    } else {
        fclose(f);
    }
}

static void load_flash(void)
{
    FILE *f = flash_file ? fopen(flash_file, "rb") : NULL;
    if (!f)
        return;
    if (fread(avr->flash + flash_lo, 1, avr->flashend + 1 - flash_lo, f) == 0)
        fprintf(stderr, "%s: empty\n", flash_file);
    fclose(f);
}

static void gpior1_write(avr_t *a, avr_io_addr_t addr, uint8_t v, void *p)
{
    (void)p;
    a->data[addr] = v;
    save_flash();
}

static void gpior0_write(avr_t *a, avr_io_addr_t addr, uint8_t v, void *p)
{
    (void)p;
    a->data[addr] = v;
    if (v == 1)
        mark0 = a->cycle;
    else if (v == 2)
        fprintf(stderr, "cycles %llu\n", (unsigned long long)(a->cycle - mark0));
}

/* --tcp: the client went away; the board runs on, waiting for the next one.
 * in_fd and out_fd are the same socket: it is closed once, here, so no path
 * closes a descriptor number the system may already have handed out again. */
static void drop_client(void)
{
    close(in_fd);
    in_fd = out_fd = -1;
}

static void tx_hook(struct avr_irq_t *irq, uint32_t v, void *p)
{
    uint8_t c = (uint8_t)v;
    (void)irq;
    (void)p;
    last_tx = avr->cycle;
    if (out_fd == 1) {
        if (write(1, &c, 1) != 1)
            exit(3);
    } else if (out_fd >= 0 && send(out_fd, &c, 1, MSG_NOSIGNAL) != 1) {
        drop_client();
    }
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
    int eof = 0, st = cpu_Running, i, tcp_port = 0, use_pty = 0, lsock = -1;
    unsigned long it = 0;
    static uart_pty_t pty;

    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tcp") && i + 1 < argc)
            tcp_port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pty"))
            use_pty = 1;
        else if (!strcmp(argv[i], "--flash") && i + 1 < argc)
            flash_file = argv[++i];
        else if (!strcmp(argv[i], "-m") && i + 1 < argc)
            mcu = argv[++i];
        else if (!strcmp(argv[i], "-f") && i + 1 < argc)
            freq = (uint32_t)strtoul(argv[++i], NULL, 10);
        else
            fw = argv[i];
    }
    if (!fw) {
        fprintf(stderr, "usage: %s [-m mcu] [-f hz] [--tcp PORT | --pty] [--flash FILE] firmware.elf\n", argv[0]);
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
    flash_lo = (f.flashsize + 127u) & ~127u;
    if (flash_file) {
        load_flash();
        avr_register_io_write(avr, 0x4A /* GPIOR1 */, gpior1_write, NULL);
    }
    avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
    flags &= ~AVR_UART_FLAG_STDIO;
    avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
    if (use_pty) {
        uart_pty_init(avr, &pty);
        uart_pty_connect(&pty, '0');
        fprintf(stderr, "pty %s\n", pty.port[0].slavename);
        for (;;) {
            st = avr_run(avr);
            if (st == cpu_Done || st == cpu_Crashed)
                break;
        }
        uart_pty_stop(&pty);
        return st == cpu_Crashed ? 1 : 0;
    }
    if (tcp_port) {
        struct sockaddr_in sa;
        int one = 1;
        signal(SIGPIPE, SIG_IGN);
        lsock = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(lsock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t)tcp_port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(lsock, (struct sockaddr *)&sa, sizeof sa) || listen(lsock, 1)) {
            fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", tcp_port, strerror(errno));
            return 2;
        }
        fcntl(lsock, F_SETFL, fcntl(lsock, F_GETFL) | O_NONBLOCK);
        out_fd = -1;
        in_fd = -1;
    }
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT), tx_hook, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON), xon_hook, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF), xoff_hook, NULL);
    rx = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
    if (!tcp_port)
        fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    for (;;) {
        st = avr_run(avr);
        if (st == cpu_Done || st == cpu_Crashed)
            break;
        if (tcp_port) {
            /* sleeping with nothing to feed: wait for the host (bounded, so timers still run) */
            int idle = st == cpu_Sleeping && pos == len;
            if (!idle && (++it & 255))
                continue;
            if (in_fd < 0) {
                struct pollfd pf = {lsock, POLLIN, 0};
                if (poll(&pf, 1, idle ? 2 : 0) > 0) {
                    int one = 1;
                    in_fd = accept(lsock, NULL, NULL);
                    if (in_fd >= 0) {
                        setsockopt(in_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                        fcntl(in_fd, F_SETFL, fcntl(in_fd, F_GETFL) | O_NONBLOCK);
                        out_fd = in_fd;
                    }
                }
            } else if (pos == len) {
                struct pollfd pf = {in_fd, POLLIN, 0};
                if (poll(&pf, 1, idle ? 2 : 0) > 0) {
                    ssize_t n = read(in_fd, buf, sizeof buf);
                    if (n > 0) {
                        len = (size_t)n;
                        pos = 0;
                    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                        drop_client();
                    }
                }
            }
            while (xon && pos < len)
                avr_raise_irq(rx, buf[pos++]);
            continue;
        }
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
