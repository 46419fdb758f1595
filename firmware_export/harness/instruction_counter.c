#include "instruction_counter.h"

#ifndef INSTRUCTIONS_PER_TICK_NUM
#error "define INSTRUCTIONS_PER_TICK_NUM and INSTRUCTIONS_PER_TICK_DEN for the emulated machine (see the Makefile)"
#endif

#define SYST_CSR (*(volatile uint32_t*)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t*)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t*)0xE000E018u)
static volatile uint32_t overflows;
static uint32_t reload;

void SysTick_Handler(void) { overflows++; }

void instruction_counter_start(uint32_t reload_ticks) {
  reload = reload_ticks;
  SYST_CSR = 0;
  SYST_RVR = reload;
  SYST_CVR = 0; /* any write clears it; the first tick loads the reload value */
  overflows = 0;
  SYST_CSR = 0x7u; /* enable, interrupt on wrap, core clock */
  while (SYST_CVR == 0) {
  }
}

uint64_t instruction_counter_ticks(void) {
  uint32_t before, value;
  /* Re-read when SysTick wrapped between the two reads (its interrupt changed the overflow count). */
  do {
    before = overflows;
    value = SYST_CVR;
  } while (before != overflows);
  return (uint64_t)before * (reload + 1u) + (reload - value);
}

uint64_t instruction_counter_instructions(uint64_t ticks) {
  return ticks * INSTRUCTIONS_PER_TICK_NUM / INSTRUCTIONS_PER_TICK_DEN;
}
