/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_model_dir.h — how fuzz_model_config splits one input into the files
 * of a checkpoint directory (shared with the corpus generator). Sections are
 * separated by EPM_FUZZ_FILE_MARK and become the files below in order; an
 * empty or absent section means the file does not exist. */
#ifndef EPMOE_FUZZ_MODEL_DIR_H
#define EPMOE_FUZZ_MODEL_DIR_H

#define EPM_FUZZ_FILE_MARK "\n--epmoe-fuzz-next-file--\n"
#define EPM_FUZZ_NFILES 5
static const char *const epm_fuzz_files[EPM_FUZZ_NFILES] = {
    "config.json", "hf_quant_config.json", "model.safetensors.index.json", "model.safetensors",
    "model-2.safetensors",
};

#endif /* EPMOE_FUZZ_MODEL_DIR_H */
