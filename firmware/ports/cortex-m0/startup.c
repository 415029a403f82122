/* Cortex-M0 start-up for the nRF51 (no SDK): interrupts masked first, the crystal
 * started, .data copied, .bss cleared.  Every one of the 15 system and 32 nRF51
 * vectors is filled: HardFault, NMI and any interrupt that was never meant to run
 * (the firmware keeps PRIMASK set from the first instruction) reset the chip, so a
 * fault or a stray interrupt is a reboot, never a hang. */
#include <stdint.h>
#include "nrf51.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
void Reset_Handler(void);
void Default_Handler(void);

void Default_Handler(void)
{
    nrf51_system_reset();
}

void Reset_Handler(void)
{
    uint32_t *src = &_sidata, *dst = &_sdata;
    __asm__ volatile("cpsid i" ::: "memory");   /* before anything can enable an interrupt */
    NVIC_ICER = 0xFFFFFFFFu;                     /* a soft reset clears these; a debugger's jump may not */
    NVIC_ICPR = 0xFFFFFFFFu;
    nrf51_hfxo_start();
    while (dst < &_edata)
        *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss; dst++)
        *dst = 0;
    main();
    nrf51_system_reset();
}

#define VECTORS (15 + 32)   /* the system exceptions after the stack pointer, then IRQ 0..31 */

typedef struct {
    uint32_t *initial_sp;
    void (*handler[VECTORS])(void);
} vector_table_t;

#define D Default_Handler
#define D8 D, D, D, D, D, D, D, D
__attribute__((section(".isr_vector"), used))
static const vector_table_t vectors = {
    &_estack, {Reset_Handler, D, D, D, D, D, D, D, D, D, D, D, D, D, D,   /* reset, NMI, HardFault, ... SysTick */
               D8, D8, D8, D8}                                              /* IRQ 0..31 */
};
