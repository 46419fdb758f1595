// The harness firmware: runs one tinykd export on an emulated Cortex-M and prints one result line per check.
//
// The export's files are compiled unchanged; harness_export.h (written by the Makefile) includes them and
// defines EXPORT_LOWER(x) / EXPORT_UPPER(x) to reach their names (kws_ ## x, KWS_ ## x). Output, over
// semihosting, one `key value...` line each (tinykd.firmware parses them; `log` lines are TFLM's own words):
//   harness core=<core> machine=<machine>
//   arena exported_bytes=N allocates=0|1 used_bytes=N halted=0|1   the export's <NAME>_ARENA_BYTES, fresh
//                                                          interpreter; halted: TFLM stopped in its abort loop
//   arena smallest_bytes=N used_bytes=N                    bisection in 16-byte steps, a fresh interpreter per try
//   vector I PASS|FAIL differing=N instructions=N          each golden vector, Invoke() timed by SysTick
//   operator I TYPE instructions=N                         per operator of the first vector (MicroProfiler tags)
//   features PASS|FAIL differing=N total=N max_abs=N      audio exports: TFLM's microfrontend on the golden clip
//   done
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "harness_export.h"
#include "instruction_counter.h"
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_profiler_interface.h"
#include "tensorflow/lite/schema/schema_generated.h"

#if HARNESS_AUDIO
#include "tensorflow/lite/experimental/microfrontend/lib/frontend.h"
#include "tensorflow/lite/experimental/microfrontend/lib/frontend_util.h"
#endif

#ifndef SEARCH_ARENA_BYTES
#define SEARCH_ARENA_BYTES (1024 * 1024)
#endif

namespace {

constexpr size_t kArenaStepBytes = 16;
constexpr int kMaxEvents = 512;

alignas(16) uint8_t search_arena[SEARCH_ARENA_BYTES];
bool quiet = false;
// A kernel's Prepare can meet a failed temporary allocation in too small an arena with TF_LITE_ASSERT, which
// logs "HALTED" and spins forever (TFLITE_ABORT in tensorflow/lite/kernels/op_macros.h). While an allocation
// is tried, the log callback jumps back out of that loop instead, so the try counts as a failure. The skipped
// destructors own nothing: every allocation is in the static arena.
jmp_buf halt_jump;
volatile bool halt_armed = false;
int halted_tries = 0;

void PrintLog(const char* text) {
  if (halt_armed && strncmp(text, "HALTED", 6) == 0) {
    halt_armed = false;
    longjmp(halt_jump, 1);
  }
  if (quiet) return;
  printf("log ");
  for (const char* c = text; *c != '\0'; ++c) putchar(*c == '\n' ? ' ' : *c);
  putchar('\n');
}

// MicroProfiler's interface, recording SysTick ticks per operator (tags are TFLM's operator names).
class OperatorProfiler : public tflite::MicroProfilerInterface {
 public:
  uint32_t BeginEvent(const char* tag) override {
    if (count_ >= kMaxEvents) return kMaxEvents;
    tags_[count_] = tag;
    start_[count_] = instruction_counter_ticks();
    end_[count_] = start_[count_];
    return count_++;
  }
  void EndEvent(uint32_t handle) override {
    if (handle < static_cast<uint32_t>(kMaxEvents)) end_[handle] = instruction_counter_ticks();
  }
  void Clear() { count_ = 0; }
  void Print() const {
    for (int i = 0; i < count_; ++i) {
      printf("operator %d %s instructions=%llu\n", i, tags_[i],
             static_cast<unsigned long long>(instruction_counter_instructions(end_[i] - start_[i])));
    }
  }

