/* Host port of the UART test harness: the same request/answer protocol
 * (ports/common/harness.h) on stdin/stdout, so one Python driver talks to the
 * host build, the Cortex-M0 under QEMU and the AVR under simavr alike. */
#include <stdio.h>
#include <stdlib.h>
#include "harness.h"

void port_init(void)
{
}

uint8_t port_getc(void)
{
    int c = getchar();
    if (c == EOF)
        port_exit();
    return (uint8_t)c;
}

void port_putc(uint8_t c)
{
    putchar(c);
}

void port_mark_start(void)
{
}

uint32_t port_mark_stop(void)
{
    return 0;
}

void port_exit(void)
{
    fflush(stdout);
    exit(0);
}

int main(void)
{
    harness_run();
    return 0;
}
