/* simavr_mesh.c - a grid of wired cell boards, emulated: W x H ATmega2560 cores on
 * libsimavr in one process, every core running the same unmodified firmware ELF
 * (APP=mesh), its four USARTs wired to the neighbours' through a fault shim.
 *
 * Time: one shared virtual clock in nanoseconds. Board i runs at its own frequency
 * (16 MHz times 1 + e_i, e_i uniform in +-clock_ppm, drawn from the seed: a ceramic
 * resonator's spread), so its cycle c happens at c / f_i. The boards advance in
 * slices of SLICE_NS (under a byte's time at 115200 baud); a byte a board sends in
 * one slice reaches the neighbour's receiver at the start of the next. A sleeping core
 * with nothing due in the slice is not run at all: its clock is moved to the slice's end.
 *
 * Wires: grid face f of board (x, y) goes to grid face OPPOSITE(f) of the neighbour
 * behind it. A board's ports N E S W (USART1 2 3 0, firmware/mesh/nca_mesh_ids.h) face
 * the grid's N E S W, unless --mount gives it a mount: port q then faces (q + rot) & 3,
 * or (rot - q) & 3 mirrored (one character a board, in board order: 0-3 the rotation,
 * 4-7 mirrored; board 0, the host's, is always 0). Unconnected ports send
 * nowhere and receive nothing. The west face of board (0, 0) is the host port (stdin
 * command `host`, output collected for `hostread`). Per directed wire, seeded: a whole
 * frame (from a 0x00 delimiter to the next) lost with --frame-loss, each byte lost with
 * --byte-loss or one of its bits flipped with --byte-corrupt; `cut` severs a wire both
 * ways; --miswire i lands board i's north wire on its north neighbour's west port (that
 * board's own west wire goes dead). (A north wire on the north neighbour's north port is
 * how a board mounted mirrored is wired: --mount.)
 * Power: `off` stops a board (its wires go dead), `on` resets it (the firmware starts
 * from nothing, as after a power cut; the flash keeps what the board wrote there).
 * Flash: every loadable segment of the ELF is in flash (the genome in slot 0, the boot
 * section's routine: simavr itself loads .text and .data only), and self-programming
 * follows the chip's rules (simavr_spm.h, shared with simavr_bridge.c: SPM only from the
 * boot section, the Mega's 8 KiB at 0x3E000; 4.5 ms busy per page erase or write; IVSEL;
 * "board I: FAIL: ..." on stderr for a breach). Each board counts its page erases and
 * writes; `flashcut` makes it lose power at one of them.
 *
 * The camera: `run` returns every board's status block (nca_mesh_status, read from
 * emulated RAM; it changes nothing). Replay: at the firmware's GPIOR0 marks around each
 * update the cell's input (state, remainders, inbox) and output, with the hash of the
 * genome the board runs, are copied from RAM
 * into --log, one fixed-size record per wake (boards/mesh.py reads them).
 *
 * Commands on stdin, one per line; answers on stdout:
 *   run T          advance to virtual time T ns; answers "ok T sim_cycles active_cycles
 *                  wall_ns update_cycles" then W*H status blocks (binary, STATUS bytes each)
 *   host HEX       bytes to the host port (queued, sent at the wire's pace)
 *   hostread       "host HEX": what came back
 *   off i,j,..     power off boards             on i,j,..  power them on (reset)
 *   cut i FACE     sever board i's wire on that grid face (both directions)
 *   flashcut I K T board I loses power at its K-th page erase or write from now (K >= 1):
 *                  T=1 torn (only the page's first half erased or written), T=0 the
 *                  operation completes; then it is off as after `off`, until `on I`
 *   flashops I     "flashops I N C": N page erases and writes since the start, C 1 when
 *                  an armed flashcut has fired (until the next flashcut)
 *   quit
 * Usage: simavr_mesh --size W H --cell ADDR --status ADDR [--seed S] [--clock-ppm P]
 *        [--frame-loss P] [--byte-loss P] [--byte-corrupt P] [--miswire I]... [--mount MOUNTS]
 *        [--threads N]
 *        [--other I FILE CELL STATUS]... [--log FILE] firmware.elf
 * (--other: board I runs another firmware, e.g. another model's, with its own addresses.)
 * (ADDR: data-space addresses of nca_mesh_cell and nca_mesh_status, from avr-nm.)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "sim_avr.h"
#include "sim_elf.h"
#include "sim_interrupts.h"
#include "sim_io.h"
#include "avr_uart.h"
#include "nca_mesh_ids.h"
#include "simavr_spm.h"

#define FACES 4
#define SLICE_NS 40000ull               /* 40 us: under the 86.8 us of a byte at 115200 baud */
#define GPIOR0_ADDR 0x3E
#define BOOT_BYTES 8192u                /* the Mega's factory fuses: BOOTSZ 4096 words, all NRWW */
#define VECTORS 57                      /* the ATmega2560's interrupt vectors */
/* the marks, the status block, the cell's layout and the replay record: nca_mesh_ids.h
 * (boards/mesh_protocol.py) */
