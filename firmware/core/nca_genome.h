/* nca_genome.h - the genome's C type, the one declaration: the generated
 * nca_model.h of a harness build and link/nca_model.h of a link build both
 * include it, after defining NCA_GROUPS and NCA_GROUP_BYTES.
 *
 * Layout (codegen/formats.py): per group of 4 hidden units j = 4g..4g+3:
 * W1[i][j] i = 0..47 (unit-minor), b1[j], W2[j][m] m = 0..15 (unit-minor). */
#ifndef NCA_GENOME_H
#define NCA_GENOME_H

#include <stdint.h>

#if !defined(NCA_GROUPS) || !defined(NCA_GROUP_BYTES)
#error "define NCA_GROUPS and NCA_GROUP_BYTES (nca_model.h) before including nca_genome.h"
#endif

typedef struct {
    int8_t groups[NCA_GROUPS][NCA_GROUP_BYTES];
    int16_t out_bias[16];   /* output accumulator start (int16 accumulator units) */
    uint16_t out_mt[16];    /* M | T: Q15 multiplier in [2^14, 2^15) (5 low bits zero) and
                             * the total right shift T: dx = (acc*M + 2^(T-1)) >> T */
} nca_genome_t;

#endif
