/* Minimal Cortex-M0 start-up for the nRF51: vector table, .data copy, .bss clear. */
#include <stdint.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
void Reset_Handler(void);
void Default_Handler(void);

void Default_Handler(void)
{
    for (;;) {
    }
}

void Reset_Handler(void)
{
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata)
        *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss; dst++)
        *dst = 0;
    main();
    for (;;) {
    }
}

/* initial stack pointer, then the 15 system and 32 nRF51 interrupt vectors */
typedef struct {
    uint32_t *initial_sp;
    void (*handler[15 + 32])(void);
} vector_table_t;

__attribute__((section(".isr_vector"), used))
static const vector_table_t vectors = {
    &_estack, {Reset_Handler, Default_Handler, Default_Handler}
};
