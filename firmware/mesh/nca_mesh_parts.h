/* nca_mesh_parts.h - what the two parts of the wired cell share: nca_mesh.c (the cell,
 * the run, the mount, the frames of states and parameters) and nca_genomes.c (genome
 * gossip and the census).  Not for ports: their interface is nca_mesh.h. */
#ifndef NCA_MESH_PARTS_H
#define NCA_MESH_PARTS_H

#include <stdint.h>
#include "nca_mesh.h"

/* ---- nca_mesh.c */
extern uint8_t nca_mesh_frame[NCA_MESH_MAX_PAYLOAD];   /* the payload being built */
void nca_mesh_payload(uint8_t q, uint8_t n);   /* send nca_mesh_frame[0 .. n) out of port q */
uint8_t nca_mesh_face(uint8_t q);              /* the grid face of port q (NCA_MESH_UNKNOWN: mount unknown) */
uint8_t nca_mesh_port(uint8_t f);              /* the port that faces grid face f */
void nca_mesh_refuse(void);                    /* count a refused frame */
void nca_mesh_genome_changed(void);            /* a new genome is active: start the cell again */
void nca_mesh_neighbour_heard(uint8_t q);      /* a neighbour spoke on port q: a board not running asks it for the run */
/* the grid's size; returns whether the board knows its place and mount in a running grid */
uint8_t nca_mesh_grid(uint8_t *width, uint8_t *height);

/* ---- nca_genomes.c */
void nca_genomes_init(void);                   /* the active slot; the first offer soon */
/* an OFFER, CHUNK_REQ, CHUNK, CENSUS_REQ or CENSUS frame on port q (0: another type) */
uint8_t nca_genomes_rx(uint8_t q, const uint8_t *b, uint8_t n);
void nca_genomes_poll(uint32_t now);           /* requests again, offers, a census report due */
void nca_genomes_next(uint32_t *tick);         /* the earliest of those */
void nca_genomes_offer_back(uint8_t q);        /* the neighbour behind q runs another genome */

/* little-endian fields */
static inline void nca_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline uint32_t nca_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

#endif
