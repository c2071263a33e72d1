// libsndfile, to write the audio seeds; and libFuzzer's driver, which main.swift calls (libFuzzer's own main is not
// used: SwiftPM links every executable with its entry point aliased to `main`).
#include <sndfile.h>
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*UserCb)(const uint8_t *Data, size_t Size));
