/* nca_rom.h - reading constant tables from program memory, portably.
 * On AVR, const data lives in RAM unless it is PROGMEM, and must then be read
 * with LPM (pgm_read_*); elsewhere flash is in the address space. */
#ifndef NCA_ROM_H
#define NCA_ROM_H
#include <stdint.h>
#if defined(__AVR__)
#include <avr/pgmspace.h>
#define NCA_ROM PROGMEM
#define NCA_RD8(p) ((int8_t)pgm_read_byte(p))
#define NCA_RDU8(p) ((uint8_t)pgm_read_byte(p))
#define NCA_RD16(p) ((int16_t)pgm_read_word(p))
#else
#define NCA_ROM
#define NCA_RD8(p) (*(const int8_t *)(p))
#define NCA_RDU8(p) (*(const uint8_t *)(p))
#define NCA_RD16(p) (*(const int16_t *)(p))
#endif

/* 4-byte alignment for tables that assembly kernels read a word at a time */
#if defined(__GNUC__)
#define NCA_ALIGN4 __attribute__((aligned(4)))
#else
#define NCA_ALIGN4
#endif
#endif
