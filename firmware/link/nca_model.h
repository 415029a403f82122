/* nca_model.h of the board firmware with the cell link (APP=link).
 *
 * The harness builds compile one model in (the generated nca_model.h/.c); a
 * board that takes genomes over the link instead reads the genome from its
 * active flash slot and the model's four shifts and error feedback from that slot's header, at run
 * time.  The format constants come from the generated nca_link_ids.h
 * (boards/protocol.py, from codegen/formats.py); the genome type is
 * core/nca_genome.h. */
#ifndef NCA_MODEL_H
#define NCA_MODEL_H

#include "nca_link_ids.h"

#ifndef __ASSEMBLER__
#include "nca_rom.h"
#include "nca_genome.h"

/* the active genome and its shifts (nca_link.c keeps them; genome NULL: none) */
typedef struct {
    const nca_genome_t *genome;
    uint8_t grad_shift, hidden_shift, bias_shift, acc_shift;
    uint8_t ef_bits;                 /* the genome's error feedback: 0 or NCA_EF_BITS_ON */
} nca_runtime_t;

extern nca_runtime_t nca_rt;

#define NCA_GENOME (*nca_rt.genome)
#define NCA_GRAD_SHIFT (nca_rt.grad_shift)
#define NCA_HIDDEN_SHIFT (nca_rt.hidden_shift)
#define NCA_BIAS_SHIFT (nca_rt.bias_shift)
#define NCA_ACC_SHIFT (nca_rt.acc_shift)
#define NCA_EF_BITS (nca_rt.ef_bits)
#endif
/* the cell always has room for the remainders; whether they are used is the genome's */
#define NCA_HAS_RESID 1
#define NCA_EF_RUNTIME 1

#endif
