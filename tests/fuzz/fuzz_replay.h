/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_replay.h — the main() a fuzz target gets without libFuzzer
 * (EPM_FUZZ_MAIN): each file named on the command line is read into a buffer
 * of exactly its size (so ASan sees any over-read) and passed to
 * LLVMFuzzerTestOneInput once. ctest replays the corpus this way. */
#ifndef EPMOE_FUZZ_REPLAY_H
#define EPMOE_FUZZ_REPLAY_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifdef EPM_FUZZ_MAIN
int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    FILE *fp = fopen(argv[i], "rb");
    if (!fp || fseek(fp, 0, SEEK_END) != 0) {
      perror(argv[i]);
      return 1;
    }
    long n = ftell(fp);
    rewind(fp);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    if (!buf || n < 0 || fread(buf, 1, (size_t)n, fp) != (size_t)n) {
      fprintf(stderr, "%s: read failed\n", argv[i]);
      return 1;
    }
    fclose(fp);
    LLVMFuzzerTestOneInput(buf, (size_t)n);
    free(buf);
  }
  printf("replayed %d inputs\n", argc - 1);
  return 0;
}
#endif
#endif /* EPMOE_FUZZ_REPLAY_H */
