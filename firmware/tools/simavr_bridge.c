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
 *   --flash FILE the flash between the program and the boot section (the genome slots) is
 *                loaded from FILE at start and saved to it (atomically) whenever the firmware
 *                writes GPIOR1 after an erase or page write: a killed and restarted board
 *                keeps its genomes
 * While the AVR sleeps the bridge waits on the socket for the sleep's real time (ppoll
 * instead of simavr's usleep), so an idle board costs no CPU and a byte from the host
 * ends the wait at once.
 *
 * The chip as it is where simavr 1.6 is more lenient (always on; ATmega328P figures;
 * the self-programming rules are simavr_spm.h's, shared with simavr_mesh.c):
 *   - the boot section (the last --bootsz bytes, default 512: BOOTSZ = 256 words) is
 *     loaded from the ELF's segments there (simavr loads .text and .data only), or from
 *     --boot FILE (another ELF: the tests' Optiboot stand-in), or left erased (--boot none);
 *   - SPM executes only from the boot section; elsewhere it is ignored and reported
 *     (the first four: "spm outside the boot section at pc 0x...");
 *   - a page erase or write of the RWW section (below 0x7000) takes 4.5 ms (SPMEN and
 *     RWWSB stay set); until the RWW section is re-enabled (RWWSRE) the CPU must not
 *     execute there, an interrupt vectoring into it included: the bridge reports it
 *     ("FAIL: ...") and exits with status 4, as for an SPM while the flash is busy;
 *   - a page write only clears bits (new = old & buffer);
 *   - IVSEL (MCUCR) moves the interrupt vectors to the start of the boot section
 *     (the first four reported: "interrupt N taken in the boot section").
 * It also reports on stderr:
 *   "irq-off N cycles from pc 0x..."  each time a window with interrupts disabled (SREG.I
 *                                     clear, interrupt handlers included) is the longest yet
 *   "led R G B"                       each time the RGB LED's drive changes: OC1A, OC1B and
 *                                     OC2A (D9, D10, D11) in 8-bit fast PWM, each pin an
 *                                     output: OCR while the pin is on the timer (duty
 *                                     (OCR + 1) / 256), 0 or 255 off it (its PORT bit), or -1
 * Build: gcc -O2 -I/usr/include/simavr -I/usr/include/simavr/parts simavr_bridge.c \
 *            -lsimavrparts -lsimavr -lpthread -lutil -o simavr_bridge
 * Usage: simavr_bridge [-m mcu] [-f hz] [--tcp PORT | --pty] [--flash FILE]
 *                      [--boot FILE|none] [--bootsz BYTES] firmware.elf
 */
#define _GNU_SOURCE   /* ppoll */
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
#include "simavr_spm.h"

/* ATmega328P */
#define NRWW_BYTES 4096u        /* the NRWW section: the last 4 KiB */
#define VECTORS 26

static avr_t *avr;
static avr_cycle_count_t mark0, last_tx;
static int xon = 0;
static int out_fd = 1;                 /* where UART output goes (-1: nowhere) */
static int in_fd = 0;                  /* where UART input comes from (--tcp: the client, or -1) */
static int lsock = -1;                 /* --tcp: the listening socket */
static const char *flash_file;
static uint32_t flash_lo;              /* first flash byte above the program */
static uint32_t boot_lo;               /* the boot section starts here */
static nca_spm_t spm;                  /* the chip's self-programming rules (simavr_spm.h) */
static int irq_off;
static avr_cycle_count_t irq_off_since, irq_off_max;
static uint32_t irq_off_pc;
static int led[3] = {-2, -2, -2};

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
    if (fwrite(avr->flash + flash_lo, 1, boot_lo - flash_lo, f) == boot_lo - flash_lo && fflush(f) == 0) {
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
    if (fread(avr->flash + flash_lo, 1, boot_lo - flash_lo, f) == 0)
        fprintf(stderr, "%s: empty\n", flash_file);
    fclose(f);
}

/* One LED channel: the pin an output, its timer in 8-bit fast PWM with a clock; on the
 * timer (COM non-inverting) the colour is OCR (duty (OCR + 1) / 256), off it the pin's
 * PORT bit (0 or 255); else -1. */
static int led_channel(int mode_ok, uint8_t com, uint8_t ocr, uint8_t pin)
{
    const uint8_t *d = avr->data;
    if (!mode_ok || !(d[0x24] & pin))
        return -1;
    if (com == 2)
        return ocr;
    return com ? -1 : (d[0x25] & pin ? 255 : 0);
}

static void led_check(void)
{
    const uint8_t *d = avr->data;
    int t1 = (d[0x81] & 0x07) && (d[0x80] & 0x03) == 0x01 && (d[0x81] & 0x18) == 0x08;   /* WGM1 = 5 */
    int t2 = (d[0xB1] & 0x07) && (d[0xB0] & 0x03) == 0x03 && !(d[0xB1] & 0x08);          /* WGM2 = 3 */
    int v[3], k, changed = 0;
    v[0] = led_channel(t1, (uint8_t)(d[0x80] >> 6), d[0x88], 0x02);          /* OC1A = PB1 = D9 */
    v[1] = led_channel(t1, (uint8_t)((d[0x80] >> 4) & 3), d[0x8A], 0x04);    /* OC1B = PB2 = D10 */
    v[2] = led_channel(t2, (uint8_t)(d[0xB0] >> 6), d[0xB3], 0x08);          /* OC2A = PB3 = D11 */
    for (k = 0; k < 3; k++)
        if (v[k] != led[k]) {
            led[k] = v[k];
            changed = 1;
        }
    if (changed && (v[0] >= 0 || v[1] >= 0 || v[2] >= 0))
        fprintf(stderr, "led %d %d %d\n", v[0], v[1], v[2]);
}

/* after every instruction (and interrupt entry) */
static void after_step(void)
{
    if (nca_spm_step(&spm) || spm.fail)
        exit(4);
    if (!avr->sreg[S_I]) {
        if (!irq_off) {
            irq_off = 1;
            irq_off_since = avr->cycle;
            irq_off_pc = avr->pc;
        }
    } else if (irq_off) {
        irq_off = 0;
        if (avr->cycle - irq_off_since > irq_off_max) {
            irq_off_max = avr->cycle - irq_off_since;
            fprintf(stderr, "irq-off %llu cycles from pc 0x%04x\n", (unsigned long long)irq_off_max, irq_off_pc);
        }
    }
    led_check();
}

/* --tcp: simavr's sleep (real time, for the AVR's sleeping cycles) as a wait on the
 * host's socket, or the listening one: a byte or a connection ends it early */
static void sleep_on_socket(avr_t *a, avr_cycle_count_t how_long)
{
    uint32_t usec = avr_pending_sleep_usec(a, how_long);
    struct pollfd pf = {in_fd >= 0 ? in_fd : lsock, POLLIN, 0};
    struct timespec ts = {usec / 1000000, (long)(usec % 1000000) * 1000};
    if (usec)
        ppoll(&pf, 1, &ts, NULL);
}

static int run_one(void)
{
    int st = avr_run(avr);
    after_step();
    return st;
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
    const char *mcu = "atmega328p", *fw = NULL, *boot = NULL;
    uint32_t bootsz = 512;
    uint32_t freq = 16000000, flags = 0;
    elf_firmware_t f;
    avr_irq_t *rx;
    uint8_t buf[4096];
    size_t len = 0, pos = 0;
    int eof = 0, st = cpu_Running, i, tcp_port = 0, use_pty = 0;
    unsigned long it = 0;
    static uart_pty_t pty;

    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tcp") && i + 1 < argc)
            tcp_port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pty"))
            use_pty = 1;
        else if (!strcmp(argv[i], "--flash") && i + 1 < argc)
            flash_file = argv[++i];
        else if (!strcmp(argv[i], "--boot") && i + 1 < argc)
            boot = argv[++i];
        else if (!strcmp(argv[i], "--bootsz") && i + 1 < argc)
            bootsz = (uint32_t)strtoul(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "-m") && i + 1 < argc)
            mcu = argv[++i];
        else if (!strcmp(argv[i], "-f") && i + 1 < argc)
            freq = (uint32_t)strtoul(argv[++i], NULL, 10);
        else
            fw = argv[i];
    }
    if (!fw) {
        fprintf(stderr, "usage: %s [-m mcu] [-f hz] [--tcp PORT | --pty] [--flash FILE] [--boot FILE|none] "
                "[--bootsz BYTES] firmware.elf\n", argv[0]);
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
    boot_lo = avr->flashend + 1 - bootsz;
    if (bootsz < 256 || bootsz > NRWW_BYTES || flash_lo > boot_lo) {
        fprintf(stderr, "--bootsz %u: the boot section must be 256..%u B and above the program\n", bootsz, NRWW_BYTES);
        return 2;
    }
    memset(avr->flash + boot_lo, 0xFF, bootsz);
    if ((!boot || strcmp(boot, "none")) && nca_spm_load_segments(avr, boot ? boot : fw, boot_lo, avr->flashend + 1)) {
        fprintf(stderr, "cannot read %s\n", boot ? boot : fw);
        return 2;
    }
    nca_spm_attach(&spm, avr, bootsz, NRWW_BYTES, VECTORS, "");
    spm.report_boot_irqs = 1;
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
            st = run_one();
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
        avr->sleep = sleep_on_socket;
    }
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT), tx_hook, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON), xon_hook, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF), xoff_hook, NULL);
    rx = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
    if (!tcp_port)
        fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    for (;;) {
        st = run_one();
        if (st == cpu_Done || st == cpu_Crashed)
            break;
        if (tcp_port) {
            /* sleeping with nothing to feed: look for the host's bytes now (the sleep waited on them) */
            int idle = st == cpu_Sleeping && pos == len;
            if (!idle && (++it & 255))
                continue;
            if (in_fd < 0) {
                struct pollfd pf = {lsock, POLLIN, 0};
                if (poll(&pf, 1, 0) > 0) {
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
                if (poll(&pf, 1, 0) > 0) {
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