#define MARK_IN NCA_MESH_MARK_WAKE_IN
#define MARK_OUT NCA_MESH_MARK_WAKE_OUT
#define STATUS_BYTES NCA_MESH_STATUS_BYTES
#define CELL_STATE NCA_MESH_CELL_STATE_AT
#define CELL_INBOX NCA_MESH_CELL_INBOX_AT
#define CELL_RESID NCA_MESH_CELL_RESID_AT
#define WAKES_AT NCA_MESH_STATUS_WAKES_AT
#define HASH_AT NCA_MESH_STATUS_HASH_AT
#define REC_BYTES NCA_MESH_RECORD_BYTES

static const char FACE_USART[FACES] = {'1', '2', '3', '0'};
static const int DX[FACES] = {0, 1, 0, -1}, DY[FACES] = {-1, 0, 1, 0};
#define OPPOSITE(f) (((f) + 2) & 3)

typedef struct {
    int dst, face;                      /* board and port a wire lands on (-1: nowhere) */
    int cut;
    int dropping;                       /* inside a lost frame */
    int at_start;                       /* the next byte starts a frame */
    uint64_t rng;
} wire_t;

typedef struct board board_t;
typedef struct {
    board_t *b;
    int face;
} tap_t;

struct board {
    avr_t *avr;
    int idx, on;
    int mount;                          /* rot | NCA_MESH_MOUNT_MIRRORED */
    double hz;
    avr_irq_t *rx[FACES];
    tap_t tap[FACES];
    wire_t wire[FACES];
    uint8_t *out;                       /* bytes sent this slice: (face, byte) pairs */
    size_t nout, capout;
    uint8_t rec[REC_BYTES];             /* the wake being recorded */
    uint8_t *log;                       /* finished records since the last flush */
    size_t nlog, caplog;
    uint64_t active;                    /* cycles executed awake */
    uint64_t slept;                     /* cycles jumped over asleep (from the sleep callback) */
    uint64_t update_start, update;      /* cycles inside the cell's updates (between the marks) */
    uint32_t cell_addr, status_addr;    /* its firmware's nca_mesh_cell and nca_mesh_status */
    double idle_until_ns;               /* asleep with nothing due before then: not run */
    nca_spm_t spm;                      /* its self-programming (simavr_spm.h) */
    char who[24];                       /* "board I: " */
    int cut_fired;                      /* an armed flashcut has fired */
};

static board_t *boards;
static int W, H, NB, threads = 1;
static uint32_t cell_addr, status_addr;   /* the firmware's (every board's but --other's) */
static double frame_loss, byte_loss, byte_corrupt;
static uint64_t now_ns, slice_end_ns;   /* slice_end_ns: the slice being delivered */
static FILE *replay_log;
static uint8_t host_out[65536];
static size_t host_nout;
/* bytes from the host, delivered to board 0's west port at the wire's pace (a byte per
 * 86.8 us at 115200 baud: the UART's receive FIFO holds only a few) */
#define HOST_BYTE_NS 86806ull
static uint8_t host_in[65536];
static size_t host_in_head, host_in_tail;
static uint64_t host_next_ns;
static FILE *answers;                   /* stdout as it was: libsimavr prints on fd 1, sent to stderr */
static const char *elf_path;
static elf_firmware_t fw, fw_other;
static const char *other_path;
static int other[64], nother;
static uint32_t other_cell, other_status;

/* ------------------------------------------------------------ seeded draws (SplitMix64) */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double next_uniform(uint64_t *s)
{
    *s += 0x9E3779B97F4A7C15ull;
    return (double)(mix64(*s) >> 11) * (1.0 / 9007199254740992.0);
}

