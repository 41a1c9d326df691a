/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/safetensors.h — a hardened reader and a streaming writer for the
 * safetensors format (huggingface/safetensors README):
 *
 *   [8 bytes: u64 LE header length N][N bytes: UTF-8 JSON header][data section]
 *   header = {"NAME": {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]}, ...,
 *             "__metadata__": {"key": "string", ...}}      (offsets relative to the data section)
 *
 * epm_st_open() maps the file read-only and makes every check the reference
 * implementation (safetensors/src/tensor.rs) makes, plus the gaps it leaves:
 * N <= 100,000,000 and inside the file; JSON parsed by jansson with duplicate
 * keys rejected; dtype from the reference's list; shape entries non-negative
 * integers, rank <= EPM_ST_MAX_RANK; numel x dtype bits overflow-checked and
 * a whole number of bytes; END - BEGIN equals that size exactly; offsets
 * inside the data section; tensors sorted by offset tile the data section with
 * no gap, no overlap and no trailing bytes (no polyglot files). Leading
 * whitespace before '{' is accepted, as the reference does (writers pad).
 * Every error names the file, the tensor and the numbers.
 *
 * Views point into the mapping and live until epm_st_close(). Data is NOT
 * assumed aligned. A file truncated by another process while mapped raises
 * SIGBUS on access; checkpoints are expected to be immutable while loaded.
 */
#ifndef EPMOE_SAFETENSORS_H
#define EPMOE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EPM_ST_MAX_HEADER 100000000ULL /* bytes, the reference's MAX_HEADER_SIZE */
#define EPM_ST_MAX_RANK 8

/* The reference implementation's dtype list. */
#define EPM_ST_DTYPE_MAP(X)                 \
  X(BOOL, 8) X(F4, 4) X(F6_E2M3, 6) X(F6_E3M2, 6) X(U8, 8) X(I8, 8) \
  X(F8_E5M2, 8) X(F8_E4M3, 8) X(F8_E8M0, 8) X(F8_E4M3FNUZ, 8) X(F8_E5M2FNUZ, 8) \
  X(I16, 16) X(U16, 16) X(F16, 16) X(BF16, 16) X(I32, 32) X(U32, 32) X(F32, 32) \
  X(C64, 64) X(F64, 64) X(I64, 64) X(U64, 64)

typedef enum {
#define EPM__ST_DT_ENUM(name, bits) EPM_ST_##name,
  EPM_ST_DTYPE_MAP(EPM__ST_DT_ENUM)
#undef EPM__ST_DT_ENUM
  EPM_ST_DTYPE_COUNT
} epm_st_dtype_t;

const char *epm_st_dtype_name(epm_st_dtype_t dt); /* "F8_E4M3"; "?" if invalid */
int epm_st_dtype_bits(epm_st_dtype_t dt);         /* 4, 6, 8, 16, 32, 64; 0 if invalid */
/* Parse a header dtype string; returns 0 on success. */
int epm_st_dtype_parse(const char *s, epm_st_dtype_t *out);

typedef struct {
  const char *name;
  epm_st_dtype_t dtype;
  int ndim;
  int64_t shape[EPM_ST_MAX_RANK];
  int64_t numel;
  const uint8_t *data; /* into the mapping; NULL when nbytes == 0 */
  size_t nbytes;
  uint64_t file_offset; /* absolute offset of the first byte in the file */
} epm_st_tensor_t;

typedef struct epm_st_file epm_st_file_t;

/* Map and validate a file. Only a regular file is opened (a FIFO, device or
 * socket is refused without blocking or reading). On error *out is NULL. */
epm_status_t epm_st_open(const char *path, epm_st_file_t **out);
/* The same checks on a file image in memory (`name` is used in messages).
 * Views point into `data`, which must outlive the handle; epm_st_read copies
 * from it. For fuzzing and tests. */
epm_status_t epm_st_open_mem(const void *data, size_t size, const char *name, epm_st_file_t **out);
void epm_st_close(epm_st_file_t *f); /* NULL ok */

const char *epm_st_path(const epm_st_file_t *f);
size_t epm_st_file_size(const epm_st_file_t *f);
size_t epm_st_count(const epm_st_file_t *f);
/* Tensors in data-offset order. */
const epm_st_tensor_t *epm_st_at(const epm_st_file_t *f, size_t i);
/* NULL when absent (no error recorded). */
const epm_st_tensor_t *epm_st_find(const epm_st_file_t *f, const char *name);
/* Look up a tensor that must exist with this dtype and shape (ndim 0 = scalar).
 * EPM_ERR_FORMAT names the file, tensor, found and expected dtype/shape. */
epm_status_t epm_st_expect(const epm_st_file_t *f, const char *name, epm_st_dtype_t dtype, int ndim,
                           const int64_t *shape, const epm_st_tensor_t **out);
/* Copy a tensor's bytes into dst with pread(2) from the file rather than
 * through the mapping: faster for large tensors (no page faults on the
 * mapping) and a file truncated since open gives EPM_ERR_IO, not SIGBUS. */
epm_status_t epm_st_read(const epm_st_file_t *f, const epm_st_tensor_t *t, void *dst);
/* __metadata__ value or NULL. */
const char *epm_st_metadata(const epm_st_file_t *f, const char *key);

/* "[2048, 3584]" into buf (always NUL-terminated). */
const char *epm_st_shape_str(int ndim, const int64_t *shape, char *buf, size_t len);

/* ---- writer: header first, then each tensor's bytes in the given order ---- */
typedef struct {
  const char *name;
  epm_st_dtype_t dtype;
  int ndim;
  int64_t shape[EPM_ST_MAX_RANK];
} epm_st_spec_t;

typedef struct epm_st_writer epm_st_writer_t;

/* Create `path` with a header for n tensors laid out back to back in order;
 * metadata: NULL or key/value string pairs (nmeta pairs). */
epm_status_t epm_st_writer_open(const char *path, const epm_st_spec_t *specs, size_t n,
                                const char *const *metadata, size_t nmeta, epm_st_writer_t **out);
/* Append the bytes of the next tensor (must be exactly its size). */
epm_status_t epm_st_writer_put(epm_st_writer_t *w, const void *data, size_t nbytes);
/* Flush and close; fails if not every tensor was written. Frees w. */
epm_status_t epm_st_writer_close(epm_st_writer_t *w);
void epm_st_writer_abort(epm_st_writer_t *w); /* close and unlink; NULL ok */
/* Bytes of one tensor of this spec (overflow-checked). */
epm_status_t epm_st_spec_nbytes(const epm_st_spec_t *s, size_t *out);

/* 64-bit FNV-1a, used by tools and tests to compare tensor bytes. */
uint64_t epm_fnv1a64(const void *data, size_t n, uint64_t h);
#define EPM_FNV1A64_INIT 0xcbf29ce484222325ULL

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_SAFETENSORS_H */
