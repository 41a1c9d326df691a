/* fuzz_frame — libFuzzer target for the wire codec: decodes frames back to
 * back from the input exactly as the daemon's read callback does (decode,
 * consume, repeat) and runs every typed decoder on each frame.
 *   clang -g -fsanitize=fuzzer,address,undefined -Iinclude -Idaemon \
 *     tests/fuzz/fuzz_frame.c daemon/protocol*.c runtime/status.c -o fuzz_frame
 *   ./fuzz_frame -max_total_time=60 -print_final_stats=1
 * Built without libFuzzer (EPM_FUZZ_MAIN), it replays files given as
 * arguments, which is how ctest exercises it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "epmoe/protocol.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  epm_proto_limits_t lim = {1u << 20};
  size_t off = 0;
  while (off < size) {
    epm_frame_t f;
    size_t used = 0;
    if (epm_frame_decode(data + off, size - off, &lim, &f, &used) != EPM_OK) break;
    union {
      epm_hello_req_t a; epm_hello_resp_t b; uint32_t c; epm_str_t d; epm_health_resp_t e;
      epm_fwd_req_t g; epm_fwd_resp_t h; epm_shm_attach_t i; epm_error_resp_t j; epm_dev_attach_t k;
    } u;
    (void)epm_dev_attach_decode(&f, &u.k);
    (void)epm_hello_req_decode(&f, &u.a);
    (void)epm_hello_resp_decode(&f, &u.b);
    (void)epm_u32_req_decode(&f, &u.c);
    (void)epm_text_resp_decode(&f, &u.d);
    (void)epm_health_resp_decode(&f, &u.e);
    (void)epm_fwd_req_decode(&f, &u.g);
    (void)epm_fwd_resp_decode(&f, &u.h);
    (void)epm_shm_attach_decode(&f, &u.i);
    (void)epm_error_resp_decode(&f, &u.j);
    off += used;
  }
  return 0;
}

#ifdef EPM_FUZZ_MAIN
int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    FILE *fp = fopen(argv[i], "rb");
    if (!fp) { perror(argv[i]); return 1; }
    static uint8_t buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    uint8_t *copy = malloc(n ? n : 1); /* exact size, so ASan sees over-reads */
    for (size_t k = 0; k < n; k++) copy[k] = buf[k];
    LLVMFuzzerTestOneInput(copy, n);
    free(copy);
  }
  return 0;
}
#endif