/* ------------------------------------------------------------ hooks */
static void push(uint8_t **buf, size_t *n, size_t *cap, const uint8_t *src, size_t k)
{
    if (*n + k > *cap) {
        *cap = (*n + k) * 2 + 256;
        *buf = realloc(*buf, *cap);
        if (!*buf) {
            fprintf(stderr, "out of memory\n");
            exit(3);
        }
    }
    memcpy(*buf + *n, src, k);
    *n += k;
}

static void tx_hook(struct avr_irq_t *irq, uint32_t value, void *param)
{
    tap_t *t = param;
    uint8_t pair[2] = {(uint8_t)t->face, (uint8_t)value};
    (void)irq;
    push(&t->b->out, &t->b->nout, &t->b->capout, pair, 2);
}

static void mark_hook(struct avr_t *avr, avr_io_addr_t addr, uint8_t v, void *param)
{
    board_t *b = param;
    const uint8_t *cell = avr->data + b->cell_addr;
    (void)addr;
    if (v == MARK_IN) {
        b->update_start = avr->cycle;
        b->rec[0] = (uint8_t)b->idx;
        b->rec[1] = (uint8_t)(b->idx >> 8);
        b->rec[2] = b->rec[3] = 0;
        memcpy(b->rec + 4, avr->data + b->status_addr + WAKES_AT, 4);
        memcpy(b->rec + 8, avr->data + b->status_addr + HASH_AT, 4);   /* the genome it runs */
        memcpy(b->rec + 12, cell + CELL_STATE, 16);
        memcpy(b->rec + 28, cell + CELL_RESID, 8);
        memcpy(b->rec + 36, cell + CELL_INBOX, 128);
    } else if (v == MARK_OUT) {
        b->update += avr->cycle - b->update_start;
        memcpy(b->rec + 164, cell + CELL_STATE, 16);
        memcpy(b->rec + 180, cell + CELL_RESID, 8);
        if (replay_log)
            push(&b->log, &b->nlog, &b->caplog, b->rec, REC_BYTES);
    }
}

static __thread board_t *running;      /* the board this thread is running */

/* simavr's sleep: no waiting here (the grid keeps virtual time); it counts the cycles slept */
static void sleep_none(avr_t *avr, avr_cycle_count_t how_long)
{
    (void)avr;
    running->slept += how_long + 1;
}

/* A sleeping core wakes only for a cycle timer (a timer compare, a byte's end on a
 * USART) or a pending interrupt. When neither falls before `target`, simavr would only
 * count cycles up to there: the clock is moved instead. This is what makes a grid of
 * mostly dormant boards cheap, and it keeps a sleeping core from jumping past the
 * slice (a byte delivered at the slice's end would otherwise arrive late). */
static int asleep_until(board_t *b, avr_cycle_count_t target)
{
    avr_t *a = b->avr;
    avr_cycle_timer_slot_p next = a->cycle_timers.timer;
    if (a->state != cpu_Sleeping || avr_has_pending_interrupts(a) || (next && next->when <= target))
        return 0;
    a->cycle = target;
    /* nothing happens to it before its next timer (or a byte: deliver() wakes it) */
    b->idle_until_ns = next ? (double)next->when / b->hz * 1e9 : 1e300;
    return 1;
}

/* an idle board's clock brought to time t (it was not run while idle) */
static void catch_up(board_t *b, uint64_t t_ns)
{
    avr_cycle_count_t c = (avr_cycle_count_t)(b->hz * (double)t_ns * 1e-9);
    if (b->avr->cycle < c)
        b->avr->cycle = c;
    b->idle_until_ns = 0;
}

/* ------------------------------------------------------------ boards */
static void board_start(board_t *b, avr_cycle_count_t at)
{
    avr_t *a = b->avr;
    avr_reset(a);
    nca_spm_reset(&b->spm);
    /* the SRAM forgets with the power (simavr's reset keeps it, and the flash, as the chip
     * does): 0x200 .. RAMEND on the 2560 */
    memset(a->data + 0x200, 0, a->ramend + 1 - 0x200);
    a->cycle = at;
    a->sleep = sleep_none;
    b->idle_until_ns = 0;
    b->on = 1;
}

