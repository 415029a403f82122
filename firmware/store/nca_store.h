/* nca_store.h - the two genome slots (A/B) in flash: which one is active, and the
 * writing of the other one.  The board firmware with the cell link (link/nca_link.c)
 * and the wired cell (mesh/nca_mesh.c) both keep their genomes here.
 *
 * Each slot holds the genome at NCA_SLOT_GENOME_OFFSET and its 32-byte header (the
 * commit record) at NCA_SLOT_HEADER_OFFSET (nca_link_ids.h, boards/protocol.py).  An
 * update erases the inactive slot, writes the genome in order, verifies its CRC32 and
 * only then writes the header with its generation.  At start-up the valid slot (header
 * CRC, magic, format, genome CRC32, shifts in range, and no overflow possible in the
 * cell) with the highest generation is active, so an interrupted or corrupt update
 * leaves the previous genome running. */
#ifndef NCA_STORE_H
#define NCA_STORE_H

#include <stdint.h>
#include "nca_model.h"

/* A compile-time check (C99 has no _Static_assert): a false cond makes an array of
 * size -1, which every compiler refuses, naming the typedef. */
#define NCA_STATIC_ASSERT(name, cond) typedef char nca_static_assert_##name[(cond) ? 1 : -1]

/* the header's layout (boards/protocol.py HEADER_STRUCT) */
#define H_MAGIC 0
#define H_IVER 4
#define H_FVER 5
#define H_SHIFTS 6
#define H_EF 10
#define H_FLAGS 11      /* 0xFF unless the genome says otherwise: NCA_HEADER_KEEP_STATE clear */
#define H_LEN 12
#define H_HASH 16
#define H_GCRC 20
#define H_GEN 24
#define H_HCRC 28

/* ---- provided by the port */
void nca_slot_erase(uint8_t slot);                  /* slot 0/1: every byte 0xFF */
/* program n bytes at offset off of the slot (erased bytes only; a port may program
 * with NOR semantics, new = old & data, and a port whose flash page is larger than n
 * keeps the page's other bytes as they are) */
void nca_slot_write(uint8_t slot, uint16_t off, const uint8_t *src, uint8_t n);
/* where the slot's genome is, as the core reads it (NCA_RDU8: program memory on AVR);
 * the store reads every slot byte, the header too, relative to it */
const nca_genome_t *nca_slot_genome(uint8_t slot);
/* how the port writes its slots (NCA_WRITER_*); NCA_WRITER_NONE: it cannot */
uint8_t nca_slot_writer(void);


/* ---- the store (slot numbers 0/1; offsets within a slot) */
uint32_t nca_rd32(const uint8_t *p);               /* little-endian */
void nca_wr32(uint8_t *p, uint32_t v);
uint32_t nca_crc32(const uint8_t *p, uint8_t n);   /* IEEE CRC-32 (zlib's) */
/* a header an image may carry (magic, versions, length, shift ranges, header CRC;
 * the generation is not checked) */
uint8_t nca_store_header_ok(const uint8_t *h);
void nca_store_scan(void);             /* pick the active slot; sets nca_rt (genome NULL: none) */
int8_t nca_store_active(void);         /* 0, 1, or -1 when no valid genome is in flash */
uint32_t nca_store_generation(void);   /* the active genome's (0: none) */
uint32_t nca_store_hash(void);         /* its model hash */
void nca_store_active_header(uint8_t *h);               /* NCA_HEADER_BYTES, as committed */
void nca_store_read(uint16_t off, uint8_t *dst, uint8_t n);   /* bytes of the active slot */
/* An update of the inactive slot: begin erases it (header: what verify checks against and
 * commit writes), writes come in order in NCA_LINK_CHUNK pieces (a piece already written
 * is acknowledged again), verify checks the CRC32 and that the cell can run the genome,
 * and commit writes the header with the generation and picks the active slot again.
 * They return NCA_OK or an NCA_ERR_* code (nca_link_ids.h). */
void nca_store_begin(const uint8_t *header);
uint8_t nca_store_write(uint32_t off, const uint8_t *src, uint8_t len);
uint8_t nca_store_verify(uint32_t *crc);    /* crc: the genome's CRC32, or next while incomplete */
uint8_t nca_store_commit(uint32_t generation);
uint8_t nca_store_open(void);                   /* an update is being written */
const uint8_t *nca_store_update_header(void);   /* ... its header */
uint32_t nca_store_next(void);                  /* ... the bytes written so far */
void nca_store_read_update(uint16_t off, uint8_t *dst, uint8_t n);   /* ... of them, as written */
void nca_store_close(void);

#endif