 private:
  const char* tags_[kMaxEvents] = {};
  uint64_t start_[kMaxEvents] = {};
  uint64_t end_[kMaxEvents] = {};
  int count_ = 0;
};

__attribute__((noinline)) size_t TryAllocate(const tflite::Model* model, size_t arena_bytes) {
  EXPORT_LOWER(op_resolver) resolver;
  if (EXPORT_LOWER(register_ops)(resolver) != kTfLiteOk) return 0;
  tflite::MicroInterpreter interpreter(model, resolver, search_arena, arena_bytes);
  if (interpreter.AllocateTensors() != kTfLiteOk) return 0;
  return interpreter.arena_used_bytes();
}

// Allocates the model in a fresh interpreter on the first arena_bytes of search_arena; returns the bytes in
// use, or 0 when AllocateTensors() fails or TFLM halts.
size_t AllocatedBytes(const tflite::Model* model, size_t arena_bytes) {
  if (setjmp(halt_jump) != 0) {
    ++halted_tries;
    return 0;
  }
  halt_armed = true;
  const size_t used = TryAllocate(model, arena_bytes);
  halt_armed = false;
  return used;
}

// The smallest multiple of 16 bytes in which the model allocates: lo never allocates, hi always does.
size_t SmallestArena(const tflite::Model* model) {
  size_t lo = 0;
  size_t hi = SEARCH_ARENA_BYTES / kArenaStepBytes * kArenaStepBytes;
  if (AllocatedBytes(model, hi) == 0) return 0;
  while (hi - lo > kArenaStepBytes) {
    const size_t mid = (lo + hi) / 2 / kArenaStepBytes * kArenaStepBytes;
    if (AllocatedBytes(model, mid) != 0) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return hi;
}

void RunGoldenVectors(const tflite::Model* model) {
  EXPORT_LOWER(op_resolver) resolver;
  EXPORT_LOWER(register_ops)(resolver);
  static OperatorProfiler profiler;
  tflite::MicroInterpreter interpreter(model, resolver, search_arena, sizeof(search_arena), nullptr, &profiler);
  if (interpreter.AllocateTensors() != kTfLiteOk) {
    printf("error golden vectors: AllocateTensors() failed in the %u-byte search arena\n",
           static_cast<unsigned>(sizeof(search_arena)));
    return;
  }
  TfLiteTensor* input = interpreter.input(0);
  TfLiteTensor* output = interpreter.output(0);
  for (int vector = 0; vector < EXPORT_UPPER(GOLDEN_VECTOR_COUNT); ++vector) {
    memcpy(input->data.int8, EXPORT_LOWER(golden_inputs)[vector], EXPORT_UPPER(INPUT_ELEMENTS));
    profiler.Clear();
    const uint64_t start = instruction_counter_ticks();
    const TfLiteStatus status = interpreter.Invoke();
    const uint64_t ticks = instruction_counter_ticks() - start;
    int differing = 0;
    for (int i = 0; i < EXPORT_UPPER(GOLDEN_OUTPUT_ELEMENTS); ++i) {
      differing += output->data.int8[i] != EXPORT_LOWER(golden_outputs)[vector][i];
    }
    const bool pass = status == kTfLiteOk && differing == 0;
    printf("vector %d %s differing=%d instructions=%llu\n", vector, pass ? "PASS" : "FAIL",
           status == kTfLiteOk ? differing : EXPORT_UPPER(GOLDEN_OUTPUT_ELEMENTS),
           static_cast<unsigned long long>(instruction_counter_instructions(ticks)));
    if (vector == 0) profiler.Print();
  }
}

#if HARNESS_AUDIO
// TFLM's microfrontend, configured from the exported settings, over the golden clip; compared with the
// exported golden features after the exported uint16 -> int8 formula.
void RunFrontend() {
  struct FrontendConfig config;
  FrontendFillConfigWithDefaults(&config);
  config.window.size_ms = EXPORT_UPPER(FRONTEND_WINDOW_SIZE_MS);
  config.window.step_size_ms = EXPORT_UPPER(FRONTEND_WINDOW_STRIDE_MS);
  config.filterbank.num_channels = EXPORT_UPPER(FRONTEND_NUM_CHANNELS);
  config.filterbank.lower_band_limit = EXPORT_UPPER(FRONTEND_LOWER_BAND_LIMIT_HZ);
  config.filterbank.upper_band_limit = EXPORT_UPPER(FRONTEND_UPPER_BAND_LIMIT_HZ);
  config.noise_reduction.smoothing_bits = EXPORT_UPPER(FRONTEND_SMOOTHING_BITS);
  config.noise_reduction.even_smoothing = EXPORT_UPPER(FRONTEND_EVEN_SMOOTHING);
  config.noise_reduction.odd_smoothing = EXPORT_UPPER(FRONTEND_ODD_SMOOTHING);
  config.noise_reduction.min_signal_remaining = EXPORT_UPPER(FRONTEND_MIN_SIGNAL_REMAINING);
  config.pcan_gain_control.enable_pcan = EXPORT_UPPER(FRONTEND_ENABLE_PCAN);
  config.pcan_gain_control.strength = EXPORT_UPPER(FRONTEND_PCAN_STRENGTH);
  config.pcan_gain_control.offset = EXPORT_UPPER(FRONTEND_PCAN_OFFSET);
  config.pcan_gain_control.gain_bits = EXPORT_UPPER(FRONTEND_GAIN_BITS);
  config.log_scale.enable_log = EXPORT_UPPER(FRONTEND_ENABLE_LOG);
  config.log_scale.scale_shift = EXPORT_UPPER(FRONTEND_SCALE_SHIFT);
  struct FrontendState state;
  if (!FrontendPopulateState(&config, &state, EXPORT_UPPER(FRONTEND_SAMPLE_RATE_HZ))) {
    printf("error features: FrontendPopulateState failed\n");
    return;
  }
  const int16_t* samples = EXPORT_LOWER(golden_samples);
  size_t remaining = EXPORT_UPPER(GOLDEN_SAMPLE_COUNT);
  int frame = 0;
  int differing = 0;
  int max_abs = 0;
  while (remaining > 0 && frame < EXPORT_UPPER(FRONTEND_FRAMES)) {
    size_t read = 0;
    const struct FrontendOutput output = FrontendProcessSamples(&state, samples, remaining, &read);
    samples += read;
    remaining -= read;
    if (output.values == nullptr) continue;
    for (size_t channel = 0; channel < output.size; ++channel) {
      const int index = frame * EXPORT_UPPER(FRONTEND_NUM_CHANNELS) + static_cast<int>(channel);
      const int difference = EXPORT_LOWER(frontend_to_int8)(output.values[channel]) -
                             EXPORT_LOWER(golden_features)[index];
      differing += difference != 0;
      const int magnitude = difference < 0 ? -difference : difference;
      if (magnitude > max_abs) max_abs = magnitude;
    }
    ++frame;
  }
  const int total = EXPORT_UPPER(GOLDEN_FEATURE_COUNT);
  // Frames the clip did not produce count as differing: the settings and the clip disagree.
  differing += total - frame * EXPORT_UPPER(FRONTEND_NUM_CHANNELS);
  printf("features %s differing=%d total=%d max_abs=%d\n", differing == 0 ? "PASS" : "FAIL", differing, total,
         max_abs);
  FrontendFreeStateContents(&state);
}
#endif

}  // namespace

int main() {
  RegisterDebugLogCallback(PrintLog);
  instruction_counter_start(INSTRUCTION_COUNTER_MAX_RELOAD);
  printf("harness core=%s machine=%s\n", HARNESS_CORE, HARNESS_MACHINE);
  const tflite::Model* model = tflite::GetModel(EXPORT_LOWER(model_data));
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    printf("error model: schema version %u, this TFLM reads %d\n", static_cast<unsigned>(model->version()),
           TFLITE_SCHEMA_VERSION);
    printf("done\n");
    return 1;
  }
  const size_t exported = EXPORT_UPPER(ARENA_BYTES);
  const size_t exported_used = exported <= sizeof(search_arena) ? AllocatedBytes(model, exported) : 0;
  printf("arena exported_bytes=%u allocates=%d used_bytes=%u halted=%d\n", static_cast<unsigned>(exported),
         exported_used != 0, static_cast<unsigned>(exported_used), halted_tries);
  quiet = true;  // every failed try logs; the search expects half of them to fail
  const size_t smallest = SmallestArena(model);
  quiet = false;
  printf("arena smallest_bytes=%u used_bytes=%u\n", static_cast<unsigned>(smallest),
         static_cast<unsigned>(smallest != 0 ? AllocatedBytes(model, smallest) : 0));
  RunGoldenVectors(model);
#if HARNESS_AUDIO
  RunFrontend();
#endif
  printf("done\n");
  return 0;
}