static void board_init(board_t *b, int idx, double ppm, uint64_t seed)
{
    avr_t *a = avr_make_mcu_by_name("atmega2560");
    uint64_t s = seed ^ (0xC0FFEEull * (uint64_t)(idx + 1));
    int f;
    if (!a) {
        fprintf(stderr, "simavr has no atmega2560 core\n");
        exit(2);
    }
    avr_init(a);
    elf_firmware_t *mine = &fw;
    const char *path = elf_path;
    b->cell_addr = cell_addr;
    b->status_addr = status_addr;
    for (f = 0; f < nother; f++)
        if (other[f] == idx) {
            b->cell_addr = other_cell;
            b->status_addr = other_status;
            mine = &fw_other;
            path = other_path;
        }
    avr_load_firmware(a, mine);
    snprintf(b->who, sizeof b->who, "board %d: ", idx);
    if (nca_spm_load_segments(a, path, mine->flashsize, a->flashend + 1)
        || nca_spm_attach(&b->spm, a, BOOT_BYTES, BOOT_BYTES, VECTORS, b->who)) {
        fprintf(stderr, "cannot load the flash of %s\n", path);
        exit(2);
    }
    a->frequency = 16000000;
    b->avr = a;
    b->idx = idx;
    b->hz = 16e6 * (1.0 + ppm * 1e-6 * (2.0 * next_uniform(&s) - 1.0));
    avr_register_io_write(a, GPIOR0_ADDR, mark_hook, b);
    for (f = 0; f < FACES; f++) {
        uint32_t flags = 0;
        b->tap[f].b = b;
        b->tap[f].face = f;
        /* no stdio echo, and the receiver's FIFO as the chip's (bytes just arrive) */
        avr_ioctl(a, AVR_IOCTL_UART_GET_FLAGS(FACE_USART[f]), &flags);
        flags &= ~(uint32_t)(AVR_UART_FLAG_STDIO | AVR_UART_FLAG_POLL_SLEEP);
        avr_ioctl(a, AVR_IOCTL_UART_SET_FLAGS(FACE_USART[f]), &flags);
        b->rx[f] = avr_io_getirq(a, AVR_IOCTL_UART_GETIRQ(FACE_USART[f]), UART_IRQ_INPUT);
        avr_irq_register_notify(avr_io_getirq(a, AVR_IOCTL_UART_GETIRQ(FACE_USART[f]), UART_IRQ_OUTPUT),
                                tx_hook, &b->tap[f]);
        b->wire[f].rng = mix64(seed * 0x100000001B3ull + (uint64_t)idx * 8 + (uint64_t)f + 1);
        b->wire[f].at_start = 1;
    }
    board_start(b, 0);
}

/* the port of board i that faces grid face f */
static int port_of(int i, int f)
{
    int mount = boards[i].mount, rot = mount & 3;
    return ((mount & NCA_MESH_MOUNT_MIRRORED) ? rot - f : f - rot) & 3;
}

static void wire_grid(const int *miswired, int nmis)
{
    int i, f, k;
    for (i = 0; i < NB; i++) {
        int x = i % W, y = i / W;
        for (f = 0; f < FACES; f++) {
            int xx = x + DX[f], yy = y + DY[f], j = yy * W + xx;
            wire_t *w = &boards[i].wire[port_of(i, f)];
            w->dst = (xx >= 0 && xx < W && yy >= 0 && yy < H) ? j : -1;
            w->face = w->dst >= 0 ? port_of(j, OPPOSITE(f)) : 0;
        }
    }
    for (k = 0; k < nmis; k++) {       /* board i's N wire lands on the north board's W port */
        int i2 = miswired[k], q = port_of(i2, 0), n = boards[i2].wire[q].dst, nw;
        if (n < 0)
            continue;
        nw = boards[n].wire[port_of(n, 3)].dst;  /* the wire it displaces goes dead */
        if (nw >= 0)
            boards[nw].wire[port_of(nw, 1)].dst = -1;
        boards[n].wire[port_of(n, 2)].dst = -1;   /* the north board's S port is left unconnected */
        boards[n].wire[port_of(n, 3)].dst = i2;
        boards[n].wire[port_of(n, 3)].face = q;
        boards[i2].wire[q].face = port_of(n, 3);
    }
}

