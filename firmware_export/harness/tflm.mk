# The TFLM part of the harness (included by the Makefile when TFLM is set): the library from tflm_library.sh,
# the export's files compiled unchanged, harness_main.cc, and for audio exports TFLM's microfrontend C code.
# Needs EXPORT (the export folder) and NAME (its file prefix, e.g. kws).

TFLM_TREE := $(abspath $(TFLM))
DL := $(TFLM_TREE)/tensorflow/lite/micro/tools/make/downloads
EXPORT_DIR := $(abspath $(EXPORT))
NAME_UPPER := $(shell echo '$(NAME)' | tr a-z A-Z)
# An audio export's golden header carries the clip: then TFLM's microfrontend runs on the device too.
AUDIO := $(if $(shell grep -l '$(NAME)_golden_samples' $(EXPORT_DIR)/$(NAME)_golden_vectors.h 2>/dev/null),1,0)

# The include path and defines TFLM's cortex_m_generic target compiles with (see ../shared/tflm/README.md).
# As system headers: -Wextra finds unused parameters in TFLM's headers, and those are not the export's warnings.
TFLM_INCLUDES := -isystem $(TFLM_TREE) -isystem $(DL)/flatbuffers/include -isystem $(DL)/gemmlowp \
  -isystem $(DL)/ruy -isystem $(DL)/kissfft -isystem $(DL)/cmsis_nn -isystem $(DL)/cmsis_nn/Include
TFLM_DEFINES := -DTF_LITE_STATIC_MEMORY -DCMSIS_NN -DTF_LITE_MCU_DEBUG_LOG
# TFLM is built without RTTI and exceptions; the harness derives from its classes, so it must match.
CXXFLAGS := $(COMMON_FLAGS) -std=c++17 -fno-rtti -fno-exceptions -fno-threadsafe-statics $(TFLM_INCLUDES) \
  $(TFLM_DEFINES) -I$(BUILD) -I$(EXPORT_DIR) -I$(HARNESS)
# The export's own files must compile cleanly: warnings there are errors.
EXPORT_FLAGS := $(WARNINGS) -Werror

EXPORT_SOURCES := $(wildcard $(EXPORT_DIR)/$(NAME)_*.cc)
EXPORT_OBJECTS := $(patsubst $(EXPORT_DIR)/%.cc,$(BUILD)/export/%.o,$(EXPORT_SOURCES))
FRONTEND_DIR := $(TFLM_TREE)/tensorflow/lite/experimental/microfrontend/lib
FRONTEND_C := frontend frontend_util window window_util filterbank filterbank_util noise_reduction \
  noise_reduction_util pcan_gain_control pcan_gain_control_util log_scale log_scale_util log_lut
FRONTEND_CC := fft fft_util kiss_fft_int16
FRONTEND_OBJECTS := $(if $(filter 1,$(AUDIO)),$(patsubst %,$(BUILD)/frontend/%.o,$(FRONTEND_C) $(FRONTEND_CC)))

# PYTHON_DIR: a folder whose python3 has Pillow, put first on PATH for TFLM's Makefile (it imports PIL).
$(BUILD)/library.path: | $(BUILD)
	$(if $(PYTHON_DIR),PATH="$(PYTHON_DIR):$$PATH") $(HARNESS)tflm_library.sh $(TFLM_TREE) $(CORE) > $@.tmp
	mv $@.tmp $@

lib: $(BUILD)/library.path

$(BUILD)/harness_export.h: $(EXPORT_DIR)/$(NAME)_golden_vectors.h | $(BUILD)
	printf '%s\n' '// Written by the harness Makefile for the export $(NAME).' \
	  '#include "$(NAME)_model_data.h"' '#include "$(NAME)_model_settings.h"' \
	  '#include "$(NAME)_op_resolver.h"' '#include "$(NAME)_golden_vectors.h"' \
	  '#define EXPORT_LOWER(x) $(NAME)_##x' '#define EXPORT_UPPER(x) $(NAME_UPPER)_##x' \
	  '#define HARNESS_AUDIO $(AUDIO)' '#define HARNESS_CORE "$(CORE)"' '#define HARNESS_MACHINE "$(MACHINE)"' > $@

$(BUILD)/export/%.o: $(EXPORT_DIR)/%.cc $(BUILD)/library.path
	mkdir -p $(dir $@)
	$(CROSS)g++ $(CXXFLAGS) $(EXPORT_FLAGS) -c $< -o $@

$(BUILD)/frontend/%.o: $(FRONTEND_DIR)/%.c $(BUILD)/library.path
	mkdir -p $(dir $@)
	$(CROSS)gcc $(COMMON_FLAGS) -std=c11 $(TFLM_INCLUDES) $(TFLM_DEFINES) -c $< -o $@

$(BUILD)/frontend/%.o: $(FRONTEND_DIR)/%.cc $(BUILD)/library.path
	mkdir -p $(dir $@)
	$(CROSS)g++ $(CXXFLAGS) -c $< -o $@

$(BUILD)/harness_main.o: $(HARNESS)harness_main.cc $(BUILD)/harness_export.h $(BUILD)/library.path
	$(CROSS)g++ $(CXXFLAGS) $(WARNINGS) -DSEARCH_ARENA_BYTES=$(SEARCH_ARENA_BYTES) -c $< -o $@

$(BUILD)/$(NAME).elf: $(MACHINE_OBJECTS) $(BUILD)/harness_main.o $(EXPORT_OBJECTS) $(FRONTEND_OBJECTS) \
                      $(BUILD)/library.path
	$(CROSS)g++ $(LDFLAGS) $(filter %.o,$^) $$(cat $(BUILD)/library.path) -lm -o $@

elf: $(BUILD)/$(NAME).elf

run: $(BUILD)/$(NAME).elf
	$(QEMU_RUN) $<