/* one byte through the shim onto its wire */
static void deliver(board_t *b, int face, uint8_t v)
{
    wire_t *w = &b->wire[face];
    int start = w->at_start;
    w->at_start = (v == 0);
    if (b->idx == 0 && face == 3) {    /* the host port */
        if (host_nout < sizeof host_out)
            host_out[host_nout++] = v;
        return;
    }
    if (w->dst < 0 || w->cut || !boards[w->dst].on)
        return;
    if (boards[w->dst].idle_until_ns > 0)
        catch_up(&boards[w->dst], slice_end_ns);
    if (start)
        w->dropping = frame_loss > 0 && next_uniform(&w->rng) < frame_loss;
    if (w->dropping)
        return;
    if (byte_loss > 0 && next_uniform(&w->rng) < byte_loss)
        return;
    if (byte_corrupt > 0 && next_uniform(&w->rng) < byte_corrupt)
        v ^= (uint8_t)(1u << (int)(next_uniform(&w->rng) * 8));
    avr_raise_irq(boards[w->dst].rx[w->face], v);
}

/* ------------------------------------------------------------ running */
typedef struct {
    int first;
    uint64_t target_ns;
} job_t;

/* A spinning barrier: a slice's work is a few microseconds, far less than a futex
 * sleep and wake-up, so the threads wait by polling (yielding after a while, for a
 * machine with more threads than free cores). */
static int bar_arrived, bar_phase;

static void barrier(void)
{
    int phase = __atomic_load_n(&bar_phase, __ATOMIC_ACQUIRE), spins = 0;
    if (__atomic_add_fetch(&bar_arrived, 1, __ATOMIC_ACQ_REL) == threads) {
        __atomic_store_n(&bar_arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&bar_phase, phase + 1, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&bar_phase, __ATOMIC_ACQUIRE) == phase)
        if (++spins > 4000)
            sched_yield();
}
static job_t jobs[64];
static int quitting;

/* boards first, first + step, ...: interleaved, so each thread gets a share of the pattern */
static void run_boards(int first, int step, uint64_t t_ns)
{
    int i;
    for (i = first; i < NB; i += step) {
        board_t *b = &boards[i];
        avr_t *a = b->avr;
        avr_cycle_count_t target = (avr_cycle_count_t)(b->hz * (double)t_ns * 1e-9);
        avr_cycle_count_t c0, s0 = b->slept;
        if (!b->on) {
            a->cycle = target;
            continue;
        }
        if ((double)t_ns <= b->idle_until_ns)
            continue;
        b->idle_until_ns = 0;         /* its clock stayed where it fell asleep: the next timer is due */
        c0 = a->cycle;
        running = b;
        while (a->cycle < target && !asleep_until(b, target)) {
            int st = avr_run(a);
            if (st == cpu_Done || st == cpu_Crashed) {
                fprintf(stderr, "board %d stopped (state %d) at pc 0x%x\n", i, st, a->pc);
                b->on = 0;
                break;
            }
            nca_spm_step(&b->spm);     /* a breach is reported; the board runs on */
            if (b->spm.cut) {          /* flashcut: the power went at that page erase or write */
                b->spm.cut = 0;
                b->cut_fired = 1;
                b->on = 0;
                break;
            }
        }
        b->active += (a->cycle - c0) - (b->slept - s0);
    }
}

static void *worker(void *arg)
{
    job_t *j = arg;
    for (;;) {
        barrier();
        if (__atomic_load_n(&quitting, __ATOMIC_ACQUIRE))
            return NULL;
        run_boards(j->first, threads, j->target_ns);
        barrier();
    }
}

static void advance(uint64_t t_ns)
{
    int i, k;
    while (now_ns < t_ns) {
        uint64_t end = now_ns + SLICE_NS < t_ns ? now_ns + SLICE_NS : t_ns;
        if (threads > 1) {
            for (k = 0; k < threads; k++)
                jobs[k].target_ns = end;
            barrier();
            run_boards(0, threads, end);
            barrier();
        } else {
            run_boards(0, 1, end);
        }
        slice_end_ns = end;
        if (host_in_tail != host_in_head && end >= host_next_ns) {
            if (boards[0].idle_until_ns > 0)
                catch_up(&boards[0], end);
            if (boards[0].on)
                avr_raise_irq(boards[0].rx[3], host_in[host_in_tail]);
            host_in_tail = (host_in_tail + 1) % sizeof host_in;
            host_next_ns = end + HOST_BYTE_NS;
        }
        for (i = 0; i < NB; i++) {     /* in board order: the same run for any thread count */
            board_t *b = &boards[i];
            size_t n;
            for (n = 0; n + 1 < b->nout; n += 2)
                deliver(b, b->out[n], b->out[n + 1]);
            b->nout = 0;
        }
        now_ns = end;
    }
    for (i = 0; i < NB; i++)           /* the idle boards' clocks, for the cycle counts */
        if (boards[i].on && boards[i].idle_until_ns > 0)
            catch_up(&boards[i], now_ns);
    if (replay_log) {
        for (i = 0; i < NB; i++) {
            if (boards[i].nlog)
                fwrite(boards[i].log, 1, boards[i].nlog, replay_log);
            boards[i].nlog = 0;
        }
        fflush(replay_log);
    }
}

/* ------------------------------------------------------------ commands */
static int hexval(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static void power(char *list, int on)
{
    char *tok, *save = NULL;
    for (tok = strtok_r(list, ", \n", &save); tok; tok = strtok_r(NULL, ", \n", &save)) {
        int i = atoi(tok);
        if (i < 0 || i >= NB)
            continue;
        if (on && !boards[i].on)
            board_start(&boards[i], (avr_cycle_count_t)(boards[i].hz * (double)now_ns * 1e-9));
        else if (!on)
            boards[i].on = 0;
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: simavr_mesh --size W H --cell ADDR --status ADDR [--seed S] [--clock-ppm P] "
                    "[--frame-loss P] [--byte-loss P] [--byte-corrupt P] [--miswire I] [--mount MOUNTS] "
                    "[--threads N] "
                    "[--other I FILE CELL STATUS] [--log FILE] firmware.elf\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int i, k, miswired[64], nmis = 0;
    const char *mounts = NULL;
    uint64_t seed = 0;
    double ppm = 0;
    char line[1 << 16];
    pthread_t tids[64];
    struct timespec t0, t1;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--size") && i + 2 < argc) {
            W = atoi(argv[++i]);
            H = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--cell") && i + 1 < argc) {
            cell_addr = (uint32_t)strtoul(argv[++i], NULL, 0);
        } else if (!strcmp(argv[i], "--status") && i + 1 < argc) {
            status_addr = (uint32_t)strtoul(argv[++i], NULL, 0);
        } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            seed = strtoull(argv[++i], NULL, 0);
        } else if (!strcmp(argv[i], "--clock-ppm") && i + 1 < argc) {
            ppm = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--frame-loss") && i + 1 < argc) {
            frame_loss = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--byte-loss") && i + 1 < argc) {
            byte_loss = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--byte-corrupt") && i + 1 < argc) {
            byte_corrupt = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--miswire") && i + 1 < argc && nmis < 64) {
            miswired[nmis++] = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--mount") && i + 1 < argc) {
            mounts = argv[++i];
        } else if (!strcmp(argv[i], "--other") && i + 4 < argc && nother < 64) {
            other[nother++] = atoi(argv[++i]);
            other_path = argv[i + 1];
            if (elf_read_firmware(argv[++i], &fw_other)) {
                fprintf(stderr, "cannot read %s\n", argv[i]);
                return 2;
            }
            other_cell = (uint32_t)strtoul(argv[++i], NULL, 0) & 0xFFFF;
            other_status = (uint32_t)strtoul(argv[++i], NULL, 0) & 0xFFFF;
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--log") && i + 1 < argc) {
            replay_log = fopen(argv[++i], "wb");
            if (!replay_log) {
                perror(argv[i]);
                return 2;
            }
        } else if (argv[i][0] != '-' && !elf_path) {
            elf_path = argv[i];
        } else {
            usage();
        }
    }
    if (!elf_path || W <= 0 || H <= 0 || W * H > 65535 || !cell_addr || !status_addr)
        usage();
    if (mounts && (strlen(mounts) != (size_t)(W * H) || mounts[0] != '0' ||
                   strspn(mounts, "01234567") != strlen(mounts))) {
        fprintf(stderr, "--mount: one of 0-7 for each of the %d boards, board 0 (the host's) 0\n", W * H);
        return 2;
    }
    if (threads < 1 || threads > 64)
        threads = 1;
    answers = fdopen(dup(1), "w");
    if (!answers || dup2(2, 1) < 0) {
        perror("stdout");
        return 2;
    }
    if (elf_read_firmware(elf_path, &fw)) {
        fprintf(stderr, "cannot read %s\n", elf_path);
        return 2;
    }
    cell_addr &= 0xFFFF;                /* avr-nm gives 0x80xxxx for data */
    status_addr &= 0xFFFF;
    NB = W * H;
    boards = calloc((size_t)NB, sizeof *boards);
    for (i = 0; i < NB; i++) {
        board_init(&boards[i], i, ppm, seed);
        boards[i].mount = mounts ? mounts[i] - '0' : 0;
    }
    wire_grid(miswired, nmis);
    if (threads > NB)
        threads = NB;
    for (k = 0; k < threads; k++)
        jobs[k].first = k;
    if (threads > 1) {
        for (k = 1; k < threads; k++)
            pthread_create(&tids[k], NULL, worker, &jobs[k]);
    }
    setvbuf(answers, NULL, _IOFBF, 1 << 20);
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "run ", 4)) {
            uint64_t sim = 0, act = 0, upd = 0;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            advance(strtoull(line + 4, NULL, 10));
            clock_gettime(CLOCK_MONOTONIC, &t1);
            for (i = 0; i < NB; i++) {
                sim += boards[i].avr->cycle;
                act += boards[i].active;
                upd += boards[i].update;
            }
            fprintf(answers, "ok %llu %llu %llu %lld %llu\n", (unsigned long long)now_ns, (unsigned long long)sim,
                   (unsigned long long)act,
                   (long long)((t1.tv_sec - t0.tv_sec) * 1000000000ll + (t1.tv_nsec - t0.tv_nsec)),
                   (unsigned long long)upd);
            for (i = 0; i < NB; i++)
                fwrite(boards[i].avr->data + boards[i].status_addr, 1, STATUS_BYTES, answers);
        } else if (!strncmp(line, "host ", 5)) {
            char *p = line + 5;
            while (hexval(p[0]) >= 0 && hexval(p[1]) >= 0) {
                size_t next = (host_in_head + 1) % sizeof host_in;
                if (next != host_in_tail) {
                    host_in[host_in_head] = (uint8_t)(hexval(p[0]) * 16 + hexval(p[1]));
                    host_in_head = next;
                }
                p += 2;
            }
            fprintf(answers, "ok\n");
        } else if (!strncmp(line, "hostread", 8)) {
            size_t n;
            fprintf(answers, "host ");
            for (n = 0; n < host_nout; n++)
                fprintf(answers, "%02x", host_out[n]);
            fprintf(answers, "\n");
            host_nout = 0;
        } else if (!strncmp(line, "off ", 4)) {
            power(line + 4, 0);
            fprintf(answers, "ok\n");
        } else if (!strncmp(line, "on ", 3)) {
            power(line + 3, 1);
            fprintf(answers, "ok\n");
        } else if (!strncmp(line, "cut ", 4)) {
            int b = -1, f = -1;
            if (sscanf(line + 4, "%d %d", &b, &f) == 2 && b >= 0 && b < NB && f >= 0 && f < FACES) {
                wire_t *w = &boards[b].wire[port_of(b, f)];
                w->cut = 1;
                if (w->dst >= 0)
                    boards[w->dst].wire[w->face].cut = 1;
            }
            fprintf(answers, "ok\n");
        } else if (!strncmp(line, "flashcut ", 9)) {
            int b = -1, t = -1;
            unsigned long long k = 0;
            if (sscanf(line + 9, "%d %llu %d", &b, &k, &t) == 3 && b >= 0 && b < NB && k > 0 && (t == 0 || t == 1)) {
                boards[b].spm.cut_at = boards[b].spm.ops + k;
                boards[b].spm.cut_torn = t;
                boards[b].cut_fired = 0;
                fprintf(answers, "ok\n");
            } else {
                fprintf(answers, "error flashcut I K T\n");
            }
        } else if (!strncmp(line, "flashops ", 9)) {
            int b = -1;
            if (sscanf(line + 9, "%d", &b) == 1 && b >= 0 && b < NB)
                fprintf(answers, "flashops %d %llu %d\n", b, (unsigned long long)boards[b].spm.ops, boards[b].cut_fired);
            else
                fprintf(answers, "error flashops I\n");
        } else if (!strncmp(line, "quit", 4)) {
            break;
        } else {
            fprintf(answers, "error unknown command\n");
        }
        fflush(answers);
    }
    if (threads > 1) {
        __atomic_store_n(&quitting, 1, __ATOMIC_RELEASE);
        barrier();
        for (k = 1; k < threads; k++)
            pthread_join(tids[k], NULL);
    }
    if (replay_log)
        fclose(replay_log);
    return 0;
}
